"""The leader's session deadlines: expiry decided by one clock, extended on taking office."""

from __future__ import annotations

from fake_clock import FakeClock

from coordkit.backends.raft.node.sessions import SessionTracker


def tracker(clock: FakeClock) -> SessionTracker:
    return SessionTracker(clock, grace=1.0, retry_after=0.5)


def test_a_session_not_kept_alive_is_due_after_its_ttl_and_not_before() -> None:
    clock = FakeClock()
    t = tracker(clock)
    t.take_office([])
    t.opened(7, ttl=3.0)
    clock.advance(2.9)
    assert t.due() == []
    clock.advance(0.2)
    assert t.due() == [7]
    assert t.due() == []  # proposed: not again until retry_after


def test_keepalives_push_the_deadline_out() -> None:
    clock = FakeClock()
    t = tracker(clock)
    t.take_office([])
    t.opened(1, ttl=2.0)
    for _ in range(10):
        clock.advance(1.5)
        assert t.keepalive(1)
        assert t.due() == []
    clock.advance(2.01)
    assert t.due() == [1]


def test_a_new_leader_gives_every_session_its_ttl_plus_an_election_timeout() -> None:
    clock = FakeClock()
    t = tracker(clock)
    t.take_office([(1, 2.0), (2, 5.0)])
    clock.advance(2.9)
    assert t.due() == []  # 2.0 + grace 1.0
    clock.advance(0.2)
    assert t.due() == [1]
    t.ended(1)  # its expiry applied
    clock.advance(2.8)
    assert t.due() == []
    clock.advance(0.2)
    assert t.due() == [2]


def test_an_expiry_that_did_not_apply_is_proposed_again() -> None:
    clock = FakeClock()
    t = tracker(clock)
    t.take_office([(4, 1.0)])
    clock.advance(2.1)
    assert t.due() == [4]
    clock.advance(0.4)
    assert t.due() == []
    clock.advance(0.2)
    assert t.due() == [4]
    t.ended(4)
    clock.advance(10)
    assert t.due() == []


def test_a_keepalive_after_the_expiry_was_proposed_is_refused() -> None:
    clock = FakeClock()
    t = tracker(clock)
    t.take_office([(9, 1.0)])
    clock.advance(2.5)
    assert t.due() == [9]
    assert not t.keepalive(9)  # it is ending: do not tell the client otherwise
    assert not t.keepalive(12345)  # unknown


def test_leaving_office_forgets_every_deadline() -> None:
    clock = FakeClock()
    t = tracker(clock)
    t.take_office([(1, 1.0)])
    t.leave_office()
    clock.advance(100)
    assert t.due() == [] and not t.active and len(t) == 0
    t.opened(2, 1.0)  # a follower does not track
    assert len(t) == 0


def test_next_deadline_skips_stale_entries() -> None:
    clock = FakeClock()
    t = tracker(clock)
    t.take_office([])
    t.opened(1, 1.0)
    t.opened(2, 5.0)
    assert t.next_deadline() == 1.0
    t.ended(1)
    assert t.next_deadline() == 5.0
