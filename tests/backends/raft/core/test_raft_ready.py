"""The Ready/advance contract of RaftCore."""

from __future__ import annotations

import random

import pytest
from sim.direct import DirectCluster

from coordkit.backends.raft.core import (
    ConfState,
    MemoryStorage,
    Message,
    MessageType,
    RaftConfig,
    RaftCore,
    Role,
)


def test_a_single_node_commits_only_what_it_has_persisted() -> None:
    disk = MemoryStorage(ConfState.of(["a"]))
    core = RaftCore("a", disk, RaftConfig(), random.Random(1))
    core.campaign()
    assert core.role is Role.LEADER
    rd = core.ready()
    # The no-op is handed out for persistence, but not yet as committed.
    assert [e.index for e in rd.entries] == [1]
    assert rd.committed_entries == ()
    assert rd.hard_state is not None and rd.hard_state.vote == "a" and rd.must_sync
    disk.append(rd.entries)
    disk.set_hard_state(rd.hard_state)
    core.advance(rd)  # persisted: now the leader acknowledges itself
    rd = core.ready()
    assert [e.index for e in rd.committed_entries] == [1]
    core.advance(rd)
    assert not core.has_ready()


def test_ready_must_be_advanced_before_the_next_one() -> None:
    disk = MemoryStorage(ConfState.of(["a"]))
    core = RaftCore("a", disk, RaftConfig(), random.Random(1))
    core.campaign()
    rd = core.ready()
    assert not core.has_ready()
    with pytest.raises(RuntimeError, match="before advance"):
        core.ready()
    disk.append(rd.entries)
    core.advance(rd)
    assert core.has_ready()  # the no-op is now committed
    with pytest.raises(RuntimeError):
        core.advance(rd)


def test_messages_stepped_between_ready_and_advance_go_into_the_next_ready() -> None:
    c = DirectCluster(3, RaftConfig(pre_vote=False, check_quorum=False, batch_appends=False))
    c.campaign("s1")
    s1, s2 = c.core("s1"), c.core("s2")
    s1.propose(b"x")
    first = [m for m in c.handle("s1") if m.to == "s2"]
    s1.propose(b"y")
    second = [m for m in c.handle("s1") if m.to == "s2"]
    for m in first:
        s2.step(m)
    rd = s2.ready()
    assert [e.data for e in rd.entries] == [b"x"]
    for m in second:
        s2.step(m)  # arrives while the Ready holding x is being persisted
    c.disks["s2"].append(rd.entries)
    if rd.hard_state is not None:
        c.disks["s2"].set_hard_state(rd.hard_state)
    s2.advance(rd)
    rd2 = s2.ready()
    assert [e.data for e in rd2.entries] == [b"y"]
    c.disks["s2"].append(rd2.entries)
    s2.advance(rd2)
    assert [e.data for e in c.disks["s2"].all_entries()][-2:] == [b"x", b"y"]


def test_with_synchronous_writes_every_message_is_in_messages() -> None:
    """The default contract is unchanged: replies are sent after persisting, with the rest."""
    disk = MemoryStorage(ConfState.of(["a", "b", "c"]))
    b = RaftCore("b", disk, RaftConfig(), random.Random(1))
    b.step(Message(MessageType.VOTE, "a", "b", term=1))
    rd = b.ready()
    assert rd.persisted_messages == ()
    assert [m.type for m in rd.messages] == [MessageType.VOTE_RESP]
    assert rd.hard_state is not None and rd.hard_state.vote == "a" and rd.must_sync
