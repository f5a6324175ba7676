"""Client requests waiting on the log: proposals, ReadIndex rounds, the applied index.

Everything here is callback-based: when the ready loop applies an entry or a
ReadIndex answer arrives, the waiting requests' answers are queued on their
connections at once, without a task per request.

* :class:`Proposals`: a write waits for the entry it was proposed as. Only
  the entry at that index *with that term* is its outcome; any other entry
  there (leadership changed and the log was rewritten) fails it with a
  retry, and the client sends it again (its sequence number makes the second
  copy harmless if the first one commits after all).
* :class:`ReadRounds`: linearizable reads share ReadIndex rounds: reads that
  arrive while a round is out join the next one, so a burst of reads costs
  one heartbeat round, not one each. A round's contexts are never reused
  (etcd#20418: a reused ReadIndex id can be confirmed by a stale answer).
* :class:`AppliedIndex`: run callbacks once the state machine has applied an index.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["AppliedIndex", "Outcome", "Proposals", "ReadRound", "ReadRounds", "safely"]

log = logging.getLogger(__name__)


def safely(callback: Callable[..., None], *args: object) -> None:
    """Run a request's callback from the ready loop: a failure of one request is
    logged with its traceback and never stops the loop (the node goes on)."""
    try:
        callback(*args)
    except Exception:
        log.exception("a request's answer failed; the node goes on")


#: called with the encoded result (bytes), or None and a reason to retry.
Outcome = Callable[[bytes | None, str], None]


@dataclass(slots=True)
class _Proposal:
    term: int
    done: Outcome


class Proposals:
    """Writes proposed by this node, by log index, waiting to be applied."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiting: dict[int, _Proposal] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def full(self) -> bool:
        return len(self._waiting) >= self.limit

    def add(self, index: int, term: int, done: Outcome) -> None:
        self._waiting[index] = _Proposal(term, done)

    def applied(self, index: int, term: int, result: bytes | None) -> None:
        """The entry at ``index`` (of ``term``) applied with ``result`` (None: not a write)."""
        proposal = self._waiting.pop(index, None)
        if proposal is None:
            return
        if proposal.term == term and result is not None:
            safely(proposal.done, result, "")
        else:
            safely(proposal.done, None, "leadership changed before the write committed")

    def fail_all(self, why: str) -> None:
        waiting, self._waiting = self._waiting, {}
        for proposal in waiting.values():
            safely(proposal.done, None, why)


@dataclass(slots=True)
class ReadRound:
    context: bytes
    #: ticks since it was sent (given up after an election timeout).
    age: int = 0
    readers: list[Callable[[int | None, str], None]] = field(default_factory=list)


class ReadRounds:
    """ReadIndex rounds: one in flight, the next one gathering readers meanwhile."""

    def __init__(self, prefix: bytes) -> None:
        self._ids = itertools.count(1)
        self._prefix = prefix
        self.in_flight: ReadRound | None = None
        self.gathering: ReadRound | None = None

    def join(self, reader: Callable[[int | None, str], None]) -> ReadRound | None:
        """Add a reader; returns a round the caller must send now (or None)."""
        if self.in_flight is None:
            self.in_flight = self._new()
            self.in_flight.readers.append(reader)
            return self.in_flight
        if self.gathering is None:
            self.gathering = self._new()
        self.gathering.readers.append(reader)
        return None

    def resolved(self, context: bytes, index: int) -> ReadRound | None:
        """A ReadState arrived; returns the next round to send, if any."""
        current = self.in_flight
        if current is None or current.context != context:
            return None  # a late answer to a round already given up
        for reader in current.readers:
            safely(reader, index, "")
        return self._advance()

    def tick(self, give_up_after: int) -> ReadRound | None:
        """Age the round in flight; give it up (its readers retry) when too old."""
        current = self.in_flight
        if current is None:
            return None
        current.age += 1
        if current.age < give_up_after:
            return None
        for reader in current.readers:
            safely(reader, None, "no answer to the read barrier (leadership changing?)")
        return self._advance()

    def fail_all(self, why: str) -> None:
        for round_ in (self.in_flight, self.gathering):
            if round_ is not None:
                for reader in round_.readers:
                    safely(reader, None, why)
        self.in_flight = self.gathering = None

    def _advance(self) -> ReadRound | None:
        self.in_flight, self.gathering = self.gathering, None
        return self.in_flight

    def _new(self) -> ReadRound:
        return ReadRound(self._prefix + next(self._ids).to_bytes(8, "big"))


class AppliedIndex:
    """The state machine's applied index, and callbacks waiting for it."""

    def __init__(self, index: int = 0) -> None:
        self.index = index
        self._waiting: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def when(self, index: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` once ``index`` is applied (at once if it is)."""
        if index <= self.index:
            safely(callback)
        else:
            heapq.heappush(self._waiting, (index, next(self._order), callback))

    def advance(self, index: int) -> None:
        if index <= self.index:
            return
        self.index = index
        while self._waiting and self._waiting[0][0] <= index:
            safely(heapq.heappop(self._waiting)[2])
