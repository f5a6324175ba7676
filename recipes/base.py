"""Pieces shared by the recipes: native dispatch, waits, contender queues, node cleanup.

Every recipe is built on the public :class:`~coordkit.Client` only, so what is
here runs unchanged on every backend. Two rules hold throughout:

* **watch, then check**: a waiter opens its watch first and only then reads
  the state it waits on, so a change between the read and the watch cannot be
  missed (the watch is in place when ``client.watch`` returns);
* **a waiter's own node never outlives a failed wait**: cancellation, timeout
  or error while queueing deletes the node under a shielded scope, finding it
  by its unique prefix when the create's outcome is unknown;
* **a holder holds while its own node exists**: whatever removes the node
  other than the holder's own release (session expiry, a delete by another
  client or an operator, a transaction) ends the hold: ``lost`` turns True,
  ``wait_lost()`` returns and an ``async with`` body is cancelled.
"""

from __future__ import annotations

import abc
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, TypeVar

import anyio

from coordkit import (
    Client,
    CompactedError,
    ConnectionLostError,
    CoordkitError,
    EventType,
    InvalidArgumentError,
    NoNodeError,
    OperationTimeoutError,
    RecipeStateError,
    Session,
    SessionExpiredError,
    WrongTypeError,
)
from coordkit.holding import Holdable
from coordkit.paths import SEQUENCE_DIGITS, check_path, join
from coordkit.plugins import native_recipe

from .ownership import Ownership, cancelled_on_loss

__all__ = [
    "Contender",
    "Ownership",
    "SequentialLock",
    "check_timeout",
    "delete_nodes",
    "list_contenders",
    "native_instance",
    "unless_session_lost",
    "wait_any_deleted",
    "wait_deleted",
    "wait_until",
]

T = TypeVar("T")

log = logging.getLogger(__name__)


# -- native dispatch -------------------------------------------------------------


def native_instance(
    generic: type[Any], cls: type[Any], client: Client, name: str, *args: Any, **kwargs: Any
) -> Any | None:
    """An instance of a backend-native ``name`` recipe, or None to use ``generic``.

    Call it from ``generic.__new__``: only ``generic`` itself is replaced (a
    subclass asked for explicitly is never swapped), and only when a plugin's
    ``coordkit_native_recipe`` hook supplies a class for ``client.backend``.
    The native class is constructed with ``(client, *args, **kwargs)``; it
    must offer the same interface as ``generic``.
    """
    if not isinstance(client, Client):
        raise WrongTypeError(f"client must be a coordkit.Client, not {type(client).__name__}")
    if cls is not generic:
        return None
    native = native_recipe(client.backend, name)
    if native is None or native is generic:
        return None
    return native(client, *args, **kwargs)


# -- timeouts ------------------------------------------------------------------------


