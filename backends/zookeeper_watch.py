"""Watches on ZooKeeper persistent (recursive) watches.

A ZooKeeper notification says only *what kind* of change hit *which path*:
no zxid, no data (servers before 3.9 send no zxid at all). So every
notification is turned into an :class:`Event` by reading the node, and the
read is sent *on the connection thread the moment the notification arrives*,
before any later reply is processed. On one connection the server answers in
order, so that read sees the state right after the change unless the node
changed again in between, and every notification of such a later change is
already queued when the read's answer arrives. That lets each event be
checked against what follows it:

* ``CREATED``: the node as read; revision = its ``czxid`` (exact). If the node
  is already gone again (or a later delete of it is queued), the create and
  its delete are both dropped: the node was transient.
* ``UPDATED``: the node as read; revision = its ``mzxid``. If a later change
  of the same node is queued, this event is folded into that one (one event,
  the later state, its exact revision).
* ``DELETED``: the last state this watch delivered (or None); revision = the
  ``pzxid`` of the nearest existing ancestor, exact unless a sibling was
  created or deleted before the read (then the previous event's revision).

Guarantees: events arrive in ZooKeeper's order, revisions never decrease, no
event is delivered twice, the node state of every ``CREATED``/``UPDATED`` is
a real state with its real revision. Not guaranteed: intermediate values of
a node that changes again before its notification is processed are folded
into the later one, and a delete's revision may be reported as the previous
event's. Persistent watches do not survive a session; after a reconnection
with the same session the watch is re-added and the subtree is checked for
changes made while disconnected: if there were any, the stream raises
:class:`ConnectionLostError` instead of silently missing them.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from kazoo import exceptions as kx

from coordkit.errors import ConnectionLostError, CoordkitError, SessionExpiredError
from coordkit.model import Event, EventType, Node
from coordkit.paths import is_ancestor, join, parent

from .zookeeper_kazoo import (
    PERSISTENT,
    PERSISTENT_RECURSIVE,
    WATCHER_PERSISTENT,
    WATCHER_PERSISTENT_RECURSIVE,
    AddWatch,
    LoopBridge,
    RemoveWatches,
    map_error,
)

__all__ = ["WatchRegistry", "WatchStream", "node_from_stat"]

CREATED_EVENT, DELETED_EVENT, CHANGED_EVENT = 1, 2, 3
_RESYNC = -1


def node_from_stat(path: str, value: bytes, stat: Any) -> Node:
    """A coordkit Node from a kazoo ZnodeStat (zxids are the revisions)."""
    return Node(
        path=path,
        value=value,
        create_revision=stat.czxid,
        mod_revision=stat.mzxid,
        version=stat.version,
        ephemeral_owner=stat.ephemeralOwner or None,
        num_children=stat.numChildren,
    )


def ancestors(path: str) -> list[str]:
    """Every proper ancestor of ``path``, nearest first, ending with the root."""
    out = []
    while path != "/":
        path = parent(path)
        out.append(path)
    return out


@dataclass
class _Record:
    """One notification and the reads sent for it on the connection thread."""

    kind: int
    path: str
    seq: int = 0
    node_read: Any = None
    ancestor_reads: list[tuple[str, Any]] = field(default_factory=list)
    since_zxid: int = 0


class WatchStream:
    """The events of one ``watch(path, recursive=...)``, built as described above."""

    def __init__(self, client: Any, bridge: LoopBridge, root: str, recursive: bool) -> None:
        self.client = client
        self.root = root
        self.recursive = recursive
        self._bridge = bridge
        self._lock = threading.Lock()
        self._records: collections.deque[_Record] = collections.deque()
        self._wakeup = anyio.Event()
        self._failure: CoordkitError | None = None
        self._delivered: dict[str, Node] = {}
        self._delivered_revision: dict[str, int] = {}
        self._transient: set[str] = set()
        self.last_revision = 0

    # -- called on kazoo's connection thread -------------------------------

    def covers(self, path: str) -> bool:
        return is_ancestor(self.root, path) if self.recursive else path == self.root

    def notify(self, kind: int, path: str, seq: int) -> None:
        """Queue a notification and send its reads now, ahead of any later reply."""
        record = _Record(kind, path, seq)
        if kind == DELETED_EVENT:
            record.ancestor_reads = [(a, self.client.exists_async(a)) for a in ancestors(path)]
        else:
            record.node_read = self.client.get_async(path)
        self._push(record)

    def resync(self, since_zxid: int) -> None:
        """The connection came back (same session): check what changed meanwhile."""
        self._push(_Record(_RESYNC, self.root, since_zxid=since_zxid))

    def _push(self, record: _Record) -> None:
        with self._lock:
            self._records.append(record)
        self._bridge.call_soon(self._wake)

    def fail(self, error: CoordkitError) -> None:
        """End the stream with ``error`` once the queued events are delivered."""
        self._bridge.call_soon(self._set_failure, error)

    # -- on the event loop ---------------------------------------------------

    def _wake(self) -> None:
        self._wakeup.set()

    def _set_failure(self, error: CoordkitError) -> None:
        if self._failure is None:
            self._failure = error
        self._wakeup.set()

    async def _next_record(self) -> _Record:
        while True:
            with self._lock:
                if self._records:
                    return self._records[0]
            if self._failure is not None:
                raise self._failure
            self._wakeup = anyio.Event()
            with self._lock:
                if self._records:
                    continue
            await self._wakeup.wait()

    def _later(self, record: _Record, result: Any) -> list[_Record]:
        """The notifications after ``record`` that arrived before ``result``'s answer."""
        seen = getattr(result, "notified", None)
        with self._lock:
            return [
                r
                for r in self._records
                if r is not record
                and r.kind != _RESYNC
                and r.seq > record.seq
                and (seen is None or r.seq <= seen)
            ]

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while True:
            record = await self._next_record()
            event = await self._build(record)
            with self._lock:
                self._records.popleft()
            if event is not None:
                revision = max(event.revision, self.last_revision)
                self.last_revision = revision
                if revision != event.revision:
                    event = Event(event.type, event.path, event.node, revision)
                return event

    async def _read(self, result: Any) -> Any:
        try:
            return await self._bridge.wait(result)
        except kx.NoNodeError:
            return None
        except Exception as exc:
            raise map_error(exc) from exc

    async def _build(self, record: _Record) -> Event | None:
        if record.kind == _RESYNC:
            await self._check_gap(record.since_zxid)
            return None
        if record.kind == DELETED_EVENT:
            return await self._build_deleted(record)
        found = await self._read(record.node_read)
        later_same = [r for r in self._later(record, record.node_read) if r.path == record.path]
        path = record.path
        if found is None:
            if record.kind == CREATED_EVENT:
                self._transient.add(path)
            return None
        value, stat = found
        node = node_from_stat(path, value, stat)
        if record.kind == CREATED_EVENT:
            if any(r.kind == DELETED_EVENT for r in later_same):
                # The node read may be a later incarnation; the create was transient.
                self._transient.add(path)
                return None
            return self._deliver(EventType.CREATED, node, node.create_revision)
        if later_same:
            return None  # folded into the later change of this node
        known = self._delivered.get(path)
        if known is not None and known.create_revision != node.create_revision:
            return None  # a later incarnation: its delete and create are queued
        if self._delivered_revision.get(path, 0) >= node.mod_revision:
            return None  # this state was delivered already
        return self._deliver(EventType.UPDATED, node, node.mod_revision)

    async def _build_deleted(self, record: _Record) -> Event | None:
        path = record.path
        if path in self._transient:
            self._transient.discard(path)
            self._delivered_revision.pop(path, None)
            return None
        revision = self.last_revision
        for ancestor, result in record.ancestor_reads:
            stat = await self._read(result)
            if stat is None:
                continue
            siblings_changed = any(
                r.kind in (CREATED_EVENT, DELETED_EVENT) and parent(r.path) == ancestor
                for r in self._later(record, result)
            )
            if not siblings_changed:
                revision = max(revision, stat.pzxid)
            break
        node = self._delivered.pop(path, None)
        self._delivered_revision.pop(path, None)
        return Event(EventType.DELETED, path, node, revision)

    def _deliver(self, kind: EventType, node: Node, revision: int) -> Event:
        self._delivered[node.path] = node
        self._delivered_revision[node.path] = max(revision, node.mod_revision)
        if kind is EventType.CREATED:
            self._delivered_revision[node.path] = revision
        return Event(kind, node.path, node, revision)

    async def _check_gap(self, since_zxid: int) -> None:
        """Raise ConnectionLostError if the watched nodes changed after ``since_zxid``."""
        changed = False
        if self.root != "/":
            parent_stat = await self._read(self.client.exists_async(parent(self.root)))
            changed = parent_stat is not None and parent_stat.pzxid > since_zxid
        changed = changed or await self._subtree_changed(self.root, since_zxid)
        if changed:
            raise ConnectionLostError(
                f"the connection to ZooKeeper was lost and {self.root!r} changed meanwhile; "
                "events may be missing: read the current state and watch again"
            )

    async def _subtree_changed(self, path: str, since_zxid: int) -> bool:
        level = [path]
        while level:
            stats = [(p, self.client.exists_async(p)) for p in level]
            children_reads = (
                [(p, self.client.get_children_async(p)) for p in level] if self.recursive else []
            )
            for _, result in stats:
                stat = await self._read(result)
                if stat is not None and max(stat.czxid, stat.mzxid, stat.pzxid) > since_zxid:
                    return True
            next_level: list[str] = []
            for p, result in children_reads:
                names = await self._read(result)
                next_level.extend(join(p, name) for name in names or ())
            level = next_level
        return False


