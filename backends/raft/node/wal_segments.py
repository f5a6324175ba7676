"""The write-ahead log's segment files: appending, rotating, deleting, reading back.

:class:`SegmentFiles` is touched only from the log's writer (one worker-thread
call at a time) and while the log opens; :func:`read_segments` decodes the
segments when the log opens and cuts off a torn tail. The byte layout is in
:mod:`.wal_format`, the replay rules in :mod:`.wal_replay`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core import Entry, HardState, SnapshotMeta
from .files import FileSystem, NodeStorageError, WritableFile
from .wal_format import (
    DecodedSegment,
    decode_segment,
    encode_entries,
    encode_hard_state,
    encode_snapshot,
    file_header,
    frame,
    segment_name,
    segment_seq,
)

__all__ = ["Job", "OnDurable", "Segment", "SegmentFiles", "read_segments"]

log = logging.getLogger(__name__)

OnDurable = Callable[[], None]
"""Called (on the event loop, in submission order) once a request is durable."""


@dataclass(slots=True)
class Job:
    """One queued unit of work: a submitted request, or the log's own marker or compaction."""

    entries: tuple[Entry, ...] = ()
    hard_state: HardState | None = None
    snapshot: SnapshotMeta | None = None
    reset: bool = False
    must_sync: bool = False
    compact_to: int = 0
    on_durable: OnDurable | None = None
    size: int = 0  # 0 for the log's own jobs (markers, compaction), which are never refused


@dataclass(slots=True)
class Segment:
    """A segment file of the log, and the highest entry index it holds."""

    seq: int
    path: Path
    max_index: int  # highest entry index written to it (0 if none)


class SegmentFiles:
    """The segment files, written only from the writer (one thread call at a time).

    Every new segment starts with the current hard state and snapshot marker,
    so that older segments hold nothing the newer ones lack but entries: a
    segment whose entries are all covered by a durable snapshot (and the
    compaction point) can go.
    """

    def __init__(
        self,
        fs: FileSystem,
        directory: Path,
        segment_size: int,
        segments: list[Segment],
        hard_state: HardState,
        marker: SnapshotMeta | None,
        compact_to: int,
    ) -> None:
        self.fs = fs
        self.directory = directory
        self.segment_size = segment_size
        self.segments = segments
        self.hard_state = hard_state  # the last written
        self.marker = marker  # the last written (the effective one)
        self.durable_marker = marker.index if marker is not None else 0
        self.compact_to = compact_to
        self.fsyncs = 0
        self._file: WritableFile | None = None
        self._size = 0
        self._start_size = 0  # size of the open segment's header and restated state
        self._crc = 0
        self._buffer: list[bytes] = []

    # -- opening -----------------------------------------------------------------------------

    def resume(self, last: DecodedSegment) -> None:
        """Append to the (recovered) last segment, restating the state first."""
        seg = self.segments[-1]
        self._file = self.fs.open_append(seg.path)
        self._size = self._start_size = last.end
        self._crc = last.crc
        self._restate()
        self._start_size = self._size
        self._write_out(sync=True)

    def start(self, seq: int) -> None:
        """Create segment ``seq`` as the open one (header and restated state, durable)."""
        path = self.directory / segment_name(seq)
        header, self._crc = file_header(seq)
        self._file = self.fs.create(path)
        self.segments.append(Segment(seq, path, 0))
        self._buffer = [header]
        self._size = len(header)
        self._restate()
        self._start_size = self._size
        self._write_out(sync=True)
        self.fs.sync_dir(self.directory)

    def _restate(self) -> None:
        if self.hard_state != HardState():
            self._append(encode_hard_state(self.hard_state), 0, rotate=False)
        if self.marker is not None:
            self._append(encode_snapshot(self.marker, reset=False), 0, rotate=False)

    # -- writing -----------------------------------------------------------------------------

    def _append(self, body: bytes, max_index: int, *, rotate: bool = True) -> None:
        record, crc = frame(body, self._crc)
        full = self._size + len(record) > self.segment_size
        if rotate and full and self._size > self._start_size:
            self._write_out(sync=True)
            assert self._file is not None
            self._file.close()
            self.start(self.segments[-1].seq + 1)
            record, crc = frame(body, self._crc)
        self._buffer.append(record)
        self._size += len(record)
        self._crc = crc
        seg = self.segments[-1]
        seg.max_index = max(seg.max_index, max_index)

    def _write_out(self, *, sync: bool) -> None:
        assert self._file is not None
        if self._buffer:
            self._file.write(b"".join(self._buffer))
            self._buffer.clear()
        if sync:
            self._file.sync()
            self.fsyncs += 1

    def write_batch(self, jobs: list[Job]) -> None:
        """Write every job's records, with one fsync if any job must sync."""
        must_sync = False
        for job in jobs:
            snap = job.snapshot
            if snap is not None and (self.marker is None or snap.index > self.marker.index):
                self._append(encode_snapshot(snap, job.reset), 0)
                self.marker = snap
            if job.entries:
                for body, last_index in encode_entries(job.entries):
                    self._append(body, last_index)
            if job.hard_state is not None:
                self._append(encode_hard_state(job.hard_state), 0)
                self.hard_state = job.hard_state
            self.compact_to = max(self.compact_to, job.compact_to)
            must_sync = must_sync or job.must_sync
        self._write_out(sync=must_sync)
        if must_sync:
            self.durable_marker = self.marker.index if self.marker is not None else 0
        self._delete_covered()

    def _delete_covered(self) -> None:
        # A segment goes when all its entries are covered by a durable snapshot
        # and were compacted away in memory; its hard state and markers are
        # restated at the start of every later segment. Oldest first, never
        # the open one, so the remaining sequence numbers stay consecutive.
        limit = min(self.durable_marker, self.compact_to)
        removed = []
        while len(self.segments) > 1 and self.segments[0].max_index <= limit:
            seg = self.segments.pop(0)
            self.fs.remove(seg.path)
            removed.append(seg.path.name)
        if removed:
            self.fs.sync_dir(self.directory)
            log.info("write-ahead log: removed segments %s (covered by the snapshot)", removed)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_segments(fs: FileSystem, directory: Path) -> list[DecodedSegment]:
    """Decode every segment, cutting off a torn tail of the last one (logged)."""
    if not fs.is_dir(directory):
        raise NodeStorageError(f"write-ahead log directory {directory} does not exist")
    seqs = sorted(s for name in fs.list_dir(directory) if (s := segment_seq(name)) is not None)
    for a, b in itertools.pairwise(seqs):
        if b != a + 1:
            raise NodeStorageError(
                f"write-ahead log in {directory}: segment {segment_name(a + 1)} is missing"
            )
    decoded = []
    for i, seq in enumerate(seqs):
        path = directory / segment_name(seq)
        last = i == len(seqs) - 1
        decoded.append(decode_segment(path, fs.read_bytes(path), seq, last=last))
    if decoded and (torn := decoded[-1].torn) is not None:
        path = directory / segment_name(decoded[-1].seq)
        log.warning(
            "write-ahead log: torn tail in %s at byte %d (%s); %d bytes cut off",
            path,
            torn.offset,
            torn.reason,
            torn.dropped,
        )
        if torn.offset == 0:
            fs.remove(path)
            fs.sync_dir(directory)
            decoded.pop()
        else:
            fs.truncate(path, torn.offset)
            fs.sync_file(path)
    return decoded
