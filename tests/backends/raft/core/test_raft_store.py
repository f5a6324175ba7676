"""The simulated cluster replicates the real store: sessions, expiry, exactly-once, digests."""

from __future__ import annotations

import pytest
from sim.cluster import Cluster
from sim.invariants import SafetyViolation
from sim.linearizability import check_history
from sim.network import NetConfig
from sim.workload import upsert

from coordkit.backends.store import (
    ClientRequest,
    Create,
    ExpireSession,
    OpenSession,
    Set,
    decode_command,
    decode_result,
    encode_command,
)
from coordkit.errors import CoordkitError


def result_at(cluster: Cluster, index: int) -> object:
    """The store's result of the entry at ``index``: the same bytes on every node."""
    results = {n.results[index] for n in cluster.nodes.values() if index in n.results}
    assert len(results) == 1, results
    return decode_result(results.pop())


def open_session(cluster: Cluster, ttl: float) -> int:
    index = cluster.one(encode_command(OpenSession(ttl)), 3)
    session = result_at(cluster, index)
    assert isinstance(session, int)
    return session


def request(session: int, seq: int, command: Create | Set) -> bytes:
    return encode_command(ClientRequest(session, seq, seq, command))


def expiries(cluster: Cluster, nid: str) -> list[tuple[int, int]]:
    """(index, session) of every ExpireSession ``nid`` applied."""
    out = []
    for index, e in sorted(cluster.nodes[nid].applied.items()):
        try:
            command = decode_command(e.data)
        except CoordkitError:
            continue
        if isinstance(command, ExpireSession):
            out.append((index, command.session_id))
    return out


def test_a_quiet_session_expires_with_its_ephemerals_on_every_replica() -> None:
    cluster = Cluster(3, seed=5)
    session = open_session(cluster, ttl=0.3)
    for i in range(3):
        cluster.one(
            request(session, i + 1, Create(f"/e/n{i}", session_id=session, make_parents=True)), 3
        )
    cluster.one(upsert("/keep", "v"), 3)

    def gone() -> bool:
        return all(
            n.store is not None and not n.store.has_session(session) for n in cluster.nodes.values()
        )

    assert cluster.run_until(gone, 2000), "the leader never expired the quiet session"
    for n in cluster.nodes.values():
        assert n.store is not None
        assert n.store.children("/e") == []
        keep = n.store.get("/keep")
        assert keep is not None and keep.value == b"v"
    # One replicated decision, applied at the same index everywhere.
    decided = {nid: expiries(cluster, nid) for nid in cluster.nodes}
    assert len({tuple(v) for v in decided.values()}) == 1, decided
    assert [s for _, s in decided["n1"]] == [session]
    cluster.converge()


def keepalive(cluster: Cluster, session: int) -> None:
    """A keepalive to the leader (it goes to the leader's tracker, not through the log)."""
    tracker = cluster.nodes[cluster.check_one_leader()].tracker
    assert tracker is not None and tracker.keepalive(session)


def test_keepalives_keep_a_session_through_leader_changes() -> None:
    cluster = Cluster(3, seed=6)
    session = open_session(cluster, ttl=0.4)
    cluster.one(request(session, 1, Create("/e/mine", session_id=session, make_parents=True)), 3)
    for _ in range(4):
        for _ in range(3):  # a keepalive every 100 ms
            keepalive(cluster, session)
            cluster.run_for(100)
        # A keepalive, then the leader dies at once: the next keepalive comes 0.9 TTL
        # later, to a new leader that never heard of the last one. The session must
        # live a TTL from that keepalive: the new leader gives every session a full
        # TTL plus an election timeout from when it takes office.
        keepalive(cluster, session)
        lid = cluster.check_one_leader()
        cluster.crash(lid)
        cluster.run_for(360)
        cluster.restart(lid)
    cluster.converge()
    assert cluster.expiries_proposed == 0
    for n in cluster.nodes.values():
        assert n.store is not None and n.store.get("/e/mine") is not None
    # Once the keepalives stop, the session goes, on every replica.
    assert cluster.run_until(
        lambda: all(
            n.store is not None and n.store.get("/e/mine") is None for n in cluster.nodes.values()
        ),
        3000,
    )
    cluster.converge()


def test_a_request_retried_after_a_leader_change_is_applied_once() -> None:
    cluster = Cluster(3, seed=7)
    session = open_session(cluster, ttl=5.0)
    create = request(session, 1, Create("/q/s-", sequential=True, make_parents=True))
    first = cluster.one(create, 3)
    # The reply was lost; the leader dies; the client sends the same request again.
    cluster.crash(cluster.check_one_leader())
    again = cluster.one(create, 2)
    assert again > first
    assert result_at(cluster, again) == result_at(cluster, first)  # the recorded result
    for n in cluster.nodes.values():
        if n.store is not None:
            assert n.store.children("/q") == ["s-0000000000"]


def test_replicas_stay_identical_under_faults_whole_store_digest_at_every_index() -> None:
    cluster = Cluster(
        3,
        seed=12,
        net=NetConfig.unreliable(),
        snapshot_every=6,
        crash_mid_ready=0.005,
        full_digests=True,
    )
    cluster.clients.ttl_s = 0.3
    cluster.clients.idle_ratio = 0.05  # some sessions go quiet and expire
    cluster.start_clients(4, until_ms=3000)
    rng = cluster.rng
    ids = list(cluster.nodes)
    while cluster.now < 3000:
        victim = rng.choice(ids)
        if rng.random() < 0.2:
            cluster.crash(victim)
            cluster.call_at(cluster.now + rng.randint(20, 150), lambda v=victim: cluster.restart(v))  # type: ignore[misc]
        cluster.run_for(rng.randint(100, 300))
        for nid in ids:  # nodes crashed in the middle of a Ready come back too
            if rng.random() < 0.5:
                cluster.restart(nid)
    cluster.net.heal()
    cluster.net.config = NetConfig.reliable()
    cluster.crash_mid_ready = 0.0
    for nid in ids:
        cluster.restart(nid)
    cluster.run_for(cluster.op_timeout_ms + 10)
    cluster.converge()
    assert not check_history(cluster.history)
    assert sum(op.returned for op in cluster.history) > 30
    assert cluster.expiries_proposed > 0
    assert cluster.clients.sessions_expired_seen > 0  # a client learned its session was gone
    assert sum(n.crashes for n in cluster.nodes.values()) > 3
    # Most entries were compared as whole stores on at least two nodes.
    assert cluster.checker.digests_compared > 100


def test_the_checker_catches_a_replica_whose_store_diverges() -> None:
    cluster = Cluster(3, seed=8)
    cluster.one(upsert("/a", "1"), 3)
    lid = cluster.check_one_leader()
    follower = next(n for n in cluster.nodes.values() if n.id != lid)
    assert follower.store is not None
    follower.store.apply(Set("/a", b"changed outside the log"))
    with pytest.raises(SafetyViolation, match="state machine safety: after applying"):
        cluster.one(upsert("/b", "2"), 3)
