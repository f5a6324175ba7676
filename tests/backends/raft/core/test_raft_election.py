"""Leader election: re-election, pre-vote, check-quorum, transfer (MIT 6.5840 3A style)."""

from __future__ import annotations

import pytest
from sim.cluster import Cluster
from sim.direct import DirectCluster
from sim.network import NetConfig

from coordkit.backends.raft.core.config import RaftConfig
from coordkit.backends.raft.core.errors import ProposalDroppedError
from coordkit.backends.raft.core.messages import Role

ELECTION_MS = 200  # election_tick 10 x 10 ms ticks, randomized up to twice that


def terms(cluster: Cluster) -> set[int]:
    return {n.core.term for n in cluster.nodes.values() if n.core is not None}


def test_initial_election_elects_one_leader_and_keeps_it() -> None:
    cluster = Cluster(3, seed=1)
    leader = cluster.check_one_leader()
    assert len(terms(cluster)) == 1
    term = cluster.nodes[leader].core.term  # type: ignore[union-attr]
    # No failures: nobody should start another election.
    cluster.run_for(10 * ELECTION_MS)
    assert cluster.check_one_leader() == leader
    assert terms(cluster) == {term}


def test_re_election_after_leader_loss() -> None:
    cluster = Cluster(3, seed=2)
    first = cluster.check_one_leader()
    cluster.disconnect(first)
    second = cluster.check_one_leader()
    assert second != first
    # The old leader rejoins: it must not disturb the new one.
    cluster.connect(first)
    assert cluster.check_one_leader() == second
    # No quorum: no leader may be elected.
    other = next(n for n in cluster.nodes if n not in (second,))
    cluster.disconnect(second)
    cluster.disconnect(other)
    cluster.run_for(4 * ELECTION_MS)
    alone = next(n for n in cluster.nodes if n not in (second, other))
    assert cluster.nodes[alone].core.role is not Role.LEADER  # type: ignore[union-attr]
    cluster.connect(other)
    cluster.check_one_leader()
    cluster.connect(second)
    cluster.check_one_leader()


def test_many_elections_with_random_failures() -> None:
    cluster = Cluster(7, seed=3)
    cluster.check_one_leader()
    ids = list(cluster.nodes)
    for _ in range(10):
        cut = cluster.rng.sample(ids, 3)
        for nid in cut:
            cluster.disconnect(nid)
        # Four of seven are connected: a majority must elect a leader.
        leader = cluster.check_one_leader()
        assert leader not in cut
        for nid in cut:
            cluster.connect(nid)
    cluster.check_one_leader()
    assert len(cluster.checker.leaders) >= 2


@pytest.mark.parametrize("seed", range(5))
def test_partitioned_node_rejoining_does_not_depose_the_leader(seed: int) -> None:
    cluster = Cluster(3, seed=seed)
    leader = cluster.check_one_leader()
    term = cluster.nodes[leader].core.term  # type: ignore[union-attr]
    follower = next(n for n in cluster.nodes if n != leader)
    cluster.disconnect(follower)
    cluster.run_for(20 * ELECTION_MS)
    # Pre-vote: the isolated node never won a pre-vote, so never raised its term.
    assert cluster.nodes[follower].core.term == term  # type: ignore[union-attr]
    cluster.connect(follower)
    cluster.run_for(5 * ELECTION_MS)
    assert cluster.check_one_leader() == leader
    assert terms(cluster) == {term}


def test_without_pre_vote_a_rejoining_node_does_disrupt() -> None:
    """The control experiment for the test above: the disruption pre-vote prevents is real."""
    cluster = Cluster(3, seed=0, config=RaftConfig(heartbeat_tick=2, pre_vote=False))
    leader = cluster.check_one_leader()
    term = cluster.nodes[leader].core.term  # type: ignore[union-attr]
    follower = next(n for n in cluster.nodes if n != leader)
    cluster.disconnect(follower)
    cluster.run_for(20 * ELECTION_MS)
    assert cluster.nodes[follower].core.term > term  # type: ignore[union-attr]
    cluster.connect(follower)
    cluster.check_one_leader()
    assert min(terms(cluster)) > term


@pytest.mark.parametrize("seed", range(5))
def test_leader_cut_off_from_the_majority_steps_down(seed: int) -> None:
    cluster = Cluster(5, seed=seed)
    leader = cluster.check_one_leader()
    cluster.disconnect(leader)
    # Check-quorum: within about one election timeout it notices and steps down.
    stepped_down = cluster.run_until(
        lambda: cluster.nodes[leader].core.role is not Role.LEADER,  # type: ignore[union-attr]
        3 * ELECTION_MS,
    )
    assert stepped_down
    assert cluster.check_one_leader() != leader


