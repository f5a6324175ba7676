"""The binary encoding of commands: what a Raft log entry carries.

Layout: one byte of format version (:data:`COMMAND_FORMAT`), one byte of
command tag (:data:`~.commands.COMMAND_TAGS`), then the command's fields in
declaration order, each in the fixed-width form of :mod:`.wire` (values are
raw bytes, never base64). A :class:`ClientRequest` carries its inner command
as a tag and fields, without a second version byte. docs/store.md lists
every field.

:func:`decode_command` raises :class:`~coordkit.errors.InvalidArgumentError`
for any input that is not exactly one well-formed command, and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coordkit.errors import InvalidArgumentError, WrongTypeError
from coordkit.txn import Compare, CompareOp, CompareTarget, CreateOp, DeleteOp, GetOp, Op, SetOp

from .commands import (
    COMMAND_TAGS,
    ClientRequest,
    CloseSession,
    Command,
    Compact,
    Configure,
    Create,
    Delete,
    ExpireSession,
    OpenSession,
    RequestCommand,
    Set,
    Txn,
)
from .wire import Reader, Writer

__all__ = ["COMMAND_FORMAT", "decode_command", "encode_command"]

#: The version of this layout; a decoder refuses any other.
COMMAND_FORMAT = 1

_TARGETS = {
    CompareTarget.EXISTS: 1,
    CompareTarget.VERSION: 2,
    CompareTarget.CREATE_REVISION: 3,
    CompareTarget.MOD_REVISION: 4,
    CompareTarget.VALUE: 5,
}
_OPERATORS = {CompareOp.EQ: 1, CompareOp.NE: 2, CompareOp.LT: 3, CompareOp.GT: 4}
_TARGETS_BY_TAG = {tag: target for target, tag in _TARGETS.items()}
_OPERATORS_BY_TAG = {tag: op for op, tag in _OPERATORS.items()}
# The kind of a compare's value.
_BOOL, _INT, _BYTES = 1, 2, 3
# The kind of a transaction op.
_OP_TAGS: dict[type[Any], int] = {CreateOp: 1, SetOp: 2, DeleteOp: 3, GetOp: 4}


# -- encoding --------------------------------------------------------------------


def encode_command(command: Command) -> bytes:
    """Serialise a command to bytes (what a Raft log entry carries).

    Raises InvalidArgumentError (or its WrongTypeError) for a command whose
    fields cannot be represented: a wrong type, an integer outside 64 bits.
    """
    out = Writer()
    out.u8(COMMAND_FORMAT)
    try:
        _write_command(out, command, nested=False)
    except InvalidArgumentError:
        raise
    except (KeyError, TypeError, ValueError) as exc:  # e.g. a compare with a foreign operator
        raise InvalidArgumentError(f"cannot encode {command!r}: {exc}") from exc
    return out.getvalue()


def _write_command(out: Writer, cmd: Command, *, nested: bool) -> None:
    tag = COMMAND_TAGS.get(type(cmd))
    if tag is None:
        raise WrongTypeError(f"not a store command: {cmd!r}")
    out.u8(tag)
    if isinstance(cmd, Create):
        out.text(cmd.path)
        out.blob(cmd.value)
        out.opt_u64(cmd.session_id)
        out.boolean(cmd.sequential)
        out.boolean(cmd.make_parents)
    elif isinstance(cmd, Set):
        out.text(cmd.path)
        out.blob(cmd.value)
        out.opt_i64(cmd.version)
    elif isinstance(cmd, Delete):
        out.text(cmd.path)
        out.opt_i64(cmd.version)
        out.boolean(cmd.recursive)
    elif isinstance(cmd, Txn):
        _write_txn(out, cmd)
    elif isinstance(cmd, OpenSession):
        out.f64(cmd.ttl)
    elif isinstance(cmd, CloseSession | ExpireSession):
        out.u64(cmd.session_id)
    elif isinstance(cmd, Compact):
        out.i64(cmd.revision)
    elif isinstance(cmd, Configure):
        out.opt_u64(cmd.max_history)
        out.opt_u64(cmd.max_session_results)
        out.opt_u64(cmd.max_value_bytes)
    else:
        if nested or not isinstance(cmd.command, RequestCommand):
            raise WrongTypeError(f"a ClientRequest cannot carry {type(cmd.command).__name__}")
        out.u64(cmd.session_id)
        out.u64(cmd.seq)
        out.u64(cmd.lowest_unacked)
        _write_command(out, cmd.command, nested=True)


def _write_txn(out: Writer, txn: Txn) -> None:
    out.opt_u64(txn.session_id)
    out.u32(len(txn.compares))
    for cmp in txn.compares:
        if not isinstance(cmp, Compare):
            raise WrongTypeError(f"not a Compare: {cmp!r}")
        out.text(cmp.path)
        out.u8(_TARGETS[CompareTarget(cmp.target)])
        out.u8(_OPERATORS[CompareOp(cmp.op)])
        value = cmp.value
        if isinstance(value, bool):
            out.u8(_BOOL)
            out.boolean(value)
        elif isinstance(value, int):
            out.u8(_INT)
            out.i64(value)
        else:
            out.u8(_BYTES)
            out.blob(value)
    for ops in (txn.success, txn.failure):
        out.u32(len(ops))
        for op in ops:
            _write_op(out, op)


def _write_op(out: Writer, op: Op) -> None:
    tag = _OP_TAGS.get(type(op))
    if tag is None:
        raise WrongTypeError(f"not a txn op: {op!r}")
    out.u8(tag)
    out.text(op.path)
    if isinstance(op, CreateOp):
        out.blob(op.value)
        out.boolean(op.ephemeral)
        out.boolean(op.sequential)
    elif isinstance(op, SetOp):
        out.blob(op.value)
        out.opt_i64(op.version)
    elif isinstance(op, DeleteOp):
        out.opt_i64(op.version)


# -- decoding --------------------------------------------------------------------


def decode_command(data: bytes) -> Command:
    """The inverse of :func:`encode_command`; malformed input raises InvalidArgumentError."""
    source = Reader(data, "command")
    version = source.u8()
    if version != COMMAND_FORMAT:
        raise source.fail(f"format version {version}; this store reads {COMMAND_FORMAT}")
    command = _read_command(source, nested=False)
    source.end()
    return command


def _read_command(source: Reader, *, nested: bool) -> Command:
    tag = source.u8()
    reader = _READERS.get(tag)
    if reader is None:
        raise source.fail(f"unknown command tag {tag}")
    if nested and tag == COMMAND_TAGS[ClientRequest]:
        raise source.fail("a ClientRequest cannot carry another ClientRequest")
    return reader(source)


def _read_create(source: Reader) -> Create:
    return Create(
        source.text(), source.blob(), source.opt_u64(), source.boolean(), source.boolean()
    )


def _read_set(source: Reader) -> Set:
    return Set(source.text(), source.blob(), source.opt_i64())


def _read_delete(source: Reader) -> Delete:
    return Delete(source.text(), source.opt_i64(), source.boolean())


def _read_txn(source: Reader) -> Txn:
    session_id = source.opt_u64()
    compares = tuple(_read_compare(source) for _ in range(source.u32()))
    success = tuple(_read_op(source) for _ in range(source.u32()))
    failure = tuple(_read_op(source) for _ in range(source.u32()))
    return Txn(compares, success, failure, session_id)


def _read_compare(source: Reader) -> Compare:
    path = source.text()
    target = _TARGETS_BY_TAG.get(source.u8())
    op = _OPERATORS_BY_TAG.get(source.u8())
    if target is None or op is None:
        raise source.fail("unknown compare target or operator")
    kind = source.u8()
    value: int | bytes | bool
    if kind == _BOOL:
        value = source.boolean()
    elif kind == _INT:
        value = source.i64()
    elif kind == _BYTES:
        value = source.blob()
    else:
        raise source.fail(f"unknown compare value kind {kind}")
    return Compare(path, target, op, value)


def _read_op(source: Reader) -> Op:
    tag = source.u8()
    if tag == 1:
        return CreateOp(source.text(), source.blob(), source.boolean(), source.boolean())
    if tag == 2:
        return SetOp(source.text(), source.blob(), source.opt_i64())
    if tag == 3:
        return DeleteOp(source.text(), source.opt_i64())
    if tag == 4:
        return GetOp(source.text())
    raise source.fail(f"unknown txn op tag {tag}")


def _read_client_request(source: Reader) -> ClientRequest:
    session_id, seq, lowest_unacked = source.u64(), source.u64(), source.u64()
    inner = _read_command(source, nested=True)
    if not isinstance(inner, RequestCommand):
        raise source.fail(f"a ClientRequest cannot carry {type(inner).__name__}")
    return ClientRequest(session_id, seq, lowest_unacked, inner)


_READERS: dict[int, Callable[[Reader], Command]] = {
    COMMAND_TAGS[Create]: _read_create,
    COMMAND_TAGS[Set]: _read_set,
    COMMAND_TAGS[Delete]: _read_delete,
    COMMAND_TAGS[Txn]: _read_txn,
    COMMAND_TAGS[OpenSession]: lambda source: OpenSession(source.f64()),
    COMMAND_TAGS[CloseSession]: lambda source: CloseSession(source.u64()),
    COMMAND_TAGS[ExpireSession]: lambda source: ExpireSession(source.u64()),
    COMMAND_TAGS[Compact]: lambda source: Compact(source.i64()),
    COMMAND_TAGS[Configure]: lambda source: Configure(
        source.opt_u64(), source.opt_u64(), source.opt_u64()
    ),
    COMMAND_TAGS[ClientRequest]: _read_client_request,
}

assert set(_READERS) == set(COMMAND_TAGS.values())  # every tag decodes
