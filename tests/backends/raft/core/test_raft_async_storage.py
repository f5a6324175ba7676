"""Asynchronous storage writes: the Ready / advance / persisted contract, step by step."""

from __future__ import annotations

import random

import pytest
from sim.cluster import Cluster
from sim.linearizability import check_history
from sim.network import NetConfig

from coordkit.backends.raft.core import (
    ConfState,
    Entry,
    MemoryStorage,
    Message,
    MessageType,
    RaftConfig,
    RaftCore,
    Ready,
    Role,
)

MT = MessageType
ASYNC = RaftConfig(pre_vote=False, check_quorum=False, async_storage_writes=True)


def _core(
    nid: str, voters: list[str], config: RaftConfig = ASYNC
) -> tuple[RaftCore, MemoryStorage]:
    disk = MemoryStorage(ConfState.of(voters))
    return RaftCore(nid, disk, config, random.Random(1)), disk


def _write(disk: MemoryStorage, rd: Ready) -> None:
    """What the application's writer does once ``rd`` is durable."""
    if rd.snapshot is not None:
        disk.apply_snapshot(rd.snapshot)
    disk.append(rd.entries)
    if rd.hard_state is not None:
        disk.set_hard_state(rd.hard_state)


def _handle(core: RaftCore) -> Ready:
    """ready() and advance(), leaving the writes in flight."""
    rd = core.ready()
    core.advance(rd)
    return rd


def _durable(core: RaftCore, disk: MemoryStorage, rd: Ready) -> tuple[Message, ...]:
    _write(disk, rd)
    core.persisted(rd)
    return rd.persisted_messages


def test_a_single_node_leads_and_commits_only_once_its_writes_are_durable() -> None:
    core, disk = _core("a", ["a"])
    core.campaign()
    # The vote for itself is not durable yet: it does not count.
    assert core.role is Role.CANDIDATE
    vote = _handle(core)
    assert vote.hard_state is not None and vote.hard_state.vote == "a"
    assert core.role is Role.CANDIDATE
    _durable(core, disk, vote)
    assert core.role is Role.LEADER
    noop = _handle(core)
    assert [e.index for e in noop.entries] == [1]
    assert core.commit_index == 0  # its only copy is still being written
    index = core.propose(b"x")
    second = _handle(core)  # pipelined: written while the first write is in flight
    assert [e.data for e in second.entries] == [b"x"]
    assert core.commit_index == 0
    _durable(core, disk, noop)
    assert core.commit_index == 1
    _durable(core, disk, second)
    assert core.commit_index == index == 2
    rd = _handle(core)
    assert [e.index for e in rd.committed_entries] == [1, 2]


def test_the_leader_sends_appends_before_its_own_write_is_durable() -> None:
    leader, disk = _core("a", ["a", "b", "c"])
    follower, fdisk = _core("b", ["a", "b", "c"])
    leader.campaign()
    rd = _handle(leader)
    assert {m.to for m in rd.messages if m.type is MT.VOTE} == {"b", "c"}
    _durable(leader, disk, rd)
    follower.step(next(m for m in rd.messages if m.to == "b"))
    frd = _handle(follower)
    assert frd.messages == ()  # a granted vote waits for the vote to be durable
    [grant] = _durable(follower, fdisk, frd)
    assert grant.type is MT.VOTE_RESP and not grant.reject
    leader.step(grant)
    assert leader.role is Role.LEADER
    rd = _handle(leader)
    appends = [m for m in rd.messages if m.type is MT.APP and m.to == "b"]
    assert appends and appends[0].entries == rd.entries  # in parallel with its own write


def test_a_follower_acknowledges_and_applies_only_what_is_durable() -> None:
    follower, disk = _core("b", ["a", "b", "c"])
    entries = (Entry(1, 1), Entry(1, 2, data=b"x"))
    follower.step(Message(MT.APP, "a", "b", term=1, index=0, log_term=0, entries=entries, commit=2))
    assert follower.commit_index == 2
    rd = _handle(follower)
    assert rd.entries == entries
    assert rd.committed_entries == ()  # committed, but not yet durable here
    assert rd.messages == ()
    [ack] = rd.persisted_messages
    assert ack.type is MT.APP_RESP and ack.index == 2 and not ack.reject
    assert not follower.has_ready()
    assert _durable(follower, disk, rd) == (ack,)
    assert [e.index for e in _handle(follower).committed_entries] == [1, 2]


def test_the_leader_counts_itself_only_once_its_copy_is_durable() -> None:
    leader, disk = _core("a", ["a", "b", "c"])
    leader.campaign()
    _durable(leader, disk, _handle(leader))
    leader.step(Message(MT.VOTE_RESP, "b", "a", term=1))
    noop = _handle(leader)
    # c is down; b acknowledges the no-op at once: one durable copy of three.
    leader.step(Message(MT.APP_RESP, "b", "a", term=1, index=1))
    assert leader.commit_index == 0
    _durable(leader, disk, noop)
    assert leader.commit_index == 1


def test_readies_are_reported_durable_once_each_in_order() -> None:
    core, disk = _core("a", ["a"])
    core.campaign()
    first = _handle(core)
    with pytest.raises(RuntimeError, match="in Ready order"):
        core.persisted(Ready())
    _durable(core, disk, first)
    with pytest.raises(RuntimeError, match="in Ready order"):
        core.persisted(first)  # twice
    sync, _ = _core("s", ["s"], RaftConfig())
    sync.campaign()
    with pytest.raises(RuntimeError, match="async_storage_writes"):
        sync.persisted(sync.ready())


