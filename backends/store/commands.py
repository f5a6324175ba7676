"""The commands of the store: plain, immutable data, and their wire encoding.

A command is what a Raft log entry carries; :meth:`Store.apply` is a pure
function of the store and the command.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, fields
from typing import Any

import orjson

from coordkit.errors import InvalidArgumentError
from coordkit.txn import Compare, CompareOp, CompareTarget, CreateOp, DeleteOp, GetOp, Op, SetOp

__all__ = [
    "CloseSession",
    "Command",
    "Compact",
    "Create",
    "Delete",
    "ExpireSession",
    "ExpireSessions",
    "KeepAlive",
    "OpenSession",
    "Set",
    "Txn",
    "decode_command",
    "encode_command",
]


@dataclass(frozen=True, slots=True)
class Create:
    path: str
    value: bytes = b""
    session_id: int | None = None  # set: the node is ephemeral, owned by this session
    sequential: bool = False
    make_parents: bool = False


@dataclass(frozen=True, slots=True)
class Set:
    path: str
    value: bytes
    version: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    path: str
    version: int | None = None
    recursive: bool = False


@dataclass(frozen=True, slots=True)
class Txn:
    compares: tuple[Compare, ...] = ()
    success: tuple[Op, ...] = ()
    failure: tuple[Op, ...] = ()
    session_id: int | None = None  # owner of ephemeral creates in the txn


@dataclass(frozen=True, slots=True)
class OpenSession:
    ttl: float
    now: float


@dataclass(frozen=True, slots=True)
class KeepAlive:
    session_id: int
    now: float


@dataclass(frozen=True, slots=True)
class CloseSession:
    """End a session at the client's request: its ephemeral nodes go in one revision."""

    session_id: int


@dataclass(frozen=True, slots=True)
class ExpireSession:
    """End one session as if its TTL ran out (fault injection; same effect as Close)."""

    session_id: int


@dataclass(frozen=True, slots=True)
class ExpireSessions:
    """Expire every session whose deadline is <= ``now``; result: their ids."""

    now: float


@dataclass(frozen=True, slots=True)
class Compact:
    """Forget watch history below ``revision``."""

    revision: int


Command = (
    Create
    | Set
    | Delete
    | Txn
    | OpenSession
    | KeepAlive
    | CloseSession
    | ExpireSession
    | ExpireSessions
    | Compact
)

_COMMAND_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        Create,
        Set,
        Delete,
        Txn,
        OpenSession,
        KeepAlive,
        CloseSession,
        ExpireSession,
        ExpireSessions,
        Compact,
        Compare,
        CreateOp,
        SetOp,
        DeleteOp,
        GetOp,
    )
}


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return {"$b": base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, CompareTarget | CompareOp):
        return obj.value
    if isinstance(obj, tuple | list):
        return [_to_plain(x) for x in obj]
    name = type(obj).__name__
    if name in _COMMAND_TYPES:
        return {"$t": name, **{f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}}
    return obj


def _from_plain(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_from_plain(x) for x in obj)
    if isinstance(obj, dict):
        if "$b" in obj:
            return base64.b64decode(obj["$b"])
        cls = _COMMAND_TYPES.get(obj.get("$t", ""))
        if cls is None:
            raise InvalidArgumentError(f"unknown command type {obj.get('$t')!r}")
        kwargs = {k: _from_plain(v) for k, v in obj.items() if k != "$t"}
        if cls is Compare:
            kwargs["target"] = CompareTarget(kwargs["target"])
            kwargs["op"] = CompareOp(kwargs["op"])
        return cls(**kwargs)
    return obj


def encode_command(command: Command) -> bytes:
    """Serialise a command to bytes (what a Raft log entry carries)."""
    return orjson.dumps(_to_plain(command))


def decode_command(data: bytes) -> Command:
    """The inverse of :func:`encode_command`; malformed input raises InvalidArgumentError."""
    try:
        cmd = _from_plain(orjson.loads(data))
    except (orjson.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
        raise InvalidArgumentError(f"malformed command: {exc}") from exc
    if not isinstance(cmd, Command):
        raise InvalidArgumentError("malformed command: not a command")
    return cmd
