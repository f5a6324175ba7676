"""Random fault schedules for the soak test: one seed -> one exact, replayable run.

A schedule picks a cluster shape, Raft configuration (some with asynchronous
storage writes) and a pressure profile, then runs clients against it while
injecting faults: crashes (also in the middle of handling a Ready, or with
writes in flight), restarts, symmetric and one-way partitions, isolated
leaders, slow and fast clocks, lossy / duplicating / reordering network,
leadership transfers and membership changes; the profiles add Figure 8 leader
churn or membership churn (see PROFILES). Safety invariants are checked after
every step; at the end the faults are healed, the cluster must make progress
again, every replica's store must be identical (a digest of its snapshot),
and the client history must be linearizable. The state machine is the real
store: clients send its encoded commands through sessions, and sessions that
go quiet are expired by the leader (their ephemeral nodes with them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass

from coordkit.backends.raft.core.config import RaftConfig
from coordkit.backends.raft.core.messages import ConfChangeType

from .cluster import Cluster
from .linearizability import check_history
from .network import NetConfig
from .workload import upsert

REPLAY = (
    "COORDKIT_RAFT_SEED={seed} .venv/bin/python -m pytest "
    "tests/backends/raft/core/test_raft_soak.py -q"
)


@dataclass(slots=True)
class ScheduleResult:
    seed: int
    ops: int
    completed: int
    faults: int
    terms: int
    messages: int
    virtual_ms: int
    sessions: int  # opened by the clients
    expiries: int  # ExpireSession commands the leaders proposed
    digests_compared: int  # whole-store digests found equal to another node's
    fingerprint: str  # digest of the history and the traffic: equal runs, equal digests


def random_config(rng: random.Random) -> RaftConfig:
    pre_vote, check_quorum = rng.choice([(True, True), (True, True), (True, False), (False, True)])
    return RaftConfig(
        election_tick=rng.randint(8, 12),
        heartbeat_tick=rng.randint(1, 3),
        pre_vote=pre_vote,
        check_quorum=check_quorum,
        max_size_per_msg=rng.choice([0, 120, 1 << 20]),
        max_inflight_msgs=rng.choice([1, 2, 8, 64]),
        max_inflight_bytes=rng.choice([200, 1 << 20]),
        max_uncommitted_size=rng.choice([0, 400, 1 << 20]),
        batch_appends=rng.random() < 0.7,
    )


def _random_net(rng: random.Random) -> NetConfig:
    return rng.choice([NetConfig.reliable, NetConfig.unreliable, NetConfig.long_reordering])()


#: Pressure profiles a seed may draw, with their weights. "mixed" is every kind
#: of fault at random; "figure8" makes old-term entries replicated by a new
#: leader before its own entry common (one entry per append, leaders struck
#: down within a round trip of taking office); "membership" attempts a second
#: configuration change right after each accepted one, among churning members.
PROFILES = {"mixed": 6, "figure8": 2, "membership": 2}


def run_schedule(seed: int, duration_ms: int | None = None) -> ScheduleResult:
    """Run one schedule; raises AssertionError (with the seed) on any violation.

    The faults last ``duration_ms`` of virtual time (by default 0.6-2 s, drawn
    from the seed), then the cluster gets up to 10 s to recover.
    """
    rng = random.Random(seed)
    if duration_ms is None:
        duration_ms = rng.randint(600, 2000)
    profile = rng.choices(list(PROFILES), weights=list(PROFILES.values()))[0]
    n = rng.choice([3, 3, 5])
    spares = 1 if rng.random() < 0.25 else 0
    config = random_config(rng)
    if profile == "figure8":
        n = rng.choice([3, 5, 5])
        duration_ms = min(duration_ms, 1200)
        guard = rng.random() < 0.5  # pre-vote and check-quorum both on, or both off
        config = dataclasses.replace(
            config,
            max_size_per_msg=0,
            max_inflight_msgs=rng.choice([1, 1, 2, 64]),
            pre_vote=guard,
            check_quorum=guard,
            max_uncommitted_size=0,
        )
    elif profile == "membership":
        spares = rng.choice([1, 2])
        duration_ms = min(duration_ms, 1200)
    # Some schedules write asynchronously: slow disks, several writes in flight,
    # a crash loses every write not yet durable.
    if rng.random() < 0.3:
        config = dataclasses.replace(config, async_storage_writes=True)
    cluster = Cluster(
        n,
        seed=seed,
        rng=rng,
        spares=spares,
        config=config,
        net=_random_net(rng),
        tick_ms=[rng.randint(7, 14) for _ in range(n + spares)],
        crash_mid_ready=rng.choice([0.0, 0.002, 0.01]),
        snapshot_every=rng.choice([0, 4, 16]),
        snapshot_retain=rng.choice([0, 2]),
        write_delay_ms=rng.choice([(0, 3), (1, 10), (2, 30)]),
        # A whole-store digest after every applied entry costs ~40% more time:
        # every fourth seed (drawing nothing from rng: the other draws stay put).
        full_digests=seed % 4 == 0,
    )
    cluster.clients.ttl_s = rng.choice([0.3, 0.6, 1.0])
    ids = list(cluster.nodes)
    faults = 0
    injecting = True

    def inject() -> None:
        nonlocal faults
        if not injecting:
            return
        faults += 1
        kind = rng.randrange(10)
        victim = rng.choice(ids)
        lid = cluster.leader()
        if kind <= 1:  # crash a node (the leader half of the time), restart it later
            target = lid if lid is not None and rng.random() < 0.5 else victim
            cluster.crash(target)
            cluster.call_at(cluster.now + rng.randint(10, 300), lambda: cluster.restart(target))
        elif kind == 2:  # minority/majority split
            shuffled = ids[:]
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(ids) // 2)
            cluster.net.partition([shuffled[:cut], shuffled[cut:]])
        elif kind == 3 and lid is not None:  # isolate the leader
            cluster.disconnect(lid)
        elif kind == 4:  # asymmetric: one direction of one link fails
            other = rng.choice([i for i in ids if i != victim])
            cluster.net.block_one_way(victim, other)
        elif kind == 5:
            cluster.net.heal()
        elif kind == 6:  # a slow or fast clock
            cluster.set_tick_ms(victim, rng.choice([4, 10, 25]))
        elif kind == 7:
            cluster.net.config = _random_net(rng)
        elif kind == 8 and lid is not None:
            cluster.transfer(rng.choice(ids))
        elif kind == 9:
            change = rng.choice(list(ConfChangeType))
            cluster.try_conf_change(change, victim)
        cluster.call_at(cluster.now + rng.randint(30, 200), inject)

    def knock_out(nid: str, for_ms: int) -> None:
        """Crash or isolate ``nid``, and bring it back ``for_ms`` later."""
        if rng.random() < 0.5:
            cluster.crash(nid)
            cluster.call_at(cluster.now + for_ms, lambda: cluster.restart(nid))
        else:
            cluster.disconnect(nid)
            cluster.call_at(cluster.now + for_ms, lambda: cluster.connect(nid))

    def churn() -> None:
        # Figure 8 pressure (MIT 6.5840 TestFigure8*): leaders die or vanish
        # soon after they are elected, often with entries half replicated.
        if not injecting:
            return
        # Every node that believes it leads gets a command (MIT's Start() on all
        # servers): stale leaders in minorities grow divergent uncommitted tails.
        for nid, _ in cluster.leaders():
            cluster.propose_at(nid, upsert("/churn", f"c{cluster.now}"))
        lid = cluster.leader()
        if lid is not None and rng.random() < 0.7:
            knock_out(lid, rng.randint(0, 200))
        cluster.call_at(cluster.now + rng.choice([rng.randint(5, 30), rng.randint(30, 150)]), churn)

    def strike_new_leader(nid: str) -> None:
        # Cut a fresh leader off before its no-op spreads: the next leader
        # inherits entries of several older terms, as in Figure 8.
        if injecting and rng.random() < 0.3:
            knock_out(nid, rng.randint(20, 300))

    def figure8() -> None:
        # Every leader gets a command and is knocked out within about a round
        # trip, for a short while: with one entry per append, a new leader
        # often has an old-term entry on a majority before its own entry,
        # while the leader of an intermediate term (with a conflicting entry
        # nobody has) comes back in time to compete for the next election.
        if not injecting:
            return
        for nid, _ in cluster.leaders():
            cluster.propose_at(nid, upsert("/churn", f"f8-{cluster.now}"))
        lid = cluster.leader()
        if lid is not None:
            cluster.call_at(cluster.now + rng.randint(0, 13), lambda: briefly_knock_out(lid))
        cluster.call_at(cluster.now + rng.randint(1, 18), figure8)

    def briefly_knock_out(nid: str) -> None:
        if injecting:
            knock_out(nid, rng.randint(0, 60))

    def strike_at_once(nid: str) -> None:
        if injecting and rng.random() < 0.5:
            cluster.call_at(cluster.now + rng.randint(0, 4), lambda: briefly_knock_out(nid))

    def membership() -> None:
        # Members come and go; right after each accepted change a second one is
        # attempted (a correct leader refuses it until the first commits), and
        # the leader is sometimes cut off at once, so that configurations
        # diverge across nodes exactly when a second change would be unsafe.
        if not injecting:
            return
        lid = cluster.leader()
        if lid is not None and cluster.try_conf_change(*_random_change(rng, cluster, lid, ids)):
            if rng.random() < 0.7:
                cluster.try_conf_change(*_random_change(rng, cluster, lid, ids))
            if rng.random() < 0.3:
                knock_out(lid, rng.randint(20, 200))
        cluster.call_at(cluster.now + rng.randint(20, 80), membership)

    cluster.call_at(rng.randint(50, 150), inject)
    if profile == "figure8":
        cluster.call_at(rng.randint(50, 150), figure8)
        cluster.on_new_leader = strike_at_once
    elif profile == "membership":
        cluster.call_at(rng.randint(50, 150), membership)
    elif rng.random() < 0.35:
        cluster.call_at(rng.randint(50, 150), churn)
        cluster.on_new_leader = strike_new_leader
    cluster.start_clients(3, duration_ms)
    cluster.run_for(duration_ms)

    # Heal everything: the cluster must elect a leader and commit again.
    injecting = False
    cluster.client_stop_at = cluster.now
    cluster.net.heal()
    cluster.net.config = NetConfig.reliable()
    cluster.crash_mid_ready = 0.0
    for nid in ids:
        cluster.restart(nid)
    lid = cluster.check_one_leader(timeout_ms=5000)
    lcore = cluster.nodes[lid].core
    assert lcore is not None
    cluster.one(upsert("/final", "done"), expected=len(lcore.conf.voters), timeout_ms=5000)
    cluster.run_for(cluster.op_timeout_ms + 10)
    cluster.converge()

    bad = check_history(cluster.history)
    if bad:
        raise AssertionError(f"history not linearizable for keys {bad}")
    return ScheduleResult(
        seed=seed,
        ops=len(cluster.history),
        completed=sum(1 for op in cluster.history if op.returned),
        faults=faults,
        terms=len(cluster.checker.leaders),
        messages=cluster.net.total_sent(),
        virtual_ms=cluster.now,
        sessions=sum(c.sessions_opened for c in cluster.clients.clients.values()),
        expiries=cluster.expiries_proposed,
        digests_compared=cluster.checker.digests_compared,
        fingerprint=_fingerprint(cluster),
    )


def _random_change(
    rng: random.Random, cluster: Cluster, lid: str, ids: list[str]
) -> tuple[ConfChangeType, str]:
    """A membership step for leader ``lid``: remove a voter, or add / promote / demote one."""
    core = cluster.nodes[lid].core
    voters = list(core.conf.voters) if core is not None else ids
    others = [i for i in ids if i not in voters]
    if len(voters) > 1 and (not others or rng.random() < 0.5):
        return ConfChangeType.REMOVE_NODE, rng.choice(voters)
    kind = rng.choice([ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER])
    return kind, rng.choice(others or voters)


def _fingerprint(cluster: Cluster) -> str:
    h = hashlib.sha256()
    for op in cluster.history:
        h.update(repr((op.kind, op.key, op.arg, op.call, op.ret, op.result, op.node)).encode())
    h.update(repr(sorted(cluster.net.sent.items())).encode())
    for n in cluster.nodes.values():
        h.update(repr((n.id, n.disk.hard_state, n.disk.last_index())).encode())
    h.update(repr(sorted(cluster.checker.digests.items())).encode())
    return h.hexdigest()