@pytest.mark.parametrize("seed", range(10))
def test_pre_vote_with_check_quorum_always_elects_after_the_leader_dies(seed: int) -> None:
    """The PreVote+CheckQuorum deadlock (etcd#8334): followers still in the old leader's
    lease must not refuse each other's pre-votes forever."""
    cluster = Cluster(3, seed=seed, net=NetConfig.unreliable())
    leader = cluster.check_one_leader()
    cluster.crash(leader)
    assert cluster.check_one_leader(timeout_ms=20 * ELECTION_MS) != leader
    cluster.restart(leader)
    cluster.check_one_leader()


def test_leadership_transfer_hands_over_to_the_chosen_voter() -> None:
    cluster = Cluster(3, seed=4)
    leader = cluster.check_one_leader()
    cluster.one(b"before", 3)
    target = next(n for n in cluster.nodes if n != leader)
    assert cluster.transfer(target)
    # While the transfer is pending the old leader refuses proposals.
    old = cluster.nodes[leader].core
    assert old is not None
    if old.role is Role.LEADER:
        with pytest.raises(ProposalDroppedError):
            old.propose(b"during")
    assert cluster.run_until(lambda: cluster.stable_leader() == target, 2 * ELECTION_MS)
    cluster.one(b"after", 3)


def test_leadership_transfer_to_a_lagging_voter_waits_for_it_to_catch_up() -> None:
    cluster = Cluster(3, seed=5)
    leader = cluster.check_one_leader()
    target = next(n for n in cluster.nodes if n != leader)
    cluster.disconnect(target)
    for i in range(20):
        cluster.one(f"cmd{i}".encode(), 2)
    cluster.connect(target)
    assert cluster.transfer(target)
    assert cluster.run_until(lambda: cluster.stable_leader() == target, 3 * ELECTION_MS)
    # Everything committed before the transfer survived it.
    cluster.one(b"after", 3)
    count, data = cluster.n_committed(21)
    assert count == 3
    assert data == b"cmd19"


def test_message_counts_stay_bounded() -> None:
    """TestCount3B: no storms while electing, agreeing or idling."""
    cluster = Cluster(3, seed=6)
    cluster.check_one_leader()
    election = cluster.net.total_sent()
    assert election <= 30, cluster.net.sent
    before = cluster.net.total_sent()
    for i in range(10):
        cluster.one(f"c{i}".encode(), 3)
    agreement = cluster.net.total_sent() - before
    # Per agreement and follower: the append, the commit notice, and their
    # answers (8 messages for two followers), plus a few heartbeats.
    assert agreement <= 10 * 8 + 30, cluster.net.sent
    before = cluster.net.total_sent()
    cluster.run_for(1000)
    idle = cluster.net.total_sent() - before
    # Heartbeats every 2 ticks of 10 ms to two followers, and their answers.
    assert idle <= (1000 // 20) * 2 * 2 + 10, idle


def _cut_off_and_advance(c: DirectCluster, nid: str, campaigns: int) -> None:
    """``nid`` campaigns alone ``campaigns`` times, raising its term."""
    for _ in range(campaigns):
        c.campaign(nid, allow=lambda m: False)


def test_a_stale_leader_learns_a_higher_term_from_its_followers_without_check_quorum() -> None:
    """Figure 3.1: an append from an older term is answered with our term.

    Without pre-vote and check-quorum the stale leader would otherwise lead on
    for ever when nobody else campaigns (e.g. a node that believes itself
    removed, or whose campaigns never reach the leader).
    """
    c = DirectCluster(3, RaftConfig(pre_vote=False, check_quorum=False))
    c.campaign("s1")
    _cut_off_and_advance(c, "s2", 3)
    assert c.core("s2").term == 4
    c.tick("s1", 1)  # a heartbeat reaches s2, which answers with term 4
    assert c.core("s1").role is Role.FOLLOWER and c.core("s1").term == 4


def test_a_candidate_behind_in_term_learns_the_term_from_a_rejection() -> None:
    c = DirectCluster(3, RaftConfig(pre_vote=False, check_quorum=False))
    _cut_off_and_advance(c, "s2", 5)
    c.campaign("s1", allow=lambda m: m.to in ("s2", "s1") and m.frm in ("s1", "s2"))
    # s2 rejected the term-1 request with its own term: s1 campaigns next time above it.
    assert c.core("s1").term == 5 and c.core("s1").role is Role.FOLLOWER
    c.campaign("s1")
    assert c.core("s1").role is Role.LEADER and c.core("s1").term == 6
