"""Sessions without a clock, the bounded watch history, and the replicated limits."""

from __future__ import annotations

import pytest

from coordkit.backends.store import (
    CloseSession,
    Compact,
    Configure,
    Create,
    ExpireSession,
    OpenSession,
    Set,
    Store,
    Txn,
    decode_command,
    encode_command,
)
from coordkit.errors import CompactedError, InvalidArgumentError, ValueTooLargeError
from coordkit.txn import CreateOp


def test_a_session_records_its_ttl_and_no_deadline() -> None:
    store = Store()
    first = store.apply(OpenSession(2.5))
    second = store.apply(decode_command(encode_command(OpenSession(10))))
    assert (first, second) == (1, 2)
    assert store.session_ttls() == {1: 2.5, 2: 10.0}
    assert store.session_ttl(first) == 2.5 and store.session_ttl(99) is None
    assert store.revision == 0  # opening a session changes no node
    state = store.session(first)
    assert state is not None and state.ttl == 2.5 and state.ephemerals == ()


@pytest.mark.parametrize("ttl", [0, -1.0, float("nan"), float("inf"), True, "5"])
def test_a_bad_ttl_is_refused_and_changes_nothing(ttl: object) -> None:
    store = Store()
    with pytest.raises(InvalidArgumentError):
        store.apply(OpenSession(ttl))  # type: ignore[arg-type]
    assert store.session_ids() == [] and store.next_session_id == 1


@pytest.mark.parametrize("end", [ExpireSession, CloseSession])
def test_ending_a_session_removes_its_ephemerals_in_one_revision(
    end: type[ExpireSession] | type[CloseSession],
) -> None:
    store = Store()
    sid = store.apply(OpenSession(1.0))
    other = store.apply(OpenSession(1.0))
    store.apply(Create("/p", b""))
    for name in ("a", "b", "c"):
        store.apply(Create(f"/p/{name}", b"", session_id=sid))
    store.apply(Create("/p/d", b"", session_id=other))
    revision = store.revision
    assert store.apply(end(sid)) == ["/p/a", "/p/b", "/p/c"]
    assert store.revision == revision + 1
    assert {e.revision for e in store.events_since(revision + 1)} == {revision + 1}
    assert store.children("/p") == ["d"] and store.session_ids() == [other]
    assert store.apply(end(sid)) == []  # unknown now: nothing happens
    assert store.revision == revision + 1


def test_history_keeps_at_most_max_history_events_and_older_starts_are_compacted() -> None:
    store = Store(max_history=3)
    for i in range(5):
        store.apply(Create(f"/n{i}", b""))
    assert [e.revision for e in store.history()] == [3, 4, 5]
    assert store.oldest_revision == 3
    with pytest.raises(CompactedError) as raised:
        store.events_since(2)
    assert raised.value.compact_revision == 3
    assert [e.path for e in store.events_since(3)] == ["/n2", "/n3", "/n4"]


def test_history_drops_a_transaction_whole() -> None:
    store = Store(max_history=3)
    store.apply(Txn((), (CreateOp("/a", b""), CreateOp("/b", b""))))  # two events, revision 1
    store.apply(Create("/c", b""))
    store.apply(Create("/d", b""))  # four events: revision 1 goes, both of its events
    assert [e.revision for e in store.history()] == [2, 3]
    assert store.oldest_revision == 2


def test_history_holds_whole_revisions_after_each_trim() -> None:
    store = Store(max_history=4)
    store.apply(Create("/a", b""))
    store.apply(Txn((), tuple(CreateOp(f"/t{i}", b"") for i in range(3))))  # revision 2
    store.apply(Create("/b", b""))  # 5 events: revision 1 goes
    assert store.oldest_revision == 2 and len(store.history()) == 4
    store.apply(Txn((), tuple(CreateOp(f"/u{i}", b"") for i in range(3))))  # revision 4
    # 7 events: revision 2 goes whole, never leaving part of a revision behind
    assert [e.revision for e in store.history()] == [3, 4, 4, 4]
    assert store.oldest_revision == 3


def test_configure_changes_the_limits_and_trims_history_at_once() -> None:
    store = Store(max_history=10)
    for i in range(6):
        store.apply(Create(f"/n{i}", b""))
    revision = store.revision
    assert store.apply(Configure(max_history=2, max_session_results=7, max_value_bytes=4)) is None
    assert (store.max_history, store.max_session_results, store.max_value_bytes) == (2, 7, 4)
    assert [e.revision for e in store.history()] == [5, 6] and store.oldest_revision == 5
    assert store.revision == revision
    with pytest.raises(ValueTooLargeError):
        store.apply(Set("/n0", b"12345"))
    store.apply(Configure(max_history=None))  # None leaves a limit as it is
    assert store.max_history == 2


@pytest.mark.parametrize(
    "command",
    [
        Configure(max_history=0),
        Configure(max_history=5, max_session_results=0),
        Configure(max_value_bytes=-1),
        Configure(max_history=True),  # type: ignore[arg-type]
        Compact("3"),  # type: ignore[arg-type]
    ],
)
def test_a_bad_limit_is_refused_and_changes_nothing(command: Configure) -> None:
    store = Store(max_history=3)
    store.apply(Create("/a", b""))
    before = store.snapshot()
    with pytest.raises(InvalidArgumentError):
        store.apply(command)
    assert store.snapshot() == before


def test_compact_forgets_history_below_a_revision() -> None:
    store = Store()
    for i in range(5):
        store.apply(Create(f"/n{i}", b""))
    assert store.apply(Compact(4)) == 4
    with pytest.raises(CompactedError) as raised:
        store.events_since(3)
    assert raised.value.compact_revision == 4
    assert store.apply(Compact(99)) == 6  # never beyond the next revision


def test_the_same_log_gives_byte_identical_replicas() -> None:
    log = [
        OpenSession(3.0),
        Create("/q", b""),
        Create("/q/x-", b"1", session_id=1, sequential=True),
        Create("/q/x-", b"2", sequential=True),
        Set("/q", b"v"),
        ExpireSession(1),
        Configure(max_history=2),
    ]
    replicas = [Store(), Store()]
    answers = [[r.apply_entry(encode_command(c)) for c in log] for r in replicas]
    assert answers[0] == answers[1]
    assert replicas[0].snapshot() == replicas[1].snapshot()
