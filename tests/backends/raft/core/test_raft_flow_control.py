"""Batching, pipelining and the in-flight window, message by message."""

from __future__ import annotations

import pytest
from sim.direct import DirectCluster

from coordkit.backends.raft.core.config import RaftConfig
from coordkit.backends.raft.core.messages import Message, MessageType


def _apps_to(c: DirectCluster, to: str, since: int = 0) -> list[Message]:
    return [m for m in c.sent[since:] if m.type is MessageType.APP and m.to == to and m.entries]


def test_batching_sends_one_append_per_follower_for_many_proposals() -> None:
    c = DirectCluster(3, RaftConfig(pre_vote=False, check_quorum=False, batch_appends=True))
    c.campaign("s1")
    before = len(c.sent)
    s1 = c.core("s1")
    for i in range(10):
        s1.propose(f"p{i}".encode())
    c.deliver(c.handle("s1"))
    apps = _apps_to(c, "s2", before)
    assert len(apps) == 1 and len(apps[0].entries) == 10
    assert s1.commit_index == 11


def test_without_batching_each_proposal_is_its_own_append() -> None:
    cfg = RaftConfig(pre_vote=False, check_quorum=False, batch_appends=False, max_size_per_msg=0)
    c = DirectCluster(3, cfg)
    c.campaign("s1")
    before = len(c.sent)
    for i in range(10):
        c.core("s1").propose(f"p{i}".encode())
    c.deliver(c.handle("s1"))
    assert len(_apps_to(c, "s2", before)) == 10


@pytest.mark.parametrize(
    "cfg",
    [
        RaftConfig(pre_vote=False, check_quorum=False, max_size_per_msg=0, max_inflight_msgs=3),
        RaftConfig(
            pre_vote=False, check_quorum=False, max_size_per_msg=0, max_inflight_bytes=3 * 20
        ),
    ],
    ids=["by-count", "by-bytes"],
)
def test_the_window_bounds_appends_in_flight_and_heartbeats_unstick_it(cfg: RaftConfig) -> None:
    c = DirectCluster(3, cfg)
    c.campaign("s1")
    s1 = c.core("s1")
    before = len(c.sent)
    # s2's acknowledgements are all lost: the window to s2 fills and stays full.
    no_acks = lambda m: not (m.frm == "s2" and m.type is MessageType.APP_RESP)  # noqa: E731
    for _ in range(10):
        s1.propose(b"abcd")  # 4 bytes + 16 overhead = 20 bytes per entry
        c.deliver(c.handle("s1"), allow=no_acks)
    assert len(_apps_to(c, "s2", before)) == 3
    assert len(_apps_to(c, "s3", before)) == 10  # s3 is unaffected
    # A heartbeat answer frees a slot: replication to s2 moves again.
    mark = len(c.sent)
    c.tick("s1", cfg.heartbeat_tick, allow=no_acks)
    assert len(_apps_to(c, "s2", mark)) >= 1
    # With acknowledgements back, s2 catches up completely.
    c.tick("s1", cfg.heartbeat_tick)
    assert c.core("s2").log.last_index() == s1.log.last_index()


def test_configuration_is_validated() -> None:
    with pytest.raises(ValueError, match="lease_read needs check_quorum"):
        RaftConfig(lease_read=True, check_quorum=False)
    with pytest.raises(ValueError, match="election_tick"):
        RaftConfig(election_tick=2, heartbeat_tick=2)
    assert RaftConfig().lease_read is False
