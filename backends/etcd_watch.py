"""Watches: one etcd watch stream per coordkit watch, resumed after a broken connection.

Invariant: ``_next`` is the revision right after the last event handed out
(or after the revision at which the watch was established), so a resumed
stream starting at ``_next`` neither loses nor repeats an event. etcd keeps a
revision's events in one response, so resuming between responses is exact.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio
import grpc
from aetcd import rpc

from coordkit.errors import CompactedError, ConnectionLostError, CoordkitError
from coordkit.model import Event, EventType

from . import etcd_ops as ops
from .etcd_keys import prefix_end
from .etcd_rpc import WatchCompacted, map_error

if TYPE_CHECKING:
    from .etcd_backend import EtcdBackend

__all__ = ["EtcdWatch"]

_PUT, _DELETE = 0, 1
# Resumable: the member went away, or our own earlier cancellation (a reader
# cancelled mid-read by its caller) tore the stream down.
_RESUMABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


class EtcdWatch:
    """An async iterator of :class:`Event` for one path (or subtree)."""

    def __init__(
        self, backend: EtcdBackend, path: str, recursive: bool, start_revision: int | None
    ) -> None:
        self._backend = backend
        self._path = path
        self._recursive = recursive
        self._start = start_revision
        self._next = start_revision or 0
        self._call: Any = None
        self._pending: deque[Event] = deque()
        self._stopped = False

    async def start(self) -> None:
        """Establish the watch: every change after this returns is delivered."""
        await self._open(self._start)

    async def stop(self) -> None:
        self._stopped = True
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
            await call.code()  # let grpc finish the call on this event loop

    def __aiter__(self) -> EtcdWatch:
        return self

    async def __anext__(self) -> Event:
        while not self._pending:
            if self._stopped:
                raise StopAsyncIteration
            if self._call is None or self._call.done():
                await self._resume()
                continue
            try:
                reply = await self._call.read()
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RESUMABLE:
                    raise map_error(exc) from exc
                await self._resume()
                continue
            if reply is grpc.aio.EOF:
                await self._resume()
                continue
            await self._take(reply)
        return self._pending.popleft()

    async def _take(self, reply: Any) -> None:
        if reply.compact_revision:
            raise map_error(WatchCompacted(int(reply.compact_revision)))
        if reply.canceled:
            raise CoordkitError(f"etcd cancelled the watch: {reply.cancel_reason}")
        layout = self._backend.layout
        for event in reply.events:
            kv = event.kv
            self._next = max(self._next, int(kv.mod_revision) + 1)
            path = layout.path_of(kv.key)
            if not layout.in_watch(self._path, self._recursive, path):
                continue
            if event.type == _DELETE:
                before = event.prev_kv if event.HasField("prev_kv") else None
                node = ops.node_of(path, before, 0) if before is not None else None
                self._pending.append(Event(EventType.DELETED, path, node, kv.mod_revision))
                continue
            created = kv.version == 1 and path != "/"
            kind = EventType.CREATED if created else EventType.UPDATED
            count = 0 if created else await self._children_at(path, int(kv.mod_revision))
            node = ops.node_of(path, kv, count)
            self._pending.append(Event(kind, path, node, kv.mod_revision))

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
        backend = self._backend
        key, range_end = backend.layout.watch_range(self._path, self._recursive)
        create = rpc.WatchCreateRequest(key=key, prev_kv=True, start_revision=from_revision or 0)
        if range_end is not None:
            create.range_end = range_end
        call = backend.channel.watch.Watch(wait_for_ready=True)
        try:
            with anyio.fail_after(backend.options.timeout):
                await call.write(rpc.WatchRequest(create_request=create))
                reply = await call.read()
                while reply is not grpc.aio.EOF and not reply.created:
                    reply = await call.read()
        except TimeoutError as exc:
            call.cancel()
            raise map_error(exc) from exc
        except grpc.aio.AioRpcError as exc:
            call.cancel()
            raise map_error(exc) from exc
        except BaseException:
            call.cancel()
            raise
        if reply is grpc.aio.EOF:
            raise ConnectionLostError("etcd closed the watch stream")
        if reply.compact_revision or reply.canceled:
            call.cancel()
            if reply.compact_revision:
                raise map_error(WatchCompacted(int(reply.compact_revision)))
            raise CoordkitError(f"etcd refused the watch: {reply.cancel_reason}")
        if from_revision is None:
            self._next = int(reply.header.revision) + 1
        self._call = call

    async def _resume(self) -> None:
        """Reopen the stream at ``_next``, retrying until the operation timeout."""
        if self._call is not None:
            self._call.cancel()
            self._call = None
        deadline = time.monotonic() + self._backend.options.timeout
        delay = 0.05
        while True:
            try:
                await self._open(self._next)
                return
            except ConnectionLostError:
                if time.monotonic() + delay > deadline:
                    raise
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.5)
