"""Streaming snapshots: the whole store as a versioned binary stream, written and read in chunks.

A snapshot is consistent as of the moment :class:`SnapshotStream` is created,
even if the store applies commands while the chunks are being produced: the
store keeps, in a :class:`~.state.Capture`, the pre-image of each node record
that changes before the stream reaches it (records are immutable, so a
pre-image is a reference, not a copy). The small parts -- settings,
counters, sessions with their dedup tables, the watch history -- are copied
when the stream starts; the node paths are listed then (8 bytes a node), the
nodes themselves are read as the stream goes.

Format (all integers little-endian; docs/store.md has the full table)::

    b"CKSTORE\\0"  u16 format version (SNAPSHOT_FORMAT)
    frames: u32 length of what follows, u8 frame type, payload
      1 HEADER   revision, oldest revision, next session id, max history,
                 max session results, max value bytes           (u64 each)
      2 SESSION  id (u64), ttl (f64), lowest unacked (u64)
      3 RESULT   session id, seq (u64), encoded result (u32 length + bytes)
      4 EVENT    type (u8), path, revision (u64), node (presence byte + node)
      5 NODE     path (u32 length + UTF-8), next sequence (u64), record
                 (the rest: 32 bytes of metadata then the value; see records.py)
      6 END      nodes, sessions, results, events (u64 each), CRC-32 (u32)
                 of every byte before this frame

Frames come in that order: one HEADER, each SESSION followed by its
RESULTs, the EVENTs oldest first, the NODEs with every parent before its
children (the root first), one END.
"""

from __future__ import annotations

import math
import re
import struct
import weakref
import zlib
from collections.abc import Callable, Generator, Iterator
from typing import Generic, TypeVar

from coordkit.errors import CoordkitError, InvalidArgumentError
from coordkit.model import Event, EventType
from coordkit.paths import STORED_PATH_BYTES

from . import records
from .results import decode_result, read_node
from .state import Capture, SessionRecord, StoreState, check_int
from .wire import Reader, Writer

__all__ = ["DEFAULT_CHUNK_BYTES", "SNAPSHOT_FORMAT", "SnapshotLoader", "SnapshotStream"]

MAGIC = b"CKSTORE\x00"
SNAPSHOT_FORMAT = 1
DEFAULT_CHUNK_BYTES = 1 << 20

HEADER, SESSION, RESULT, EVENT, NODE, END = 1, 2, 3, 4, 5, 6
#: frames come in this order (a session's results right after it).
_RANK = {HEADER: 0, SESSION: 1, RESULT: 1, EVENT: 2, NODE: 3, END: 4}
_EVENT_TAGS = {EventType.CREATED: 1, EventType.UPDATED: 2, EventType.DELETED: 3}
_EVENTS_BY_TAG = {tag: kind for kind, tag in _EVENT_TAGS.items()}

_PRELUDE = MAGIC + struct.pack("<H", SNAPSHOT_FORMAT)
_FRAME = struct.Struct("<IB")  # length (type byte + payload), type
_NODE_HEAD = struct.Struct("<IBI")  # length, NODE, path length
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
#: what a path segment may not hold (the rest of the path rules hold by construction).
_BAD_SEGMENT = re.compile(r"[\x00-\x1f\x7f/]")
_END = struct.Struct("<QQQQI")
_EVENT_HEAD = struct.Struct("<BI")  # event type, path length
_EVENT_REV = struct.Struct("<QB")  # revision, node present
_NODE_META = struct.Struct("<QQQB")  # create and mod revision, version, owner present


def _frame(kind: int, payload: bytes) -> bytes:
    return _FRAME.pack(1 + len(payload), kind) + payload


def _event_frame(event: Event) -> bytes:
    """An EVENT frame, packed directly (the history is ~10,000 of them at a stream's start).

    The same bytes as a :class:`Writer` gives for: type, path, revision, a
    presence byte and :func:`~.results.write_node` of the node.
    """
    path = event.path.encode("utf-8")
    head = _EVENT_HEAD.pack(_EVENT_TAGS[event.type], len(path))
    node = event.node
    if node is None:
        parts: tuple[bytes, ...] = (head, path, _EVENT_REV.pack(event.revision, 0))
    else:
        node_path = path if node.path == event.path else node.path.encode("utf-8")
        owner = node.ephemeral_owner
        parts = (
            head,
            path,
            _EVENT_REV.pack(event.revision, 1),
            _U32.pack(len(node_path)),
            node_path,
            _U32.pack(len(node.value)),
            node.value,
            _NODE_META.pack(
                node.create_revision, node.mod_revision, node.version, owner is not None
            ),
            b"" if owner is None else _U64.pack(owner),
            _U64.pack(node.num_children),
        )
    payload = b"".join(parts)
    return _FRAME.pack(1 + len(payload), EVENT) + payload