def test_persisted_may_come_before_advance() -> None:
    core, disk = _core("a", ["a"])
    core.campaign()
    rd = core.ready()
    _durable(core, disk, rd)
    assert core.role is Role.LEADER
    core.advance(rd)
    noop = core.ready()
    _durable(core, disk, noop)
    core.advance(noop)
    assert core.commit_index == 1


def test_a_write_from_an_earlier_term_does_not_make_rewritten_entries_stable() -> None:
    """The ABA case (etcd rawnode.go): entries replaced, then put back, while writes are in flight.

    b gets entry 2 (term 1) from a, then entry 2 of term 2 from c, then a's
    entry 2 again from a in term 3. When the first write completes, Storage
    holds a's entry, as the log does; but the second write, still in flight,
    will put c's entry there before the third restores a's. The core must
    keep reading index 2 from its own log until then.
    """
    b, disk = _core("b", ["a", "b", "c"])
    b.step(Message(MT.APP, "a", "b", term=1, entries=(Entry(1, 1), Entry(1, 2, data=b"a"))))
    w1 = _handle(b)
    b.step(
        Message(MT.APP, "c", "b", term=2, index=1, log_term=1, entries=(Entry(2, 2, data=b"c"),))
    )
    w2 = _handle(b)
    b.step(
        Message(MT.APP, "a", "b", term=3, index=1, log_term=1, entries=(Entry(1, 2, data=b"a"),))
    )
    w3 = _handle(b)
    assert [e.data for e in w3.entries] == [b"a"]
    _durable(b, disk, w1)
    _durable(b, disk, w2)  # Storage now holds c's entry at 2; w3 is still in flight
    assert disk.term(2) == 2
    assert b.log.term(2) == 1
    assert b.log.slice(2, 3) == [Entry(1, 2, data=b"a")]
    _durable(b, disk, w3)
    assert b.log.term(2) == 1 and disk.term(2) == 1
    assert b.log.stable_last_index() == 2  # stable at last, from a write of this term


def test_a_candidate_whose_vote_is_not_yet_durable_can_still_win_by_others_votes() -> None:
    core, disk = _core("a", ["a", "b", "c"])
    core.campaign()
    rd = _handle(core)  # the vote for itself is being written
    core.step(Message(MT.VOTE_RESP, "b", "a", term=1))
    assert core.role is Role.CANDIDATE  # one of three: its own does not count yet
    core.step(Message(MT.VOTE_RESP, "c", "a", term=1))
    assert core.role is Role.LEADER  # two others are a majority without it
    _durable(core, disk, rd)
    assert core.role is Role.LEADER


# -- in the simulator: slow disks, several writes in flight, crashes lose them ------------------


def _async_cluster(n: int, seed: int, delay: tuple[int, int], **kw: object) -> Cluster:
    cfg = RaftConfig(heartbeat_tick=2, async_storage_writes=True, max_size_per_msg=0)
    return Cluster(n, seed=seed, config=cfg, write_delay_ms=delay, **kw)  # type: ignore[arg-type]


def test_async_writes_survive_crashes_of_every_node_and_of_the_leader() -> None:
    cluster = _async_cluster(3, seed=21, delay=(1, 25))
    cluster.one(b"11", 3)
    for nid in cluster.nodes:
        cluster.crash(nid)
    for nid in cluster.nodes:
        cluster.restart(nid)
    cluster.one(b"12", 3)
    for round_ in range(10):
        leader = cluster.check_one_leader()
        # Crash the leader while its latest writes are still in flight.
        cluster.propose_at(leader, f"lost-or-kept-{round_}".encode())
        cluster.run_for(cluster.rng.randint(0, 20))
        cluster.crash(leader)
        cluster.one(f"r{round_}".encode(), 2)
        cluster.restart(leader)
    cluster.one(b"end", 3)
    assert sum(n.crashes for n in cluster.nodes.values()) == 13


def test_async_writes_under_churn_keep_client_histories_linearizable() -> None:
    net = NetConfig.unreliable()
    cluster = _async_cluster(5, seed=32, delay=(0, 10), net=net, crash_mid_ready=0.01)
    cluster.start_clients(3, until_ms=4000)
    rng = cluster.rng
    ids = list(cluster.nodes)
    while cluster.now < 4000:
        victim = rng.choice(ids)
        roll = rng.random()
        if roll < 0.2:
            cluster.crash(victim)
        elif roll < 0.5:
            cluster.restart(victim)
        elif roll < 0.7:
            cluster.disconnect(victim)
        else:
            cluster.connect(victim)
        cluster.run_for(rng.randint(10, 100))
    cluster.net.heal()
    cluster.net.config = NetConfig.reliable()
    cluster.crash_mid_ready = 0.0
    for nid in ids:
        cluster.restart(nid)
    cluster.one(b"churn-final", 5)
    assert not check_history(cluster.history)
    assert sum(op.returned for op in cluster.history) > 15
    # Writes really were in flight together (pipelined), not one at a time.
    assert cluster.max_writes_in_flight >= 3
