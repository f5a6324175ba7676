"""Watches: one etcd watch stream per coordkit watch, resumed after a broken connection.

Invariant: ``_next`` is the revision right after the last event handed out
(or after the revision at which the watch was established), so a resumed
stream starting at ``_next`` neither loses nor repeats an event. etcd keeps a
revision's events in one response, so resuming between responses is exact.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import anyio
import grpc
from aetcd import rpc

from coordkit.errors import CompactedError, ConnectionLostError, CoordkitError
from coordkit.model import Event, EventType
from coordkit.retry import describe_error

from . import ops
from .access import EtcdAccess
from .keys import prefix_end
from .rpc import Stream, WatchCompacted, map_error

__all__ = ["EtcdWatch"]

log = logging.getLogger(__name__)

_PUT, _DELETE = 0, 1
# Resumable: the member went away or lost its leader, or our own cancellation
# (a reader cancelled while a response was being processed) tore the stream down.
_RESUMABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


class _TokenExpired(CoordkitError):
    """etcd refused a watch because the channel's auth token expired."""


class EtcdWatch:
    """An async iterator of :class:`Event` for one path (or subtree).

    Cancelling :meth:`__anext__` loses nothing: a read waiting for etcd carries
    over to the next call, and so does a response whose processing (update
    events read ``num_children``) was cancelled half-way.
    """

    def __init__(
        self, backend: EtcdAccess, path: str, recursive: bool, start_revision: int | None
    ) -> None:
        self._backend = backend
        self._path = path
        self._recursive = recursive
        self._start = start_revision
        self._next = start_revision or 0
        self._stream: Stream | None = None
        self._pending: deque[Event] = deque()
        self._reply: Any = None  # a response being turned into events
        self._built: list[Event | None] = []  # its events so far (None: filtered out)
        self._stopped = False

    async def start(self) -> None:
        """Establish the watch: every change after this returns is delivered."""
        await self._open(self._start)

    async def stop(self) -> None:
        self._stopped = True
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close()

    def __aiter__(self) -> EtcdWatch:
        return self

    async def __anext__(self) -> Event:
        while not self._pending:
            if self._stopped:
                raise StopAsyncIteration
            if self._reply is None:
                stream = self._stream
                if stream is None or stream.done():
                    await self._resume("the stream had ended")
                    continue
                try:
                    reply = await stream.read(keep_on_cancel=True)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in _RESUMABLE:
                        raise map_error(exc) from exc
                    await self._resume(describe_error(map_error(exc)))
                    continue
                except ConnectionLostError as exc:
                    await self._resume(describe_error(exc))
                    continue
                if reply is grpc.aio.EOF:
                    await self._resume("etcd ended the stream")
                    continue
                self._reply, self._built = reply, []
            await self._take()
        return self._pending.popleft()

    async def _take(self) -> None:
        """Turn ``_reply`` into events; they (and ``_next``) are committed only
        once the whole response is done, so a cancelled call resumes here."""
        reply = self._reply
        if reply.compact_revision:
            raise map_error(WatchCompacted(int(reply.compact_revision)))
        if reply.canceled:
            raise CoordkitError(f"etcd cancelled the watch: {reply.cancel_reason}")
        layout = self._backend.layout
        next_revision = self._next
        for i, event in enumerate(reply.events):
            kv = event.kv
            next_revision = max(next_revision, int(kv.mod_revision) + 1)
            if i < len(self._built):
                continue  # built before a cancellation
            path = layout.path_of(kv.key)
            if not layout.in_watch(self._path, self._recursive, path):
                self._built.append(None)
                continue
            if event.type == _DELETE:
                before = event.prev_kv if event.HasField("prev_kv") else None
                node = ops.node_of(path, before, 0) if before is not None else None
                self._built.append(Event(EventType.DELETED, path, node, kv.mod_revision))
                continue
            created = kv.version == 1 and path != "/"
            kind = EventType.CREATED if created else EventType.UPDATED
            count = 0 if created else await self._children_at(path, int(kv.mod_revision))
            self._built.append(Event(kind, path, ops.node_of(path, kv, count), kv.mod_revision))
        self._pending.extend(e for e in self._built if e is not None)
        self._next = max(self._next, next_revision)
        self._reply, self._built = None, []

    async def _children_at(self, path: str, revision: int) -> int:
        """``num_children`` of ``path`` at ``revision`` (0 if that history is compacted)."""
        kids = self._backend.layout.children(path)
        request = rpc.RangeRequest(
            key=kids, range_end=prefix_end(kids), count_only=True, revision=revision
        )
        channel = self._backend.channel
        try:
            reply = await channel.call(channel.kv.Range, request, idempotent=True)
        except CompactedError:
            return 0
        return int(reply.count)

    async def _open(self, from_revision: int | None) -> None:
        """Open the stream; once more if etcd refused the watch for an expired token."""
        try:
            await self._open_once(from_revision)
        except _TokenExpired:
            self._backend.channel.token_expired()
            await self._open_once(from_revision)

    async def _open_once(self, from_revision: int | None) -> None:
        backend = self._backend
        key, range_end = backend.layout.watch_range(self._path, self._recursive)
        create = rpc.WatchCreateRequest(key=key, prev_kv=True, start_revision=from_revision or 0)
        if range_end is not None:
            create.range_end = range_end
        await backend.channel.fresh_token()
        stream = backend.channel.stream(backend.channel.watch.Watch)
        try:
            with anyio.fail_after(backend.options.timeout):
                await stream.write(rpc.WatchRequest(create_request=create))
                reply = await stream.read()
                while reply is not grpc.aio.EOF and not reply.created:
                    reply = await stream.read()
            if reply is grpc.aio.EOF:
                raise ConnectionLostError("etcd closed the watch stream")
            if reply.compact_revision:
                raise map_error(WatchCompacted(int(reply.compact_revision)))
            if reply.canceled:
                if "invalid auth token" in reply.cancel_reason:
                    raise _TokenExpired(reply.cancel_reason)
                raise CoordkitError(f"etcd refused the watch: {reply.cancel_reason}")
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await stream.close()
            if isinstance(exc, (TimeoutError, grpc.aio.AioRpcError)):
                raise map_error(exc) from exc
            raise
        if from_revision is None:
            self._next = int(reply.header.revision) + 1
        self._stream = stream

    async def _resume(self, cause: str) -> None:
        """Reopen the stream at ``_next``, retrying (per the retry policy) until
        the operation timeout; ``cause``: why the stream broke, for the log."""
        stream, self._stream = self._stream, None
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await stream.close()
        what = f"etcd watch on {self._path}"
        log.debug("%s broke (%s); resuming from revision %d", what, cause, self._next)
        options = self._backend.options
        await options.retry.call(
            lambda: self._open(self._next),
            retry_on=ConnectionLostError,
            deadline=options.timeout,
            what=f"resume the {what}",
            logger=log,
        )
        log.info("%s resumed from revision %d (it broke: %s)", what, self._next, cause)
