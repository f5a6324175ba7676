"""The ``memory://`` backend: the store in this process, with real TTL timers.

All ``memory://`` clients of one process share one store, so several clients
coordinate exactly as they would over a network; ``memory://NAME`` names a
separate store. Nothing is replicated or persisted: this backend is for tests
and single-process programs.

A client's session lives while the client is open; a client that vanishes
(``abort``) leaves its session to expire after its TTL, as over a network.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from coordkit import hookimpl
from coordkit.backend import (
    Backend,
    BackendFactory,
    BackendURL,
    ConnectOptions,
    Session,
    check_options,
)
from coordkit.errors import (
    ClientClosedError,
    ConfigurationError,
    InvalidArgumentError,
    WrongTypeError,
)
from coordkit.model import Capability, Event, Node, Status
from coordkit.txn import Compare, Op, TxnResult

from .store import (
    CloseSession,
    Command,
    Compact,
    Create,
    Delete,
    ExpireSession,
    OpenSession,
    Set,
    Store,
    Txn,
    matches,
)

__all__ = ["MemoryBackend", "drop_store"]


@dataclass(eq=False, slots=True)
class _Watcher:
    path: str
    recursive: bool
    #: events, or None: "a session deadline changed, look again" (see ``abandon``).
    send: MemoryObjectSendStream[Event | None]


class _SharedStore:
    """One store and everyone attached to it: watchers and session owners.

    A live client's session cannot lapse inside one process, so only sessions
    of clients that vanished (``abort``) have a deadline here. They are expired
    lazily by whoever touches the store next, and by every waiting watch at the
    deadline: nobody can observe the difference, and no background task is needed.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.store = Store(listener=self._publish)
        self.watchers: set[_Watcher] = set()
        #: session id -> callback telling the owning client its session ended.
        self.owners: dict[int, Callable[[], None]] = {}
        #: sessions of vanished clients -> when they expire (time.monotonic()).
        self.abandoned: dict[int, float] = {}

    def apply(self, command: Command) -> Any:
        self.expire_due()
        return self._apply(command)

    def _apply(self, command: Command) -> Any:
        result = self.store.apply(command)
        if isinstance(command, ExpireSession):
            callback = self.owners.pop(command.session_id, None)
            if callback is not None:
                callback()
        return result

    def abandon(self, session_id: int, deadline: float) -> None:
        """Give a vanished client's session a deadline; waiting watches re-plan their wait."""
        self.abandoned[session_id] = deadline
        for watcher in list(self.watchers):
            try:
                watcher.send.send_nowait(None)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self.watchers.discard(watcher)

    def next_deadline(self) -> float | None:
        return min(self.abandoned.values(), default=None)

    def expire_due(self) -> None:
        if not self.abandoned:
            return
        now = time.monotonic()
        for session_id, deadline in sorted(self.abandoned.items(), key=lambda kv: kv[1]):
            if deadline <= now:
                del self.abandoned[session_id]
                self._apply(ExpireSession(session_id))

    def _publish(self, events: Sequence[Event]) -> None:
        for watcher in list(self.watchers):
            for event in events:
                if matches(event.path, watcher.path, watcher.recursive):
                    try:
                        watcher.send.send_nowait(event)
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                        self.watchers.discard(watcher)
                        break


_stores: dict[str, _SharedStore] = {}


def _shared(name: str) -> _SharedStore:
    shared = _stores.get(name)
    if shared is None:
        shared = _stores[name] = _SharedStore(name)
    return shared


def drop_store(name: str = "") -> None:
    """Forget the named store of this process (open clients keep their reference)."""
    _stores.pop(name, None)


class _WatchIterator:
    def __init__(
        self, receive: MemoryObjectReceiveStream[Event | None], shared: _SharedStore
    ) -> None:
        self._receive = receive
        self._shared = shared

    def __aiter__(self) -> _WatchIterator:
        return self

    async def __anext__(self) -> Event:
        while True:
            self._shared.expire_due()
            deadline = self._shared.next_deadline()
            event: Event | None = None
            try:
                with anyio.move_on_after(
                    math.inf if deadline is None else max(deadline - time.monotonic(), 0.0)
                ):
                    event = await self._receive.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                raise ClientClosedError("the client closed while watching") from None
            if event is not None:
                return event
            # The deadline passed, or a new one was set: expire what is due and wait again.


