"""ConfigWatch: a node's (or a subtree's) decoded value, and a stream of its changes.

Also home of :func:`follow`, the watch loop under :meth:`ConfigWatch.changes`,
:meth:`Group.watch <coordkit.recipes.group.Group.watch>` and
:meth:`Election.observe <coordkit.recipes.election.Election.observe>`: open a
watch, then read, then re-evaluate on every event; on a broken watch open a new
one and read again. This is the one pattern that works on every backend
(ZooKeeper cannot replay a watch from a past revision).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio
import orjson
from anyio.abc import TaskStatus

from coordkit import (
    BadVersionError,
    Client,
    CompactedError,
    ConnectionLostError,
    CoordkitError,
    Event,
    Node,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
    WrongTypeError,
)
from coordkit.paths import check_path, join
from coordkit.retry import Conflict

__all__ = ["ConfigWatch", "Tracker", "follow"]

S = TypeVar("S")

#: Errors after which a watch is re-opened (and the state read afresh).
RETRYABLE = (ConnectionLostError, OperationTimeoutError, SessionExpiredError, CompactedError)

log = logging.getLogger(__name__)


class Tracker(abc.ABC, Generic[S]):
    """What :func:`follow` keeps up to date: a state built from reads and events."""

    @abc.abstractmethod
    async def reset(self) -> S:
        """Read the whole state afresh (called once the watch is in place)."""

    async def apply(self, event: Event) -> S:
        """The state after ``event``; by default a fresh :meth:`reset` read."""
        return await self.reset()


@dataclass(frozen=True, slots=True)
class _Failure:
    error: BaseException | None  # None: the stream simply ended
    terminal: bool


class _Mailbox(Generic[S]):
    """Producer-to-consumer hand-off; with ``coalesce`` only the newest item waits."""

    def __init__(self, coalesce: bool) -> None:
        self._coalesce = coalesce
        self._items: list[S | _Failure] = []
        self._ready = anyio.Event()

    def put(self, item: S | _Failure) -> None:
        if self._items and _is_terminal(self._items[-1]):
            return
        if self._coalesce:
            self._items.clear()
        self._items.append(item)
        self._ready.set()

    async def take(self) -> S:
        while not self._items:
            await self._ready.wait()
            self._ready = anyio.Event()
        item = self._items[0]
        if isinstance(item, _Failure):
            if not item.terminal:
                self._items.pop(0)
            if item.error is None:
                raise StopAsyncIteration
            raise item.error
        self._items.pop(0)
        return item


def _is_terminal(item: object) -> bool:
    return isinstance(item, _Failure) and item.terminal


class _Stream(Generic[S]):
    def __init__(self, box: _Mailbox[S]) -> None:
        self._box = box

    def __aiter__(self) -> _Stream[S]:
        return self

    async def __anext__(self) -> S:
        return await self._box.take()


@asynccontextmanager
async def follow(
    client: Client,
    path: str,
    tracker: Tracker[S],
    *,
    recursive: bool = True,
    coalesce: bool = True,
) -> AsyncIterator[AsyncIterator[S]]:
    """Follow ``tracker``'s state while changes under ``path`` come in.

    Yields an async iterator whose first item is the state when the ``async
    with`` body starts (the watch is already in place), then each state that
    differs from the one before; equal consecutive states are never repeated.
    With ``coalesce`` a consumer that falls behind gets only the newest state;
    without, every distinct state in order.

    If the watch breaks (:data:`RETRYABLE` errors: lost connection, timeout,
    session expiry, compaction) a new one is opened after the client's retry
    policy's wait (it never gives up) and
    the state is read afresh, so the consumer then gets the latest state
    (changes in the gap are seen only through their result). A non-coordkit
    error of the tracker (say, a decoder rejecting a value) is raised from
    ``__anext__`` and iteration may go on; any other error ends the
    iteration by being raised from ``__anext__`` (or from ``async with``
    when it happens before the first state).
    """
    box: _Mailbox[S] = _Mailbox(coalesce)
    setup_error: BaseException | None = None
    body_error: Exception | None = None
    async with anyio.create_task_group() as tg:
        setup_error = await tg.start(_produce, client, path, tracker, recursive, box)
        if setup_error is None:
            try:
                yield _Stream(box)
            except Exception as exc:  # re-raised outside the task group, unwrapped
                body_error = exc
            finally:
                tg.cancel_scope.cancel()
    if setup_error is not None:
        raise setup_error
    if body_error is not None:
        raise body_error


async def _produce(
    client: Client,
    path: str,
    tracker: Tracker[S],
    recursive: bool,
    box: _Mailbox[S],
    *,
    task_status: TaskStatus[BaseException | None],
) -> None:
    started = False
    last: list[S] = []  # the last state delivered, if any
    backoff = client.options.retry.backoff(what=f"watch on {path}", logger=log)

    async def evaluate(step: Awaitable[S]) -> None:
        try:
            state = await step
        except CoordkitError:
            raise
        except Exception as exc:  # the tracker's own failure, e.g. a decoder error
            box.put(_Failure(exc, terminal=False))
            return
        if not last or state != last[0]:
            last[:] = [state]
            box.put(state)

    while True:
        try:
            async with client.watch(path, recursive=recursive) as events:
                await evaluate(tracker.reset())
                if not started:
                    started = True
                    task_status.started(None)
                backoff.reset()
                async for event in events:
                    await evaluate(tracker.apply(event))
            ended: Exception = ConnectionLostError("the watch ended")
        except RETRYABLE as exc:
            ended = exc  # open a new watch and read afresh
        except Exception as exc:
            if not started:
                task_status.started(exc)
            else:
                box.put(_Failure(exc, terminal=True))
            return
        # A watch that ended or broke: back off (the retry policy's waits), then
        # a fresh watch and read.
        await backoff.wait(ended)


# -- ConfigWatch -----------------------------------------------------------------------


def _relative(root: str, path: str) -> str:
    return path[len(root) :].lstrip("/") if root != "/" else path.lstrip("/")


@dataclass(frozen=True, slots=True)
class _Config:
    """A decoded configuration; equal when its nodes' mod revisions are (not its value)."""

    value: Any = field(compare=False)
    #: ((relative key, mod_revision), ...) of every node that makes it up.
    stamp: tuple[tuple[str, int], ...]


