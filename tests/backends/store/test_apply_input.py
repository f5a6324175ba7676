"""Commands of the right shape with wrong content get a clear error that changes nothing.

The Raft server applies entries a client had encoded: a version compared with
bytes, a path made too long by its sequential suffix, must come back as an
encoded error on every replica, never as a Python exception out of the apply
loop. (test_codec.py applies every command its strategies can build.)
"""

from __future__ import annotations

import pytest

from coordkit.backends.store import (
    Create,
    OpenSession,
    Store,
    Txn,
    decode_result,
    encode_command,
)
from coordkit.errors import InvalidArgumentError, InvalidPathError
from coordkit.paths import STORED_PATH_BYTES
from coordkit.txn import Compare, CompareOp, CompareTarget, CreateOp


def populated() -> Store:
    store = Store()
    sid = store.apply(OpenSession(1.0))
    store.apply(Create("/a/b", b"x", make_parents=True))
    store.apply(Create("/a/q-", b"", sid, sequential=True))
    return store


@pytest.mark.parametrize(
    "compare",
    [
        Compare("/a", CompareTarget.VERSION, CompareOp.LT, b"x"),
        Compare("/a", CompareTarget.VALUE, CompareOp.GT, 3),
        Compare("/a", CompareTarget.EXISTS, CompareOp.LT, True),
        Compare("bad path", CompareTarget.EXISTS, CompareOp.EQ, True),
    ],
)
def test_a_compare_of_the_wrong_kind_is_refused(compare: Compare) -> None:
    store = populated()
    before = store.snapshot()
    outcome = decode_result(store.apply_entry(encode_command(Txn((compare,)))))
    assert isinstance(outcome, InvalidArgumentError)
    assert store.snapshot() == before


def test_an_ephemeral_create_in_a_txn_without_a_session_is_refused() -> None:
    store = populated()
    before = store.snapshot()
    with pytest.raises(InvalidArgumentError, match="session"):
        store.apply(Txn((), (CreateOp("/a/e", b"", ephemeral=True),)))
    assert store.snapshot() == before


def test_a_sequential_suffix_may_not_take_a_path_past_the_limit() -> None:
    store = populated()
    prefix = "/" + "x" * (STORED_PATH_BYTES - 1 - 9)  # room for 9 of the 10 digits
    before = store.snapshot()
    with pytest.raises(InvalidPathError, match="limit"):
        store.apply(Create(prefix, b"", sequential=True))
    assert store.snapshot() == before  # the counter did not move either
    node = store.apply(Create(prefix[:-1], b"", sequential=True))
    assert len(node.path.encode()) == STORED_PATH_BYTES
    Store.restore(store.snapshot())  # and every store that exists can be restored
