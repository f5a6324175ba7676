"""Exactly-once client requests (Raft dissertation §6.3): a retry is answered, never re-applied.

Each test retries a request the way a client does after a lost reply or a
leader change -- the same ClientRequest, through ``apply`` and through
``apply_entry`` as the Raft server does -- and checks both the answer and
that the state did not move.
"""

from __future__ import annotations

import pytest

from coordkit.backends.store import (
    ClientRequest,
    CloseSession,
    Create,
    Delete,
    ExpireSession,
    OpenSession,
    Set,
    Store,
    StoreLoader,
    Txn,
    decode_result,
    encode_command,
    encode_result,
)
from coordkit.errors import (
    BadVersionError,
    CoordkitError,
    InvalidArgumentError,
    NodeExistsError,
    SessionExpiredError,
)
from coordkit.txn import Compare, CreateOp, SetOp


@pytest.fixture
def store() -> Store:
    store = Store(max_session_results=4)
    store.apply(Create("/q", b""))
    return store


@pytest.fixture
def sid(store: Store) -> int:
    session_id: int = store.apply(OpenSession(5.0))
    return session_id


def outcome(store: Store, request: ClientRequest) -> bytes:
    """What a client would receive for ``request``, encoded."""
    try:
        return encode_result(store.apply(request))
    except CoordkitError as exc:
        return encode_result(exc)


def test_a_retried_sequential_create_makes_one_node(store: Store, sid: int) -> None:
    request = ClientRequest(sid, 1, 1, Create("/q/item-", b"job", sequential=True))
    first = store.apply(request)
    revision = store.revision
    for _ in range(3):
        assert store.apply(request) == first
        assert decode_result(store.apply_entry(encode_command(request))) == first
    assert store.children("/q") == ["item-0000000000"]
    assert store.revision == revision
    # the next request is a new one: it makes the next node
    second = store.apply(ClientRequest(sid, 2, 1, Create("/q/item-", b"job", sequential=True)))
    assert second.path == "/q/item-0000000001"


def test_a_retried_set_returns_its_first_result_not_a_version_error(store: Store, sid: int) -> None:
    request = ClientRequest(sid, 1, 1, Set("/q", b"v1", version=0))
    first = store.apply(request)
    assert first.version == 1
    assert store.apply(request) == first  # applied again, the version check would fail
    assert store.get("/q") == first


def test_a_retried_delete_returns_none_not_no_node(store: Store, sid: int) -> None:
    store.apply(Create("/gone", b""))
    request = ClientRequest(sid, 1, 1, Delete("/gone"))
    assert store.apply(request) is None
    store.apply(Create("/gone", b"again"))  # someone else re-creates it
    assert store.apply(request) is None
    assert store.get("/gone") is not None  # the retry did not delete the new node


def test_a_retried_failed_txn_raises_the_same_error_and_changes_nothing(
    store: Store, sid: int
) -> None:
    txn = Txn((Compare.exists("/q"),), (CreateOp("/q/a", b""), CreateOp("/q", b"")), ())
    request = ClientRequest(sid, 1, 1, txn)
    with pytest.raises(NodeExistsError) as first:
        store.apply(request)
    store.apply(Delete("/q"))  # now the txn would fail differently, or succeed
    before = store.snapshot()
    with pytest.raises(NodeExistsError) as again:
        store.apply(request)
    assert str(again.value) == str(first.value)
    assert store.snapshot() == before


def test_a_retried_txn_returns_its_first_result(store: Store, sid: int) -> None:
    txn = Txn((Compare.version("/q", "==", 0),), (SetOp("/q", b"x"),), (SetOp("/q", b"y"),))
    request = ClientRequest(sid, 1, 1, txn)
    first = store.apply(request)
    assert first.succeeded
    assert store.apply(request) == first  # re-applied, the compare would now fail
    assert store.get("/q").value == b"x"  # type: ignore[union-attr]


def test_a_recorded_error_is_raised_as_a_fresh_copy(store: Store, sid: int) -> None:
    request = ClientRequest(sid, 1, 1, Set("/q", b"", version=7))
    errors = []
    for _ in range(2):
        with pytest.raises(BadVersionError) as raised:
            store.apply(request)
        errors.append(raised.value)
    assert errors[0] is not errors[1]
    assert str(errors[0]) == str(errors[1])


def test_requests_applied_out_of_order_each_apply_once(store: Store, sid: int) -> None:
    # a pipelining client: seq 2 reaches the log before seq 1 (a retry via a new leader)
    two = ClientRequest(sid, 2, 1, Create("/q/n-", b"2", sequential=True))
    one = ClientRequest(sid, 1, 1, Create("/q/n-", b"1", sequential=True))
    assert store.apply(two).path == "/q/n-0000000000"
    assert store.apply(one).path == "/q/n-0000000001"
    assert store.apply(two).path == "/q/n-0000000000"
    assert store.apply(one).path == "/q/n-0000000001"
    assert len(store.children("/q")) == 2


