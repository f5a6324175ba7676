"""Membership changes one voter at a time, learners, and ReadIndex around leader changes."""

from __future__ import annotations

import pytest
from sim.cluster import Cluster
from sim.direct import DirectCluster
from sim.linearizability import check_history

from coordkit.backends.raft.core.config import RaftConfig
from coordkit.backends.raft.core.errors import ConfChangeError
from coordkit.backends.raft.core.messages import ConfChangeType, MessageType, Role


def _change(cluster: Cluster, change: ConfChangeType, node: str, timeout_ms: int = 3000) -> None:
    """Propose until accepted, then wait until the leader has committed it."""
    assert cluster.run_until(lambda: cluster.try_conf_change(change, node), timeout_ms)
    lid = cluster.leader()
    assert lid is not None
    core = cluster.nodes[lid].core
    assert core is not None
    target = core.membership.latest_index
    assert cluster.run_until(
        lambda: any(
            n.core is not None and n.core.role is Role.LEADER and n.core.commit_index >= target
            for n in cluster.nodes.values()
        ),
        timeout_ms,
    )


def test_add_a_learner_then_promote_it_under_load() -> None:
    cluster = Cluster(3, seed=1, spares=1)
    cluster.check_one_leader()
    cluster.start_clients(3, until_ms=3000)
    cluster.run_for(300)
    _change(cluster, ConfChangeType.ADD_LEARNER, "n4")
    cluster.run_for(300)
    learner = cluster.nodes["n4"]
    assert learner.core is not None
    assert learner.core.conf.learners == ("n4",)
    # The learner replicates but never campaigns (it is not a voter).
    assert learner.store_index > 0
    assert (
        cluster.net.sent[MessageType.PRE_VOTE.value] + cluster.net.sent[MessageType.VOTE.value] <= 8
    )  # only the first election
    _change(cluster, ConfChangeType.ADD_VOTER, "n4")
    cluster.run_for(3000 - cluster.now + 100)
    lid = cluster.check_one_leader()
    assert cluster.nodes[lid].core.conf.voters == ("n1", "n2", "n3", "n4")  # type: ignore[union-attr]
    cluster.one(b"with-four", 4)
    # With four voters, two crashes stop progress; one does not.
    victim = next(n for n in ("n1", "n2", "n3") if n != lid)
    cluster.crash(victim)
    cluster.one(b"three-of-four", 3)
    assert not check_history(cluster.history)
    assert sum(op.returned for op in cluster.history) > 20


def test_remove_a_follower_and_then_the_leader_under_load() -> None:
    cluster = Cluster(5, seed=2)
    leader = cluster.check_one_leader()
    cluster.start_clients(3, until_ms=3000)
    cluster.run_for(300)
    follower = next(n for n in cluster.nodes if n != leader)
    _change(cluster, ConfChangeType.REMOVE_NODE, follower)
    cluster.run_for(200)
    leader = cluster.check_one_leader()
    _change(cluster, ConfChangeType.REMOVE_NODE, leader)
    # The removed leader steps down once its removal commits; the others elect.
    new_leader = cluster.check_one_leader()
    assert new_leader not in (leader, follower)
    cluster.run_for(3000 - cluster.now + 100)
    core = cluster.nodes[new_leader].core
    assert core is not None
    assert len(core.conf.voters) == 3
    assert leader not in core.conf.members() and follower not in core.conf.members()
    # The removed nodes stay quiet: they never become leader again.
    cluster.run_for(1000)
    for nid in (leader, follower):
        assert cluster.nodes[nid].core.role is not Role.LEADER  # type: ignore[union-attr]
    cluster.one(b"after-removals", 3)
    assert not check_history(cluster.history)


def test_a_new_leader_cannot_change_membership_before_committing_an_entry_of_its_term() -> None:
    c = DirectCluster(3, RaftConfig(pre_vote=False, check_quorum=False))
    # Only votes get through: s1 leads, but its no-op is not committed.
    c.campaign("s1", allow=lambda m: m.type in (MessageType.VOTE, MessageType.VOTE_RESP))
    s1 = c.core("s1")
    assert s1.role is Role.LEADER and s1.commit_index == 0
    with pytest.raises(ConfChangeError, match="entry of its term"):
        s1.propose_conf_change(ConfChangeType.REMOVE_NODE, "s3")
    c.tick("s1", 2)  # heartbeats -> appends -> the no-op commits
    assert s1.commit_index == 1
    index = s1.propose_conf_change(ConfChangeType.ADD_LEARNER, "s4")
    # One change at a time: the next waits for this one to commit.
    with pytest.raises(ConfChangeError, match="not committed"):
        s1.propose_conf_change(ConfChangeType.REMOVE_NODE, "s3")
    c.deliver(c.handle("s1"))
    assert s1.commit_index >= index
    s1.propose_conf_change(ConfChangeType.REMOVE_NODE, "s3")
    with pytest.raises(ConfChangeError):
        s1.propose_conf_change(ConfChangeType.REMOVE_NODE, "s9")


def test_configuration_takes_effect_when_appended_and_reverts_when_truncated() -> None:
    c = DirectCluster(3, RaftConfig(pre_vote=False, check_quorum=False))
    c.campaign("s1")
    s1 = c.core("s1")
    # s1 is cut off, appends a change nobody else sees, then loses leadership.
    s1.propose_conf_change(ConfChangeType.ADD_LEARNER, "s9")
    c.crash("s1")
    assert s1.conf.learners == ("s9",)
    c.campaign("s2")
    c.propose("s2", b"x")
    c.restart("s1")
    c.tick("s2", 3)
    # s1's uncommitted change was overwritten, and with it the configuration.
    assert c.core("s1").conf.learners == ()
    assert c.core("s1").log.term(2) == c.core("s2").term


def test_read_index_waits_for_the_new_leaders_no_op() -> None:
    """etcd#7331: a new leader's commit index may lag; reads must wait for its no-op."""
    c = DirectCluster(3, RaftConfig(pre_vote=False, check_quorum=False))
    c.campaign("s1")
    c.propose("s1", b"x")
    # s2 takes over; its no-op reaches nobody yet.
    c.campaign("s2", allow=lambda m: m.type in (MessageType.VOTE, MessageType.VOTE_RESP))
    s2 = c.core("s2")
    assert s2.role is Role.LEADER
    s2.read_index(b"read-1")
    c.deliver(c.handle("s2"))
    assert c.read_states["s2"] == []  # not before the no-op commits
    c.tick("s2", 2)  # heartbeats -> appends -> no-op commits -> heartbeat round
    served = c.read_states["s2"]
    assert [rs.context for rs in served] == [b"read-1"]
    # The read index covers the no-op, hence everything committed before.
    assert c.core("s2").log.term(served[0].index) == s2.term


def test_read_index_on_a_follower_is_forwarded_to_the_leader() -> None:
    cluster = Cluster(3, seed=3)
    cluster.read_ratio = 1.0  # clients only read, each from the node it picked
    cluster.start_clients(3, until_ms=1000)
    for i in range(10):
        cluster.one(f"w{i}".encode(), 3)
    cluster.run_for(1200)
    leader = cluster.check_one_leader()
    reads = [op for op in cluster.history if op.kind == "get" and op.returned]
    assert any(op.node != leader for op in reads), "no read was served by a follower"
    assert not check_history(cluster.history)