def _release(captures: list[Capture], capture: Capture) -> None:
    if capture in captures:
        captures.remove(capture)


class SnapshotStream(Iterator[bytes]):
    """The chunks of one snapshot of ``state`` as it is now; see the module docstring.

    Every chunk but the last is exactly ``chunk_bytes`` long. The stream stops
    keeping pre-images once it has passed the last node, on :meth:`close`,
    or when it is garbage collected.
    """

    def __init__(self, state: StoreState, chunk_bytes: int) -> None:
        self._chunk_bytes = check_int("chunk_bytes", chunk_bytes, 1)
        capture = Capture(state.revision)
        state._captures.append(capture)
        self._release = weakref.finalize(self, _release, state._captures, capture)
        # What is copied now: small, or (the paths) one reference per node.
        header = Writer()
        for number in (
            state.revision,
            state.oldest_revision,
            state._next_session_id,
            state.max_history,
            state.max_session_results,
            state.max_value_bytes,
        ):
            header.u64(number)
        sessions = [
            (sid, sess.ttl, sess.lowest_unacked, sorted(sess.results.items()))
            for sid, sess in sorted(state._sessions.items())
        ]
        self._buf = bytearray()
        self._crc = 0
        self._finished = False
        self._producer = _produce(
            self._buf,
            self._chunk_bytes,
            state,
            capture,
            header.getvalue(),
            sessions,
            list(state._history),
            list(state._nodes),
        )

    def __iter__(self) -> SnapshotStream:
        return self

    def __next__(self) -> bytes:
        while len(self._buf) < self._chunk_bytes and not self._finished:
            try:
                next(self._producer)
            except StopIteration as done:
                self._release()  # past the last node: no more pre-images needed
                crc = zlib.crc32(self._buf, self._crc)
                self._buf += _frame(END, _END.pack(*done.value, crc))
                self._finished = True
        if not self._buf:
            raise StopIteration
        chunk = bytes(self._buf[: self._chunk_bytes])
        del self._buf[: self._chunk_bytes]
        self._crc = zlib.crc32(chunk, self._crc)
        return chunk

    def close(self) -> None:
        """Stop early: the store forgets this snapshot's pre-images."""
        self._release()
        self._producer.close()
        self._finished = True
        self._buf.clear()


def _produce(
    buf: bytearray,
    limit: int,
    state: StoreState,
    capture: Capture,
    header: bytes,
    sessions: list[tuple[int, float, int, list[tuple[int, bytes]]]],
    history: list[Event],
    paths: list[str],
) -> Generator[None, None, tuple[int, int, int, int]]:
    """Append every frame but END to ``buf``, pausing whenever it holds ``limit`` bytes.

    Returns the counts for the END frame: nodes, sessions, results, events.
    """
    buf += _PRELUDE
    buf += _frame(HEADER, header)
    results = 0
    for sid, ttl, lowest_unacked, table in sessions:
        out = Writer()
        out.u64(sid)
        out.f64(ttl)
        out.u64(lowest_unacked)
        buf += _frame(SESSION, out.getvalue())
        for seq, encoded in table:
            out = Writer()
            out.u64(sid)
            out.u64(seq)
            out.blob(encoded)
            buf += _frame(RESULT, out.getvalue())
            results += 1
            if len(buf) >= limit:
                yield
    for event in history:
        buf += _event_frame(event)
        if len(buf) >= limit:
            yield
    nodes, next_seq, saved = state._nodes, state._next_seq, capture.saved
    for path in paths:
        kept = saved.get(path)
        rec, seq = kept if kept is not None else (nodes[path], next_seq.get(path, 0))
        name = path.encode("utf-8")
        buf += _NODE_HEAD.pack(13 + len(name) + len(rec), NODE, len(name))
        buf += name
        buf += _U64.pack(seq)
        buf += rec
        if len(buf) >= limit:
            yield
    return len(paths), len(sessions), results, len(history)


S = TypeVar("S", bound=StoreState)


