"""The ZooKeeper backend over kazoo: the Backend contract on a real ZooKeeper ensemble.

Revisions are zxids: ``create_revision`` = czxid, ``mod_revision`` = mzxid,
``version`` = the data version, ``ephemeral_owner`` = the owning session id.
The URL's path is a chroot, created on open. Every call is a kazoo async
request awaited through :class:`LoopBridge`, bounded by ``options.timeout``.

Sessions are ZooKeeper sessions (timeout = ``session_ttl``): a dropped
connection marks the session suspended and kazoo reconnects, to another
server if needed, keeping the session; an expired session is marked lost and
kazoo starts a new one, which becomes :attr:`session`. Reads are retried
across a reconnection; a write interrupted by one raises
:class:`ConnectionLostError` (its outcome is unknown), as ZooKeeper clients do.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
from kazoo import exceptions as kx
from kazoo.client import KazooClient
from kazoo.protocol.states import KazooState
from kazoo.retry import KazooRetry
from kazoo.security import make_digest_acl

from coordkit.backend import (
    SECURITY_OPTIONS,
    Backend,
    BackendURL,
    ConnectOptions,
    Session,
    WatchContext,
    check_options,
)
from coordkit.connecting import client_ssl_context, diagnose
from coordkit.errors import (
    CannotConnectError,
    ConfigurationError,
    ConnectionLostError,
    CoordkitError,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)
from coordkit.model import Capability, Event, Node, Status
from coordkit.paths import join
from coordkit.retry import Conflict
from coordkit.txn import Compare, Op, TxnResult

from .bridge import (
    KazooLog,
    LoopBridge,
    instrument_connection,
    map_error,
    missing_kazoo_internals,
    multi_failures,
    tls_connector,
)
from .paths import EscapingClient, decode_path
from .registry import WatchRegistry, session_expired_error
from .txn import run_txn
from .watch import WatchStream, ancestors, node_from_stat

__all__ = ["DEFAULT_PORT", "ZooKeeperBackend"]

DEFAULT_PORT = 2181
T = TypeVar("T")

log = logging.getLogger(__name__)


def _security_arguments(options: ConnectOptions) -> dict[str, Any]:
    """KazooClient's TLS and digest-auth arguments for ``options``.

    With a user, the session authenticates with ZooKeeper's ``digest`` scheme
    and every node it creates gets an ACL giving that user, and only that
    user, every permission (ZooKeeper accepts any digest credentials; the
    ACLs are what a wrong password meets).
    """
    arguments: dict[str, Any] = {}
    if options.tls:
        arguments.update(
            use_ssl=True,
            verify_certs=True,
            check_hostname=True,
            ca=options.tls_ca,
            certfile=options.tls_cert,
            keyfile=options.tls_key,
        )
    if options.user is not None and options.password is not None:
        credential = f"{options.user}:{options.password}"
        arguments.update(
            auth_data=[("digest", credential)],
            default_acl=[make_digest_acl(options.user, options.password, all=True)],
        )
    return arguments


class ZooKeeperBackend(Backend):
    """``zookeeper://host:port,host:port/chroot``: see the module docstring."""

    capabilities = frozenset({Capability.TXN_ELSE, Capability.ABORT, Capability.EXPIRE_SESSION})

    def __init__(self, url: BackendURL, options: ConnectOptions) -> None:
        check_options(url, SECURITY_OPTIONS)
        self._endpoints = url.host_ports(DEFAULT_PORT)
        self._hosts = [f"{h}:{p}" for h, p in self._endpoints]
        # Checks the TLS files now (a ConfigurationError naming a bad one); the
        # context is what a failed connect probes the endpoints with.
        self._ssl_context = client_ssl_context(options)
        if not self._hosts:
            raise ConfigurationError(f"no ZooKeeper host in {url.display!r}")
        chroot = url.path.rstrip("/")
        if chroot and any(s in ("", ".", "..") for s in chroot[1:].split("/")):
            raise ConfigurationError(f"bad chroot {url.path!r} in {url.display!r}")
        self._chroot = chroot
        self._options = options
        self._bridge = LoopBridge()
        self._kazoo: Any = None
        self._kazoo_log = KazooLog(",".join(self._hosts))
        self._session: Session | None = None
        self._watches: WatchRegistry | None = None
        self._zxid_at_suspend = 0
        self._closed = False
        #: set while a live session is in place; cleared from expiry until kazoo's new one.
        self._session_ready = anyio.Event()
        #: set while kazoo is connected to a server; cleared while it reconnects.
        self._connected = anyio.Event()

    # -- lifecycle -----------------------------------------------------------

    async def open(self) -> None:
        self._bridge.start()
        try:
            await self._connect()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._shutdown(graceful=True)
            raise

    async def _connect(self) -> None:
        policy = self._options.retry
        client = KazooClient(
            hosts=",".join(self._hosts),
            timeout=self._options.session_ttl,
            # kazoo reconnects on its own thread, waiting as the retry policy
            # says (jittered, from its initial to its maximum delay); it never
            # gives up while the backend is open.
            connection_retry=KazooRetry(
                max_tries=-1,
                delay=policy.initial_delay,
                backoff=2,
                max_jitter=1.0,
                max_delay=policy.max_delay,
            ),
            command_retry=None,
            logger=self._kazoo_log,
            **_security_arguments(self._options),
        )
        missing = missing_kazoo_internals(client)
        if missing:
            raise ConfigurationError(
                f"kazoo {importlib.metadata.version('kazoo')} lacks what the ZooKeeper backend "
                f"relies on: {', '.join(missing)}; install a kazoo 2.x: pip install 'kazoo<3'"
            )
        if self._ssl_context is not None:
            client.handler.create_connection = tls_connector(self._ssl_context)
        self._kazoo = EscapingClient(client)
        self._watches = WatchRegistry(client, self._bridge)
        instrument_connection(client, self._watches.on_notification)
        client.add_listener(self._on_kazoo_state)
        await self._start(client)
        self._session = Session(client.client_id[0], self._options.session_ttl)
        self._session_ready.set()
        self._connected.set()
        try:
            if self._chroot:
                await self._ensure_chroot()
                client.chroot = self._chroot
            # Read the chroot once: a node whose ACL keeps this user out (a
            # wrong password, no user given) is one clear error now.
            await self._call(self._kazoo.get_children_async("/"))
        except CoordkitError as exc:
            if isinstance(exc.__cause__, kx.NoAuthError):
                raise self._not_authorized() from None
            raise

    async def _start(self, client: Any) -> None:
        """Start kazoo's connection; within the connect timeout it has a session,
        or kazoo is stopped and one CannotConnectError names each endpoint and why."""
        within = self._options.connect_timeout
        live = client.start_async()
        try:
            await anyio.to_thread.run_sync(live.wait, within, abandon_on_cancel=True)
        finally:
            if not client.connected:
                # Stopped (even when cancelled) the way abort() stops it: kazoo may
                # be blocked reading a server that does not answer, which only a
                # shut-down socket ends now.
                self._kazoo = None
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._stop_kazoo, client, False)
        if client.connected:
            return
        auth_failed = self._kazoo_log.cause.startswith("AUTH_FAILED")
        causes = await diagnose(self._endpoints, self._ssl_context, within, what="ZooKeeper")
        if auth_failed:
            causes = dict.fromkeys(causes, "authentication failed: ZooKeeper refused the user")
        raise CannotConnectError.tried("ZooKeeper", causes, within)

    def _not_authorized(self) -> CannotConnectError:
        where, endpoint = self._chroot or "/", self._kazoo_log.endpoint
        if self._options.user is None:
            why = f"not authorized to use {where} (no user given; its ACL needs one)"
        else:
            why = (
                f"authentication failed: {self._options.user!r} may not use {where} "
                "(wrong user or password?)"
            )
        return CannotConnectError(f"cannot use ZooKeeper at {endpoint}: {why}", {endpoint: why})

    async def _ensure_chroot(self) -> None:
        path = ""
        for segment in self._chroot[1:].split("/"):
            path += "/" + segment
            with contextlib.suppress(NodeExistsError):
                await self._call(self._kazoo.create_async(path, b""))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._shutdown(graceful=True)

    async def _shutdown(self, graceful: bool) -> None:
        client = self._kazoo
        if self._watches is not None:
            self._watches.fail_all(lambda: ConnectionLostError("the client was closed"))
        if client is not None:
            await anyio.to_thread.run_sync(self._stop_kazoo, client, graceful)
        if self._session is not None:
            self._session.mark_lost()
        self._bridge.stop()

    @staticmethod
    def _stop_kazoo(client: Any, graceful: bool) -> None:
        if not graceful:
            # Leave without the Close request, so the server keeps the session
            # (and its ephemeral nodes) until its timeout: the client "vanishes".
            client._stopped.set()
            with contextlib.suppress(AttributeError, OSError):
                client._connection._socket.shutdown(socket.SHUT_RDWR)
            client._connection.connection_stopped.wait(10)
            client.handler.stop()
        else:
            client.stop()
        client.close()

    async def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._shutdown(graceful=False)

    async def expire_session(self) -> None:
        """Expire the session the classic way: a second connection with its id, then close.

        The second connection takes the session over and this client's socket
        is dropped; if this client reconnects before the close request goes
        out, it takes the session back and the close never happens. Each
        attempt therefore waits a bounded time for the loss and, failing that,
        tries again (the retry policy's waits), within the operation timeout
        plus two session TTLs.
        """
        session = self.session
        options = self._options
        window = options.retry.max_delay + 2.0

        async def attempt() -> None:
            if not session.lost:
                await anyio.to_thread.run_sync(self._close_from_elsewhere)
            with anyio.fail_after(window):
                await session.wait_lost()

        with anyio.fail_after(options.timeout + 2 * options.session_ttl):
            await options.retry.call(
                attempt,
                retry_on=TimeoutError,
                what=f"expiring ZooKeeper session {session.id:#x}",
                logger=log,
                forever=True,
            )

    def _close_from_elsewhere(self) -> None:
        """Kazoo's side of :meth:`expire_session`: open the session on a second
        connection and close it there (a blocking call, run in a thread)."""
        session_id, password = self._kazoo.client_id
        other = KazooClient(
            hosts=",".join(self._hosts),
            client_id=(session_id, password),
            timeout=self._options.session_ttl,
            **_security_arguments(self._options),
        )
        if self._ssl_context is not None:
            other.handler.create_connection = tls_connector(self._ssl_context)
        try:
            other.start(self._options.timeout)
        except other.handler.timeout_exception:
            # The session ended meanwhile (nothing to take over), or the
            # server did not answer: the caller sees which by waiting.
            log.debug("expiring session %#x: the second connection did not start", session_id)
        finally:
            other.stop()
            other.close()

    @property
    def session(self) -> Session:
        if self._session is None:
            raise ConnectionLostError("the ZooKeeper backend is not open")
        return self._session

    def _on_kazoo_state(self, state: str) -> None:
        """Kazoo's connection thread: session state changes, handed to the loop in order."""
        client = self._kazoo
        if state == KazooState.SUSPENDED:
            self._zxid_at_suspend = client.last_zxid
        elif state == KazooState.LOST:
            assert self._watches is not None
            self._watches.fail_all(session_expired_error)
        elif state == KazooState.CONNECTED:
            session_id = client._session_id
            if self._session is not None and session_id == self._session.id:
                assert self._watches is not None
                self._watches.rearm(self._zxid_at_suspend)
        # What kazoo just logged (see KazooLog), as of this change.
        endpoint, cause = self._kazoo_log.endpoint, self._kazoo_log.cause
        self._bridge.call_soon(self._apply_state, state, client._session_id, endpoint, cause)

    def _apply_state(self, state: str, session_id: int | None, endpoint: str, cause: str) -> None:
        """The loop's side of a state change: the session's state, the events
        the backend waits on, and one log line per change."""
        session = self._session
        if session is None or self._closed:
            return
        if state in (KazooState.SUSPENDED, KazooState.LOST) and self._connected.is_set():
            self._connected = anyio.Event()
        elif state == KazooState.CONNECTED:
            self._connected.set()
        if state == KazooState.SUSPENDED:
            if session.mark_suspended():
                log.warning(
                    "ZooKeeper connection to %s lost (%s); reconnecting, session %#x suspended",
                    endpoint,
                    cause,
                    session.id,
                )
        elif state == KazooState.LOST:
            self._lose(session, cause)
            if self._session_ready.is_set():
                self._session_ready = anyio.Event()
        elif state == KazooState.CONNECTED and session_id is not None:
            if session_id == session.id and not session.lost:
                if session.mark_connected():
                    log.info(
                        "ZooKeeper connection to %s restored; session %#x kept",
                        endpoint,
                        session.id,
                    )
            elif session_id != session.id:
                self._lose(session, cause)
                new = Session(session_id, self._options.session_ttl)
                self._session = new
                session.hand_over(new)
                self._session_ready.set()
                log.info(
                    "ZooKeeper session %#x opened at %s, replacing lost session %#x",
                    new.id,
                    endpoint,
                    session.id,
                )

    @staticmethod
    def _lose(session: Session, cause: str) -> None:
        if session.mark_lost():
            log.warning(
                "ZooKeeper session %#x lost (%s): its ephemeral nodes are gone", session.id, cause
            )

    # -- calling kazoo -------------------------------------------------------

    async def live_session(self) -> Session:
        """The session once kazoo has one in place (after an expiry: the new one)."""
        await self._live()
        return self.session

    async def _live(self) -> Any:
        """The kazoo client, once a session is in place (after an expiry, the new one)."""
        if self._kazoo is None or self._closed:
            raise ConnectionLostError("the ZooKeeper backend is closed")
        if not self._session_ready.is_set():
            try:
                with anyio.fail_after(self._options.timeout):
                    await self._session_ready.wait()
            except TimeoutError as exc:
                raise SessionExpiredError("no new ZooKeeper session in time") from exc
        return self._kazoo

    async def _call(self, request: Any) -> Any:
        """Await one sent kazoo request, mapping errors; bounded by the timeout."""
        if self._kazoo is None:
            raise ConnectionLostError("the ZooKeeper backend is closed")
        try:
            with anyio.fail_after(self._options.timeout):
                return await self._bridge.wait(request)
        except TimeoutError as exc:
            raise OperationTimeoutError(
                f"ZooKeeper did not answer within {self._options.timeout}s"
            ) from exc
        except Exception as exc:
            raise map_error(exc) from exc

    async def _retrying(self, read: Callable[[], Awaitable[T]]) -> T:
        """Run an idempotent read, retrying across connection loss until the timeout.

        Each attempt first waits for kazoo to be connected; between attempts
        (kazoo may fail a request before telling us it is reconnecting) the
        retry policy's waits.
        """
        await self._live()

        async def attempt() -> T:
            await self._connected.wait()  # while kazoo reconnects
            return await read()

        timeout = self._options.timeout
        with anyio.move_on_after(timeout):
            return await self._options.retry.call(
                attempt,
                retry_on=lambda exc: isinstance(exc, ConnectionLostError) and not self._closed,
                deadline=timeout,
                what="ZooKeeper read",
                logger=log,
            )
        raise OperationTimeoutError(f"ZooKeeper was not reachable within {timeout} s")

    async def _on_conflict(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        """Run a compare-and-set ``attempt`` until no concurrent change beats it
        (the retry policy's waits, within the operation timeout)."""
        return await self._options.retry.on_conflict(
            attempt, deadline=self._options.timeout, what=what, logger=log
        )

    async def _sync(self) -> None:
        await self._call(self._kazoo.sync_async("/"))

    # -- the data model ------------------------------------------------------

    async def create(
        self, path: str, value: bytes, *, ephemeral: bool, sequential: bool, make_parents: bool
    ) -> Node:
        await self._live()
        owner = self.session.id if ephemeral else None

        async def attempt() -> Node:
            missing = await self._missing_ancestors(path) if make_parents else []
            if not missing:
                created, stat = await self._call(
                    self._kazoo.create_async(
                        path, value, ephemeral=ephemeral, sequence=sequential, include_data=True
                    )
                )
                return node_from_stat(decode_path(created), value, stat)
            txn = self._kazoo.transaction()
            for ancestor in missing:
                txn.create(ancestor, b"")
            txn.create(path, value, ephemeral=ephemeral, sequence=sequential)
            result = txn.commit_async()
            replies = await self._call(result)
            errors = multi_failures(replies)
            if not errors:
                zxid = result.zxid
                return Node(decode_path(replies[-1]), value, zxid, zxid, 0, owner, 0)
            index, error = errors[0]
            if index == len(missing) or not isinstance(error, kx.NodeExistsError | kx.NoNodeError):
                # The node's own error, or an ancestor's that no retry changes (an
                # ephemeral ancestor: NoChildrenForEphemerals). The multi changed nothing.
                raise map_error(error)
            raise Conflict("an ancestor appeared or vanished meanwhile")

        return await self._on_conflict(attempt, f"ZooKeeper create {path}")

    async def _missing_ancestors(self, path: str) -> list[str]:
        """The missing ancestors of ``path``, outermost first."""
        chain = ancestors(path)[:-1]  # the root always exists
        results = [(a, self._kazoo.exists_async(a)) for a in chain]
        missing = []
        for ancestor, result in results:
            if await self._call(result) is not None:
                break
            missing.append(ancestor)
        return list(reversed(missing))

    async def get(self, path: str, *, consistent: bool) -> Node | None:
        async def read() -> Node | None:
            if consistent:
                await self._sync()
            try:
                value, stat = await self._call(self._kazoo.get_async(path))
            except NoNodeError:
                return None
            return node_from_stat(path, value, stat)

        return await self._retrying(read)

    async def exists(self, path: str) -> bool:
        async def read() -> bool:
            await self._sync()
            return await self._call(self._kazoo.exists_async(path)) is not None

        return await self._retrying(read)

    async def set(self, path: str, value: bytes, *, version: int | None) -> Node:
        await self._live()
        expected = -1 if version is None else version
        stat = await self._call(self._kazoo.set_async(path, value, expected))
        return node_from_stat(path, value, stat)

    async def delete(self, path: str, *, version: int | None, recursive: bool) -> None:
        await self._live()
        expected = -1 if version is None else version
        if not recursive:
            await self._call(self._kazoo.delete_async(path, expected))
            return

        async def attempt() -> None:
            subtree = await self._subtree(path)
            if subtree is None:
                raise NoNodeError(f"no node {path!r}")
            txn = self._kazoo.transaction()
            for descendant in reversed(subtree[1:]):
                txn.delete(descendant)
            txn.delete(path, expected)
            replies = await self._call(txn.commit_async())
            errors = multi_failures(replies)
            if not errors:
                return
            index, error = errors[0]
            if index == len(subtree) - 1 and not isinstance(error, kx.NotEmptyError):
                raise map_error(error)
            raise Conflict("the subtree changed meanwhile")

        await self._on_conflict(attempt, f"ZooKeeper recursive delete {path}")

    async def _subtree(self, path: str) -> list[str] | None:
        """``path`` and its descendants, parents before children; None if missing."""
        await self._sync()
        out: list[str] = []
        level = [path]
        while level:
            reads = [(p, self._kazoo.get_children_async(p)) for p in level]
            next_level: list[str] = []
            for p, result in reads:
                try:
                    names = await self._call(result)
                except NoNodeError:
                    if p == path:
                        return None
                    continue
                out.append(p)
                next_level.extend(join(p, decode_path(n)) for n in names)
            level = next_level
        return out

    async def children(self, path: str, *, consistent: bool) -> list[str]:
        async def read() -> list[str]:
            if consistent:
                await self._sync()
            names = await self._call(self._kazoo.get_children_async(path))
            return sorted(decode_path(n) for n in names)

        return await self._retrying(read)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]
    ) -> TxnResult:
        await self._live()
        try:
            with anyio.fail_after(self._options.timeout):
                return await run_txn(
                    self._kazoo, self._bridge, self.session.id, compares, success, failure
                )
        except TimeoutError as exc:
            raise OperationTimeoutError("the transaction did not finish in time") from exc
        except CoordkitError:
            raise
        except Exception as exc:
            raise map_error(exc) from exc

    def watch(self, path: str, *, recursive: bool, start_revision: int | None) -> WatchContext:
        return self._watch(path, recursive)

    @asynccontextmanager
    async def _watch(self, path: str, recursive: bool) -> AsyncIterator[AsyncIterator[Event]]:
        if self._watches is None or self._closed:
            raise ConnectionLostError("the ZooKeeper backend is closed")
        watches = self._watches

        async def add() -> WatchStream:
            # Adding a persistent watch is idempotent: retried across a reconnection,
            # with a fresh stream each time (nothing seen by a failed attempt counts).
            stream = WatchStream(await self._live(), self._bridge, path, recursive)
            await watches.add(stream)
            return stream

        try:
            stream = await self._retrying(add)
        except TimeoutError as exc:
            raise OperationTimeoutError("could not add the ZooKeeper watch in time") from exc
        try:
            yield stream
        finally:
            with anyio.CancelScope(shield=True):
                await self._watches.remove(stream)

    async def status(self) -> Status:
        async def read() -> int:
            await self._sync()
            result = self._kazoo.exists_async("/")
            await self._call(result)
            return int(getattr(result, "zxid", 0) or self._kazoo.last_zxid)

        revision = await self._retrying(read)
        modes = await _server_modes(self._hosts)
        leader = next((h for h, m in modes.items() if m in ("leader", "standalone")), None)
        session = self._session
        return Status(
            backend="zookeeper",
            revision=revision,
            session_id=session.id if session else None,
            leader=leader,
            members=tuple(self._hosts),
            details={"modes": modes, "chroot": self._chroot or "/"},
        )


async def _server_modes(hosts: Sequence[str]) -> dict[str, str | None]:
    """Each server's ``Mode`` from the ``srvr`` four-letter word (None if it does not answer)."""
    modes: dict[str, str | None] = {}

    async def ask(host: str) -> None:
        name, _, port = host.rpartition(":")
        modes[host] = None
        with anyio.move_on_after(1.0):
            try:
                async with await anyio.connect_tcp(name, int(port)) as stream:
                    await stream.send(b"srvr")
                    data = b""
                    try:
                        while True:
                            data += await stream.receive()
                    except anyio.EndOfStream:
                        pass
            except OSError:
                return
            for line in data.decode("utf-8", "replace").splitlines():
                if line.startswith("Mode:"):
                    modes[host] = line.split(":", 1)[1].strip()

    async with anyio.create_task_group() as tg:
        for host in hosts:
            tg.start_soon(ask, host)
    return modes
