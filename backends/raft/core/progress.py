"""What the leader knows about each follower's log, and how it paces replication.

Each follower's progress is in one of three states (after etcd-io/raft's tracker):

- PROBE: we do not know where the follower's log matches ours; send at most one
  append per heartbeat interval and move ``next`` back on each rejection.
- REPLICATE: the logs match up to ``match``; stream appends optimistically
  (``next`` runs ahead of ``match``), bounded by the in-flight window.
- SNAPSHOT: the entries it needs are compacted; a snapshot is on its way and
  nothing else is sent until the follower acknowledges an index we still have.

Invariant: ``match < next``.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

__all__ = ["Inflights", "Progress", "ProgressState"]


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@dataclass(slots=True)
class Inflights:
    """Appends sent but not acknowledged, bounded by count and by bytes.

    Each item is (last index in the append, bytes). Acks free every item up to
    the acknowledged index, in order.
    """

    max_count: int
    max_bytes: int
    _items: deque[tuple[int, int]] = field(default_factory=deque)
    _bytes: int = 0

    def add(self, index: int, size: int) -> None:
        self._items.append((index, size))
        self._bytes += size

    def free_le(self, index: int) -> None:
        while self._items and self._items[0][0] <= index:
            self._bytes -= self._items.popleft()[1]

    def free_first_one(self) -> None:
        if self._items:
            self._bytes -= self._items.popleft()[1]

    def full(self) -> bool:
        return len(self._items) >= self.max_count or self._bytes >= self.max_bytes

    def reset(self) -> None:
        self._items.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)


@dataclass(slots=True)
class Progress:
    match: int
    next: int
    inflights: Inflights
    is_learner: bool = False
    state: ProgressState = ProgressState.PROBE
    # PROBE: an append is outstanding; wait for its answer or the next heartbeat.
    probe_sent: bool = False
    # SNAPSHOT: the index of the snapshot sent, and ticks spent waiting for it.
    pending_snapshot: int = 0
    snapshot_ticks: int = 0
    # Heard from since the last check-quorum round.
    recent_active: bool = True

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_ticks = 0
        self.inflights.reset()

    def become_probe(self) -> None:
        # After a snapshot, the follower holds at least the snapshot's index.
        floor = self.pending_snapshot + 1 if self.state is ProgressState.SNAPSHOT else 0
        self._reset(ProgressState.PROBE)
        self.next = max(self.match + 1, floor)

    def become_replicate(self) -> None:
        self._reset(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = index

    def maybe_update(self, index: int) -> bool:
        """Record an acknowledgement of ``index``; False if it tells us nothing new."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def sent_entries(self, last_index: int | None, size: int) -> None:
        """An append ending at ``last_index`` (None: no entries) went out."""
        if self.state is ProgressState.REPLICATE:
            if last_index is not None:
                self.next = last_index + 1
                self.inflights.add(last_index, size)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """Back off after the follower rejected an append at ``rejected``.

        False if the rejection is stale (an answer to an older append).
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True
