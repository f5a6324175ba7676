"""The Client: the one object applications and recipes talk to.

It validates every call once (paths, values, versions, types) before the
backend sees it, so bad input raises a specific error and changes nothing on
every backend alike.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from types import TracebackType
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .backend import (
    Backend,
    BackendURL,
    ConnectOptions,
    Session,
    SessionChange,
    SessionListener,
    SessionState,
    redact_url,
)
from .config import resolve_url
from .errors import (
    ClientClosedError,
    ConfigurationError,
    InvalidArgumentError,
    NodeExistsError,
    SessionExpiredError,
    UnsupportedError,
    WrongTypeError,
)
from .model import Capability, Event, Node, Status
from .paths import check_path, check_value, check_version
from .plugins import backend_factories
from .retry import RetryPolicy
from .txn import Compare, CompareTarget, Op, TxnResult, check_txn

__all__ = ["Client", "connect"]

log = logging.getLogger(__name__)


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise WrongTypeError(f"{name} must be bool, not {type(value).__name__}")
    return value


class Client:
    """A connection to one backend, used as ``async with coordkit.connect(url) as client``.

    Entering opens the backend and its session; leaving closes the session at
    once, so the client's ephemeral nodes disappear immediately.
    """

    def __init__(self, backend: Backend, url: str, options: ConnectOptions) -> None:
        self._backend = backend
        self.url = url
        self.options = options
        self._open = False
        self._aborted = False
        #: the senders of open ``watch_session`` streams, closed with the client.
        self._session_streams: set[MemoryObjectSendStream[SessionChange]] = set()

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open the backend; prefer ``async with``. Must be closed by the same task."""
        if self._open:
            return
        await self._backend.open()
        self._open = True
        log.info("connected to %s (session %#x)", redact_url(self.url), self._backend.session.id)

    async def aclose(self) -> None:
        """End the session and close the backend. Idempotent."""
        if not self._open:
            return
        self._open = False
        try:
            with anyio.CancelScope(shield=True):
                await self._backend.close()
        finally:
            for stream in list(self._session_streams):
                stream.close()  # after the final LOST: the watchers' loops end
        log.debug("closed the client of %s", redact_url(self.url))

    @property
    def closed(self) -> bool:
        return not self._open

    def _ready(self) -> Backend:
        if not self._open or self._aborted:
            raise ClientClosedError("the client is not open (use `async with coordkit.connect()`)")
        return self._backend

    # -- introspection -----------------------------------------------------

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def session(self) -> Session:
        """The current session; after one is lost, the backend opens a new one."""
        return self._ready().session

    @property
    def session_state(self) -> SessionState:
        """The current session's state: CONNECTED, SUSPENDED or LOST.

        LOST lasts until the backend has opened the replacement session
        (then CONNECTED again, with a new :attr:`Session.id`).
        """
        return self._ready().session.state

    def add_session_listener(self, listener: SessionListener) -> Callable[[], None]:
        """Call ``listener(change)`` on every change of this client's session state.

        The changes (:class:`~coordkit.SessionChange`) are SUSPENDED (the
        connection dropped; the session may live on), RESTORED (back, the
        same session: locks and ephemeral nodes intact), LOST (the session
        expired or the client closed: its ephemeral nodes are gone) and
        CONNECTED (a new session replaced a lost one). The same on every
        backend, like Curator's ConnectionStateListener and kazoo's
        listeners. The listener follows the client across session losses;
        it runs on the event loop inside the backend's code, so it must not
        block (see :meth:`watch_session` for an async stream). Returns a
        function that removes the listener.
        """
        session = self._ready().session
        session.add_listener(listener)
        return lambda: session.remove_listener(listener)

    @asynccontextmanager
    async def watch_session(self) -> AsyncIterator[AsyncIterator[SessionChange]]:
        """``async with client.watch_session() as changes: async for change in changes:``.

        Every change of the session state from the moment the ``async with``
        body starts (see :meth:`add_session_listener` for what each means),
        in order, none dropped. The stream ends after the final LOST once the
        client is closed.
        """
        send, receive = anyio.create_memory_object_stream[SessionChange](math.inf)
        remove = self.add_session_listener(send.send_nowait)
        self._session_streams.add(send)
        try:
            async with receive:
                yield receive
        finally:
            remove()
            self._session_streams.discard(send)
            send.close()

    async def live_session(self) -> Session:
        """The current session once it is live (after a loss, the new one).

        Recipes call this before they queue a node, so that acquiring again
        right after a session expired waits for the replacement instead of
        failing. Raises :class:`SessionExpiredError` if no live session is in
        place within the client's operation timeout.
        """
        backend = self._ready()
        session = backend.session
        if not session.lost:
            return session
        try:
            with anyio.fail_after(self.options.timeout):
                return await backend.live_session()
        except TimeoutError:
            raise SessionExpiredError(
                f"no new session within {self.options.timeout} s after session "
                f"{session.id:#x} ended"
            ) from None

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self._backend.capabilities

    def require(self, capability: Capability, why: str = "") -> None:
        """Raise :class:`UnsupportedError` if the backend lacks ``capability``."""
        if capability not in self._backend.capabilities:
            reason = f" ({why})" if why else ""
            raise UnsupportedError(
                f"{type(self._backend).__name__} lacks capability {capability.value!r}{reason}"
            )

    async def status(self) -> Status:
        return await self._ready().status()

    # -- the data model ------------------------------------------------------

    async def create(
        self,
        path: str,
        value: bytes = b"",
        *,
        ephemeral: bool = False,
        sequential: bool = False,
        make_parents: bool = False,
    ) -> Node:
        """Create a node; returns it (with the sequential suffix in its path)."""
        check_path(path)
        check_value(value, self.options.max_value_bytes)
        _check_flag("ephemeral", ephemeral)
        _check_flag("sequential", sequential)
        _check_flag("make_parents", make_parents)
        if path == "/":
            raise NodeExistsError("the root always exists")
        return await self._ready().create(
            path, value, ephemeral=ephemeral, sequential=sequential, make_parents=make_parents
        )

    async def ensure_path(self, path: str) -> None:
        """Create ``path`` and its missing parents as empty persistent nodes, if missing."""
        check_path(path)
        if path == "/":
            return
        backend = self._ready()
        if await backend.exists(path):
            return
        with suppress(NodeExistsError):
            await backend.create(path, b"", ephemeral=False, sequential=False, make_parents=True)

    async def get(self, path: str, *, consistent: bool = True) -> Node | None:
        """The node at ``path``, or ``None``; ``consistent=False`` allows a stale read."""
        check_path(path)
        _check_flag("consistent", consistent)
        return await self._ready().get(path, consistent=consistent)

    async def exists(self, path: str) -> bool:
        check_path(path)
        return await self._ready().exists(path)

    async def set(self, path: str, value: bytes, *, version: int | None = None) -> Node:
        """Replace the value; with ``version``, only if the node is at that version."""
        check_path(path)
        check_value(value, self.options.max_value_bytes)
        check_version(version)
        return await self._ready().set(path, value, version=version)

    async def delete(
        self, path: str, *, version: int | None = None, recursive: bool = False
    ) -> None:
        """Delete the node; ``recursive`` removes its subtree in one revision."""
        check_path(path)
        check_version(version)
        _check_flag("recursive", recursive)
        if path == "/":
            raise InvalidArgumentError("the root cannot be deleted")
        await self._ready().delete(path, version=version, recursive=recursive)

    async def children(self, path: str, *, consistent: bool = True) -> list[str]:
        """Sorted names of the children of ``path``."""
        check_path(path)
        _check_flag("consistent", consistent)
        return await self._ready().children(path, consistent=consistent)

    async def txn(
        self,
        compares: Sequence[Compare] = (),
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """If every compare holds run ``success``, else ``failure``; atomic, one revision."""
        compares, success, failure = list(compares), list(success), list(failure)
        check_txn(compares, success, failure, self.options.max_value_bytes)
        if failure:
            self.require(Capability.TXN_ELSE, "a failure branch")
        for cmp in compares:
            if cmp.target is CompareTarget.VALUE:
                self.require(Capability.TXN_VALUE_COMPARE, "a value compare")
            if cmp.target in (CompareTarget.CREATE_REVISION, CompareTarget.MOD_REVISION):
                self.require(Capability.TXN_REVISION_COMPARE, "a revision compare")
        return await self._ready().txn(compares, success, failure)

    @asynccontextmanager
    async def watch(
        self, path: str, *, recursive: bool = False, start_revision: int | None = None
    ) -> AsyncIterator[AsyncIterator[Event]]:
        """Stream the changes of ``path`` (and with ``recursive`` its subtree).

        The watch is in place when the ``async with`` body starts. Events come in
        revision order, none lost or repeated; ``start_revision`` replays history
        from that revision (needs :attr:`Capability.WATCH_FROM_REVISION`).
        """
        check_path(path)
        _check_flag("recursive", recursive)
        if start_revision is not None:
            if isinstance(start_revision, bool) or not isinstance(start_revision, int):
                raise WrongTypeError("start_revision must be int or None")
            if start_revision < 1:
                raise InvalidArgumentError("start_revision must be >= 1")
            self.require(Capability.WATCH_FROM_REVISION, "watch from a past revision")
        async with self._ready().watch(
            path, recursive=recursive, start_revision=start_revision
        ) as events:
            yield events

    # -- fault injection for tests -----------------------------------------

    async def abort(self) -> None:
        """Vanish without ending the session (its ephemerals wait for the TTL).

        The client stops talking to the backend at once; leaving ``async with``
        (or :meth:`aclose`) still releases local resources, without ending the session.
        """
        await self._ready().abort()
        self._aborted = True

    async def expire_session(self) -> None:
        """Make the current session expire now, as the server would after its TTL."""
        await self._ready().expire_session()

    async def kill_leader(self, restart_after: float | None = None) -> str:
        """Crash the server leading the cluster (see :meth:`Backend.kill_leader`)."""
        self.require(Capability.KILL_LEADER, "kill the cluster's leader")
        return await self._ready().kill_leader(restart_after)


def connect(
    url: str | None = None,
    *,
    session_ttl: float | None = None,
    timeout: float | None = None,
    max_value_bytes: int | None = None,
    retry: RetryPolicy | None = None,
    connect_timeout: float | None = None,
    tls_ca: str | os.PathLike[str] | None = None,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    user: str | None = None,
    password: str | None = None,
) -> Client:
    """A :class:`Client` for ``url`` (see :func:`coordkit.config.resolve_url`).

    Use as ``async with coordkit.connect(url) as client``. URL query options
    ``session_ttl``, ``timeout``, ``connect_timeout``, ``retry_initial_delay``,
    ``retry_max_delay``, ``retry_max_attempts`` and, where the backend
    supports them, ``tls_ca``, ``tls_cert``, ``tls_key``, ``user`` and
    ``password`` are read too; keyword arguments win (``retry=`` replaces the
    whole policy). Raises :class:`ConfigurationError` for a malformed URL, a
    bad or unknown option or an unknown scheme (the message lists the
    installed schemes). Entering the client raises
    :class:`~coordkit.CannotConnectError` if no endpoint can be used within
    ``connect_timeout`` seconds.
    """
    resolved = resolve_url(url)
    parsed = BackendURL.parse(resolved)
    factories = backend_factories()
    factory = factories.get(parsed.scheme)
    if factory is None:
        installed = ", ".join(sorted(factories)) or "none"
        raise ConfigurationError(
            f"unknown backend scheme {parsed.scheme!r} in {parsed.display!r}; installed schemes: "
            f"{installed}"
        )
    defaults = ConnectOptions()
    query = parsed.query
    options = ConnectOptions(
        session_ttl=_number(
            session_ttl, query.get("session_ttl"), defaults.session_ttl, "session_ttl"
        ),
        timeout=_number(timeout, query.get("timeout"), defaults.timeout, "timeout"),
        max_value_bytes=int(
            _number(max_value_bytes, None, defaults.max_value_bytes, "max_value_bytes")
        ),
        retry=_retry_policy(retry, parsed),
        connect_timeout=_number(
            connect_timeout,
            query.get("connect_timeout"),
            defaults.connect_timeout,
            "connect_timeout",
        ),
        tls_ca=_text(tls_ca, query.get("tls_ca"), "tls_ca"),
        tls_cert=_text(tls_cert, query.get("tls_cert"), "tls_cert"),
        tls_key=_text(tls_key, query.get("tls_key"), "tls_key"),
        user=_text(user, query.get("user"), "user"),
        password=_text(password, query.get("password"), "password", secret=True),
    )
    return Client(factory(parsed, options), resolved, options)


def _text(arg: Any, query: str | None, name: str, *, secret: bool = False) -> str | None:
    """A string option (a file path, a user name): the argument, else the URL's value."""
    raw: Any = arg if arg is not None else query
    if raw is None:
        return None
    if isinstance(raw, os.PathLike):
        raw = os.fspath(raw)
    if not isinstance(raw, str):
        raise ConfigurationError(f"{name} must be a string, not {type(raw).__name__}")
    if not raw:
        shown = "" if secret else f" (in {name}={raw!r})"
        raise ConfigurationError(f"{name} must not be empty{shown}")
    return raw


def _retry_policy(retry: RetryPolicy | None, url: BackendURL) -> RetryPolicy:
    if retry is None:
        return RetryPolicy.from_query(url.query)
    if not isinstance(retry, RetryPolicy):
        raise ConfigurationError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
    return retry


def _number(arg: Any, query: str | None, default: float, name: str) -> float:
    raw: Any = arg if arg is not None else query
    if raw is None:
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{name} must be a number, not {raw!r}") from exc
    if value <= 0:
        raise ConfigurationError(f"{name} must be > 0, not {raw!r}")
    return value
