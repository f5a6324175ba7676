"""Election: leader election built like the Lock, in kazoo's layout.

Each candidate creates an ephemeral sequential child of the election's path
named ``<uuid4 hex>__lock__<10-digit sequence>`` whose value is its identity
(kazoo's ``Election`` is a ``Lock`` with the identity as its data, so kazoo
candidates on the same ZooKeeper path take part in the same election). The
candidate with the lowest sequence leads; every other one watches only the
candidate just before it, so a leader change wakes exactly one candidate.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Self

from coordkit import Client, Event, EventType, NoNodeError, WrongTypeError
from coordkit.paths import join, parent

from .base import list_contenders, native_instance, parse_contender
from .config_watch import RETRYABLE
from .lock import Lock

__all__ = ["Election"]

log = logging.getLogger(__name__)


class _Candidacy(Lock):
    """The election's queue: a Lock whose contenders are candidates.

    A subclass of Lock so that it is never swapped for a native lock: the
    native election, where there is one, replaces :class:`Election` whole.
    """


@dataclass(frozen=True, slots=True)
class _Candidate:
    sequence: int
    identity: str


class Election:
    """Leader election: ``async with Election(client, "/election/sched", "node-1"): ...``.

    Guarantees:

    * at most one leader at a time among candidates honouring the layout,
      chosen in the order the candidates entered (FIFO): :meth:`resign` hands
      leadership to the candidate that has waited longest;
    * :attr:`token` (the leader node's create revision) strictly increases
      from one leader to the next: a fencing token for what the leader writes;
    * a cancelled :meth:`campaign` withdraws the candidacy (no node is left).

    Loss: a candidacy is our own node in the client's session. If the session
    ends while campaigning, :meth:`campaign` raises
    :class:`~coordkit.SessionExpiredError`; while leading, if the node goes
    for any reason other than :meth:`resign` (the session ends, anyone
    deletes it, a transaction removes it), the next candidate leads,
    :attr:`lost` turns True and :meth:`wait_lost` returns; inside
    ``async with`` the body is cancelled and
    :class:`~coordkit.LockLostError` is raised from the block. A partition
    shorter than the TTL changes nothing; a longer one elects a new leader
    on the majority side while the old one learns of its loss only when its
    backend does, which is what :attr:`token` is for.

    On a backend whose plugin supplies a native election (etcd's, which
    interoperates with ``etcdctl elect``) ``Election(...)`` returns that class
    instead, with the same interface.
    """

    #: the Lock class candidates queue with (a native election may wait faster).
    _candidacy_class: ClassVar[type[Lock]] = _Candidacy

    def __new__(cls, client: Client, path: str, identity: str) -> Election:
        native = native_instance(Election, cls, client, "Election", path, identity)
        if native is not None:
            return native  # type: ignore[no-any-return]
        return super().__new__(cls)

    def __init__(self, client: Client, path: str, identity: str) -> None:
        if not isinstance(identity, str):
            raise WrongTypeError(f"identity must be str, not {type(identity).__name__}")
        self._candidacy = self._candidacy_class(client, path, identity)
        self.client = client
        self.path = path
        self.identity = identity

    # -- state ---------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """Whether this candidate leads: campaign won, not resigned, session alive."""
        return self._candidacy.is_held

    @property
    def token(self) -> int | None:
        """While leading: the create revision of our node (increases from leader to leader)."""
        return self._candidacy.token

    @property
    def lost(self) -> bool:
        """Whether leadership was lost (session ended, node gone); True until the next campaign."""
        return self._candidacy.lost

    async def wait_lost(self) -> None:
        """Return once leadership is lost (session ended, node gone); RecipeStateError if not."""
        await self._candidacy.wait_lost()

    # -- campaigning -----------------------------------------------------------------

    async def campaign(self) -> None:
        """Enter the election and return once this candidate leads.

        Bound it with ``anyio.fail_after``/``move_on_after``: cancellation
        withdraws the candidacy. RecipeStateError if this object already leads.
        """
        await self._candidacy.acquire()

    async def resign(self) -> None:
        """Step down (a no-op if not leading); the longest-waiting candidate leads next.

        Shielded from cancellation, and safe after the session was lost.
        """
        if self._candidacy._acquired:  # leading, or led until the session was lost
            await self._candidacy.release()

    async def leader(self) -> str | None:
        """The current leader's identity, or None when there is no candidate."""
        while True:
            queue = await list_contenders(self.client, self.path, _Candidacy.markers)
            if not queue:
                return None
            node = await self.client.get(join(self.path, queue[0].name))
            if node is not None:
                return node.value.decode("utf-8", "replace")
            # The leader went between listing and reading: look again.

    async def contenders(self) -> list[str]:
        """Identities of every candidate, the leader first, then in line order (kazoo's name)."""
        return await self._candidacy.contenders()

    async def observe(self) -> AsyncIterator[str | None]:
        """``async for identity in election.observe(): ...``: who leads, now and on each change.

        An async generator: the first item is the leader when iteration starts
        (None: nobody campaigns), then each new leader's identity in order;
        every leader the watch saw is reported, and never the same one twice
        in a row (a candidate re-elected right after itself is not repeated).
        Leaders come from the watch's events, not from re-reads, so a brief
        leader between two reads is not skipped. If the watch breaks
        (connection loss, session expiry), a new one is opened and the current
        leader is read afresh: leaders that came and went during the gap
        cannot be seen. Close it early with ``contextlib.aclosing``.
        """
        last: object = object()
        backoff = self.client.options.retry.backoff(
            what=f"election watch on {self.path}", logger=log
        )
        while True:
            try:
                async with self.client.watch(self.path, recursive=True) as events:
                    candidates = await self._read_candidates()
                    backoff.reset()
                    while True:
                        current = _leader_of(candidates)
                        if current != last:
                            last = current
                            yield current
                        await self._apply_next(events, candidates)
            except (_WatchEnded, *RETRYABLE) as exc:
                # Back off (the retry policy's wait), then a new watch and a fresh read.
                await backoff.wait(exc)

    async def _read_candidates(self) -> dict[str, _Candidate]:
        found: dict[str, _Candidate] = {}
        try:
            names = await self.client.children(self.path)
        except NoNodeError:  # nobody has campaigned yet
            return found
        for name in names:
            await self._add(found, name, None)
        return found

    async def _add(self, candidates: dict[str, _Candidate], name: str, event: Event | None) -> None:
        contender = parse_contender(name, _Candidacy.markers)
        if contender is None or name in candidates:
            return
        node = event.node if event is not None and event.node is not None else None
        if node is None:
            node = await self.client.get(join(self.path, name))
            if node is None:
                return  # already gone; its DELETED event follows if we are watching
        identity = node.value.decode("utf-8", "replace")
        candidates[name] = _Candidate(contender.sequence, identity)

    async def _apply_next(
        self, events: AsyncIterator[Event], candidates: dict[str, _Candidate]
    ) -> None:
        """Apply watch events to ``candidates`` until one changes the set."""
        async for event in events:
            if event.path == self.path and event.type is EventType.DELETED:
                candidates.clear()
                return
            if parent(event.path) != self.path:
                continue
            name = event.path[len(self.path) :].lstrip("/")
            if event.type is EventType.CREATED:
                await self._add(candidates, name, event)
                if name in candidates:
                    return
            elif event.type is EventType.DELETED and candidates.pop(name, None) is not None:
                return
        raise _WatchEnded

    # -- async with ------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Campaign; the body runs as leader and is cancelled if leadership is lost."""
        await self._candidacy.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Resign; raise :class:`~coordkit.LockLostError` if leadership was lost meanwhile."""
        return await self._candidacy.__aexit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        state = "leading" if self.is_leader else "lost" if self.lost else "not leading"
        return f"Election({self.path!r}, identity={self.identity!r}, {state})"


def _leader_of(candidates: dict[str, _Candidate]) -> str | None:
    if not candidates:
        return None
    return min(candidates.values(), key=lambda c: c.sequence).identity


class _WatchEnded(Exception):
    """The watch stream ended without an error: open a new one."""
