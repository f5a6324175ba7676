"""Raft messages as frames, and the other frames peers exchange.

A :class:`~coordkit.backends.raft.core.messages.Message` is one frame: its
scalar fields in the header under compact keys (a field at its default is
left out), the bytes (context, entry data, snapshot data) concatenated raw in
the payload, their lengths in the header. No base64, no JSON of payload bytes.

=====  ===========================================================
key    field
=====  ===========================================================
``t``  message type (``MessageType.value``)
``f``  ``frm``; ``o``: ``to``
``T``  ``term``; ``lt``: ``log_term``; ``i``: ``index``; ``c``: ``commit``
``rj`` ``reject`` (only when true); ``rh``: ``reject_hint``
``cx`` length of ``context`` (first in the payload)
``e``  entries, flat: ``[term, index, kind, length, term, index, ...]``
``s``  snapshot: ``[index, term, [voters], [learners], length]``
``sid`` present on the first frame of a streamed snapshot (see below)
=====  ===========================================================

Payload: context, then each entry's data in order, then the snapshot data.
Decoding checks every field's type and that the lengths add up to exactly the
payload: anything else is a :class:`~coordkit.backends.raft.wire.FrameError`.

A streamed snapshot is a ``SNAP`` message frame carrying ``sid`` (a stream id
unique on its connection) and no snapshot data, then ``snap-chunk`` frames
``{"t": "snap-chunk", "sid": n}`` with the data as payload, then
``{"t": "snap-end", "sid": n, "ok": bool}`` (``ok`` false: the sender gave up).
``{"t": "ping"}`` keeps an otherwise silent connection alive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.messages import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from ..wire import Frame, FrameError, encode_frame

__all__ = [
    "PING",
    "PeerFrame",
    "Ping",
    "SnapshotChunk",
    "SnapshotEnd",
    "SnapshotStart",
    "decode",
    "decode_message",
    "encode_message",
    "encode_snapshot_chunk",
    "encode_snapshot_end",
    "encode_snapshot_start",
]

_TYPES = {t.value: t for t in MessageType}
_KIND_OF = {EntryType.NORMAL: 0, EntryType.CONF_CHANGE: 1, EntryType.NOOP: 2}
_KINDS = tuple(_KIND_OF)  # index -> EntryType, in code order

CHUNK = "snap-chunk"
END = "snap-end"


@dataclass(frozen=True, slots=True)
class Ping:
    """A keepalive: says only that the connection is alive."""


@dataclass(frozen=True, slots=True)
class SnapshotStart:
    """The first frame of a streamed snapshot: the SNAP message, its data still to come."""

    stream: int
    message: Message


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    stream: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SnapshotEnd:
    """The last frame of a streamed snapshot; ``ok`` false if the sender gave up."""

    stream: int
    ok: bool


PeerFrame = Message | SnapshotStart | SnapshotChunk | SnapshotEnd | Ping

#: The encoded keepalive frame (constant).
PING = encode_frame({"t": "ping"})


def encode_message(m: Message, *, stream: int | None = None) -> bytes:
    """The frame of ``m``; with ``stream``, the start of a streamed snapshot (data left out)."""
    h: dict[str, Any] = {"t": m.type.value, "f": m.frm, "o": m.to}
    if m.term:
        h["T"] = m.term
    if m.log_term:
        h["lt"] = m.log_term
    if m.index:
        h["i"] = m.index
    if m.commit:
        h["c"] = m.commit
    if m.reject:
        h["rj"] = True
    if m.reject_hint:
        h["rh"] = m.reject_hint
    parts: list[bytes] = []
    if m.context:
        h["cx"] = len(m.context)
        parts.append(m.context)
    if m.entries:
        flat: list[int] = []
        for e in m.entries:
            flat += (e.term, e.index, _KIND_OF[e.type], len(e.data))
            parts.append(e.data)
        h["e"] = flat
    snap = m.snapshot
    if snap is not None:
        meta = snap.meta
        data = b"" if stream is not None else snap.data
        conf = meta.conf
        h["s"] = [meta.index, meta.term, list(conf.voters), list(conf.learners), len(data)]
        parts.append(data)
    if stream is not None:
        if m.type is not MessageType.SNAP or snap is None:
            raise ValueError("only a SNAP message with a snapshot can be streamed")
        h["sid"] = stream
    return encode_frame(h, *parts)


def encode_snapshot_start(m: Message, stream: int) -> bytes:
    return encode_message(m, stream=stream)


def encode_snapshot_chunk(stream: int, data: bytes) -> bytes:
    return encode_frame({"t": CHUNK, "sid": stream}, data)


def encode_snapshot_end(stream: int, ok: bool) -> bytes:
    return encode_frame({"t": END, "sid": stream, "ok": ok})


def decode(frame: Frame) -> PeerFrame:
    """Any frame a peer may send after the handshake; FrameError for anything else."""
    kind = frame.header.get("t")
    if kind == CHUNK:
        return SnapshotChunk(_stream_id(frame.header), frame.payload)
    if kind == END:
        ok = frame.header.get("ok")
        if not isinstance(ok, bool):
            raise FrameError(f"snapshot end without a boolean 'ok': {ok!r}")
        return SnapshotEnd(_stream_id(frame.header), ok)
    if kind == "ping":
        return Ping()
    message = decode_message(frame)
    if "sid" in frame.header:
        if message.type is not MessageType.SNAP or message.snapshot is None:
            raise FrameError(f"a {message.type.value} message cannot start a snapshot stream")
        if message.snapshot.data:
            raise FrameError("a streamed snapshot carries its data in chunks, not inline")
        return SnapshotStart(_stream_id(frame.header), message)
    return message


_SCALARS = ("T", "lt", "i", "c", "rh", "cx")


def decode_message(frame: Frame) -> Message:
    """The Message in ``frame``; FrameError names the first thing wrong with it."""
    h = frame.header
    get = h.get
    tag = get("t")
    mtype = _TYPES.get(tag) if isinstance(tag, str) else None
    if mtype is None:
        raise FrameError(f"unknown message type {tag!r}")
    kind = mtype.value
    frm, to = get("f"), get("o")
    if type(frm) is not str or not frm or type(to) is not str or not to:
        raise FrameError(f"{kind} message without sender/recipient ids")
    reject = get("rj", False)
    if type(reject) is not bool:
        raise FrameError(f"{kind} message with a non-boolean reject flag")
    term, log_term, index, commit, hint, cx = scalars = [get(key, 0) for key in _SCALARS]
    for key, value in zip(_SCALARS, scalars, strict=True):
        if type(value) is not int or value < 0:
            raise FrameError(f"field {key!r} is not a non-negative integer: {value!r}")
    payload = frame.payload
    size = len(payload)
    if cx > size:
        raise FrameError(f"{kind} message: lengths exceed its {size}-byte payload")
    context, pos = payload[:cx], cx
    entries: tuple[Entry, ...] = ()
    flat = get("e")
    if flat is not None:
        if type(flat) is not list or len(flat) % 4:
            raise FrameError(f"{kind} message: entries are not a flat list of 4-tuples")
        out = []
        for k in range(0, len(flat), 4):
            e_term, e_index, code, length = flat[k : k + 4]
            if not (_is_uint(e_term) and _is_uint(e_index) and _is_uint(length)):
                raise FrameError(f"{kind} message: entry {k // 4} has a bad term/index/length")
            if type(code) is not int or not 0 <= code < len(_KINDS):
                raise FrameError(f"{kind} message: entry {k // 4} has an unknown type {code!r}")
            end = pos + length
            if end > size:
                raise FrameError(f"{kind} message: lengths exceed its {size}-byte payload")
            out.append(Entry(e_term, e_index, _KINDS[code], payload[pos:end]))
            pos = end
        entries = tuple(out)
    snapshot = None
    raw = get("s")
    if raw is not None:
        snapshot, pos = _snapshot(kind, raw, payload, pos)
    if pos != size:
        raise FrameError(f"{kind} message: {size - pos} payload bytes left over")
    return Message(
        mtype,
        frm,
        to,
        term=term,
        log_term=log_term,
        index=index,
        entries=entries,
        commit=commit,
        reject=reject,
        reject_hint=hint,
        snapshot=snapshot,
        context=context,
    )


def _snapshot(kind: str, raw: object, payload: bytes, pos: int) -> tuple[Snapshot, int]:
    if type(raw) is not list or len(raw) != 5:
        raise FrameError(f"{kind} message: snapshot is not [index, term, voters, learners, size]")
    index, term, voters, learners, size = raw
    if not (_is_uint(index) and _is_uint(term) and _is_uint(size)):
        raise FrameError(f"{kind} message: snapshot with a bad index/term/length")
    for ids in (voters, learners):
        if type(ids) is not list or not all(type(i) is str and i for i in ids):
            raise FrameError(f"{kind} message: snapshot configuration is not a list of ids")
    end = pos + size
    if end > len(payload):
        raise FrameError(f"{kind} message: lengths exceed its {len(payload)}-byte payload")
    conf = ConfState.of(voters, learners)
    return Snapshot(SnapshotMeta(index, term, conf), payload[pos:end]), end


def _is_uint(value: object) -> bool:
    return type(value) is int and value >= 0


def _uint(h: dict[str, Any], key: str) -> int:
    value = h.get(key, 0)
    if type(value) is not int or value < 0:
        raise FrameError(f"field {key!r} is not a non-negative integer: {value!r}")
    return value


def _stream_id(h: dict[str, Any]) -> int:
    value = h.get("sid")
    if type(value) is not int or value < 0:
        raise FrameError(f"snapshot stream id is not a non-negative integer: {value!r}")
    return value
