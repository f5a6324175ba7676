"""Crashes and restarts, Figure 8, churn (MIT 6.5840 3C style)."""

from __future__ import annotations

import pytest
from sim.cluster import Cluster
from sim.direct import DirectCluster, within
from sim.linearizability import check_history
from sim.network import NetConfig

from coordkit.backends.raft.core.config import RaftConfig
from coordkit.backends.raft.core.messages import Message, MessageType


def test_persist_full_restarts() -> None:
    """TestPersist13C: the log survives crashing every node, and crashing the leader."""
    cluster = Cluster(3, seed=1)
    cluster.one(b"11", 3)
    for nid in cluster.nodes:
        cluster.crash(nid)
    for nid in cluster.nodes:
        cluster.restart(nid)
    cluster.one(b"12", 3)
    leader = cluster.check_one_leader()
    cluster.crash(leader)
    cluster.restart(leader)
    cluster.one(b"13", 3)
    leader = cluster.check_one_leader()
    cluster.crash(leader)
    cluster.one(b"14", 2)
    cluster.restart(leader)
    cluster.one(b"15", 3)
    assert cluster.n_committed(2) == (3, b"11")


def test_persist_with_partitions_and_crashes() -> None:
    """TestPersist23C: followers and leaders crash while others are cut off."""
    cluster = Cluster(5, seed=2)
    index = 10
    for iteration in range(5):
        cluster.one(f"{index}".encode(), 5)
        index += 1
        leader1 = cluster.check_one_leader()
        others = [n for n in cluster.nodes if n != leader1]
        cluster.disconnect(others[0])
        cluster.disconnect(others[1])
        cluster.one(f"{index}".encode(), 3)
        index += 1
        cluster.crash(leader1)
        cluster.crash(others[2])
        cluster.crash(others[3])
        cluster.connect(others[0])
        cluster.connect(others[1])
        cluster.restart(leader1)
        # Only 3 of 5 are up, and two of them missed the last entry.
        cluster.one(f"{index}".encode(), 3)
        index += 1
        cluster.restart(others[2])
        cluster.restart(others[3])
        assert iteration < 5
    cluster.one(b"1000", 5)


def test_persist_after_the_leader_and_a_follower_crash() -> None:
    """TestPersist33C: a partitioned leader and one follower crash, then the leader returns."""
    cluster = Cluster(3, seed=3)
    cluster.one(b"101", 3)
    leader = cluster.check_one_leader()
    follower = next(n for n in cluster.nodes if n != leader)
    cluster.disconnect(follower)
    cluster.one(b"102", 2)
    cluster.crash(leader)
    cluster.crash(follower)
    cluster.connect(follower)
    cluster.restart(follower)
    cluster.one(b"103", 2)
    cluster.restart(leader)
    cluster.one(b"104", 3)


