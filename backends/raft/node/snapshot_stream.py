"""Snapshots over the peer transport: sent in chunks, received into a sink.

The storage layer plugs in through two Protocols: a :class:`SnapshotSource`
gives the data of a snapshot that lives in a file (sending side), and a
:class:`SnapshotSink` opens a :class:`SnapshotReceiver` for an incoming one
(receiving side). The frames are described in :mod:`.codec`.

Invariants: a receiver gets its chunks in order and then exactly one of
``commit`` or ``abort``; the SNAP message is delivered only after ``commit``
returned; a stream that breaks (the sender gave up, the connection ended, a
receiver failed) is aborted and never delivered.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Protocol

import anyio

from ..core.messages import Message, SnapshotMeta
from ..wire import FrameError, describe_error
from .codec import (
    SnapshotChunk,
    SnapshotEnd,
    SnapshotStart,
    encode_snapshot_chunk,
    encode_snapshot_end,
    encode_snapshot_start,
)

__all__ = [
    "MAX_INCOMING",
    "SnapshotInbox",
    "SnapshotReceiver",
    "SnapshotSink",
    "SnapshotSource",
    "snapshot_frames",
]

log = logging.getLogger(__name__)

#: Snapshot streams one connection may have open at once (more is a FrameError).
MAX_INCOMING = 2


class SnapshotReceiver(Protocol):
    """Where the chunks of one incoming snapshot go (e.g. a temporary file).

    ``write`` is called with each chunk in order, then exactly one of
    ``commit`` (all data written: make it durable and visible) or ``abort``
    (the stream broke: discard what was written).
    """

    async def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> object:
        """Make the snapshot durable; what it returns is ignored."""
        ...

    async def abort(self) -> None: ...


class SnapshotSource(Protocol):
    """Sending side: the data of the snapshot described by ``meta``, in pieces of any size."""

    def __call__(self, meta: SnapshotMeta, /) -> AsyncIterator[bytes]: ...


class SnapshotSink(Protocol):
    """Receiving side: a receiver for an incoming snapshot described by ``meta``."""

    def __call__(self, meta: SnapshotMeta, /) -> Awaitable[SnapshotReceiver]: ...


async def snapshot_frames(
    message: Message, stream: int, source: SnapshotSource | None, chunk_size: int
) -> AsyncGenerator[bytes, None]:
    """The encoded frames of one streamed snapshot: start, chunks of at most
    ``chunk_size`` bytes, end. The data is the message's own when it has any,
    else ``source(meta)``'s; if the source fails, the end frame says so."""
    assert message.snapshot is not None
    meta = message.snapshot.meta
    yield encode_snapshot_start(message, stream)
    ok = True
    try:
        async with aclosing(_data(message, source)) as pieces:
            async for piece in pieces:
                for start in range(0, len(piece), chunk_size):
                    yield encode_snapshot_chunk(stream, piece[start : start + chunk_size])
    except Exception as exc:
        ok = False
        log.warning(
            "snapshot %d (term %d) to %s: its source failed: %s",
            meta.index,
            meta.term,
            message.to,
            describe_error(exc),
        )
    yield encode_snapshot_end(stream, ok)


async def _data(message: Message, source: SnapshotSource | None) -> AsyncGenerator[bytes, None]:
    assert message.snapshot is not None
    if message.snapshot.data or source is None:
        yield message.snapshot.data
        return
    pieces = source(message.snapshot.meta)
    try:
        async for piece in pieces:
            yield piece
    finally:
        close = getattr(pieces, "aclose", None)
        if close is not None:
            with anyio.CancelScope(shield=True):
                await close()


class _MemoryReceiver:
    """The receiver used without a sink: collects the data, up to ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise FrameError(f"snapshot larger than the in-memory limit of {self.limit} bytes")
        self.parts.append(chunk)

    async def commit(self) -> None:
        pass

    async def abort(self) -> None:
        self.parts.clear()


@dataclass(slots=True)
class _Incoming:
    message: Message
    receiver: SnapshotReceiver | None  # None once it failed: later chunks are skipped


class SnapshotInbox:
    """The snapshot streams one connection is receiving from ``peer``.

    A protocol error (a chunk of a stream never started, too many streams)
    raises :class:`FrameError`: the connection is at fault. A failing
    receiver (disk full...) is logged and its stream dropped: the node is.
    """

    def __init__(self, peer: str, sink: SnapshotSink | None, memory_limit: int) -> None:
        self.peer = peer
        self._sink = sink
        self._memory_limit = memory_limit
        self._open: dict[int, _Incoming] = {}

    async def start(self, item: SnapshotStart) -> None:
        if item.stream in self._open or len(self._open) >= MAX_INCOMING:
            raise FrameError(f"snapshot stream {item.stream} cannot start here")
        message = item.message
        assert message.snapshot is not None
        if self._sink is None:
            self._open[item.stream] = _Incoming(message, _MemoryReceiver(self._memory_limit))
            return
        receiver: SnapshotReceiver | None = None
        try:
            receiver = await self._sink(message.snapshot.meta)
        except Exception as exc:
            log.warning("snapshot from %s: the sink failed: %s", self.peer, describe_error(exc))
        self._open[item.stream] = _Incoming(message, receiver)

    async def chunk(self, item: SnapshotChunk) -> None:
        pending = self._open.get(item.stream)
        if pending is None:
            raise FrameError(f"chunk of unknown snapshot stream {item.stream}")
        if pending.receiver is None:
            return
        try:
            await pending.receiver.write(item.data)
        except FrameError:
            raise
        except Exception as exc:
            log.warning("snapshot from %s: writing failed: %s", self.peer, describe_error(exc))
            await _abort(pending)

    async def end(self, item: SnapshotEnd, *, accept: bool = True) -> Message | None:
        """Finish a stream: the SNAP message to deliver, or None if it was aborted.

        ``accept`` false (the peer is isolated) aborts it like a failed stream.
        """
        pending = self._open.pop(item.stream, None)
        if pending is None:
            raise FrameError(f"end of unknown snapshot stream {item.stream}")
        receiver = pending.receiver
        if receiver is None:
            return None
        if not (item.ok and accept):
            await _abort(pending)
            return None
        try:
            await receiver.commit()
        except Exception as exc:
            log.warning("snapshot from %s: commit failed: %s", self.peer, describe_error(exc))
            await _abort(pending)
            return None
        message = pending.message
        if isinstance(receiver, _MemoryReceiver):
            assert message.snapshot is not None
            data = b"".join(receiver.parts)
            message = replace(message, snapshot=replace(message.snapshot, data=data))
        return message

    async def abort_all(self) -> None:
        """Abort every open stream (the connection ended); safe under cancellation."""
        with anyio.CancelScope(shield=True):
            while self._open:
                _, pending = self._open.popitem()
                await _abort(pending)


async def _abort(pending: _Incoming) -> None:
    receiver, pending.receiver = pending.receiver, None
    if receiver is None:
        return
    try:
        await receiver.abort()
    except Exception as exc:
        log.warning("aborting a snapshot failed: %s", describe_error(exc))