def test_acknowledged_results_are_forgotten_and_their_retry_is_refused(
    store: Store, sid: int
) -> None:
    old = ClientRequest(sid, 1, 1, Create("/q/n-", b"", sequential=True))
    store.apply(old)
    store.apply(ClientRequest(sid, 2, 2, Create("/q/m", b"")))  # acknowledges seq 1
    state = store.session(sid)
    assert state is not None and state.lowest_unacked == 2
    assert [seq for seq, _ in state.results] == [2]
    before = store.snapshot()
    with pytest.raises(InvalidArgumentError, match="acknowledged"):
        store.apply(old)
    assert store.snapshot() == before  # never a second application


def test_a_full_table_refuses_new_requests_until_results_are_acknowledged(
    store: Store, sid: int
) -> None:
    for seq in range(4):  # the limit is 4, none acknowledged
        store.apply(ClientRequest(sid, seq, 0, Create(f"/q/{seq}", b"")))
    before = store.snapshot()
    fifth = ClientRequest(sid, 4, 0, Create("/q/4", b""))
    with pytest.raises(InvalidArgumentError, match="unacknowledged results"):
        store.apply(fifth)
    assert store.snapshot() == before
    # a retry of a recorded request is still answered while the table is full
    assert store.apply(ClientRequest(sid, 3, 0, Create("/q/3", b""))).path == "/q/3"
    # acknowledging two results makes room
    assert store.apply(ClientRequest(sid, 4, 2, Create("/q/4", b""))).path == "/q/4"
    state = store.session(sid)
    assert state is not None and [seq for seq, _ in state.results] == [2, 3, 4]


def test_the_table_ends_with_its_session(store: Store, sid: int) -> None:
    request = ClientRequest(sid, 1, 1, Create("/q/e", b"", session_id=sid))
    store.apply(request)
    assert store.apply(ExpireSession(sid)) == ["/q/e"]
    before = store.snapshot()
    for _ in range(2):
        with pytest.raises(SessionExpiredError):
            store.apply(request)
    assert decode_result(store.apply_entry(encode_command(request))).__class__ is (
        SessionExpiredError
    )
    assert store.snapshot() == before
    assert store.session(sid) is None


def test_a_request_that_closes_its_own_session_is_answered_then_expired(
    store: Store, sid: int
) -> None:
    store.apply(Create("/q/e", b"", session_id=sid))
    close = ClientRequest(sid, 1, 1, CloseSession(sid))
    assert store.apply(close) == ["/q/e"]
    with pytest.raises(SessionExpiredError):  # what a client retrying a close sees
        store.apply(close)


@pytest.mark.parametrize(
    "request_",
    [
        ClientRequest(1, 1, 2, Create("/q/x", b"")),  # acknowledges beyond itself
        ClientRequest(1, -1, 0, Create("/q/x", b"")),
        ClientRequest(1, 1, 1, OpenSession(1.0)),  # type: ignore[arg-type]
        ClientRequest(1, 1, 1, ExpireSession(1)),  # type: ignore[arg-type]
        ClientRequest(1, 1, 1, Create("/q/x", b"", session_id=2)),  # acts for another session
        ClientRequest(1, 1, 1, CloseSession(2)),
        ClientRequest(1, 1, 1, Txn((), (CreateOp("/q/x", b"", ephemeral=True),), (), 2)),
    ],
)
def test_a_malformed_request_is_refused_and_changes_nothing(
    store: Store, request_: ClientRequest
) -> None:
    store.apply(OpenSession(5.0))
    store.apply(OpenSession(5.0))
    before = store.snapshot()
    with pytest.raises(InvalidArgumentError):
        store.apply(request_)
    assert store.snapshot() == before


def test_the_table_is_part_of_snapshots(store: Store, sid: int) -> None:
    request = ClientRequest(sid, 1, 0, Create("/q/n-", b"", sequential=True))
    first = store.apply(request)
    failing = ClientRequest(sid, 2, 0, Create("/q", b""))
    first_error = outcome(store, failing)
    loader = StoreLoader()
    for chunk in store.snapshot_chunks(16):
        loader.feed(chunk)
    restored = loader.finish()
    assert restored.session(sid) == store.session(sid)
    assert restored.apply(request) == first
    assert outcome(restored, failing) == first_error
    assert restored.children("/q") == ["n-0000000000"]
