"""Log replication: agreement, failures, backtracking, snapshots, caps (MIT 6.5840 3B/3D style)."""

from __future__ import annotations

import random

import pytest
from sim.cluster import Cluster
from sim.direct import DirectCluster
from sim.linearizability import check_history
from sim.network import NetConfig
from sim.workload import upsert

from coordkit.backends.raft.core import ConfState, MemoryStorage, RaftCore
from coordkit.backends.raft.core.config import RaftConfig
from coordkit.backends.raft.core.errors import ProposalDroppedError
from coordkit.backends.raft.core.messages import Entry, Message, MessageType, Role


def test_basic_agreement() -> None:
    cluster = Cluster(3, seed=1)
    cluster.check_one_leader()
    for i in range(1, 4):
        # index 1 is the first leader's no-op
        assert cluster.n_committed(i + 1)[0] == 0
        assert cluster.one(f"cmd{i}".encode(), 3) == i + 1


def test_agreement_despite_a_failed_follower() -> None:
    cluster = Cluster(3, seed=2)
    leader = cluster.check_one_leader()
    follower = next(n for n in cluster.nodes if n != leader)
    cluster.disconnect(follower)
    for i in range(3):
        cluster.one(f"a{i}".encode(), 2)
    cluster.connect(follower)
    for i in range(3):
        cluster.one(f"b{i}".encode(), 3)


def test_no_agreement_without_a_majority() -> None:
    cluster = Cluster(5, seed=3)
    leader = cluster.check_one_leader()
    followers = [n for n in cluster.nodes if n != leader][:3]
    for nid in followers:
        cluster.disconnect(nid)
    index = cluster.propose_at(leader, b"lonely")
    assert index is not None
    cluster.run_for(2000)
    assert cluster.n_committed(index)[0] == 0
    for nid in followers:
        cluster.connect(nid)
    # The cluster recovers; the lonely entry may or may not survive.
    cluster.one(b"after", 5)


def test_concurrent_proposals_all_commit() -> None:
    cluster = Cluster(3, seed=4)
    leader = cluster.check_one_leader()
    indexes = [cluster.propose_at(leader, f"c{i}".encode()) for i in range(20)]
    assert None not in indexes
    assert cluster.run_until(
        lambda: all(cluster.n_committed(i)[0] == 3 for i in indexes if i is not None), 2000
    )
    assert sorted(cluster.n_committed(i)[1] for i in indexes if i) == sorted(
        f"c{i}".encode() for i in range(20)
    )


def test_rejoin_of_a_partitioned_leader() -> None:
    cluster = Cluster(3, seed=5)
    cluster.one(b"101", 3)
    leader1 = cluster.check_one_leader()
    cluster.disconnect(leader1)
    # The old leader accepts entries it can never commit.
    for cmd in (b"102", b"103", b"104"):
        cluster.propose_at(leader1, cmd)
    cluster.one(b"103", 2)
    leader2 = cluster.check_one_leader()
    cluster.disconnect(leader2)
    cluster.connect(leader1)
    cluster.one(b"104", 2)
    cluster.connect(leader2)
    cluster.one(b"105", 3)


def test_fast_backup_over_many_divergent_entries() -> None:
    """TestBackup3B: a leader must skip 50+ conflicting entries in few round trips."""
    # A fixed delay keeps links FIFO, so every rejection is a backtracking step.
    cluster = Cluster(5, seed=6, net=NetConfig(min_delay_ms=2, max_delay_ms=2))
    cluster.one(b"start", 5)
    leader1 = cluster.check_one_leader()
    others = [n for n in cluster.nodes if n != leader1]
    # leader1 and one follower on one side: 50 entries that never commit.
    cluster.net.partition([[leader1, others[0]], others[1:]])
    for i in range(50):
        cluster.propose_at(leader1, f"lost{i}".encode())
    # The other three commit 50 entries of their own.
    for i in range(50):
        cluster.one(f"kept{i}".encode(), 3)
    leader2 = cluster.check_one_leader()
    # leader2 and one follower go away; more entries that never commit.
    other = next(n for n in others[1:] if n != leader2)
    cluster.net.partition(
        [[leader2, other], [n for n in cluster.nodes if n not in (leader2, other)]]
    )
    for i in range(50):
        cluster.propose_at(leader2, f"lost2-{i}".encode())
    cluster.run_for(500)
    # The first group now has a majority again (leader1, others[0] and one more).
    for i in range(50):
        cluster.one(f"again{i}".encode(), 3)
    cluster.net.heal()
    cluster.one(b"end", 5)
    # Backtracking skips a whole term per rejection: a handful in total, not one
    # per divergent entry (about 120 without the conflict hints).
    assert cluster.net.rejected_appends < 10


def test_unreliable_agreement() -> None:
    cluster = Cluster(5, seed=7, net=NetConfig.unreliable())
    for i in range(20):
        cluster.one(f"u{i}".encode(), 1)
    cluster.net.config = NetConfig.reliable()
    cluster.one(b"final", 5)