class _ConfigTracker(Tracker[_Config]):
    def __init__(self, watch: ConfigWatch) -> None:
        self._watch = watch

    async def reset(self) -> _Config:
        return await self._watch._read()


class _Values:
    """The decoded values of a stream of :class:`_Config` states."""

    def __init__(self, inner: AsyncIterator[_Config]) -> None:
        self._inner = inner

    def __aiter__(self) -> _Values:
        return self

    async def __anext__(self) -> Any:
        return (await self._inner.__anext__()).value


class ConfigWatch:
    """The current configuration at ``path``, decoded, and a stream of its changes.

    A single node (``recursive=False``): :meth:`get` returns
    ``decoder(value)``, or ``None`` when the node is missing or its value is
    empty. A subtree (``recursive=True``): :meth:`get` returns
    ``{relative path: decoder(value)}`` for every node *below* ``path`` whose
    value is not empty (empty nodes are folders), e.g. ``{"db/host": ...}``.

    Guarantees of :meth:`changes`: it never delivers an older configuration
    after a newer one (reads are linearizable and each delivered state is
    read after the previous one; in subtree mode this holds for every key),
    it never repeats an unchanged configuration, and after a dropped
    connection, a session expiry or any broken watch it reads afresh and
    delivers the latest value. A consumer slower than the writers skips
    intermediate values but always ends at the newest. During a partition the
    stream is silent; nothing stale is invented.

    :meth:`update` is a compare-and-set loop: concurrent updaters never lose
    each other's changes.
    """

    def __init__(
        self,
        client: Client,
        path: str,
        *,
        decoder: Callable[[bytes], Any] = orjson.loads,
        encoder: Callable[[Any], bytes] = orjson.dumps,
        recursive: bool = False,
    ) -> None:
        check_path(path)
        if not isinstance(recursive, bool):
            raise WrongTypeError("recursive must be bool")
        self.client = client
        self.path = path
        self.decoder = decoder
        self.encoder = encoder
        self.recursive = recursive

    async def get(self) -> Any:
        """The current configuration (see the class docstring for its shape)."""
        return (await self._read()).value

    @asynccontextmanager
    async def changes(self) -> AsyncIterator[AsyncIterator[Any]]:
        """``async with cw.changes() as values: async for config in values: ...``.

        The first value is the configuration when the block starts (the watch
        is already in place, so no change is missed), then each newer one. A
        value the decoder rejects raises the decoder's error from the
        iterator; iterating on delivers the next good value.
        """
        tracker = _ConfigTracker(self)
        async with follow(self.client, self.path, tracker, recursive=self.recursive) as states:
            yield _Values(states)

    async def update(self, fn: Callable[[Any], Any], *, key: str | None = None) -> Any:
        """Apply ``fn(old) -> new`` atomically; returns ``new``.

        Reads the node (``path``, or ``path/key`` in subtree mode), calls
        ``fn`` with its decoded value (``None`` if missing or empty), writes
        ``encoder(new)`` only if nobody wrote in between (version check) and
        otherwise retries with the fresh value (after the client's retry
        policy's waits); a missing node is created (with its parents). ``fn``
        may therefore run more than once. Losing every race for the client's
        operation timeout raises :class:`~coordkit.OperationTimeoutError`
        (nothing written).
        """
        if self.recursive and key is None:
            raise WrongTypeError("update() of a subtree ConfigWatch needs key=")
        target = join(self.path, key) if key is not None else self.path
        check_path(target)

        async def attempt() -> Any:
            node = await self.client.get(target)
            new = fn(self._decode(node))
            data = self.encoder(new)
            try:
                if node is None:
                    await self.client.create(target, data, make_parents=True)
                else:
                    await self.client.set(target, data, version=node.version)
            except (NodeExistsError, BadVersionError, NoNodeError) as exc:
                raise Conflict("someone else wrote first") from exc  # read again
            return new

        options = self.client.options
        return await options.retry.on_conflict(
            attempt, deadline=options.timeout, what=f"ConfigWatch.update of {target}", logger=log
        )

    def _decode(self, node: Node | None) -> Any:
        if node is None or not node.value:
            return None
        return self.decoder(node.value)

    async def _read(self) -> _Config:
        if not self.recursive:
            node = await self.client.get(self.path)
            stamp = (("", node.mod_revision),) if node is not None and node.value else ()
            return _Config(self._decode(node), stamp)
        nodes = sorted(await self._subtree(self.path), key=lambda n: n.path)
        return _Config(
            {_relative(self.path, n.path): self._decode(n) for n in nodes},
            tuple((_relative(self.path, n.path), n.mod_revision) for n in nodes),
        )

    async def _subtree(self, path: str) -> list[Node]:
        """Every node with a value below ``path`` (vanished nodes skipped)."""
        try:
            names = await self.client.children(path)
        except NoNodeError:
            return []
        found: list[Node] = []
        for name in names:
            child = join(path, name)
            node = await self.client.get(child)
            if node is None:
                continue
            if node.value:
                found.append(node)
            found.extend(await self._subtree(child))
        return found
