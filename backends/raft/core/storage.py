"""The storage contract of the Raft core, and an in-memory implementation.

The core reads the durable log through :class:`Storage`; the application writes
into it while handling a :class:`~.messages.Ready` (append entries, store the
hard state, apply a snapshot). :class:`MemoryStorage` is the reference
implementation: the simulator uses it as each node's "disk" (it survives a
simulated crash, the core does not), and the write-ahead log implements the
same contract on real files.

Layout invariant: the storage holds the contiguous entries ``first_index() ..
last_index()``, and a snapshot (index 0 and term 0 for a new log) whose index is
at least ``first_index() - 1``: everything compacted away is in the snapshot.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from .errors import CompactedError, UnavailableError
from .messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta

__all__ = ["MemoryStorage", "Storage", "limit_size"]


def limit_size(entries: list[Entry], max_size: int | None) -> list[Entry]:
    """The longest prefix within ``max_size`` bytes, but never less than one entry."""
    if max_size is None or not entries:
        return entries
    total = 0
    for i, e in enumerate(entries):
        total += e.size
        if total > max_size and i > 0:
            return entries[:i]
    return entries


class Storage(abc.ABC):
    """What the core needs to read back from durable storage."""

    @abc.abstractmethod
    def initial_state(self) -> tuple[HardState, ConfState]:
        """The last stored hard state, and the configuration of the stored snapshot."""

    @abc.abstractmethod
    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``, at most ``max_size`` bytes but at least one.

        Raises CompactedError if ``lo < first_index()`` and UnavailableError if
        ``hi > last_index() + 1``.
        """

    @abc.abstractmethod
    def term(self, index: int) -> int:
        """Term of the entry at ``index``; valid for ``first_index() - 1 .. last_index()``."""

    @abc.abstractmethod
    def first_index(self) -> int:
        """Index of the first entry still available (snapshot index + 1)."""

    @abc.abstractmethod
    def last_index(self) -> int:
        """Index of the last stored entry (the snapshot index when there are none)."""

    @abc.abstractmethod
    def snapshot(self) -> Snapshot:
        """The most recent snapshot."""

    @abc.abstractmethod
    def create_snapshot(self, index: int, conf: ConfState, data: bytes) -> Snapshot:
        """Record ``data`` as the state after applying ``index``; the log is kept."""

    @abc.abstractmethod
    def compact(self, index: int) -> None:
        """Drop entries up to and including ``index`` (which a snapshot must cover)."""


class MemoryStorage(Storage):
    """Storage kept in memory; "durable" for as long as the object lives."""

    def __init__(self, conf: ConfState | None = None) -> None:
        self._hard_state = HardState()
        self._snapshot = Snapshot(SnapshotMeta(conf=conf or ConfState()))
        # The compaction point: entries up to _base_index are gone; _entries[i]
        # has index _base_index + 1 + i. Invariant: _base_index <= snapshot index.
        self._base_index = 0
        self._base_term = 0
        self._entries: list[Entry] = []

    # -- reads -----------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._snapshot.meta.conf

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    def first_index(self) -> int:
        return self._base_index + 1

    def last_index(self) -> int:
        return self._base_index + len(self._entries)

    def term(self, index: int) -> int:
        base = self._base_index
        if index < base:
            raise CompactedError(f"index {index} is compacted (log starts after {base})")
        if index > self.last_index():
            raise UnavailableError(f"index {index} is past the last index {self.last_index()}")
        return self._base_term if index == base else self._entries[index - base - 1].term

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        base = self._base_index
        if lo <= base:
            raise CompactedError(f"index {lo} is compacted (log starts after {base})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"index {hi - 1} is past the last index {self.last_index()}")
        return limit_size(self._entries[lo - base - 1 : hi - base - 1], max_size)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def all_entries(self) -> Sequence[Entry]:
        """Every stored entry after the compaction point (for tests and checkers)."""
        return tuple(self._entries)

    # -- writes (done by the application while handling a Ready) ---------------

    def set_hard_state(self, hs: HardState) -> None:
        self._hard_state = hs

    def append(self, entries: Sequence[Entry]) -> None:
        """Append ``entries``, replacing any stored entries at or after the first one."""
        if not entries:
            return
        base = self._base_index
        first = entries[0].index
        if first > self.last_index() + 1:
            raise ValueError(f"gap: appending {first} after last index {self.last_index()}")
        if first <= base:
            # Entries already covered by the compaction point are skipped.
            entries = [e for e in entries if e.index > base]
            if not entries:
                return
            first = entries[0].index
        del self._entries[first - base - 1 :]
        self._entries.extend(entries)

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the whole log by ``snap`` (a snapshot received from the leader).

        The core only asks for this when its log does not already contain the
        snapshot's last entry, so no stored entry is worth keeping.
        """
        if snap.meta.index <= self._snapshot.meta.index:
            return
        self._snapshot = snap
        self._base_index, self._base_term = snap.meta.index, snap.meta.term
        self._entries = []

    def create_snapshot(self, index: int, conf: ConfState, data: bytes) -> Snapshot:
        if index <= self._snapshot.meta.index:
            return self._snapshot
        if index > self.last_index():
            raise UnavailableError(f"snapshot index {index} is past the last index")
        self._snapshot = Snapshot(SnapshotMeta(index, self.term(index), conf), data)
        return self._snapshot

    def compact(self, index: int) -> None:
        if index <= self._base_index:
            return
        if index > self._snapshot.meta.index:
            raise ValueError(f"compact({index}) past the snapshot at {self._snapshot.meta.index}")
        self._base_term = self.term(index)
        del self._entries[: index - self._base_index]
        self._base_index = index