def test_snapshot_install_brings_a_lagging_node_up_to_date() -> None:
    cluster = Cluster(3, seed=8, snapshot_every=5)
    leader = cluster.check_one_leader()
    lagging = next(n for n in cluster.nodes if n != leader)
    cluster.disconnect(lagging)
    for i in range(40):
        cluster.one(upsert(f"/s{i % 7}", f"v{i}"), 2)
    # The leader compacted what the lagging node needs: only a snapshot helps.
    assert cluster.nodes[leader].disk.first_index() > 2
    assert cluster.net.sent[MessageType.SNAP.value] == 0
    cluster.connect(lagging)
    index = cluster.one(b"after", 3)
    assert cluster.net.sent[MessageType.SNAP.value] >= 1
    node = cluster.nodes[lagging]
    assert node.store_index >= index
    assert node.disk.snapshot().meta.index > 2
    # The store came over in its own snapshot format: the same nodes and values.
    assert node.store is not None
    got = node.store.get("/s4")
    assert got is not None and got.value == b"v39"
    cluster.converge()  # every replica's whole store digest is the same


def test_snapshot_install_under_an_unreliable_network_with_crashes() -> None:
    cluster = Cluster(3, seed=9, snapshot_every=4, net=NetConfig.unreliable())
    cluster.start_clients(3, until_ms=3000)
    for round_ in range(6):
        victim = cluster.rng.choice(list(cluster.nodes))
        cluster.crash(victim)
        cluster.run_for(300)
        cluster.restart(victim)
        cluster.run_for(200 + 10 * round_)
    cluster.net.config = NetConfig.reliable()
    cluster.run_for(600)
    cluster.one(b"final", 3)
    assert not check_history(cluster.history)
    assert sum(op.returned for op in cluster.history) > 20


def test_uncommitted_log_is_capped_without_a_quorum() -> None:
    cfg = RaftConfig(heartbeat_tick=2, max_uncommitted_size=1000)
    cluster = Cluster(3, seed=10, config=cfg)
    leader = cluster.check_one_leader()
    for nid in cluster.nodes:
        if nid != leader:
            cluster.disconnect(nid)
    core = cluster.nodes[leader].core
    assert core is not None and core.role is Role.LEADER
    with pytest.raises(ProposalDroppedError):
        for _ in range(100):
            core.propose(b"x" * 100)
    assert core.log.last_index() < 15


def test_a_batch_is_appended_contiguously_in_one_go_and_commits_in_order() -> None:
    c = DirectCluster(3, RaftConfig(pre_vote=False, check_quorum=False, max_size_per_msg=0))
    c.campaign("s1")
    s1 = c.core("s1")
    first = s1.propose([b"a", b"b", b"c"])
    assert first == 2 and s1.log.last_index() == 4
    c.deliver(c.handle("s1"))
    assert c.core("s1").propose(b"d") == 5  # a single command still works
    c.deliver(c.handle("s1"))
    for nid in c.ids:
        assert [c.applied[nid][i].data for i in range(2, 6)] == [b"a", b"b", b"c", b"d"]


def test_a_batch_over_the_uncommitted_cap_is_refused_whole() -> None:
    cfg = RaftConfig(pre_vote=False, check_quorum=False, max_uncommitted_size=250)
    c = DirectCluster(3, cfg)
    c.campaign("s1")
    s1 = c.core("s1")
    s1.propose(b"x" * 100)  # never delivered: stays uncommitted
    last = s1.log.last_index()
    with pytest.raises(ProposalDroppedError):
        s1.propose([b"y" * 100, b"z" * 100])  # 300 > 250: not even the first goes in
    assert s1.log.last_index() == last
    assert s1.propose([b"y" * 50, b"z" * 50]) == last + 1  # 200 fits


def test_a_malformed_batch_is_refused_and_changes_nothing() -> None:
    c = DirectCluster(3, RaftConfig(pre_vote=False, check_quorum=False))
    c.campaign("s1")
    s1 = c.core("s1")
    last = s1.log.last_index()
    with pytest.raises(ValueError, match="at least one"):
        s1.propose([])
    with pytest.raises(TypeError, match="must be bytes"):
        s1.propose([b"ok", "text"])  # type: ignore[list-item]
    assert s1.log.last_index() == last


def test_a_follower_commits_only_up_to_the_last_entry_the_leader_sent() -> None:
    """Figure 2, AppendEntries step 5: commit min(leaderCommit, index of last new entry).

    b holds entries 1-2 of term 1 and a stale entry 3 of term 2 that a's log
    does not have. a, leading term 3 with commit index 3, sends an append whose
    entries (just entry 2) all match but stop before the stale one: b may
    commit up to 2 only. Committing up to its own last index would commit the
    stale entry 3, which a's next append must then overwrite.
    """
    disk = MemoryStorage(ConfState.of(["a", "b", "c"]))
    b = RaftCore("b", disk, RaftConfig(), random.Random(1))
    ones = (Entry(1, 1), Entry(1, 2, data=b"two"))
    b.step(Message(MessageType.APP, "a", "b", term=1, entries=ones))
    stale = (Entry(2, 3, data=b"stale"),)
    b.step(Message(MessageType.APP, "c", "b", term=2, index=2, log_term=1, entries=stale))
    b.step(
        Message(MessageType.APP, "a", "b", term=3, index=1, log_term=1, entries=ones[1:], commit=3)
    )
    assert b.commit_index == 2
    rd = b.ready()
    assert [e.index for e in rd.committed_entries] == [1, 2]
    disk.append(rd.entries)
    b.advance(rd)
    fresh = (Entry(3, 3, data=b"fresh"),)
    b.step(Message(MessageType.APP, "a", "b", term=3, index=2, log_term=1, entries=fresh, commit=3))
    assert b.commit_index == 3
    assert b.ready().committed_entries == fresh