class MemoryBackend(Backend):
    """The store of this process (see the module docstring)."""

    capabilities = frozenset(
        {
            Capability.WATCH_FROM_REVISION,
            Capability.TXN_ELSE,
            Capability.TXN_VALUE_COMPARE,
            Capability.TXN_REVISION_COMPARE,
            Capability.ABORT,
            Capability.EXPIRE_SESSION,
            Capability.DENSE_REVISIONS,
            Capability.WATCH_EVERY_CHANGE,
        }
    )

    def __init__(self, name: str, options: ConnectOptions) -> None:
        self.name = name
        self.options = options
        self._shared = _shared(name)
        self._session: Session | None = None
        self._open = False
        self._watchers: set[_Watcher] = set()

    @classmethod
    def from_url(cls, url: BackendURL, options: ConnectOptions) -> MemoryBackend:
        check_options(url)
        if len(url.hosts) > 1 or url.path not in ("", "/"):
            raise ConfigurationError(
                f"memory URLs look like memory:// or memory://NAME: {url.display}"
            )
        return cls(url.hosts[0] if url.hosts else "", options)

    # -- lifecycle -----------------------------------------------------------

    async def open(self) -> None:
        await anyio.lowlevel.checkpoint()
        self._shared = _shared(self.name)
        self._open = True
        self._start_session()

    async def close(self) -> None:
        await anyio.lowlevel.checkpoint()
        session = self._session
        self._stop()
        if session is not None and self._shared.owners.pop(session.id, None) is not None:
            self._shared.apply(CloseSession(session.id))
            session.mark_lost()

    async def abort(self) -> None:
        await anyio.lowlevel.checkpoint()
        session = self._session
        if session is not None and self._shared.owners.pop(session.id, None) is not None:
            self._shared.abandon(session.id, time.monotonic() + session.ttl)
        self._stop()

    async def expire_session(self) -> None:
        await self._apply(ExpireSession(self.session.id))

    async def compact(self, revision: int) -> None:
        """Forget the watch history below ``revision`` (as ``etcdctl compact`` does).

        A later ``watch(..., start_revision=r)`` with ``r`` below it raises
        :class:`~coordkit.CompactedError`. The store also compacts by itself,
        keeping a bounded ring of recent events.
        """
        if isinstance(revision, bool) or not isinstance(revision, int):
            raise WrongTypeError(f"revision must be an int, not {type(revision).__name__}")
        if revision < 1:
            raise InvalidArgumentError(f"revision must be >= 1, not {revision}")
        await self._apply(Compact(revision))

    def _stop(self) -> None:
        self._open = False
        for watcher in self._watchers:
            self._shared.watchers.discard(watcher)
            watcher.send.close()
        self._watchers.clear()

    def _start_session(self) -> None:
        ttl = self.options.session_ttl
        session_id = self._shared.apply(OpenSession(ttl))
        self._session = Session(session_id, ttl)
        self._shared.owners[session_id] = self._session_ended

    def _session_ended(self) -> None:
        old = self._session
        if old is not None:
            old.mark_lost()
        if self._open:  # carry on with a fresh session, as a ZooKeeper client does
            self._start_session()
            if old is not None:
                old.hand_over(self.session)  # its listeners follow the new session

    @property
    def session(self) -> Session:
        if self._session is None:
            raise ClientClosedError("the memory backend is not open")
        return self._session

    # -- the data model ------------------------------------------------------------

    async def _apply(self, command: Command) -> Any:
        if not self._open:
            raise ClientClosedError("the memory backend is closed")
        # A checkpoint before (never after) applying: cancellation can only
        # prevent an operation, never lose the result of one that happened.
        await anyio.lowlevel.checkpoint()
        return self._shared.apply(command)

    async def _read(self) -> None:
        if not self._open:
            raise ClientClosedError("the memory backend is closed")
        await anyio.lowlevel.checkpoint()
        self._shared.expire_due()

    async def create(
        self, path: str, value: bytes, *, ephemeral: bool, sequential: bool, make_parents: bool
    ) -> Node:
        owner = self.session.id if ephemeral else None
        node: Node = await self._apply(Create(path, value, owner, sequential, make_parents))
        return node

    async def get(self, path: str, *, consistent: bool) -> Node | None:
        await self._read()
        return self._shared.store.get(path)

    async def set(self, path: str, value: bytes, *, version: int | None) -> Node:
        node: Node = await self._apply(Set(path, value, version))
        return node

    async def delete(self, path: str, *, version: int | None, recursive: bool) -> None:
        await self._apply(Delete(path, version, recursive))

    async def children(self, path: str, *, consistent: bool) -> list[str]:
        await self._read()
        return self._shared.store.children(path)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]
    ) -> TxnResult:
        command = Txn(tuple(compares), tuple(success), tuple(failure), self.session.id)
        result: TxnResult = await self._apply(command)
        return result

    @asynccontextmanager
    async def watch(
        self, path: str, *, recursive: bool, start_revision: int | None
    ) -> AsyncIterator[AsyncIterator[Event]]:
        if not self._open:
            raise ClientClosedError("the memory backend is closed")
        send, receive = anyio.create_memory_object_stream[Event | None](math.inf)
        watcher = _Watcher(path, recursive, send)
        with receive:  # closed on every way out, including a CompactedError from the replay
            try:
                # Replay and registration happen with no await between them, so no
                # event falls in a gap or is delivered twice.
                if start_revision is not None:
                    for event in self._shared.store.events_since(start_revision, path, recursive):
                        send.send_nowait(event)
                self._shared.watchers.add(watcher)
                self._watchers.add(watcher)
                yield _WatchIterator(receive, self._shared)
            finally:
                self._shared.watchers.discard(watcher)
                self._watchers.discard(watcher)
                send.close()

    async def status(self) -> Status:
        await self._read()
        store = self._shared.store
        return Status(
            backend="memory",
            revision=store.revision,
            session_id=self.session.id,
            leader=None,
            members=(self.name or "default",),
            details={
                "sessions": len(store.session_ids()),
                "oldest_revision": store.oldest_revision,
            },
        )


@hookimpl
def coordkit_backends() -> dict[str, BackendFactory]:
    return {"memory": MemoryBackend.from_url}