class WatchRegistry:
    """The persistent watches of one kazoo client, shared by every stream on it.

    The server keeps one persistent watch per (path, mode) and connection, so
    streams on the same key share it and it is removed with the last one.
    """

    def __init__(self, client: Any, bridge: LoopBridge) -> None:
        self._client = client
        self._bridge = bridge
        self._lock = threading.Lock()
        self._streams: dict[tuple[str, bool], list[WatchStream]] = {}

    def on_notification(self, kind: int, path: str, seq: int) -> None:
        """Kazoo's connection thread: hand the notification to every stream covering it."""
        if kind not in (CREATED_EVENT, DELETED_EVENT, CHANGED_EVENT):
            return
        with self._lock:
            streams = [s for group in self._streams.values() for s in group if s.covers(path)]
        for stream in streams:
            stream.notify(kind, path, seq)

    def _add_request(self, key: tuple[str, bool]) -> Any:
        result = self._client.handler.async_result()
        mode = PERSISTENT_RECURSIVE if key[1] else PERSISTENT
        self._client._call(AddWatch(self._chrooted(key[0]), mode), result)
        return result

    def _chrooted(self, path: str) -> str:
        chroot = self._client.chroot or ""
        if not chroot:
            return path
        return chroot if path == "/" else chroot + path

    async def add(self, stream: WatchStream) -> None:
        key = (stream.root, stream.recursive)
        with self._lock:
            self._streams.setdefault(key, []).append(stream)
        try:
            result = self._add_request(key)
            await self._bridge.wait(result)
            stream.last_revision = getattr(result, "zxid", 0)
        except BaseException as exc:
            await self.remove(stream)
            if isinstance(exc, Exception):
                raise map_error(exc) from exc
            raise

    async def remove(self, stream: WatchStream) -> None:
        key = (stream.root, stream.recursive)
        with self._lock:
            group = self._streams.get(key, [])
            if stream in group:
                group.remove(stream)
            last = not group
            if last:
                self._streams.pop(key, None)
        if last and self._client.connected:
            watcher_type = WATCHER_PERSISTENT_RECURSIVE if key[1] else WATCHER_PERSISTENT
            result = self._client.handler.async_result()
            self._client._call(RemoveWatches(self._chrooted(key[0]), watcher_type), result)
            with anyio.move_on_after(2, shield=True):
                # The watch may already be gone with the connection or session.
                with contextlib.suppress(Exception):
                    await self._bridge.wait(result)

    def rearm(self, since_zxid: int) -> None:
        """Kazoo's connection thread, reconnected with the same session: add the watches again."""
        with self._lock:
            keys = list(self._streams)
            streams = [s for group in self._streams.values() for s in group]
        for key in keys:
            self._add_request(key)
        for stream in streams:
            stream.resync(since_zxid)

    def fail_all(self, error_factory: Callable[[], CoordkitError]) -> None:
        """The session ended: persistent watches are gone with it."""
        with self._lock:
            streams = [s for group in self._streams.values() for s in group]
        for stream in streams:
            stream.fail(error_factory())


def session_expired_error() -> CoordkitError:
    return SessionExpiredError("the ZooKeeper session expired; the watch ended with it")
