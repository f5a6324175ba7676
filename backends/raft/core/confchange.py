"""Membership: one voter at a time, in force from the moment it is in the log.

Approach (Raft dissertation §4.1, with the errata fix):

- A configuration change entry carries the whole resulting configuration.
  Every node uses the latest configuration in its log, committed or not, and
  falls back to an earlier one when a conflicting suffix is truncated.
- A change adds or removes at most one voter (learners are free), so any
  majority of the old voters intersects any majority of the new ones.
- The leader proposes a change only when (a) the previous change is committed
  and (b) an entry of its own term is committed. Rule (b) is the fix for the
  single-server bug found after the dissertation: without it, two leaders in
  successive terms can each append a one-step change from the same base and
  end up with disjoint majorities.

:class:`Membership` tracks the configuration entries of the log so that the
current configuration, and the one in force at any index (needed for
snapshots), are cheap to answer.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import ConfChangeError
from .messages import ConfChange, ConfChangeType, ConfState, Entry, EntryType

__all__ = ["Membership", "apply_change"]


def apply_change(conf: ConfState, change_type: ConfChangeType, node: str) -> ConfState:
    """The configuration after one change, checking what makes it safe.

    Raises ConfChangeError for a change that would do nothing or leave no voter.
    """
    voters, learners = set(conf.voters), set(conf.learners)
    if change_type is ConfChangeType.ADD_VOTER:
        if node in voters:
            raise ConfChangeError(f"{node} is already a voter")
        learners.discard(node)
        voters.add(node)
    elif change_type is ConfChangeType.ADD_LEARNER:
        if node in learners:
            raise ConfChangeError(f"{node} is already a learner")
        voters.discard(node)
        learners.add(node)
    else:
        if node not in voters and node not in learners:
            raise ConfChangeError(f"{node} is not a member")
        voters.discard(node)
        learners.discard(node)
    if not voters:
        raise ConfChangeError("a configuration needs at least one voter")
    new = ConfState.of(voters, learners)
    # One voter at a time: the voter sets differ by at most one member.
    assert len(set(new.voters) ^ set(conf.voters)) <= 1
    return new


class Membership:
    """The configuration entries of one node's log, above its snapshot.

    Invariant: ``_changes`` holds (index, configuration) for every
    configuration entry in the log after ``base_index``, in index order.
    """

    def __init__(self, base_index: int, base: ConfState) -> None:
        self.base_index = base_index
        self.base = base
        self._changes: list[tuple[int, ConfState]] = []

    @property
    def conf(self) -> ConfState:
        """The configuration in force now: the latest one in the log."""
        return self._changes[-1][1] if self._changes else self.base

    @property
    def latest_index(self) -> int:
        """Index of the latest configuration entry (the base index if none)."""
        return self._changes[-1][0] if self._changes else self.base_index

    def conf_at(self, index: int) -> ConfState:
        """The configuration in force at ``index`` (>= base_index)."""
        conf = self.base
        for i, c in self._changes:
            if i > index:
                break
            conf = c
        return conf

    def observe(self, entries: Iterable[Entry]) -> bool:
        """Entries were written to the log, replacing anything from the first one on.

        Returns True if the current configuration may have changed.
        """
        changed = False
        first = True
        for e in entries:
            if first:
                first = False
                while self._changes and self._changes[-1][0] >= e.index:
                    self._changes.pop()
                    changed = True
            if e.type is EntryType.CONF_CHANGE:
                self._changes.append((e.index, ConfChange.decode(e.data).result))
                changed = True
        return changed

    def restore(self, index: int, conf: ConfState) -> None:
        """The log was replaced by a snapshot at ``index``."""
        self.base_index, self.base = index, conf
        self._changes = []

    def compact(self, index: int) -> None:
        """The log up to ``index`` now lives in a snapshot."""
        if index <= self.base_index:
            return
        self.base = self.conf_at(index)
        self.base_index = index
        self._changes = [(i, c) for i, c in self._changes if i > index]
