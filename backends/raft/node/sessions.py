"""Session deadlines, kept by the Raft leader alone (never replicated).

The store records which sessions exist and their TTLs; *when* one runs out is
decided here, on the leader's clock, and applied as a replicated
``ExpireSession`` command, so no replica reads its own clock inside ``apply``
(etcd's lessor does the same: only the primary expires leases).

On taking office a leader does not know how long ago each session was last
kept alive (keepalives are not replicated), so it gives every session its
full TTL plus ``grace`` (an election timeout): a session never dies of an
election; at worst it lives one TTL and one election timeout longer.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["SessionTracker"]


@dataclass(slots=True)
class _Deadline:
    ttl: float
    at: float
    #: an expiry was proposed at this time (None: not yet); re-proposed if it does not apply.
    proposed_at: float | None = None


class SessionTracker:
    """The leader's view of when each session expires.

    ``clock`` is injected (monotonic seconds). Not thread-safe; the server
    calls it from its event loop only.
    """

    def __init__(self, clock: Callable[[], float], *, grace: float, retry_after: float) -> None:
        self._clock = clock
        self._grace = grace
        self._retry_after = retry_after
        self._sessions: dict[int, _Deadline] = {}
        self._heap: list[tuple[float, int]] = []
        self.active = False

    def take_office(self, sessions: Iterable[tuple[int, float]]) -> None:
        """This node became leader: every known session gets ``ttl + grace`` from now."""
        now = self._clock()
        self.active = True
        self._sessions = {}
        self._heap = []
        for session_id, ttl in sessions:
            self._set(session_id, ttl, now + ttl + self._grace)

    def leave_office(self) -> None:
        self.active = False
        self._sessions.clear()
        self._heap.clear()

    def opened(self, session_id: int, ttl: float) -> None:
        """A session was created (its OpenSession applied)."""
        if self.active:
            self._set(session_id, ttl, self._clock() + ttl)

    def ended(self, session_id: int) -> None:
        """A session was closed or expired (applied); forget it."""
        self._sessions.pop(session_id, None)

    def keepalive(self, session_id: int) -> bool:
        """Push the deadline out by the TTL.

        False if the session is unknown here or its expiry is already proposed
        (it is ending: telling the client otherwise would mislead it).
        """
        entry = self._sessions.get(session_id)
        if entry is None or entry.proposed_at is not None:
            return False
        at = self._clock() + entry.ttl
        if at > entry.at:
            self._set(session_id, entry.ttl, at)
        return True

    def knows(self, session_id: int) -> bool:
        return session_id in self._sessions

    def due(self) -> list[int]:
        """Sessions past their deadline whose expiry is not already proposed (in id order).

        Each returned session is marked as proposed; if its expiry has not
        applied within ``retry_after`` seconds it is returned again.
        """
        now = self._clock()
        out: list[int] = []
        while self._heap and self._heap[0][0] <= now:
            at, session_id = heapq.heappop(self._heap)
            entry = self._sessions.get(session_id)
            if entry is None or entry.at != at:
                continue  # ended, or kept alive since: a stale heap item
            entry.proposed_at = now
            out.append(session_id)
            heapq.heappush(self._heap, (now + self._retry_after, session_id))
            entry.at = now + self._retry_after
        return sorted(out)

    def next_deadline(self) -> float | None:
        """When :meth:`due` may next return something (None: no session)."""
        while self._heap:
            at, session_id = self._heap[0]
            entry = self._sessions.get(session_id)
            if entry is not None and entry.at == at:
                return at
            heapq.heappop(self._heap)
        return None

    def _set(self, session_id: int, ttl: float, at: float) -> None:
        self._sessions[session_id] = _Deadline(ttl, at)
        heapq.heappush(self._heap, (at, session_id))

    def __len__(self) -> int:
        return len(self._sessions)
