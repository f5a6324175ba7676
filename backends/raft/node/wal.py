"""The write-ahead log: the Raft node's durable log, hard state and snapshot markers.

:class:`WriteAheadLog` implements the core's :class:`~coordkit.backends.raft.core.Storage`
(every read served from memory) and persists what each ``Ready`` hands out.

Group commit. :meth:`WriteAheadLog.submit` queues a :class:`WriteRequest` and
returns at once. The writer task (run by ``async with wal.writer():``) takes
everything queued, writes it in one call (from a worker thread, or inline
while writes have been faster than a thread hop: see ``_write_batch``), does ONE fsync
for all of it when any request has ``must_sync``, updates the in-memory view,
then calls each request's ``on_durable`` in submission order. Requests that
arrive while a batch is being written go into the next batch.

Guarantees:

- when ``on_durable`` runs for a request with ``must_sync``, it and every
  request submitted before it survive a crash or power loss; a request without
  ``must_sync`` has been written (to the OS) but not necessarily fsynced;
- the core's reads (:meth:`entries`, :meth:`term`, ...) see a request only
  after its ``on_durable`` would run, so they only show what is on disk;
- after a crash, :meth:`open` rebuilds exactly a prefix of the submitted
  requests that includes every acknowledged ``must_sync`` one.

The queue holds at most ``max_pending`` requests or ``max_pending_bytes``
bytes (a single larger request is accepted when the queue is empty): past
that, :meth:`submit` raises :class:`~.files.StorageBusyError` and queues
nothing. The server's loop awaits :meth:`wait_writable` before taking the
next ``Ready``, so it never meets a full queue; :meth:`save` does the same.

Snapshots. The snapshot data lives in a :class:`~.snapshots.SnapshotStore`;
the log keeps only markers (index, term, configuration). A snapshot taken
locally: write its file first (``SnapshotStore.write``), then call the core's
``compact(index, b"", retain)``, which calls :meth:`create_snapshot` (checks
the file, queues a marker) and :meth:`compact` (drops entries in memory; whole
segments go once the marker is durable). A snapshot received from the leader:
``begin_receive`` ... ``commit`` the file, step the message into the core, and
submit the ``Ready`` as usual: its snapshot becomes a *reset* marker. Storage's
:meth:`snapshot` returns the meta with empty ``data``: to send one, stream
``SnapshotStore.read(meta)``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread

from coordkit.errors import InvalidArgumentError

from ..core import (
    ConfState,
    Entry,
    HardState,
    Ready,
    Snapshot,
    SnapshotMeta,
    Storage,
    UnavailableError,
)
from .files import OS_FILES, FileSystem, NodeStorageError, StorageBusyError
from .snapshots import SnapshotStore
from .wal_format import segment_name
from .wal_replay import LogView, replay
from .wal_segments import Job, OnDurable, Segment, SegmentFiles, read_segments

__all__ = ["DEFAULT_SEGMENT_SIZE", "OnDurable", "WriteAheadLog", "WriteRequest"]

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_SIZE = 64 << 20


#: A batch write faster than this (moving average) runs on the event loop itself.
INLINE_BELOW = 0.0002


def _timed(fn: Callable[[list[Job]], None], jobs: list[Job]) -> float:
    started = time.perf_counter()
    fn(jobs)
    return time.perf_counter() - started


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """What one ``Ready`` asks to persist, applied in this order: snapshot, entries, hard state.

    ``snapshot`` is the meta of a snapshot installed from the leader (its file
    already committed in the snapshot store): it replaces the whole log.
    """

    entries: tuple[Entry, ...] = ()
    hard_state: HardState | None = None
    snapshot: SnapshotMeta | None = None
    must_sync: bool = False

    @staticmethod
    def from_ready(rd: Ready) -> WriteRequest:
        snap = rd.snapshot.meta if rd.snapshot is not None else None
        return WriteRequest(rd.entries, rd.hard_state, snap, rd.must_sync)

    @property
    def size(self) -> int:
        """Bytes charged against the queue bound."""
        return 64 + sum(len(e.data) + 32 for e in self.entries)


# -- the log ---------------------------------------------------------------------------------


class WriteAheadLog(Storage):
    """The Raft node's durable log; open it with :meth:`open`."""

    def __init__(
        self,
        directory: Path,
        snapshots: SnapshotStore,
        view: LogView,
        files: SegmentFiles,
        max_pending: int,
        max_pending_bytes: int,
    ) -> None:
        self.directory = directory
        self._snapshots = snapshots
        self._view = view
        self._files = files
        self._snapshot_value = Snapshot(view.snapshot)
        self._max_pending = max_pending
        self._max_pending_bytes = max_pending_bytes
        self._queue: deque[Job] = deque()
        self._pending = 0  # requests and bytes in the queue that count against the bound
        self._pending_bytes = 0
        # What the log will look like once everything queued is written, to check requests.
        self._next_index = view.last_index() + 1
        self._queued_snapshot = view.snapshot.index
        self._work = anyio.Event()
        self._room = anyio.Event()
        self._room.set()
        self._limiter = anyio.CapacityLimiter(1)
        #: moving average of a batch write's duration (starts on the thread)
        self._write_seconds = INLINE_BELOW * 10
        self._running = False
        self._stopping = False
        self._closed = False
        self._failure: BaseException | None = None
        self._waiters: set[anyio.Event] = set()

    @classmethod
    async def open(
        cls,
        directory: Path | str,
        *,
        snapshots: SnapshotStore,
        fs: FileSystem = OS_FILES,
        initial_conf: ConfState | None = None,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        max_pending: int = 4096,
        max_pending_bytes: int = 64 << 20,
    ) -> WriteAheadLog:
        """Recover the log in ``directory`` (which must exist) and get it ready to append.

        A torn tail of the last segment is cut off (one WARNING line); damage
        anywhere else raises :class:`~.files.CorruptLogError` naming the file
        and byte offset. The log replays from the newest snapshot marker whose
        file in ``snapshots`` verifies. ``initial_conf`` is the configuration
        of a new cluster: it is recorded (as a snapshot at index 0) only if the
        log has no snapshot marker yet, and ignored otherwise.
        """
        path = Path(directory)
        if segment_size < 4096:
            raise InvalidArgumentError(f"segment_size must be at least 4096, not {segment_size}")
        if max_pending < 1 or max_pending_bytes < 1:
            raise InvalidArgumentError("max_pending and max_pending_bytes must be positive")
        decoded = await anyio.to_thread.run_sync(read_segments, fs, path)

        def is_valid(meta: SnapshotMeta) -> bool:
            return snapshots.contains(meta)

        while True:
            view, marker = replay(path, decoded, is_valid)
            if marker is None or marker.index == 0 or await snapshots.verify(marker):
                break  # verify() dropped a damaged file from the store: replay again without it
        if marker is None and initial_conf is not None:
            marker = SnapshotMeta(0, 0, initial_conf)
            view = LogView(view.hard_state, marker, view.entries)

        segments = [Segment(d.seq, path / segment_name(d.seq), d.max_index) for d in decoded]
        files = SegmentFiles(
            fs, path, segment_size, segments, view.hard_state, marker, view.base_index
        )
        if decoded:
            await anyio.to_thread.run_sync(files.resume, decoded[-1])
        else:
            await anyio.to_thread.run_sync(files.start, 1)
        log.info(
            "write-ahead log %s opened: %d segment(s), entries %d..%d, snapshot at %d,"
            " term %d, commit %d",
            path,
            len(files.segments),
            view.first_index(),
            view.last_index(),
            view.snapshot.index,
            view.hard_state.term,
            view.hard_state.commit,
        )
        return cls(path, snapshots, view, files, max_pending, max_pending_bytes)

    # -- Storage: reads, from memory --------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._view.hard_state, self._view.snapshot.conf

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        return self._view.slice(lo, hi, max_size)

    def term(self, index: int) -> int:
        return self._view.term(index)

    def first_index(self) -> int:
        return self._view.first_index()

    def last_index(self) -> int:
        return self._view.last_index()

    def snapshot(self) -> Snapshot:
        """The current snapshot's meta; ``data`` is empty (stream it from the snapshot store)."""
        if self._snapshot_value.meta is not self._view.snapshot:
            self._snapshot_value = Snapshot(self._view.snapshot)
        return self._snapshot_value

    @property
    def hard_state(self) -> HardState:
        return self._view.hard_state

    @property
    def fsyncs(self) -> int:
        """How many times the log fsynced a segment (batches and rotations)."""
        return self._files.fsyncs

    @property
    def segment_count(self) -> int:
        return len(self._files.segments)

    # -- Storage: snapshots and compaction --------------------------------------------------

    def create_snapshot(self, index: int, conf: ConfState, data: bytes) -> Snapshot:
        """Record the snapshot at ``index``, whose file must already be in the snapshot store.

        ``data`` must be empty: snapshot data goes through the snapshot store.
        The marker is queued for the writer; the returned snapshot has no data.
        """
        if data:
            raise InvalidArgumentError(
                "the write-ahead log keeps no snapshot data: write it with SnapshotStore.write"
                " and pass b''"
            )
        self._check_usable()
        view = self._view
        if index <= view.snapshot.index:
            return self.snapshot()
        if index > view.last_index():
            raise UnavailableError(f"snapshot index {index} is past the last index")
        meta = SnapshotMeta(index, view.term(index), conf)
        if not self._snapshots.contains(meta):
            raise NodeStorageError(
                f"no snapshot file for index {index} term {meta.term} {conf}: write it with"
                " SnapshotStore.write before compacting"
            )
        view.snapshot = meta
        self._queued_snapshot = max(self._queued_snapshot, index)
        self._enqueue(Job(snapshot=meta, must_sync=True))
        return self.snapshot()

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` from memory; their segments go once covered on disk."""
        view = self._view
        if index <= view.base_index:
            return
        if index > view.snapshot.index:
            raise ValueError(f"compact({index}) past the snapshot at {view.snapshot.index}")
        view.compact(index)
        self._enqueue(Job(compact_to=index))

    # -- writing -----------------------------------------------------------------------------

    def submit(self, request: WriteRequest, on_durable: OnDurable | None = None) -> None:
        """Queue ``request``; ``on_durable()`` runs once it is durable. Never blocks.

        Raises :class:`~.files.StorageBusyError` (queue full) or
        InvalidArgumentError (a request that does not continue the log), having
        queued nothing.
        """
        self._check_usable()
        if not isinstance(request, WriteRequest):
            raise InvalidArgumentError(f"expected a WriteRequest, not {type(request).__name__}")
        size = request.size
        over = self._pending_bytes + size > self._max_pending_bytes
        if self._pending and (self._pending >= self._max_pending or over):
            raise StorageBusyError(
                f"the write-ahead log queue is full ({self._pending} requests,"
                f" {self._pending_bytes} bytes); wait_writable() first"
            )
        next_index, queued_snapshot = self._check(request)
        self._next_index, self._queued_snapshot = next_index, queued_snapshot
        self._pending += 1
        self._pending_bytes += size
        if self._pending >= self._max_pending or self._pending_bytes >= self._max_pending_bytes:
            self._room = anyio.Event()
        self._enqueue(
            Job(
                request.entries,
                request.hard_state,
                request.snapshot,
                reset=request.snapshot is not None,
                must_sync=request.must_sync,
                on_durable=on_durable,
                size=size,
            )
        )

    def _check(self, request: WriteRequest) -> tuple[int, int]:
        next_index, queued_snapshot = self._next_index, self._queued_snapshot
        snap = request.snapshot
        if snap is not None:
            if not self._snapshots.contains(snap):
                raise InvalidArgumentError(
                    f"no snapshot file for {snap}: commit it to the snapshot store first"
                )
            if snap.index > queued_snapshot:
                queued_snapshot = snap.index
                next_index = snap.index + 1
        if request.entries:
            first = request.entries[0].index
            for a, b in zip(request.entries, request.entries[1:], strict=False):
                if b.index != a.index + 1:
                    raise InvalidArgumentError(f"entries not contiguous: {a.index} then {b.index}")
            if first < 1 or first > next_index:
                raise InvalidArgumentError(
                    f"entries from {first} do not continue the log (next index {next_index})"
                )
            next_index = max(request.entries[-1].index + 1, queued_snapshot + 1)
        return next_index, queued_snapshot

    def _enqueue(self, job: Job) -> None:
        self._queue.append(job)
        self._work.set()

    async def wait_writable(self) -> None:
        """Return once :meth:`submit` will accept a request (the queue is below its bounds)."""
        while not self._room.is_set():
            self._check_usable()
            await self._room.wait()
        self._check_usable()

    async def save(self, request: WriteRequest) -> None:
        """Submit ``request`` and wait until it is durable (needs a running writer).

        Cancelling the wait does not withdraw the request.
        """
        if not self._running:
            raise NodeStorageError("save() needs a running writer: `async with wal.writer():`")
        await self.wait_writable()
        done = anyio.Event()
        durable = False

        def on_durable() -> None:
            nonlocal durable
            durable = True
            done.set()

        self.submit(request, on_durable)
        self._waiters.add(done)
        try:
            await done.wait()
        finally:
            self._waiters.discard(done)
        if not durable:
            self._check_usable()

    @asynccontextmanager
    async def writer(self) -> AsyncIterator[WriteAheadLog]:
        """Run the writer task for the duration of the block.

        On a normal exit, everything submitted is written (and called back)
        before the block ends. If the block raises or is cancelled, the batch
        being written is finished (a batch is never half applied) and the rest
        stays queued, unwritten. If writing fails (or an ``on_durable``
        callback raises), the block is cancelled and ends with
        NodeStorageError, and the log refuses further use: after a failed
        fsync nothing written since the last good one can be trusted.
        """
        if self._running:
            raise NodeStorageError("the write-ahead log's writer is already running")
        self._check_usable()
        self._running, self._stopping = True, False
        body_error: Exception | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._write_loop, tg.cancel_scope)
                try:
                    yield self
                except Exception as exc:  # re-raised below, outside the task group
                    body_error = exc
                    tg.cancel_scope.cancel()
                else:
                    self._stopping = True
                    self._work.set()
        finally:
            self._running = False
        if self._failure is not None:
            raise NodeStorageError(
                f"write-ahead log {self.directory}: writing failed: {self._failure!r}"
            ) from self._failure
        if body_error is not None:
            raise body_error

    async def _write_loop(self, scope: anyio.CancelScope) -> None:
        while True:
            while not self._queue:
                if self._stopping:
                    return
                self._work = anyio.Event()
                await self._work.wait()
            await anyio.lowlevel.checkpoint_if_cancelled()
            jobs = list(self._queue)
            self._queue.clear()
            self._pending = self._pending_bytes = 0
            self._room.set()
            # Shielded: a batch is written and applied to the view whole, or not at all.
            with anyio.CancelScope(shield=True):
                try:
                    await self._write_batch(jobs)
                except Exception as exc:
                    self._fail(exc, scope)
                    return
                self._apply(jobs)
            for job in jobs:
                if job.on_durable is not None:
                    try:
                        job.on_durable()
                    except Exception as exc:
                        self._fail(exc, scope)
                        return

    async def _write_batch(self, jobs: list[Job]) -> None:
        """Write (and fsync) a batch: on this thread when the storage has been fast.

        Handing a batch to a worker thread and back costs a few tens of
        microseconds of CPU and, on a busy machine, a GIL handoff of up to the
        switch interval; on tmpfs or a disk with a battery-backed cache the
        write itself costs less. The time of each write (measured where it
        runs) feeds a moving average: below ``INLINE_BELOW`` the next batch is
        written inline, blocking the event loop for about that long; once
        writes slow down (a real fsync), batches go to the thread again so the
        loop keeps replicating and serving meanwhile.
        """
        if self._write_seconds < INLINE_BELOW:
            elapsed = _timed(self._files.write_batch, jobs)
        else:
            elapsed = await anyio.to_thread.run_sync(
                _timed, self._files.write_batch, jobs, limiter=self._limiter
            )
        self._write_seconds = 0.8 * self._write_seconds + 0.2 * elapsed

    def _apply(self, jobs: list[Job]) -> None:
        view = self._view
        for job in jobs:
            if job.snapshot is not None and job.reset:
                view.install(job.snapshot)
            if job.entries:
                view.append(job.entries)
            if job.hard_state is not None:
                view.hard_state = job.hard_state

    def _fail(self, exc: BaseException, scope: anyio.CancelScope) -> None:
        if self._failure is None:
            self._failure = exc
            log.error(
                "write-ahead log %s failed; it refuses further use", self.directory, exc_info=exc
            )
        self._room.set()
        for waiter in self._waiters:
            waiter.set()
        scope.cancel()

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise NodeStorageError(
                f"write-ahead log {self.directory} failed earlier: {self._failure!r}"
            )
        if self._closed:
            raise NodeStorageError(f"write-ahead log {self.directory} is closed")

    async def close(self) -> None:
        """Close the segment file (the writer must have stopped); idempotent."""
        if self._running:
            raise NodeStorageError("close the write-ahead log after its writer() block")
        if not self._closed:
            self._closed = True
            self._room.set()
            await anyio.to_thread.run_sync(self._files.close)
