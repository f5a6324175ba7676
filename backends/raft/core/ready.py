"""The application-facing cycle of RaftCore: hand out a Ready, hear back what was done.

Two contracts, picked by ``RaftConfig.async_storage_writes`` (details on
:class:`~.messages.Ready`):

- synchronous (default): ``ready()``, persist, send, apply, ``advance()``;
  one Ready at a time. ``advance()`` says "durable, sent and applied".
- asynchronous: ``ready()``, hand the writes to a writer, send, apply,
  ``advance()``; ``ready()`` again at once, while earlier writes are in
  flight. ``persisted()``, called in Ready order as the writes become durable,
  says "durable": only then are entries stable, does the leader count its own
  copy towards a commit and a candidate its own vote.

Invariants:

- A committed entry is durable on a majority of the voters that counted it:
  followers acknowledge only after their write (the acknowledgement waits in
  ``persisted_messages``), and the leader counts itself only for what
  persisted()/advance() reported durable (etcd#14370 was the bug this rules out).
- With asynchronous writes, committed entries are handed out for applying only
  once durable here. The application may persist its state machine apart
  from the log (snapshots via compact(), which needs the entry in Storage);
  an applied entry the log could lose in a crash would leave that state ahead
  of the log, and a restart would find ``applied > last index``.
- An entry leaves the unstable log only when Storage holds it and no write
  still in flight will change Storage at its index: a write counts as proof
  only if the node's term has not changed since it was handed out (within one
  term a log index changes at most once, from a stale entry to the leader's;
  across terms, a later write in flight may replace the entry and yet another
  put it back, the ABA case etcd's rawnode.go describes).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .leader import LeaderRole
from .messages import HardState, Ready, Role, SoftState

__all__ = ["ReadyCycle"]


@dataclass(frozen=True, slots=True)
class _Handout:
    """A Ready whose writes were handed out, and the log as it stood then."""

    ready: Ready
    term: int  # the node's term when it was handed out
    last_index: int  # the log's last entry then, if any entry was unstable (else 0)
    last_term: int


class ReadyCycle(LeaderRole):
    """Ready / advance / persisted for RaftCore; holds no state of its own."""

    vote: str | None
    _prev_soft: SoftState
    _prev_hard: HardState
    _in_ready: Ready | None
    # Async only: Readies handed out and not yet reported durable, oldest first.
    _unpersisted: deque[_Handout]
    # The hard state last reported durable.
    _durable_hard: HardState

    def soft_state(self) -> SoftState:
        raise NotImplementedError  # RaftCore's

    def hard_state(self) -> HardState:
        raise NotImplementedError  # RaftCore's

    def _on_own_vote_durable(self) -> None:
        raise NotImplementedError  # RaftCore's

    def has_ready(self) -> bool:
        """Whether ready() has anything to hand out (never while a Ready awaits advance())."""
        if self._in_ready is not None:
            return False
        if self.msgs or self.msgs_after_persist or self.read_states or self._bcast_pending:
            return True
        u = self.log.unstable
        if u.has_next_entries() or u.next_snapshot() is not None:
            return True
        # Field by field: this runs after every tick and message, so build nothing.
        hard, soft = self._prev_hard, self._prev_soft
        if self.term != hard.term or self.vote != hard.vote or self.log.committed != hard.commit:
            return True
        if self.lead != soft.leader or self.role is not soft.role:
            return True
        return self.log.has_next_committed(not self.cfg.async_storage_writes)

    def ready(self) -> Ready:
        """Hand out what to persist, send and apply; call advance() with it when done.

        With asynchronous writes, also call persisted() with it once its writes
        are durable (see :class:`Ready`).
        """
        if self._in_ready is not None:
            raise RuntimeError("ready() called again before advance()")
        if self._bcast_pending:
            self._bcast_pending = False
            if self.role is Role.LEADER:
                self._bcast_append()
        soft, hard = self.soft_state(), self.hard_state()
        u = self.log.unstable
        entries = tuple(u.next_entries())
        snapshot = u.next_snapshot()
        allow_unstable = not self.cfg.async_storage_writes
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            entries=entries,
            snapshot=snapshot,
            committed_entries=tuple(
                self.log.next_committed(self.cfg.max_committed_size_per_ready, allow_unstable)
            ),
            messages=tuple(self.msgs),
            persisted_messages=tuple(self.msgs_after_persist),
            read_states=tuple(self.read_states),
            must_sync=bool(
                entries
                or snapshot is not None
                or hard.term != self._prev_hard.term
                or hard.vote != self._prev_hard.vote
            ),
        )
        if self.cfg.async_storage_writes:
            last_index = last_term = 0
            if u.entries:
                # Everything up to the log's last entry is in this Ready or an
                # earlier one; once this one is durable, so is all of that.
                last_index, last_term = self.log.last_index(), self.log.last_term()
            self._unpersisted.append(_Handout(rd, self.term, last_index, last_term))
        u.accept_in_progress()
        self.msgs = []
        self.msgs_after_persist = []
        self.read_states = []
        self._prev_soft, self._prev_hard = soft, hard
        self._in_ready = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The application handled ``rd``.

        Synchronous writes: everything in it is persisted, sent and applied.
        Asynchronous writes: its writes are handed to the writer (not yet
        durable: persisted() says when), its ``messages`` sent and its committed
        entries applied.
        """
        if rd is not self._in_ready:
            raise RuntimeError("advance() needs the Ready returned by the last ready()")
        self._in_ready = None
        if not self.cfg.async_storage_writes:
            if rd.snapshot is not None:
                self.log.stable_snap_to(rd.snapshot.meta.index)
            if rd.entries:
                self.log.stable_to(rd.entries[-1].index, rd.entries[-1].term)
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)
            applied = sum(len(e.data) for e in rd.committed_entries)
            self.uncommitted_size = max(0, self.uncommitted_size - applied)
        if not self.cfg.async_storage_writes:
            self._on_durable()

    def persisted(self, rd: Ready) -> None:
        """Asynchronous writes only: ``rd``'s snapshot, entries and hard state are durable.

        Call it for every Ready, in the order ready() returned them (before or
        after advance(rd)), once the writer made rd's writes durable and the
        application wrote them into the core's Storage; then send
        ``rd.persisted_messages``. The leader now counts its own copy of the
        entries towards a commit, and a candidate its own vote; either may
        produce work for the next ready().
        """
        if not self.cfg.async_storage_writes:
            raise RuntimeError("persisted() needs RaftConfig.async_storage_writes")
        if not self._unpersisted or self._unpersisted[0].ready is not rd:
            raise RuntimeError("persisted() must be called once per Ready, in Ready order")
        done = self._unpersisted.popleft()
        if rd.snapshot is not None:
            self.log.stable_snap_to(rd.snapshot.meta.index)
        if done.last_index and done.term == self.term:
            self.log.stable_to(done.last_index, done.last_term)
        if rd.hard_state is not None:
            self._durable_hard = rd.hard_state
        self._on_durable()

    def _on_durable(self) -> None:
        """More of this node's state is durable: count what only durability allows."""
        if self.role is Role.LEADER:
            own = self.prs.get(self.id)
            if (
                own is not None
                and own.maybe_update(self.log.stable_last_index())
                and self._maybe_commit()
            ):
                self._on_commit_advanced()
        elif self.role is Role.CANDIDATE:
            self._on_own_vote_durable()
