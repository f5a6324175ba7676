"""The binary encoding of results and errors: what a server replies, what the dedup table keeps.

Layout: one byte of format version (:data:`RESULT_FORMAT`), one byte of kind,
then the payload:

======  =========  ===========================================================
kind    result     payload
======  =========  ===========================================================
0       ``None``   nothing
1       ``int``    i64 (a session id, an oldest revision)
2       Node       the node (see :func:`write_node`)
3       paths      u32 count, then each path (``list[str]``; the empty list too)
4       TxnResult  succeeded, i64 revision, u32 count, then each result: a
                   presence byte and the node
5       ints       u32 count, then each i64 (``list[int]``, non-empty)
6       error      u16 error tag (:data:`ERROR_TAGS`), message, and for
                   CompactedError the i64 ``compact_revision``
======  =========  ===========================================================

An error decodes to the class of its tag with the same message (``str``); a
CoordkitError subclass without a tag of its own travels as its nearest tagged
ancestor. :func:`decode_result` raises InvalidArgumentError for malformed
input and nothing else.
"""

from __future__ import annotations

from typing import Any

from coordkit.errors import (
    BadVersionError,
    ClientClosedError,
    CompactedError,
    ConfigurationError,
    ConnectionLostError,
    CoordkitError,
    InvalidArgumentError,
    InvalidPathError,
    LockLostError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    OperationTimeoutError,
    RecipeStateError,
    SessionExpiredError,
    UnsupportedError,
    ValueTooLargeError,
    WrongTypeError,
)
from coordkit.model import Node
from coordkit.txn import TxnResult

from .wire import Reader, Writer

__all__ = [
    "ERROR_TAGS",
    "RESULT_FORMAT",
    "decode_result",
    "encode_result",
    "read_node",
    "unwrap_result",
    "write_node",
]

#: The version of this layout; a decoder refuses any other.
RESULT_FORMAT = 1

_NONE, _INT, _NODE, _PATHS, _TXN, _INTS, _ERROR = range(7)

#: Stable wire numbers of the errors. Never reuse or renumber.
ERROR_TAGS: dict[type[CoordkitError], int] = {
    CoordkitError: 1,
    InvalidArgumentError: 2,
    WrongTypeError: 3,
    InvalidPathError: 4,
    ValueTooLargeError: 5,
    ConfigurationError: 6,
    NodeExistsError: 7,
    NoNodeError: 8,
    BadVersionError: 9,
    NotEmptyError: 10,
    NoChildrenForEphemeralsError: 11,
    CompactedError: 12,
    UnsupportedError: 13,
    SessionExpiredError: 14,
    ConnectionLostError: 15,
    OperationTimeoutError: 16,
    ClientClosedError: 17,
    LockLostError: 18,
    RecipeStateError: 19,
}
_ERRORS_BY_TAG = {tag: cls for cls, tag in ERROR_TAGS.items()}


def write_node(out: Writer, node: Node) -> None:
    """path, value, create and mod revision, version (u64), owner (optional u64), children (u64)."""
    out.text(node.path)
    out.blob(node.value)
    out.u64(node.create_revision)
    out.u64(node.mod_revision)
    out.u64(node.version)
    out.opt_u64(node.ephemeral_owner)
    out.u64(node.num_children)


def read_node(source: Reader) -> Node:
    return Node(
        source.text(),
        source.blob(),
        source.u64(),
        source.u64(),
        source.u64(),
        source.opt_u64(),
        source.u64(),
    )


def encode_result(result: object) -> bytes:
    """Serialise a store result, or a CoordkitError raised instead of one.

    Raises WrongTypeError for anything else (a bool, a foreign exception...).
    """
    out = Writer()
    out.u8(RESULT_FORMAT)
    if result is None:
        out.u8(_NONE)
    elif isinstance(result, bool):
        raise WrongTypeError("a bool is not a store result")
    elif isinstance(result, int):
        out.u8(_INT)
        out.i64(result)
    elif isinstance(result, Node):
        out.u8(_NODE)
        write_node(out, result)
    elif isinstance(result, TxnResult):
        out.u8(_TXN)
        out.boolean(result.succeeded)
        out.i64(result.revision)
        out.u32(len(result.results))
        for node in result.results:
            out.boolean(node is not None)
            if node is not None:
                write_node(out, node)
    elif isinstance(result, list) and all(isinstance(x, str) for x in result):
        out.u8(_PATHS)
        out.u32(len(result))
        for path in result:
            out.text(path)
    elif isinstance(result, list) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in result
    ):
        out.u8(_INTS)
        out.u32(len(result))
        for number in result:
            out.i64(number)
    elif isinstance(result, CoordkitError):
        _write_error(out, result)
    else:
        raise WrongTypeError(f"not a store result: {type(result).__name__}")
    return out.getvalue()


def _write_error(out: Writer, error: CoordkitError) -> None:
    cls = next(c for c in type(error).__mro__ if c in ERROR_TAGS)
    out.u8(_ERROR)
    out.u16(ERROR_TAGS[cls])
    out.text(str(error))
    if isinstance(error, CompactedError):
        out.i64(error.compact_revision)


def decode_result(data: bytes) -> Any:
    """The inverse of :func:`encode_result`: the result, or the error *instance* (not raised).

    Malformed input raises InvalidArgumentError.
    """
    source = Reader(data, "result")
    version = source.u8()
    if version != RESULT_FORMAT:
        raise source.fail(f"format version {version}; this store reads {RESULT_FORMAT}")
    kind = source.u8()
    result: Any
    if kind == _NONE:
        result = None
    elif kind == _INT:
        result = source.i64()
    elif kind == _NODE:
        result = read_node(source)
    elif kind == _TXN:
        succeeded, revision = source.boolean(), source.i64()
        nodes = tuple(read_node(source) if source.boolean() else None for _ in range(source.u32()))
        result = TxnResult(succeeded, revision, nodes)
    elif kind == _PATHS:
        result = [source.text() for _ in range(source.u32())]
    elif kind == _INTS:
        result = [source.i64() for _ in range(source.u32())]
    elif kind == _ERROR:
        result = _read_error(source)
    else:
        raise source.fail(f"unknown result kind {kind}")
    source.end()
    return result


def _read_error(source: Reader) -> CoordkitError:
    tag = source.u16()
    cls = _ERRORS_BY_TAG.get(tag)
    if cls is None:
        raise source.fail(f"unknown error tag {tag}")
    message = source.text()
    if cls is CompactedError:
        return CompactedError(message, source.i64())
    return cls(message)


def unwrap_result(data: bytes) -> Any:
    """Decode a result and return it, or raise the error it carries."""
    result = decode_result(data)
    if isinstance(result, CoordkitError):
        raise result
    return result