def test_figure8_an_old_term_entry_is_not_committed_by_counting_replicas() -> None:
    """Figure 8 of the Raft paper, scripted message by message (5 servers).

    s1 (term 1) replicates entry 2 to s2 only. s5 wins term 2 with an entry of
    its own at index 2, alone. s1 wins term 3 and copies its entry 2 to s3: a
    majority now holds it, but it is of an older term, so s1 must not commit
    it. Indeed s5 can still win term 4 and overwrite it everywhere.
    """
    cfg = RaftConfig(pre_vote=False, check_quorum=False, max_size_per_msg=0)
    c = DirectCluster(5, cfg)
    c.campaign("s1")
    assert c.core("s1").commit_index == 1
    # (a) entry 2 (term 1) reaches s2 only
    c.propose("s1", b"a", allow=within({"s1", "s2"}))
    # (b) s5 leads term 2 with s3, s4; its own entry 2 goes nowhere
    c.crash("s1")

    def votes_only(m: Message) -> bool:
        return (
            m.type in (MessageType.VOTE, MessageType.VOTE_RESP) and m.frm != "s1" and m.to != "s1"
        )

    c.campaign("s5", allow=votes_only)
    assert c.core("s5").term == 2 and c.core("s5").log.term(2) == 2
    # (c) s1 returns and leads term 3 with s2, s3; s3 gets entry 2 but not the no-op
    c.crash("s5")
    c.restart("s1")
    group = within({"s1", "s2", "s3"})

    def allow_c(m: Message) -> bool:
        # s3 must first reject and receive entry 2; then its copy of the no-op is lost.
        noop_to_s3 = m.to == "s3" and any(e.term == 3 for e in m.entries)
        return group(m) and not (noop_to_s3 and c.core("s3").log.term(2) == 1)

    c.campaign("s1", allow=allow_c)
    if c.core("s1").term < 3:
        c.campaign("s1", allow=allow_c)
    s1 = c.core("s1")
    assert s1.term == 3 and s1.role.value == "leader"
    assert c.core("s3").log.term(2) == 1  # entry 2 is on s1, s2, s3: a majority
    assert s1.commit_index == 1, "an entry of an old term was committed by counting replicas"
    # (d) s1 crashes; s5 wins term 4 with s3, s4 and overwrites entry 2
    c.crash("s1")
    c.restart("s5")
    rest = within({"s3", "s4", "s5"})
    c.campaign("s5", allow=rest)
    if c.core("s5").role.value != "leader":
        c.campaign("s5", allow=rest)
    assert c.core("s5").role.value == "leader"
    c.propose("s5", b"after", allow=rest)
    assert c.core("s3").log.term(2) == 2
    assert c.applied["s3"][2].term == 2  # committed and applied: s5's entry won
    # Everyone converges on s5's log; the safety checker saw every step.
    c.restart("s1")
    c.tick("s5", 3)  # heartbeats find s1 and s2 again
    c.propose("s5", b"final")
    for nid in c.ids:
        assert c.core(nid).log.term(2) == 2


def _figure8(cluster: Cluster, iterations: int) -> None:
    """TestFigure8*: leaders crash soon after proposing; a majority stays up."""
    rng = cluster.rng
    ids = list(cluster.nodes)
    up = len(ids)
    for _ in range(iterations):
        leader = None
        for nid in ids:
            if cluster.propose_at(nid, f"f{rng.random()}".encode()) is not None:
                leader = nid
        cluster.run_for(rng.randint(0, 13) if rng.random() < 0.9 else rng.randint(0, 500))
        if leader is not None and cluster.nodes[leader].alive:
            cluster.crash(leader)
            up -= 1
        if up < 3:
            down = [n for n in ids if not cluster.nodes[n].alive]
            cluster.restart(rng.choice(down))
            up += 1
    for nid in ids:
        cluster.restart(nid)
    cluster.one(b"figure8-final", len(ids))


def test_figure8_reliable() -> None:
    cluster = Cluster(5, seed=4, config=RaftConfig(heartbeat_tick=2, max_size_per_msg=0))
    _figure8(cluster, 300)


def test_figure8_unreliable() -> None:
    cfg = RaftConfig(heartbeat_tick=2, max_size_per_msg=0)
    cluster = Cluster(5, seed=5, config=cfg, net=NetConfig.unreliable())
    cluster.run_for(50)
    cluster.net.config = NetConfig.long_reordering()
    _figure8(cluster, 300)
    cluster.net.config = NetConfig.reliable()
    cluster.one(b"settled", 5)


@pytest.mark.parametrize("unreliable", [False, True], ids=["reliable", "unreliable"])
def test_churn(unreliable: bool) -> None:
    """TestReliableChurn3C / TestUnreliableChurn3C, with clients checked for linearizability."""
    net = NetConfig.unreliable() if unreliable else NetConfig.reliable()
    cluster = Cluster(5, seed=6, net=net, crash_mid_ready=0.01)
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
    cluster.run_for(500)
    cluster.one(b"churn-final", 5)
    assert not check_history(cluster.history)
    assert sum(op.returned for op in cluster.history) > 15