class SnapshotLoader(Generic[S]):
    """Rebuilds a state from snapshot chunks: :meth:`feed` them in order, then :meth:`finish`.

    ``new_state(max_history=..., max_session_results=..., max_value_bytes=...)``
    makes the empty state to fill. Each frame is checked as it arrives (the
    tree's shape, revisions, owners, the counts and the CRC at the end), so
    corrupt, truncated or trailing data raises InvalidArgumentError ("corrupt
    store snapshot: ...") from ``feed`` or ``finish``; the loader then
    refuses any further call.
    """

    def __init__(self, new_state: Callable[..., S]) -> None:
        self._new_state = new_state
        self._buf = bytearray()
        self._crc = 0
        self._phase = 0  # the type of the last frame read (0: none yet)
        self._state: S | None = None
        self._session: tuple[int, SessionRecord] | None = None
        self._counts = [0, 0, 0, 0]  # nodes, sessions, results, events
        self._ended = False
        self._failure: str | None = None

    def feed(self, chunk: bytes) -> None:
        self._check_usable()
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise InvalidArgumentError(f"snapshot chunks are bytes, not {type(chunk).__name__}")
        self._buf += chunk
        try:
            self._parse()
        except (CoordkitError, ValueError, struct.error) as exc:
            self._failure = f"corrupt store snapshot: {exc}"
            raise InvalidArgumentError(self._failure) from exc

    def finish(self) -> S:
        """The rebuilt state; InvalidArgumentError if the data stopped before its end."""
        self._check_usable()
        if not self._ended or self._state is None:
            self._failure = "corrupt store snapshot: truncated (no end frame)"
            raise InvalidArgumentError(self._failure)
        self._failure = "this snapshot loader has finished"
        return self._state

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise InvalidArgumentError(self._failure)

    # -- parsing -------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self._buf
        pos = 0
        if self._phase == 0:
            if len(buf) < len(_PRELUDE):
                if not _PRELUDE.startswith(bytes(buf[: len(_PRELUDE)])):
                    raise InvalidArgumentError("not a coordkit store snapshot")
                return
            if buf[: len(MAGIC)] != MAGIC:
                raise InvalidArgumentError("not a coordkit store snapshot")
            version = struct.unpack_from("<H", buf, len(MAGIC))[0]
            if version != SNAPSHOT_FORMAT:
                raise InvalidArgumentError(
                    f"snapshot format {version}; this store reads {SNAPSHOT_FORMAT}"
                )
            self._crc = zlib.crc32(buf[: len(_PRELUDE)])
            pos = len(_PRELUDE)
            self._phase = -1  # the prelude is read, no frame yet
        view = memoryview(buf)
        checked = pos  # the CRC covers buf[:checked] already
        try:
            while len(buf) - pos >= _FRAME.size:
                if self._ended:
                    raise InvalidArgumentError("data after the end frame")
                length, kind = _FRAME.unpack_from(buf, pos)
                if length < 1:
                    raise InvalidArgumentError("an empty frame")
                end = pos + 4 + length
                if end > len(buf):
                    break
                if kind == NODE and self._phase == NODE:  # the bulk of a snapshot: no detour
                    self._node(view, pos + _FRAME.size, end)
                else:
                    if kind == END:
                        self._crc = zlib.crc32(view[checked:pos], self._crc)
                        checked = end
                    self._frame(kind, view, pos + _FRAME.size, end)
                pos = end
            if self._ended and pos < len(buf):
                raise InvalidArgumentError("data after the end frame")
            if not self._ended:
                self._crc = zlib.crc32(view[checked:pos], self._crc)
        finally:
            view.release()
        del buf[:pos]

    def _frame(self, kind: int, view: memoryview, start: int, end: int) -> None:
        rank = _RANK.get(kind)
        if rank is None:
            raise InvalidArgumentError(f"unknown frame type {kind}")
        if (kind == HEADER) != (self._phase == -1):
            raise InvalidArgumentError("the header frame must come first, once")
        if kind != HEADER and rank < _RANK[self._phase]:
            raise InvalidArgumentError("frames out of order")
        if kind == RESULT and self._phase not in (SESSION, RESULT):
            raise InvalidArgumentError("a result frame outside a session")
        payload = b"" if kind == NODE else bytes(view[start:end])
        if kind == NODE:
            self._node(view, start, end)
        elif kind == HEADER:
            self._header(Reader(payload, "snapshot header"))
        elif kind == SESSION:
            self._session_frame(Reader(payload, "snapshot session"))
        elif kind == RESULT:
            self._result(Reader(payload, "snapshot result"))
        elif kind == EVENT:
            self._event(Reader(payload, "snapshot event"))
        else:
            self._end(payload)
        self._phase = kind

    def _header(self, source: Reader) -> None:
        revision, oldest, next_session_id = source.u64(), source.u64(), source.u64()
        limits = {
            "max_history": source.u64(),
            "max_session_results": source.u64(),
            "max_value_bytes": source.u64(),
        }
        source.end()
        if not 1 <= oldest <= revision + 1 or next_session_id < 1:
            raise InvalidArgumentError("impossible revisions or session counter in the header")
        state = self._new_state(**limits)
        state.revision = revision
        state.oldest_revision = oldest
        state._next_session_id = next_session_id
        state._nodes.clear()
        self._state = state

    def _session_frame(self, source: Reader) -> None:
        state = self._checked_state()
        sid, ttl, lowest_unacked = source.u64(), source.f64(), source.u64()
        source.end()
        if not 1 <= sid < state._next_session_id or sid in state._sessions:
            raise InvalidArgumentError(f"session {sid} is impossible or repeated")
        if not (math.isfinite(ttl) and ttl > 0):
            raise InvalidArgumentError(f"session {sid} has ttl {ttl}")
        sess = state._sessions[sid] = SessionRecord(ttl, lowest_unacked)
        self._session = (sid, sess)
        self._counts[1] += 1

    def _result(self, source: Reader) -> None:
        sid, seq, encoded = source.u64(), source.u64(), source.blob()
        source.end()
        if self._session is None or self._session[0] != sid:
            raise InvalidArgumentError(f"a result of session {sid} outside its session")
        sess = self._session[1]
        if seq < sess.lowest_unacked or seq in sess.results:
            raise InvalidArgumentError(f"result {seq} of session {sid} is impossible or repeated")
        decode_result(encoded)  # it must decode
        sess.results[seq] = encoded
        self._counts[2] += 1

    def _event(self, source: Reader) -> None:
        state = self._checked_state()
        kind = _EVENTS_BY_TAG.get(source.u8())
        path, revision = source.text(), source.u64()
        node = read_node(source) if source.boolean() else None
        source.end()
        if kind is None:
            raise InvalidArgumentError("unknown event type")
        last = state._history[-1].revision if state._history else state.oldest_revision
        if not last <= revision <= state.revision:
            raise InvalidArgumentError(f"event at revision {revision} out of order")
        if len(state._history) >= state.max_history:
            raise InvalidArgumentError("more events than max_history")
        state._history.append(Event(kind, path, node, revision))
        self._counts[3] += 1

    def _node(self, view: memoryview, start: int, end: int) -> None:
        state = self._checked_state()
        size = _U32.unpack_from(view, start)[0]
        at = start + 4 + size  # the next sequence number, then the record
        if end - at < 8 + records.META_SIZE:
            raise InvalidArgumentError("a node frame is too short")
        path = str(view[start + 4 : at], "utf-8")
        seq = _U64.unpack_from(view, at)[0]
        crev, mrev, _, owner = records.META.unpack_from(view, at + 8)
        nodes = state._nodes
        if path in nodes:
            raise InvalidArgumentError(f"node {path!r} repeated")
        if nodes:
            # The parent exists (so it is a valid path): check only the last segment.
            head, slash, name = path.rpartition("/")
            parent_path = head or "/"
            if (
                not slash
                or head == "/"
                or parent_path not in nodes
                or not name
                or name in (".", "..")
                or _BAD_SEGMENT.search(name)
                or size > STORED_PATH_BYTES
            ):
                raise InvalidArgumentError(f"node {path!r} is not a valid child of a known node")
            if not 1 <= crev <= mrev <= state.revision:
                raise InvalidArgumentError(f"node {path!r} has impossible revisions")
            siblings = state._children.get(parent_path)
            if siblings is None:
                siblings = state._children[parent_path] = set()
            siblings.add(path)
        elif path != "/" or crev != 0 or owner:
            raise InvalidArgumentError("the first node is not the root")
        if owner:
            sess = state._sessions.get(owner)
            if sess is None:
                raise InvalidArgumentError(f"node {path!r} belongs to no session")
            sess.ephemerals.add(path)
        nodes[path] = bytes(view[at + 8 : end])
        if seq:
            state._next_seq[path] = seq
        self._counts[0] += 1

    def _end(self, payload: bytes) -> None:
        if len(payload) != _END.size:
            raise InvalidArgumentError("a malformed end frame")
        *counts, crc = _END.unpack(payload)
        if crc != self._crc:
            raise InvalidArgumentError("checksum mismatch")
        if counts != self._counts or not self._counts[0]:
            raise InvalidArgumentError(f"counts {counts} announced, {self._counts} read")
        state = self._checked_state()
        for sess in state._sessions.values():
            if any(path in state._children for path in sess.ephemerals):
                raise InvalidArgumentError("an ephemeral node has children")
        self._ended = True

    def _checked_state(self) -> S:
        assert self._state is not None  # _frame checks the header came first
        return self._state
