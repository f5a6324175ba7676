"""Watches on ZooKeeper persistent (recursive) watches.

A ZooKeeper notification says only *what kind* of change hit *which path*:
no zxid, no data (servers before 3.9 send no zxid at all). So every
notification is turned into an :class:`Event` by reading the node, and the
read is sent *on the connection thread the moment the notification arrives*,
before any later reply is processed. Each reply is tagged with the number of
notifications received before it (``notified``): on one connection the server
answers in order, so every change the read may already include has its
notification queued by the time the answer is looked at. A record whose read
*covers* a later notification of the same path is folded into that later one;
the last one of a run reads exactly the state its own change produced:

* ``CREATED``/``UPDATED``: the node as read, revision = its ``mzxid`` (exact).
  A create folded into later updates is delivered as one ``CREATED`` carrying
  the later state (its ``create_revision`` is older than the event's
  revision). ``num_children`` is the count right after the change: read,
  minus/plus the creates/deletes of children the read already included (known
  exactly on a recursive watch; a node watch reports 0 for a create and the
  count as read for an update when children changed in between).
* ``DELETED``: the last state delivered if no update of it was folded since
  (else ``None``); revision = the ``pzxid`` of the nearest existing ancestor,
  read right after the notification. If the read already included later
  changes in the watch's scope, the event is held until the next event is
  built and its revision is capped just below that event's (exact) revision.
  Consecutive deletes whose reads saw the same ancestor state share one
  revision (the deletes of one transaction: a recursive delete, a session's
  ephemeral nodes).
* A node created and deleted again before its read answers yields no event.

Guarantees: events arrive in ZooKeeper's order, revisions never decrease, no
event is delivered twice, every ``CREATED``/``UPDATED`` carries a real state
with its real revision, and the last event of a node is its current state.
Not guaranteed (ZooKeeper keeps no history to read it from): an intermediate
state overwritten before the watcher's read reaches the server is folded
into the later one, and a delete's revision is exact only when nothing else
in the same parent changed before its read.

Persistent watches live as long as the connection. After a reconnection with
the same session the watch is added again and the watched nodes are read:
what changed while away is delivered as folded events (creates and updates
at their own revisions, deletes at the revision of the re-add). A node watch
reads its node right after the watch is first added, so it knows whether it
existed; a recursive watch only knows the nodes it has delivered, so when a
node's children changed while away in a way no event explains (a child it
never saw was deleted), the stream raises :class:`ConnectionLostError`
instead of silently missing it. After a session expiry the stream raises
:class:`SessionExpiredError`.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
from kazoo import exceptions as kx

from coordkit.errors import ConnectionLostError, CoordkitError
from coordkit.model import Event, EventType, Node
from coordkit.paths import is_ancestor, join, parent

from .bridge import LoopBridge, map_error
from .paths import decode_path

__all__ = [
    "CHANGED_EVENT",
    "CREATED_EVENT",
    "DELETED_EVENT",
    "WatchStream",
    "ancestors",
    "node_from_stat",
]

log = logging.getLogger(__name__)

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


class _ReadLost(Exception):
    """A read of the stream failed because the connection broke.

    Its record is dropped: the session either survives, and the catch-up
    after the reconnection delivers what it would have, or it ends, and the
    stream fails with it.
    """


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
        #: the last state delivered per path, while it is known to be current.
        self._delivered: dict[str, Node] = {}
        self._delivered_revision: dict[str, int] = {}
        #: paths the consumer was told exist -> their create_revision (for a catch-up).
        self._present: dict[str, int] = {}
        #: paths whose CREATED was folded into a later record not yet delivered.
        self._pending_create: set[str] = set()
        #: deletes waiting for the next event to cap their revision: (event, cover seq).
        self._held: list[tuple[Event, int]] = []
        self._ready: collections.deque[Event] = collections.deque()
        #: (ancestor, pzxid, cversion) read for the last delete, and its revision.
        self._last_delete: tuple[tuple[str, int, int], int] | None = None
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

    def resync(self, added: Any, since_zxid: int) -> None:
        """The connection came back (same session) and ``added`` re-adds the watch: catch up.

        ``since_zxid`` is the last zxid the connection saw before it broke:
        every change up to it has had its notification delivered.
        """
        self._push(_Record(_RESYNC, self.root, node_read=added, since_zxid=since_zxid))

    def _push(self, record: _Record) -> None:
        with self._lock:
            self._records.append(record)
        self._bridge.call_soon(self._wake)

    def fail(self, error: CoordkitError) -> None:
        """End the stream with ``error`` once the queued events are delivered."""
        self._bridge.call_soon(self._set_failure, error)

    # -- on the event loop ---------------------------------------------------

    def set_baseline(self, stat: Any, result: Any) -> None:
        """The watched node's stat read right after the watch was added (None: missing).

        Ignored if a notification of the node already came in before the read
        answered: its record establishes what the consumer knows.
        """
        if stat is None or self._covered(_Record(0, self.root), result):
            return
        self._present.setdefault(self.root, stat.czxid)
        self._delivered_revision.setdefault(self.root, stat.mzxid)

    def _wake(self) -> None:
        self._wakeup.set()

    def _set_failure(self, error: CoordkitError) -> None:
        if self._failure is None:
            self._failure = error
        self._wakeup.set()

    async def _next_record(self) -> _Record | None:
        """The oldest queued record; None once the stream failed and nothing is queued."""
        while True:
            with self._lock:
                if self._records:
                    return self._records[0]
            if self._failure is not None:
                return None
            self._wakeup = anyio.Event()
            with self._lock:
                if self._records:
                    continue
            await self._wakeup.wait()

    def _covered(self, record: _Record, result: Any) -> list[_Record]:
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

    def _queued_up_to(self, seq: int) -> bool:
        """Whether a notification numbered ``seq`` or lower is still queued."""
        with self._lock:
            return any(r.kind != _RESYNC and r.seq <= seq for r in self._records)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while not self._ready:
            record = await self._next_record()
            if record is None:
                self._release_held(None)
                if self._ready:
                    break
                assert self._failure is not None
                raise self._failure
            try:
                event, cover = await self._build(record)
            except _ReadLost:
                event, cover = None, 0
            with self._lock:
                self._records.popleft()
            if event is not None and event.type is EventType.DELETED and cover:
                self._held.append((event, cover))
            elif event is not None:
                self._release_held(event)
                self._emit(event)
            if self._held and not self._queued_up_to(max(c for _, c in self._held)):
                # Everything the delete's read included produced no event: its
                # pzxid is below any later change's zxid.
                self._release_held(None)
        return self._ready.popleft()

    def _emit(self, event: Event) -> None:
        revision = max(event.revision, self.last_revision)
        self.last_revision = revision
        if revision != event.revision:
            event = Event(event.type, event.path, event.node, revision)
        self._ready.append(event)

    def _release_held(self, following: Event | None) -> None:
        """Deliver the held deletes, below the revision of the ``following`` event.

        A following delete that read the same ancestor state (same revision)
        belongs to the same transaction: the held ones share its revision.
        """
        held, self._held = self._held, []
        previous: int | None = None
        assigned = 0
        for event, _ in held:
            revision = event.revision
            if following is not None and revision >= following.revision:
                same_txn = following.type is EventType.DELETED and revision == following.revision
                if not same_txn:
                    revision = max(self.last_revision, following.revision - 1)
            if previous is not None and event.revision == previous:
                revision = assigned  # same ancestor state as the delete before: one txn
            previous, assigned = event.revision, revision
            self._emit(Event(event.type, event.path, event.node, revision))

    async def _read(self, result: Any) -> Any:
        try:
            return await self._bridge.wait(result)
        except kx.NoNodeError:
            return None
        except (kx.ConnectionLoss, kx.ConnectionDropped) as exc:
            raise _ReadLost from exc
        except Exception as exc:
            raise map_error(exc) from exc

    async def _build(self, record: _Record) -> tuple[Event | None, int]:
        """The event of ``record`` (None if folded) and, for an uncertain delete, its cover."""
        if record.kind == _RESYNC:
            await self._catch_up(record)
            return None, 0
        if record.kind == DELETED_EVENT:
            return await self._build_deleted(record)
        path = record.path
        found = await self._read(record.node_read)
        covered = self._covered(record, record.node_read)
        if any(r.path == path for r in covered) or found is None:
            # A later change of this node is queued and the read may include
            # it: that record delivers the state (a create stays a create).
            if record.kind == CREATED_EVENT:
                self._pending_create.add(path)
            else:
                self._delivered.pop(path, None)  # the last delivered state is stale
            return None, 0
        value, stat = found
        revision = stat.mzxid
        if revision <= self._delivered_revision.get(path, 0):
            return None, 0  # delivered already
        created = record.kind == CREATED_EVENT or path in self._pending_create
        self._pending_create.discard(path)
        children = stat.numChildren
        if stat.pzxid > revision:
            if self.recursive:
                # Undo the creates and deletes of children the read already included.
                for r in covered:
                    if r.path != path and parent(r.path) == path:
                        if r.kind == CREATED_EVENT:
                            children -= 1
                        elif r.kind == DELETED_EVENT:
                            children += 1
            elif created and stat.pzxid > stat.czxid:
                children = 0
        node = node_from_stat(path, value, stat)
        if children != node.num_children:
            node = replace(node, num_children=max(children, 0))
        event = Event(EventType.CREATED if created else EventType.UPDATED, path, node, revision)
        self._remember(event)
        return event, 0

    async def _build_deleted(self, record: _Record) -> tuple[Event | None, int]:
        # Await every read before changing any state, so a cancelled __anext__
        # can build this record again from scratch.
        found: tuple[str, Any, Any] | None = None
        for ancestor, result in record.ancestor_reads:
            stat = await self._read(result)
            if stat is not None:
                found = (ancestor, stat, result)
                break
        path = record.path
        node = self._delivered.pop(path, None)
        self._delivered_revision.pop(path, None)
        self._present.pop(path, None)
        if path in self._pending_create:
            self._pending_create.discard(path)  # created and deleted before its read
            return None, 0
        revision, cover = self.last_revision, 0
        if found is not None:
            ancestor, stat, result = found
            key = (ancestor, stat.pzxid, stat.cversion)
            last = self._last_delete
            if last is not None and last[0] == key:
                revision = max(revision, last[1])  # the same ancestor state: one txn
            else:
                revision = max(revision, stat.pzxid)
            self._last_delete = (key, revision)
            if self._covered(record, result):
                cover = getattr(result, "notified", 0)
        return Event(EventType.DELETED, path, node, revision), cover

    async def _catch_up(self, record: _Record) -> None:
        """After a reconnection: deliver what changed while away, folded, as events.

        The watch was added again before this runs, so every change after that
        has its notification queued behind this record. The watched nodes are
        read now; a node with such a notification covered by the reads is left
        to it, every other difference from what the consumer was told becomes
        an event: a create or update at the state's own revision, a delete at
        the revision the watch was re-added at (no later than any change after
        it, no earlier than the delete itself).
        """
        readded = await self._readded_at(record)
        current, pzxids, notified = await self._read_watched()
        with self._lock:
            later = {r.path for r in self._records if r.kind != _RESYNC and r.seq <= notified}
        caught_up = self._differences(current, later, readded)
        if self.recursive:
            self._check_explained(caught_up, pzxids, later, record.since_zxid)
        self._release_held(caught_up[0] if caught_up else None)
        for event in caught_up:
            self._remember(event)
            self._emit(event)
        log.info(
            "ZooKeeper watch on %s resumed at revision %d after a reconnection "
            "(%d change(s) while away)",
            self.root,
            readded,
            len(caught_up),
        )

    async def _readded_at(self, record: _Record) -> int:
        """The revision at which the watch was added again (its reply's zxid)."""
        try:
            await self._bridge.wait(record.node_read)
        except (kx.ConnectionLoss, kx.ConnectionDropped) as exc:
            raise _ReadLost from exc  # dropped again: the next reconnection catches up
        except Exception as exc:
            raise ConnectionLostError(
                f"could not watch {self.root!r} again after a reconnection: {exc}"
            ) from exc
        readded: int = getattr(record.node_read, "zxid", 0) or self.last_revision
        return readded

    async def _read_watched(self) -> tuple[dict[str, Node], dict[str, int], int]:
        """The watched nodes now (read level by level), their ``pzxid``s, and
        the last notification any of the reads may already include."""
        current: dict[str, Node] = {}
        pzxids: dict[str, int] = {}
        notified = 0
        level = [self.root]
        while level:
            reads = [
                (
                    p,
                    self.client.get_async(p),
                    self.client.get_children_async(p) if self.recursive else None,
                )
                for p in level
            ]
            level = []
            for p, got, listing in reads:
                found = await self._read(got)
                notified = max(notified, getattr(got, "notified", 0))
                if found is not None:
                    current[p] = node_from_stat(p, found[0], found[1])
                    pzxids[p] = found[1].pzxid
                if listing is not None:
                    names = await self._read(listing)
                    notified = max(notified, getattr(listing, "notified", 0))
                    level.extend(join(p, decode_path(n)) for n in names or ())
        return current, pzxids, notified

    def _differences(self, current: dict[str, Node], later: set[str], readded: int) -> list[Event]:
        """Events from what the consumer was told to ``current`` (paths in
        ``later`` are left to their queued notifications): creates and
        updates in revision order, then deletes at ``readded``."""
        changes: list[Event] = []
        for path, node in current.items():
            if path in later:
                continue  # a queued notification delivers it
            known = self._present.get(path)
            if known is not None and known != node.create_revision:
                # deleted and created again while away
                changes.append(
                    Event(EventType.DELETED, path, self._delivered.get(path), node.create_revision)
                )
                known = None
            if known is None:
                changes.append(Event(EventType.CREATED, path, node, node.mod_revision))
            elif node.mod_revision > self._delivered_revision.get(path, 0):
                changes.append(Event(EventType.UPDATED, path, node, node.mod_revision))
        changes.sort(key=lambda e: e.revision)  # stable: a delete stays before its re-create
        deletes = [
            Event(EventType.DELETED, path, self._delivered.get(path), readded)
            for path in self._present
            if path not in current and path not in later
        ]
        return changes + deletes

    @staticmethod
    def _check_explained(
        caught_up: list[Event], pzxids: dict[str, int], later: set[str], since_zxid: int
    ) -> None:
        """Raise if a node's children changed while away in a way no event
        explains: a child that existed when the watch began was never
        delivered, so its delete shows only as a newer ``pzxid`` of its parent."""
        explained = {parent(e.path) for e in caught_up}
        for path, pzxid in pzxids.items():
            if path not in explained and path not in later and pzxid > since_zxid:
                raise ConnectionLostError(
                    f"the connection to ZooKeeper was lost and the children of {path!r} "
                    "changed meanwhile; events may be missing: read the current state "
                    "and watch again"
                )

    def _remember(self, event: Event) -> None:
        """Record ``event`` as what the consumer now knows of its path."""
        path = event.path
        if event.type is EventType.DELETED:
            self._delivered.pop(path, None)
            self._delivered_revision.pop(path, None)
            self._present.pop(path, None)
            self._pending_create.discard(path)
        else:
            assert event.node is not None
            self._delivered[path] = event.node
            self._delivered_revision[path] = event.revision
            self._present[path] = event.node.create_revision
