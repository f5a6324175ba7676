"""The Raft log as the core sees it: durable entries in Storage plus an unstable tail.

Invariants:

- ``unstable.entries`` are contiguous, start at ``unstable.offset``, and are
  not yet known to be durable; everything before ``offset`` comes from storage
  (or from ``unstable.snapshot`` while one waits to be persisted).
- ``offset <= offset_in_progress <= offset + len(entries)``: the entries below
  ``offset_in_progress`` have been handed out in a Ready and are being written;
  the rest are handed out by the next Ready. Replacing an entry that is being
  written moves ``offset_in_progress`` back, so the replacement is written too.
- ``committed <= last_index()`` and ``applied <= committed``; neither moves back.
- An entry at or below ``committed`` is never overwritten (checked, not assumed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import CompactedError, UnavailableError
from .messages import Entry, Snapshot
from .storage import Storage, limit_size

__all__ = ["RaftLog", "Unstable"]


@dataclass(slots=True)
class Unstable:
    """Entries (and possibly a snapshot) handed out for persistence but not yet durable."""

    offset: int
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    # Entries below this index (and the snapshot, if snapshot_in_progress)
    # were handed out in a Ready and are being written.
    offset_in_progress: int = 0
    snapshot_in_progress: bool = False

    def __post_init__(self) -> None:
        self.offset_in_progress = max(self.offset_in_progress, self.offset)

    def has_next_entries(self) -> bool:
        return self.offset_in_progress < self.offset + len(self.entries)

    def next_entries(self) -> list[Entry]:
        """Entries not handed out yet."""
        return self.entries[self.offset_in_progress - self.offset :]

    def next_snapshot(self) -> Snapshot | None:
        """The snapshot, if it was not handed out yet."""
        return None if self.snapshot_in_progress else self.snapshot

    def accept_in_progress(self) -> None:
        """Everything unstable was just handed out in a Ready."""
        self.offset_in_progress = self.offset + len(self.entries)
        self.snapshot_in_progress = self.snapshot is not None

    def maybe_first_index(self) -> int | None:
        return self.snapshot.meta.index + 1 if self.snapshot is not None else None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        return self.snapshot.meta.index if self.snapshot is not None else None

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            if self.snapshot is not None and self.snapshot.meta.index == index:
                return self.snapshot.meta.term
            return None
        last = self.maybe_last_index()
        if last is None or index > last:
            return None
        return self.entries[index - self.offset].term

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to ``index`` are durable, if the entry there still has ``term``."""
        if self.maybe_term(index) != term or index < self.offset:
            return  # replaced since it was handed out; the newer one is still pending
        del self.entries[: index + 1 - self.offset]
        self.offset = index + 1
        self.offset_in_progress = max(self.offset_in_progress, self.offset)

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.meta.index == index:
            self.snapshot = None
            self.snapshot_in_progress = False

    def restore(self, snap: Snapshot) -> None:
        self.offset = snap.meta.index + 1
        self.offset_in_progress = self.offset
        self.entries = []
        self.snapshot = snap
        self.snapshot_in_progress = False

    def truncate_and_append(self, ents: list[Entry]) -> None:
        first = ents[0].index
        if first == self.offset + len(self.entries):
            self.entries.extend(ents)
        elif first <= self.offset:
            # Replaces part of the durable log too: storage truncates on append.
            self.offset = first
            self.offset_in_progress = first
            self.entries = list(ents)
        else:
            del self.entries[first - self.offset :]
            self.entries.extend(ents)
            self.offset_in_progress = min(self.offset_in_progress, first)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        return self.entries[lo - self.offset : hi - self.offset]


