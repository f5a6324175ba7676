"""The client protocol of a Raft node: requests, responses and watch events.

Spoken over the node's one port after a ``client`` hello (see :mod:`.wire`):
every message is one frame, an orjson header and a raw payload. The client
numbers its requests (``i``) and may have many in flight on one connection;
responses carry the same number and may come in any order.

Requests (header ``t="q"``), by ``op``:

* ``open`` ``{ttl}`` -> ``{sid}``: a new session (through the Raft log);
* ``ka`` ``{sid}``: keep a session alive (leader only, not replicated);
* ``w`` ``{sid, seq, una}`` + an encoded store command: a write, applied
  exactly once per ``(sid, seq)`` however often it is retried (``una``: the
  lowest sequence number the client still waits for; results below it are
  forgotten);
* ``r`` ``{k: get|children|exists, p, c}``: a read, linearizable (ReadIndex)
  unless ``c`` is false;
* ``watch`` ``{p, rec, from}`` -> ``{w, rev}``, then event frames ``t="e"``;
  ``unwatch`` ``{w}``;
* ``status``; and the operator's ``member.add``, ``member.remove``,
  ``transfer``, ``snapshot``, ``fault``.

Responses (``t="r"``) carry a status ``s``: ``ok`` (the payload is an encoded
store result, which may itself be a data-model error such as
``NodeExistsError``) or a reason the request did not run here: ``redirect``
(with the leader's name and address, when known), ``busy`` (proposal queue
full: retry later), ``unavailable`` (no leader), ``expired`` (session gone),
``invalid`` (malformed request; never retried).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from typing import Any

import orjson

from coordkit.errors import InvalidArgumentError
from coordkit.model import Event, EventType, Node

__all__ = [
    "PROTOCOL_VERSION",
    "Op",
    "Status",
    "decode_events",
    "encode_events",
]

PROTOCOL_VERSION = 1


class Op(enum.StrEnum):
    OPEN_SESSION = "open"
    KEEPALIVE = "ka"
    CLOSE_SESSION = "close"
    EXPIRE_SESSION = "expire"
    WRITE = "w"
    READ = "r"
    WATCH = "watch"
    UNWATCH = "unwatch"
    STATUS = "status"
    MEMBER_ADD = "member.add"
    MEMBER_REMOVE = "member.remove"
    TRANSFER = "transfer"
    SNAPSHOT = "snapshot"
    COMPACT = "compact"
    FAULT = "fault"


class Status(enum.StrEnum):
    OK = "ok"
    REDIRECT = "redirect"
    BUSY = "busy"
    UNAVAILABLE = "unavailable"
    EXPIRED = "expired"
    INVALID = "invalid"


# -- watch events: a compact binary list ------------------------------------------
#
# u32 count, then per event: u8 type, u64 revision, u16 path length, path,
# u8 has_node, and if so: u64 create_revision, u64 mod_revision, u32 version,
# i64 owner (-1: none), u32 num_children, u32 value length, value.

_TYPES = {EventType.CREATED: 0, EventType.UPDATED: 1, EventType.DELETED: 2}
_TYPE_OF = {v: k for k, v in _TYPES.items()}
_HEAD = struct.Struct(">BQH")
_NODE = struct.Struct(">QQIqII")
_COUNT = struct.Struct(">I")


def encode_events(events: Sequence[Event]) -> bytes:
    """Events (all of one watch) as bytes; the inverse of :func:`decode_events`."""
    parts: list[bytes] = [_COUNT.pack(len(events))]
    for ev in events:
        path = ev.path.encode()
        parts.append(_HEAD.pack(_TYPES[ev.type], ev.revision, len(path)))
        parts.append(path)
        node = ev.node
        if node is None:
            parts.append(b"\x00")
            continue
        owner = -1 if node.ephemeral_owner is None else node.ephemeral_owner
        parts.append(b"\x01")
        parts.append(
            _NODE.pack(
                node.create_revision,
                node.mod_revision,
                node.version,
                owner,
                node.num_children,
                len(node.value),
            )
        )
        parts.append(node.value)
    return b"".join(parts)


def decode_events(data: bytes) -> list[Event]:
    """Decode :func:`encode_events` output; malformed input raises InvalidArgumentError."""
    try:
        view = memoryview(data)
        (count,) = _COUNT.unpack_from(view, 0)
        at = _COUNT.size
        out: list[Event] = []
        for _ in range(count):
            kind, revision, plen = _HEAD.unpack_from(view, at)
            at += _HEAD.size
            path = bytes(view[at : at + plen]).decode()
            at += plen
            has_node = view[at]
            at += 1
            node: Node | None = None
            if has_node:
                crev, mrev, version, owner, nkids, vlen = _NODE.unpack_from(view, at)
                at += _NODE.size
                value = bytes(view[at : at + vlen])
                if len(value) != vlen:
                    raise ValueError("truncated value")
                at += vlen
                node = Node(path, value, crev, mrev, version, None if owner < 0 else owner, nkids)
            out.append(Event(_TYPE_OF[kind], path, node, revision))
        if at != len(view):
            raise ValueError("trailing bytes")
        return out
    except (struct.error, KeyError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"malformed watch events: {exc}") from exc


def header(**fields: Any) -> dict[str, Any]:
    """A frame header (a helper so both sides spell keys alike)."""
    return fields


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)
