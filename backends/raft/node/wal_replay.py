"""The write-ahead log in memory, and how it is rebuilt from the records on disk.

:class:`LogView` is what the Raft core reads through the ``Storage`` interface:
the hard state, the snapshot meta, and the entries after the compaction point.
:func:`replay` rebuilds it from the decoded segments with the same rules the
live log follows, so a reopened log is exactly the durable part of the old one:

- an ENTRIES record whose first index is at or below the last stored index
  replaces the stored suffix from there (etcd's rule: a follower overwriting a
  conflicting suffix just appends);
- a SNAPSHOT marker at or below the current snapshot is ignored; a *reset*
  marker (a snapshot installed from the leader) drops every stored entry; a
  marker whose snapshot file is not valid is skipped (logged), and the log
  then falls back on the newest marker that has one;
- entries at or below the snapshot are dropped.

Old segments are deleted only once a durable snapshot covers them, so the
oldest surviving segment may start anywhere: replay accepts a jump in entry
indexes and checks at the end that nothing between the snapshot and the first
entry is missing, and that the commit index is within the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from ..core import (
    CompactedError,
    Entry,
    HardState,
    SnapshotMeta,
    UnavailableError,
)
from ..core.storage import limit_size
from .files import NodeStorageError
from .wal_format import DecodedSegment, EntriesRecord, HardStateRecord, SnapshotRecord

__all__ = ["LogView", "replay"]

log = logging.getLogger(__name__)


class LogView:
    """The stable log held in memory; every read of the core is served from here.

    Invariants: ``entries[i].index == base_index + 1 + i``; ``base_index <=
    snapshot.index``; ``term(base_index) == base_term``.
    """

    __slots__ = ("base_index", "base_term", "entries", "hard_state", "snapshot")

    def __init__(
        self,
        hard_state: HardState,
        snapshot: SnapshotMeta,
        entries: list[Entry],
    ) -> None:
        self.hard_state = hard_state
        self.snapshot = snapshot
        self.base_index = snapshot.index
        self.base_term = snapshot.term
        self.entries = entries

    def first_index(self) -> int:
        return self.base_index + 1

    def last_index(self) -> int:
        return self.base_index + len(self.entries)

    def term(self, index: int) -> int:
        base = self.base_index
        if index < base:
            raise CompactedError(f"index {index} is compacted (log starts after {base})")
        if index > self.last_index():
            raise UnavailableError(f"index {index} is past the last index {self.last_index()}")
        return self.base_term if index == base else self.entries[index - base - 1].term

    def slice(self, lo: int, hi: int, max_size: int | None) -> list[Entry]:
        base = self.base_index
        if lo <= base:
            raise CompactedError(f"index {lo} is compacted (log starts after {base})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"index {hi - 1} is past the last index {self.last_index()}")
        return limit_size(self.entries[lo - base - 1 : hi - base - 1], max_size)

    def append(self, entries: Sequence[Entry]) -> None:
        """Append contiguous ``entries``, replacing stored ones from the first on.

        Entries at or below the compaction point are skipped. The caller has
        checked that ``entries`` start at most one past the last index.
        """
        base = self.base_index
        if entries and entries[0].index <= base:
            entries = [e for e in entries if e.index > base]
        if not entries:
            return
        del self.entries[entries[0].index - base - 1 :]
        self.entries.extend(entries)

    def install(self, meta: SnapshotMeta) -> None:
        """Replace the whole log by snapshot ``meta`` (installed from the leader)."""
        if meta.index <= self.snapshot.index:
            return
        self.snapshot = meta
        self.base_index, self.base_term = meta.index, meta.term
        self.entries = []

    def compact(self, index: int) -> None:
        """Drop the entries up to ``index`` (at most the snapshot index)."""
        if index <= self.base_index:
            return
        self.base_term = self.term(index)
        del self.entries[: index - self.base_index]
        self.base_index = index


def replay(
    directory: Path,
    segments: Sequence[DecodedSegment],
    is_valid: Callable[[SnapshotMeta], bool],
) -> tuple[LogView, SnapshotMeta | None]:
    """Rebuild the log from decoded segments (oldest first).

    Returns the view and the effective snapshot marker (None if the log has
    none). ``is_valid(meta)`` says whether marker ``meta`` has a usable
    snapshot file. Raises NodeStorageError if the log cannot be rebuilt.
    """
    hard_state = HardState()
    snap: SnapshotMeta | None = None
    floor = 0  # nothing at or below the newest reset marker can be recovered from the log
    ents: list[Entry] = []
    for seg in segments:
        for _, record in seg.records:
            if isinstance(record, HardStateRecord):
                hard_state = record.hard_state
            elif isinstance(record, EntriesRecord):
                new = record.entries
                if snap is not None and new[0].index <= snap.index:
                    new = new[snap.index + 1 - new[0].index :]
                    if not new:
                        continue
                first = new[0].index
                if not ents or first > ents[-1].index + 1 or first <= ents[0].index:
                    ents = list(new)
                else:
                    del ents[first - ents[0].index :]
                    ents.extend(new)
            elif isinstance(record, SnapshotRecord):
                meta = record.meta
                if snap is not None and meta.index <= snap.index:
                    continue
                if record.reset:
                    ents = []
                    floor = max(floor, meta.index)
                if meta.index == 0 or is_valid(meta):
                    snap = meta
                    ents = [e for e in ents if e.index > meta.index]
                else:
                    log.warning(
                        "write-ahead log in %s: the snapshot at index %d (term %d) it refers to"
                        " has no valid file; falling back on an older one",
                        directory,
                        meta.index,
                        meta.term,
                    )
    base = snap if snap is not None else SnapshotMeta()
    if base.index < floor:
        raise NodeStorageError(
            f"write-ahead log in {directory}: the snapshot installed at index {floor} has no"
            " valid file, and the log before it is gone; wipe this node and re-add it"
        )
    if ents and ents[0].index > base.index + 1:
        raise NodeStorageError(
            f"write-ahead log in {directory}: entries {base.index + 1}..{ents[0].index - 1}"
            f" are missing (the newest usable snapshot is at index {base.index})"
        )
    last = ents[-1].index if ents else base.index
    if hard_state.commit > last:
        raise NodeStorageError(
            f"write-ahead log in {directory}: the commit index {hard_state.commit} is past"
            f" the last entry {last}"
        )
    return LogView(hard_state, base, ents), snap