class RaftLog:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.unstable = Unstable(offset=storage.last_index() + 1)
        hs, _ = storage.initial_state()
        # After a restart the application restores its snapshot, then re-applies
        # the committed entries after it.
        self.applied = storage.snapshot().meta.index
        self.committed = max(hs.commit, self.applied)

    # -- shape -----------------------------------------------------------------

    def first_index(self) -> int:
        i = self.unstable.maybe_first_index()
        return i if i is not None else self.storage.first_index()

    def last_index(self) -> int:
        i = self.unstable.maybe_last_index()
        return i if i is not None else self.storage.last_index()

    def stable_last_index(self) -> int:
        """The last index known durable and not about to be replaced."""
        if self.unstable.entries or self.unstable.snapshot is not None:
            return self.unstable.offset - 1 if self.unstable.snapshot is None else 0
        return self.storage.last_index()

    def term(self, index: int) -> int | None:
        """The term at ``index``, or None if compacted or past the end."""
        if index < self.first_index() - 1 or index > self.last_index():
            return None
        t = self.unstable.maybe_term(index)
        if t is not None:
            return t
        try:
            return self.storage.term(index)
        except (CompactedError, UnavailableError):
            return None

    def last_term(self) -> int:
        t = self.term(self.last_index())
        assert t is not None, "the last entry always has a term"
        return t

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Whether a log ending at (last_index, term) is at least as up-to-date as ours."""
        lt = self.last_term()
        return term > lt or (term == lt and last_index >= self.last_index())

    # -- reading entries --------------------------------------------------------

    def slice(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``; raises CompactedError below the first index."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise CompactedError(f"index {lo} is compacted")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"index {hi - 1} is past the end of the log")
        ents: list[Entry] = []
        off = self.unstable.offset
        if lo < off:
            ents = self.storage.entries(lo, min(hi, off), max_size)
            if len(ents) < min(hi, off) - lo:
                return ents  # size limit hit inside storage
        if hi > off:
            ents = ents + self.unstable.slice(max(lo, off), hi)
        return limit_size(ents, max_size)

    def entries_from(self, lo: int, max_size: int | None) -> list[Entry]:
        return self.slice(lo, self.last_index() + 1, max_size)

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    # -- changing the log -------------------------------------------------------

    def append(self, ents: list[Entry]) -> None:
        """Append ``ents`` (contiguous), replacing any uncommitted suffix they overlap."""
        if not ents:
            return
        if ents[0].index - 1 < self.committed:
            raise AssertionError(
                f"raft invariant: would overwrite committed index {self.committed} "
                f"with entries from {ents[0].index}"
            )
        self.unstable.truncate_and_append(ents)

    def find_conflict(self, ents: tuple[Entry, ...]) -> int:
        """Index of the first entry in ``ents`` that is new or has another term; 0 if none."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest (index', term') with index' <= index and term' <= term.

        Used for fast backtracking: every entry between the result and
        ``index`` has a term above ``term``, so none of them can match.
        """
        index = min(index, self.last_index())
        while True:
            t = self.term(index)
            if t is None:
                return index, 0
            if t <= term:
                return index, t
            index -= 1

    def maybe_append(
        self, index: int, log_term: int, committed: int, ents: tuple[Entry, ...]
    ) -> tuple[int, list[Entry]] | None:
        """Follower side of AppendEntries.

        Returns None when our log has no entry (index, log_term); otherwise the
        index of the last entry the leader sent, and the entries actually
        written (a suffix of ``ents``; empty if all were already present).
        """
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        ci = self.find_conflict(ents)
        written: list[Entry] = []
        if ci:
            written = list(ents[ci - index - 1 :])
            self.append(written)
        self.commit_to(min(committed, last_new))
        return last_new, written

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise AssertionError(
                    f"raft invariant: commit {index} is past the last index {self.last_index()}"
                )
            self.committed = index

    def applied_to(self, index: int) -> None:
        if index:
            assert self.applied <= index <= self.committed, (self.applied, index, self.committed)
            self.applied = index

    def max_appliable_index(self, allow_unstable: bool) -> int:
        """The last committed index that may be handed out for applying.

        With ``allow_unstable`` False, only entries already durable here (below
        the unstable offset) qualify, even if they are committed.
        """
        if allow_unstable:
            return self.committed
        return min(self.committed, self.unstable.offset - 1)

    def has_next_committed(self, allow_unstable: bool = True) -> bool:
        return (
            self.unstable.snapshot is None
            and self.max_appliable_index(allow_unstable) > self.applied
        )

    def next_committed(self, max_size: int | None, allow_unstable: bool = True) -> list[Entry]:
        """Committed entries not yet handed out for applying (none while a snapshot waits)."""
        if not self.has_next_committed(allow_unstable):
            return []
        return self.slice(self.applied + 1, self.max_appliable_index(allow_unstable) + 1, max_size)

    def restore(self, snap: Snapshot) -> None:
        """Replace the log by a snapshot from the leader (it covers our commit index)."""
        self.committed = snap.meta.index
        self.unstable.restore(snap)

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        self.unstable.stable_snap_to(index)
        self.applied = max(self.applied, index)
