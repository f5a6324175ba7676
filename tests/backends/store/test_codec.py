"""The binary codecs of commands and results: stable, exact, and closed to garbage.

Every command and result survives a round trip; a few encodings are pinned
byte for byte (the format is what old log entries and snapshots hold, so it
must not drift); and any malformed input -- random bytes, or a valid encoding
truncated, extended or with a byte changed -- raises InvalidArgumentError and
nothing else, from both decoders.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from store_state import state_of  # tests/support

from coordkit.backends.store import (
    COMMAND_TAGS,
    ERROR_TAGS,
    ClientRequest,
    CloseSession,
    Command,
    Compact,
    Configure,
    Create,
    Delete,
    ExpireSession,
    OpenSession,
    Set,
    Store,
    Txn,
    decode_command,
    decode_result,
    encode_command,
    encode_result,
    unwrap_result,
)
from coordkit.errors import (
    CompactedError,
    CoordkitError,
    InvalidArgumentError,
    NoNodeError,
    WrongTypeError,
)
from coordkit.model import Node
from coordkit.txn import (
    Compare,
    CompareOp,
    CompareTarget,
    CreateOp,
    DeleteOp,
    GetOp,
    SetOp,
    TxnResult,
)

U64 = st.integers(0, 2**64 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(max_size=12)
#: paths: valid ones that exist in test_apply_input's store, or any text at all.
PATHS = st.sampled_from(["/", "/a", "/a/b", "/c", "/a/q-"]) | TEXT
BLOBS = st.binary(max_size=40)

compares = st.builds(
    Compare,
    PATHS,
    st.sampled_from(CompareTarget),
    st.sampled_from(CompareOp),
    st.booleans() | I64 | BLOBS,
)
ops = st.one_of(
    st.builds(CreateOp, PATHS, BLOBS, st.booleans(), st.booleans()),
    st.builds(SetOp, PATHS, BLOBS, st.none() | I64),
    st.builds(DeleteOp, PATHS, st.none() | I64),
    st.builds(GetOp, PATHS),
)
SESSIONS = st.integers(0, 3) | U64
request_commands = st.one_of(
    st.builds(Create, PATHS, BLOBS, st.none() | SESSIONS, st.booleans(), st.booleans()),
    st.builds(Set, PATHS, BLOBS, st.none() | I64),
    st.builds(Delete, PATHS, st.none() | I64, st.booleans()),
    st.builds(
        Txn,
        st.tuples(*[compares] * 2) | st.just(()),
        st.lists(ops, max_size=3).map(tuple),
        st.lists(ops, max_size=3).map(tuple),
        st.none() | SESSIONS,
    ),
    st.builds(CloseSession, SESSIONS),
)
commands: st.SearchStrategy[Command] = st.one_of(
    request_commands,
    st.builds(OpenSession, st.floats(allow_nan=False)),
    st.builds(ExpireSession, SESSIONS),
    st.builds(Compact, I64),
    st.builds(Configure, st.none() | U64, st.none() | U64, st.none() | U64),
    st.builds(
        ClientRequest, SESSIONS, st.integers(0, 3) | U64, st.integers(0, 3) | U64, request_commands
    ),
)

nodes = st.builds(Node, TEXT, BLOBS, U64, U64, U64, st.none() | st.integers(1, 2**64 - 1), U64)
errors = st.builds(
    lambda cls, message: cls(message),
    st.sampled_from(sorted(set(ERROR_TAGS) - {CompactedError}, key=lambda c: c.__name__)),
    TEXT,
) | st.builds(CompactedError, TEXT, I64)
results = st.one_of(
    st.none(),
    I64,
    nodes,
    st.lists(TEXT),
    st.lists(I64, min_size=1),
    st.builds(TxnResult, st.booleans(), I64, st.lists(st.none() | nodes, max_size=3).map(tuple)),
)

FUZZ = settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)


def same_error(a: BaseException, b: BaseException) -> bool:
    return type(a) is type(b) and str(a) == str(b)


# -- round trips ---------------------------------------------------------------


@given(commands)
@settings(max_examples=400, deadline=None)
def test_every_command_survives_a_round_trip(command: Command) -> None:
    data = encode_command(command)
    assert data[0] == 1 and data[1] == COMMAND_TAGS[type(command)]
    assert decode_command(data) == command


@given(results)
@settings(max_examples=300, deadline=None)
def test_every_result_survives_a_round_trip(result: object) -> None:
    assert decode_result(encode_result(result)) == result


@given(errors)
@settings(max_examples=200, deadline=None)
def test_every_error_decodes_to_its_own_class_and_message(error: CoordkitError) -> None:
    decoded = decode_result(encode_result(error))
    assert same_error(decoded, error)
    if isinstance(error, CompactedError):
        assert decoded.compact_revision == error.compact_revision
    with pytest.raises(type(error)) as raised:
        unwrap_result(encode_result(error))
    assert str(raised.value) == str(error)


def test_every_error_class_has_a_distinct_tag() -> None:
    assert len(set(ERROR_TAGS.values())) == len(ERROR_TAGS)
    assert len(set(COMMAND_TAGS.values())) == len(COMMAND_TAGS)


def test_an_error_subclass_without_a_tag_travels_as_its_nearest_tagged_ancestor() -> None:
    class NoSuchPlace(NoNodeError):
        pass

    decoded = decode_result(encode_result(NoSuchPlace("/x is gone")))
    assert type(decoded) is NoNodeError and str(decoded) == "/x is gone"


# -- the format is pinned -------------------------------------------------------


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


@pytest.mark.parametrize(
    ("command", "encoding"),
    [
        (
            Create("/a", b"v", 7, True, False),
            b"\x01\x01" + u32(2) + b"/a" + u32(1) + b"v" + b"\x01" + u64(7) + b"\x01\x00",
        ),
        (Set("/a", b"", None), b"\x01\x02" + u32(2) + b"/a" + u32(0) + b"\x00"),
        (OpenSession(2.5), b"\x01\x05" + struct.pack("<d", 2.5)),
        (ExpireSession(3), b"\x01\x07" + u64(3)),
        (
            ClientRequest(3, 9, 8, Delete("/a/b", 2, True)),
            b"\x01\x0a"
            + u64(3)
            + u64(9)
            + u64(8)
            + b"\x03"
            + u32(4)
            + b"/a/b"
            + b"\x01"
            + u64(2)
            + b"\x01",
        ),
        (
            Txn((Compare.version("/a", "==", 1),), (GetOp("/a"),), (), None),
            b"\x01\x04\x00"
            + u32(1)
            + u32(2)
            + b"/a\x02\x01\x02"
            + u64(1)
            + u32(1)
            + b"\x04"
            + u32(2)
            + b"/a"
            + u32(0),
        ),
    ],
)
def test_command_encodings_are_pinned(command: Command, encoding: bytes) -> None:
    assert encode_command(command) == encoding
    assert decode_command(encoding) == command


def test_result_encodings_are_pinned() -> None:
    node = Node("/a", b"v", 1, 2, 1, None, 3)
    assert encode_result(node) == (
        b"\x01\x02" + u32(2) + b"/a" + u32(1) + b"v" + u64(1) + u64(2) + u64(1) + b"\x00" + u64(3)
    )
    assert encode_result(CompactedError("gone", 5)) == (
        b"\x01\x06" + struct.pack("<H", 12) + u32(4) + b"gone" + struct.pack("<q", 5)
    )
    assert encode_result(None) == b"\x01\x00"


# -- what cannot be encoded -------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        Compact(2**63),
        CloseSession(-1),
        Create("/a", "text", None),  # type: ignore[arg-type]
        Create("/\udc80", b""),
        Set("/a", b"", True),  # type: ignore[arg-type]
        ClientRequest(1, 1, 1, ClientRequest(1, 1, 1, Delete("/a"))),  # type: ignore[arg-type]
        ClientRequest(1, 1, 1, OpenSession(1.0)),  # type: ignore[arg-type]
        Txn((Compare("/a", "nope", "==", 1),)),  # type: ignore[arg-type]
        "Create('/a')",
    ],
)
def test_an_unencodable_command_raises_invalid_argument(command: Command) -> None:
    with pytest.raises(InvalidArgumentError):
        encode_command(command)


@pytest.mark.parametrize("result", [True, 1.5, ValueError("x"), ["a", 1], 2**64, {"a": 1}])
def test_an_unencodable_result_raises_invalid_argument(result: object) -> None:
    with pytest.raises(InvalidArgumentError):
        encode_result(result)


def test_wrong_type_is_an_invalid_argument() -> None:
    with pytest.raises(WrongTypeError):
        decode_command("not bytes")  # type: ignore[arg-type]


# -- malformed input: one error, always ------------------------------------------


def decodes_or_refuses(decode: Callable[[bytes], object], data: bytes) -> None:
    """Decoding either succeeds or raises InvalidArgumentError; anything else fails the test."""
    with contextlib.suppress(InvalidArgumentError):
        decode(data)


@given(st.binary(max_size=200))
@FUZZ
@example(b"")
@example(b"\x01")
@example(b"\x02\x01")
@example(b"\x01\x0a" + u64(1) * 3 + b"\x0a")
@example(b"\x01\x01" + u32(2**32 - 1))
@example(b"\x01\x01" + u32(1) + b"\xff" + u32(0) + b"\x00\x00\x00")
def test_random_bytes_decode_or_raise_invalid_argument(data: bytes) -> None:
    decodes_or_refuses(decode_command, data)
    decodes_or_refuses(decode_result, data)


@given(commands, st.data())
@FUZZ
def test_a_damaged_command_decodes_or_raises_invalid_argument(
    command: Command, data: st.DataObject
) -> None:
    for damaged in damage(encode_command(command), data):
        decodes_or_refuses(decode_command, damaged)


@given(results | errors, st.data())
@FUZZ
def test_a_damaged_result_decodes_or_raises_invalid_argument(
    result: object, data: st.DataObject
) -> None:
    for damaged in damage(encode_result(result), data):
        decodes_or_refuses(decode_result, damaged)


def damage(encoded: bytes, data: st.DataObject) -> list[bytes]:
    """The encoding truncated, extended, and with one byte changed."""
    cut = data.draw(st.integers(0, len(encoded) - 1))
    spot = data.draw(st.integers(0, len(encoded) - 1))
    byte = data.draw(st.integers(0, 255))
    changed = encoded[:spot] + bytes([byte]) + encoded[spot + 1 :]
    return [encoded[:cut], encoded + data.draw(st.binary(min_size=1, max_size=8)), changed]


def test_truncated_encodings_all_raise_invalid_argument() -> None:
    command = ClientRequest(1, 2, 1, Txn((Compare.exists("/a"),), (CreateOp("/a/b", b"x"),)))
    encoded = encode_command(command)
    for cut in range(len(encoded)):
        with pytest.raises(InvalidArgumentError):
            decode_command(encoded[:cut])
    result = encode_result(TxnResult(True, 4, (Node("/a", b"x", 1, 1, 0), None)))
    for cut in range(len(result)):
        with pytest.raises(InvalidArgumentError):
            decode_result(result[:cut])


@given(st.binary(max_size=100))
@FUZZ
def test_a_garbage_log_entry_is_answered_with_an_error_and_changes_nothing(data: bytes) -> None:
    store = Store()
    store.apply(Create("/a", b"x"))
    snapshot = store.snapshot()
    before = state_of(store)
    try:
        command = decode_command(data)
    except InvalidArgumentError as exc:
        assert same_error(decode_result(store.apply_entry(data)), exc)
        assert state_of(store) == before
    else:  # a valid command after all: apply_entry answers what apply would
        twin = Store.restore(snapshot)
        try:
            expected = encode_result(twin.apply(command))
        except CoordkitError as exc:
            expected = encode_result(exc)
        assert store.apply_entry(data) == expected


# -- apply answers every command ----------------------------------------------------


def populated() -> Store:
    store = Store()
    sid = store.apply(OpenSession(1.0))
    store.apply(Create("/a/b", b"x", make_parents=True))
    store.apply(Create("/a/q-", b"", sid, sequential=True))
    return store


@given(commands)
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_command_is_answered_and_a_refused_one_changes_nothing(command: Command) -> None:
    """Whatever the fields hold, ``apply_entry`` answers with a result or an encoded error."""
    store = populated()
    snapshot = store.snapshot()
    before = state_of(store)
    reply = store.apply_entry(encode_command(command))
    outcome = decode_result(reply)
    if isinstance(outcome, CoordkitError) and not isinstance(command, ClientRequest):
        assert state_of(store) == before
    # apply() agrees with apply_entry() on a fresh copy
    twin = Store.restore(snapshot)
    try:
        assert twin.apply(command) == outcome
    except CoordkitError as exc:
        assert type(exc) is type(outcome) and str(exc) == str(outcome)