def check_timeout(timeout: object, name: str = "timeout") -> float | None:
    """A recipe's ``timeout`` argument, checked: None (or infinity) waits for ever.

    ``0`` is valid and means *try once without waiting* (each recipe says
    what one try is). Anything else must be a real number ``>= 0``: a bool,
    a string or another type raises :class:`~coordkit.WrongTypeError` (a
    TypeError), a negative number or NaN :class:`~coordkit.InvalidArgumentError`
    (a ValueError), both naming the parameter, before anything is changed.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise WrongTypeError(
            f"{name} must be a number >= 0 or None, got {type(timeout).__name__} {timeout!r}"
        )
    value = float(timeout)
    if math.isnan(value) or value < 0:
        raise InvalidArgumentError(f"{name} must be a number >= 0, got {timeout!r}")
    return None if math.isinf(value) else value


# -- waiting: watch, then check ------------------------------------------------------


async def _race(main: Callable[[], Awaitable[T]], stop: Callable[[], Awaitable[object]]) -> T:
    """Run ``main``; if ``stop`` returns first, cancel ``main`` and raise SessionExpiredError.

    Exceptions of ``main`` propagate as they are (never wrapped in a group).
    """
    outcome: list[T] = []
    failure: list[Exception] = []

    async with anyio.create_task_group() as tg:

        async def watch_stop() -> None:
            await stop()
            tg.cancel_scope.cancel()

        tg.start_soon(watch_stop)
        try:
            outcome.append(await main())
        except Exception as exc:
            failure.append(exc)
        tg.cancel_scope.cancel()
    if failure:
        raise failure[0]
    if not outcome:
        raise SessionExpiredError("the session ended while waiting")
    return outcome[0]


async def wait_until(
    client: Client,
    path: str,
    check: Callable[[], Awaitable[bool]],
    *,
    recursive: bool = False,
    session: Session | None = None,
) -> None:
    """Return once ``check()`` is true, re-checking after every change under ``path``.

    The watch is opened before the first check, so no change is missed. With
    ``session``, raise :class:`SessionExpiredError` if that session ends first.
    """

    async def run() -> None:
        async with client.watch(path, recursive=recursive) as events:
            if await check():
                return
            async for _ in events:
                if await check():
                    return

    await unless_session_lost(run, session)


async def wait_deleted(client: Client, path: str, *, session: Session | None = None) -> None:
    """Return once ``path`` does not exist (at once if it is already gone).

    Only ``path`` is watched, so changes elsewhere wake nobody. With
    ``session``, raise :class:`SessionExpiredError` if that session ends first.
    """

    async def run() -> None:
        async with client.watch(path) as events:
            if not await client.exists(path):
                return
            async for event in events:
                if event.type is EventType.DELETED:
                    return

    await unless_session_lost(run, session)


async def wait_any_deleted(
    client: Client, directory: str, names: Collection[str], *, session: Session | None = None
) -> frozenset[str]:
    """Return once any child ``names`` of ``directory`` is gone: the names seen gone.

    One watch on the directory's subtree; other children's changes are
    filtered out on the client, so they cost no reads. With ``session``,
    raise :class:`SessionExpiredError` if that session ends first.
    """
    wanted = {join(directory, name): name for name in names}
    gone: set[str] = set()

    async def run() -> None:
        async with client.watch(directory, recursive=True) as events:
            try:
                present = set(await client.children(directory))
            except NoNodeError:
                gone.update(names)
                return
            gone.update(name for name in names if name not in present)
            if gone:
                return
            async for event in events:
                if event.type is EventType.DELETED and event.path in wanted:
                    gone.add(wanted[event.path])
                    return

    await unless_session_lost(run, session)
    return frozenset(gone)


async def unless_session_lost(run: Callable[[], Awaitable[None]], session: Session | None) -> None:
    """Run ``run()``; with ``session``, raise SessionExpiredError if it ends first."""
    if session is None:
        await run()
    else:
        if session.lost:
            raise SessionExpiredError("the session ended while waiting")
        await _race(run, session.wait_lost)


# -- contender queues ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Contender:
    """One queued node: ``<prefix><marker><10-digit sequence>`` (kazoo's naming)."""

    name: str
    marker: str
    sequence: int


def parse_contender(name: str, markers: Collection[str]) -> Contender | None:
    """The contender a child name stands for, or None if it carries no marker."""
    for marker in markers:
        at = name.rfind(marker)
        if at == -1:
            continue
        digits = name[at + len(marker) :]
        if len(digits) == SEQUENCE_DIGITS and digits.isdigit() and digits.isascii():
            return Contender(name, marker, int(digits))
    return None


async def list_contenders(
    client: Client, path: str, markers: Collection[str], *, consistent: bool = True
) -> list[Contender]:
    """The queued children of ``path`` in sequence order; other children are ignored.

    Sequence numbers come from one counter per parent, so nodes of different
    markers (readers and writers) order against each other. A missing
    ``path`` is an empty queue. ``consistent`` is the read's (see
    :meth:`~coordkit.Client.children`).
    """
    try:
        names = await client.children(path, consistent=consistent)
    except NoNodeError:
        return []
    found = [c for c in (parse_contender(n, markers) for n in names) if c is not None]
    found.sort(key=lambda c: c.sequence)
    return found


# -- cleanup -------------------------------------------------------------------------


async def delete_nodes(client: Client, directory: str, *, known: str | None, prefix: str) -> None:
    """Delete our queued node, shielded from cancellation, retrying transient errors.

    ``known`` is the node's path when its create returned; otherwise every
    child of ``directory`` starting with ``prefix`` is ours (a create whose
    outcome is unknown may have succeeded). Retries follow the client's retry
    policy and give up (logged) after the client's operation timeout: the
    node is ephemeral and goes with the session anyway.
    """

    async def attempt() -> None:
        try:
            if known is not None:
                await _delete_quietly(client, known)
            else:
                for name in await client.children(directory):
                    if name.startswith(prefix):
                        await _delete_quietly(client, join(directory, name))
        except NoNodeError:
            return  # the directory itself is gone

    timeout = client.options.timeout
    # A failure is logged when given up; a closed client has ended the session anyway.
    with anyio.move_on_after(timeout, shield=True), suppress(CoordkitError):
        await client.options.retry.call(
            attempt,
            retry_on=lambda exc: isinstance(exc, CoordkitError) and not client.closed,
            deadline=timeout,
            what=f"delete our node under {directory}",
            logger=log,
        )


async def _delete_quietly(client: Client, path: str) -> None:
    with suppress(NoNodeError):
        await client.delete(path)


#: failures of the watch on a held node after which it is opened again.
_WATCH_BROKEN = (ConnectionLostError, OperationTimeoutError, SessionExpiredError, CompactedError)


# -- the queue-of-nodes lock shared by Lock, ReadLock, WriteLock and Semaphore ---------


class SequentialLock(Holdable, abc.ABC):
    """A lock-like primitive whose holders queue as ephemeral sequential nodes.

    A contender creates ``<uuid4 hex><marker><sequence>`` under ``path``
    (kazoo's naming) holding its identifier, then waits for the contenders
    that :meth:`_blockers` names to go. Subclasses decide only that.
    """

    #: the marker of this kind of node, e.g. ``"__lock__"``.
    marker: ClassVar[str]
    #: the markers of every kind of node that may share the directory.
    markers: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        client: Client,
        path: str,
        identifier: str | None = None,
        *,
        reentrant: bool = False,
    ) -> None:
        if not isinstance(client, Client):
            raise WrongTypeError(f"client must be a coordkit.Client, not {type(client).__name__}")
        check_path(path)
        if identifier is not None and not isinstance(identifier, str):
            raise WrongTypeError(f"identifier must be str, not {type(identifier).__name__}")
        self.client = client
        self.path = path
        self.identifier = identifier or ""
        self.reentrant = reentrant
        self._node: str | None = None
        self._token: int | None = None
        self._session: Session | None = None
        self._owned: Ownership | None = None
        self._lost = False
        self._count = 0
        self._acquiring = False
        self._prepared = False

    # -- what subclasses decide ---------------------------------------------------

    @abc.abstractmethod
    def _blockers(self, ahead: list[Contender]) -> list[Contender]:
        """Of the contenders queued before us, those whose going may let us in.

        Empty means we hold it now. Must be monotone: if it is empty for some
        contenders ahead, it is empty for any subset of them (the wait relies
        on it to take a handoff without reading the queue again).
        """

    async def _prepare(self) -> None:
        """Make sure ``path`` exists (subclasses may check its settings too)."""
        await self.client.ensure_path(self.path)

    # -- state ----------------------------------------------------------------------

    @property
    def token(self) -> int | None:
        """A fencing token while held: the create revision of our node, else None.

        Successive holders of a lock get strictly increasing tokens; pass it to
        the resource you protect so it can refuse a holder that lost the lock.
        """
        return self._token if self.is_held else None

    @property
    def is_held(self) -> bool:
        """Whether this object holds it: acquired, not released, not :attr:`lost`."""
        return self._node is not None and self._owned is not None and not self._owned.lost

    @property
    def _acquired(self) -> bool:
        """Acquired and not released, whether or not the session has since ended."""
        return self._node is not None

    @property
    def lost(self) -> bool:
        """Whether the hold was lost: its session ended, or its node went otherwise.

        A session loss shows at once; a node deleted by someone else shows
        once it was seen (inside ``async with``, or by :meth:`wait_lost`).
        Stays True after :meth:`release` until the next :meth:`acquire`.
        """
        if self._node is not None and self._owned is not None:
            return self._owned.lost
        return self._lost

    async def wait_lost(self) -> None:
        """Return once the hold is lost: the session ended or our node went.

        Watches our own node for the wait. Raises RecipeStateError if it is
        not held, or if it is released (by us) before it is lost.
        """
        if self._owned is None or self._node is None:
            raise RecipeStateError(f"{type(self).__name__} on {self.path} is not held")
        await self._owned.wait_lost()

    async def contenders(self) -> list[str]:
        """Identifiers of every queued contender (holders first), in queue order."""
        out: list[str] = []
        for contender in await list_contenders(self.client, self.path, self.markers):
            node = await self.client.get(join(self.path, contender.name))
            if node is not None:
                out.append(node.value.decode("utf-8", "replace"))
        return out

    # -- acquire and release ----------------------------------------------------------

    async def acquire(self, timeout: float | None = None, blocking: bool = True) -> bool:
        """Queue and wait for our turn; True once held.

        Returns False when ``timeout`` seconds pass first, or at once with
        ``blocking=False`` if it is not free; either way our node is gone.
        ``timeout=0`` tries once, as ``blocking=False`` does (True if it is
        free); a negative, NaN or non-numeric timeout raises before anything
        is queued (see :func:`check_timeout`). Cancellation and errors delete
        the node too (shielded). If the session ends while we wait, raises
        :class:`SessionExpiredError`.
        """
        timeout = check_timeout(timeout)
        if not isinstance(blocking, bool):
            raise WrongTypeError(f"blocking must be bool, not {type(blocking).__name__}")
        if timeout == 0:
            blocking, timeout = False, None  # one try, bounded by the client's own timeouts
        if self._node is not None and self._owned is not None and self._owned.lost:
            # Held, then lost: our node is gone (with the session or otherwise). Start afresh.
            self._owned.release()
            self._node = self._token = self._session = self._owned = None
            self._count = 0
            self._leave()
        if self._node is not None:
            if not self.reentrant:
                raise RecipeStateError(
                    f"{type(self).__name__} on {self.path} is already held by this object "
                    "(pass reentrant=True to count nested acquisitions)"
                )
            self._count += 1
            return True
        if self._acquiring:
            raise RecipeStateError(
                f"{type(self).__name__} on {self.path} is already being acquired"
            )
        self._acquiring = True
        self._lost = False
        prefix = uuid.uuid4().hex + self.marker
        created: list[str] = []
        acquired = False
        try:
            with anyio.move_on_after(timeout):
                acquired = await self._queue_and_wait(prefix, created, blocking)
        finally:
            self._acquiring = False
            if not acquired:
                known = created[-1] if created else None
                try:
                    await self._withdraw(known, prefix)
                finally:
                    self._leave()
        return acquired

    async def _queue_and_wait(self, prefix: str, created: list[str], blocking: bool) -> bool:
        if not await self._enter(blocking):
            return False
        if not self._prepared:
            await self._prepare()
            self._prepared = True
        session = await self.client.live_session()  # after a loss, the new one
        node = await self._create(prefix, session)
        created.append(node.path)
        queue = await self._listing(node.name)
        while True:
            names = [c.name for c in queue]
            if node.name not in names:
                # Our node went without the session ending (someone deleted it):
                # queue again, at the back.
                node = await self._create(prefix, session)
                created.append(node.path)
                queue = await self._listing(node.name)
                continue
            ahead = queue[: names.index(node.name)]
            blockers = self._blockers(ahead)
            if not blockers:
                self._node, self._token, self._session = node.path, node.create_revision, session
                self._owned = Ownership(
                    node.path,
                    node.create_revision,
                    session,
                    partial(self._wait_node_gone, node.path, node.create_revision),
                    f"{type(self).__name__} on {self.path}",
                )
                self._count = 1
                return True
            if not blocking:
                return False
            gone = await self._wait_gone(blockers, session)
            # Nobody queues ahead of us (sequence numbers only grow) and a node
            # that went never comes back: the queue ahead is now at most what
            # we listed less what we saw go. If that already lets us in, we are
            # in, without reading the queue again (a handoff costs the holder's
            # delete and its event, nothing more); else read it afresh.
            rest = [c for c in ahead if c.name not in gone]
            if gone and not self._blockers(rest):
                queue = [*rest, *queue[len(ahead) :]]
            else:
                queue = await self._listing(node.name)

    async def _listing(self, ours: str) -> list[Contender]:
        """The queue, read cheaply if that read shows our node ``ours``, else linearizably.

        Any read that shows our node reflects our create, so it shows every
        contender created before us that has not gone yet (nodes never come
        back, and none is created ahead of us later): the contenders it puts
        ahead of us are at least those ahead now, and :meth:`_blockers` is
        monotone. Only a read without our node proves nothing (it may predate
        our create), so then the queue is read linearizably.
        """
        queue = await self._queue(consistent=False)
        if any(c.name == ours for c in queue):
            return queue
        return await self._queue(consistent=True)

    # -- what a backend-native subclass may do faster or lay out its own way ------------
    #    (see coordkit_native_recipe): the acquisition above, the release below, the
    #    token, the session-loss handling and ``async with`` stay the same.

    async def _enter(self, blocking: bool) -> bool:
        """Before queueing: take what the attempt needs locally (False: not now).

        Called inside the acquisition's timeout; :meth:`_leave` gives it back
        when the attempt fails, on release, and when a hold was lost with its
        session.
        """
        return True

    def _leave(self) -> None:
        """Give back what :meth:`_enter` took (idempotent)."""

    async def _withdraw(self, known: str | None, prefix: str) -> None:
        """Remove our queued node, shielded (see :func:`delete_nodes`)."""
        await delete_nodes(self.client, self.path, known=known, prefix=prefix)

    async def _queue(self, *, consistent: bool) -> list[Contender]:
        """The queued contenders in order; called only after our own node was created.

        With ``consistent=False`` the read need not be linearizable (see
        :meth:`_listing`). A native subclass may serve both from a read that
        is not linearizable as long as it reflects this client's own create.
        """
        return await list_contenders(self.client, self.path, self.markers, consistent=consistent)

    async def _wait_gone(self, blockers: list[Contender], session: Session) -> Collection[str]:
        """Return once one of ``blockers`` is gone: the names of those seen gone.

        An empty answer means "maybe gone" (the caller reads the queue again).
        SessionExpiredError if ``session`` ends first.
        """
        if len(blockers) == 1:
            await wait_deleted(self.client, join(self.path, blockers[0].name), session=session)
            return (blockers[0].name,)
        names = [b.name for b in blockers]
        return await wait_any_deleted(self.client, self.path, names, session=session)

    async def _wait_node_gone(self, path: str, token: int) -> None:
        """Return once our held node at ``path`` (created at revision ``token``) is gone.

        Watch, then check: the node is read once the watch is in place, so a
        delete between the acquisition and the watch is seen. A broken watch
        is opened again after the retry policy's wait (never giving up: the
        caller's task group ends this wait). Raises ClientClosedError once
        the client is closed.
        """
        backoff = self.client.options.retry.backoff(
            what=f"the watch on our node {path}", logger=log
        )
        while True:
            try:
                async with self.client.watch(path) as events:
                    node = await self.client.get(path)
                    if node is None or node.create_revision != token:
                        return
                    backoff.reset()
                    async for event in events:
                        if event.type is EventType.DELETED:
                            return
                ended: Exception = ConnectionLostError(f"the watch on {path} ended")
            except _WATCH_BROKEN as exc:
                ended = exc
            await backoff.wait(ended)

    async def _create(self, prefix: str, session: Session) -> Any:
        if session.lost:
            raise SessionExpiredError("the session ended while waiting")
        value = self.identifier.encode("utf-8")
        path = join(self.path, prefix)
        try:
            return await self.client.create(path, value, ephemeral=True, sequential=True)
        except NoNodeError:
            await self.client.ensure_path(self.path)  # someone removed the directory
            return await self.client.create(path, value, ephemeral=True, sequential=True)

    async def release(self) -> None:
        """Give it up (one level, if reentrant); the next waiter in line gets it.

        Safe after the session was lost (the node is already gone) and shielded
        from cancellation. If the backend stays unreachable for the client's
        operation timeout the node is left to go with the session.
        Raises RecipeStateError if this object does not hold it.
        """
        if self._node is None:
            raise RecipeStateError(f"{type(self).__name__} on {self.path} is not held")
        self._count -= 1
        if self._count > 0:
            return
        owned, self._owned = self._owned, None
        if owned is not None:
            self._lost = owned.lost
            owned.release()
        node, self._node, self._token, self._session = self._node, None, None, None
        try:
            await self._withdraw(node, "")
        finally:
            self._leave()

    # -- async with (Holdable) ------------------------------------------------------------

    @asynccontextmanager
    async def _hold(self) -> AsyncIterator[None]:
        """Hold it for the body, which is cancelled if the hold is lost meanwhile.

        Lost: the session ended or our node went (see :class:`Ownership`).
        After such a loss the body's cancellation is replaced by
        :class:`LockLostError`; any other exception of the body passes unchanged.
        """
        await self.acquire()
        owned = self._owned
        assert owned is not None
        try:
            async with cancelled_on_loss(owned):
                yield
        finally:
            await self.release()

    def __repr__(self) -> str:
        state = "held" if self.is_held else "lost" if self.lost else "free"
        return f"{type(self).__name__}({self.path!r}, identifier={self.identifier!r}, {state})"
