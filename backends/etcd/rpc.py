"""The gRPC boundary of the etcd backend: the channel, retries, and error mapping.

We use aetcd's generated etcd v3 stubs (``aetcd.rpc``) over a ``grpc.aio``
channel directly: aetcd's high-level client talks to one endpoint, its watcher
spawns unowned asyncio tasks, and it lacks count-only ranges, nested
transactions and a streaming keepalive, all of which the backend needs.

:func:`map_error` is the one place where gRPC/etcd errors become coordkit errors.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import grpc
from aetcd import rpc

from coordkit.backend import BackendURL, ConnectOptions
from coordkit.connecting import client_ssl_context, read_file
from coordkit.errors import (
    CompactedError,
    ConfigurationError,
    ConnectionLostError,
    CoordkitError,
    InvalidArgumentError,
    OperationTimeoutError,
    SessionExpiredError,
    ValueTooLargeError,
)
from coordkit.retry import RetryPolicy, describe_error

__all__ = [
    "DEFAULT_PORT",
    "EtcdChannel",
    "Security",
    "Stream",
    "WatchCompacted",
    "auth_failure",
    "map_error",
    "settled",
    "target_of",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

DEFAULT_PORT = 2379

# etcd's server-side reasons that guarantee a request was not applied: safe to
# retry even for writes (the leader is being elected, or the member is busy).
_NOT_APPLIED = ("no leader", "not capable", "too many requests", "leader changed")

# etcd's clientv3.WithRequireLeader: a member that loses its leader ends the
# stream ("no leader") instead of leaving it silent, so we move to a member
# that has one, and a watch or keepalive never hangs on a cut-off member.
REQUIRE_LEADER = (("hasleader", "true"),)

_CHANNEL_OPTIONS = [
    ("grpc.lb_policy_name", "pick_first"),
    # Our own connections, not ones shared with other channels of the process:
    # pick_first then really starts with the first address of this URL.
    ("grpc.use_local_subchannel_pool", 1),
    # grpc's floor on a connection attempt's timeout (its reconnect waits come
    # from the retry policy, see channel_options).
    ("grpc.min_reconnect_backoff_ms", 100),
    # HTTP/2 pings find a member that stopped answering while its TCP
    # connection stays up (a frozen process, a partition): without them a
    # watch on it would wait forever. etcd refuses pings more often than its
    # --grpc-keepalive-min-time (5 s by default), and we always have a stream
    # open (the lease keepalive), so pings are only sent with calls active.
    ("grpc.keepalive_time_ms", 6000),
    ("grpc.keepalive_timeout_ms", 3000),
    ("grpc.http2.ping_timeout_ms", 3000),  # what newer grpc cores time pings by
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]


class WatchCompacted(Exception):
    """A watch response said its start revision was compacted (mapped by map_error)."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(compact_revision)
        self.compact_revision = compact_revision


def channel_options(retry: RetryPolicy) -> list[tuple[str, Any]]:
    """The channel's options: grpc reconnects the channel itself, on its own
    thread, waiting (with grpc's jitter) from the policy's initial to its
    maximum delay, so one URL option tunes it as it tunes every other retry."""
    return [
        *_CHANNEL_OPTIONS,
        ("grpc.initial_reconnect_backoff_ms", max(1, round(retry.initial_delay * 1000))),
        ("grpc.max_reconnect_backoff_ms", max(1, round(retry.max_delay * 1000))),
    ]


def map_error(exc: BaseException) -> CoordkitError:
    """The coordkit error for a gRPC/etcd failure (the backend's only mapping)."""
    if isinstance(exc, CoordkitError):
        return exc
    if isinstance(exc, WatchCompacted):
        return CompactedError(
            f"revision compacted; the oldest available is {exc.compact_revision}",
            exc.compact_revision,
        )
    if isinstance(exc, grpc.aio.AioRpcError):
        code, details = exc.code(), exc.details() or ""
        if "compacted" in details:
            return CompactedError(details)
        if "lease not found" in details:
            return SessionExpiredError(f"the session's lease has expired ({details})")
        if "too many operations" in details:
            return InvalidArgumentError(f"transaction too large for etcd: {details}")
        if "request is too large" in details or code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return ValueTooLargeError(details)
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return OperationTimeoutError(f"etcd did not answer in time: {details}")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            return ConnectionLostError(f"etcd unreachable: {details}")
        if code is grpc.StatusCode.INTERNAL and "from Core" in details:
            # grpc's own transport failed (seen when the member dies mid-call): the
            # connection is gone, not the request refused.
            return ConnectionLostError(f"etcd connection broke: {details}")
        return CoordkitError(f"etcd error {code.name}: {details}")
    if isinstance(exc, TimeoutError):
        return OperationTimeoutError("etcd did not answer in time")
    if isinstance(exc, OSError):
        return ConnectionLostError(f"etcd unreachable: {exc}")
    return CoordkitError(f"etcd client failure: {exc!r}")


def _retryable(exc: BaseException, idempotent: bool) -> bool:
    if not isinstance(exc, grpc.aio.AioRpcError):
        return False
    details = exc.details() or ""
    if any(reason in details for reason in _NOT_APPLIED):
        return True
    if _token_expired(exc):
        return True
    return idempotent and exc.code() is grpc.StatusCode.UNAVAILABLE


def target_of(url: BackendURL) -> str:
    """The gRPC target for the URL's hosts: one host as is, several as an address list.

    ``pick_first`` over an ``ipv4:``/``ipv6:`` address list fails over to the
    next member when the connected one goes away.
    """
    pairs = url.host_ports(DEFAULT_PORT) if url.hosts else [("127.0.0.1", DEFAULT_PORT)]
    if len(pairs) == 1:
        host, port = pairs[0]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        addresses = [(ipaddress.ip_address(host), port) for host, port in pairs]
    except ValueError as exc:
        raise ConfigurationError(
            f"several etcd endpoints must be IP addresses (got {url.display!r}); "
            "for host names, list one name that resolves to every member"
        ) from exc
    if all(addr.version == 4 for addr, _ in addresses):
        return "ipv4:" + ",".join(f"{addr}:{port}" for addr, port in addresses)
    if all(addr.version == 6 for addr, _ in addresses):
        return "ipv6:" + ",".join(f"[{addr}]:{port}" for addr, port in addresses)
    raise ConfigurationError(f"mixed IPv4/IPv6 endpoints are not supported: {url.display!r}")


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark an abandoned helper task's outcome as seen (no "never retrieved" warning)."""
    if not task.cancelled():
        task.exception()


async def settled(
    awaitable: Awaitable[T], call: Any, *, cancel_call: bool = True, until_call_ends: bool = False
) -> T:
    """Await a grpc.aio awaitable (a unary call, a stream's read/write) the anyio way.

    grpc.aio must never be awaited straight from an anyio task: its awaitables
    wait on tasks of grpc's own, so cancelling the awaiting task cancels
    *grpc's* task, and what comes back is grpc's bare ``CancelledError`` (no
    cancel scope recognises it; it escapes ``move_on_after``, ends the task
    silently, and anyio then cancels every sibling in the task group), or no
    error at all when grpc swallows the cancellation. So the awaitable runs in
    a helper task and we wait on an anyio Event: cancellation stays anyio's.
    If the wait is cancelled the RPC is cancelled too (unless ``cancel_call``
    is false: a stream read may be picked up again by the next reader).

    A call that grpc ended by cancellation (the channel closed, or we cancelled
    it earlier) raises :class:`ConnectionLostError`; gRPC errors pass through.
    """
    task = asyncio.ensure_future(awaitable)
    task.add_done_callback(_retrieve)
    return await wait_task(task, call, cancel_call=cancel_call, until_call_ends=until_call_ends)


async def wait_task(
    task: asyncio.Future[T], call: Any, *, cancel_call: bool = True, until_call_ends: bool = False
) -> T:
    """Wait for a helper task of :func:`settled` through an anyio Event.

    With ``until_call_ends`` the wait also ends when the call does (a stream
    write that grpc would leave pending forever once its call is cancelled).
    """
    if not task.done():
        finished = anyio.Event()
        task.add_done_callback(lambda _task: finished.set())
        if until_call_ends:
            call.add_done_callback(lambda _call: finished.set())
        try:
            await finished.wait()
        except BaseException:
            if cancel_call:
                _abandon(call, task)
            raise
        if not task.done():  # the call ended under a write that will never finish
            _abandon(call, task)
            raise ConnectionLostError("the etcd stream ended")
    if task.cancelled():
        raise ConnectionLostError("the etcd call was cancelled (channel closed or call abandoned)")
    try:
        return task.result()
    except asyncio.CancelledError as exc:  # grpc's own, for a locally cancelled call
        raise ConnectionLostError("the etcd call was cancelled") from exc
    except asyncio.InvalidStateError as exc:  # a write on a stream that has ended
        raise ConnectionLostError(f"the etcd stream has ended: {exc}") from exc


def _abandon(call: Any, task: asyncio.Future[Any]) -> None:
    """Cancel the RPC and our helper task (grpc leaves a write waiting for
    metadata pending forever once its call is cancelled)."""
    call.cancel()
    task.cancel()


async def _await(call: Any) -> Any:
    return await call


class Stream:
    """A bidirectional gRPC stream (watch, lease keepalive) driven from anyio tasks.

    :meth:`write` and :meth:`read` go through :func:`settled`: cancelling one
    cancels the whole stream (reopen it), except :meth:`read` with
    ``keep_on_cancel``, whose pending read carries over to the next call, so a
    cancelled reader loses no message. :meth:`close` cancels the call and lets
    grpc finish it on this event loop.
    """

    def __init__(self, call: Any, on_error: Callable[[BaseException], None] | None = None) -> None:
        self.call = call
        self._reading: asyncio.Future[Any] | None = None
        self._on_error = on_error

    def done(self) -> bool:
        return bool(self.call.done())

    async def write(self, request: Any) -> None:
        try:
            await settled(self.call.write(request), self.call, until_call_ends=True)
        except grpc.aio.AioRpcError as exc:
            if self._on_error is not None:
                self._on_error(exc)
            raise

    async def read(self, *, keep_on_cancel: bool = False) -> Any:
        """The next message, or ``grpc.aio.EOF`` at the end of the stream."""
        if self._reading is None:
            self._reading = asyncio.ensure_future(self.call.read())
            self._reading.add_done_callback(_retrieve)
        task = self._reading
        if not task.done():
            finished = anyio.Event()
            task.add_done_callback(lambda _task: finished.set())
            try:
                await finished.wait()
            except BaseException:
                # Cancelled: with keep_on_cancel the read (even one that has
                # just completed) stays for the next call, so nothing is lost.
                if not keep_on_cancel:
                    self._reading = None
                    _abandon(self.call, task)
                raise
        self._reading = None
        try:
            return await wait_task(task, self.call)  # done: returns or raises at once
        except grpc.aio.AioRpcError as exc:
            if self._on_error is not None:
                self._on_error(exc)
            raise

    async def close(self) -> None:
        """Cancel the call and wait (shielded, briefly) until grpc has finished it."""
        self.call.cancel()
        reading, self._reading = self._reading, None
        if reading is not None:
            reading.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            try:
                await settled(self.call.code(), self.call)
            except (grpc.aio.AioRpcError, CoordkitError):
                pass  # the call ended as it could: closing is all we asked
            except Exception:
                log.exception("unexpected error while closing an etcd stream")


@dataclass(frozen=True, slots=True)
class Security:
    """How the channel proves itself: TLS files' contents and an etcd user."""

    #: PEM bytes of the CA (None: the system's CAs), client certificate and key.
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    tls: bool = False
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_options(cls, options: ConnectOptions) -> Security:
        """Read the TLS files of ``options`` (a ConfigurationError names an unusable one)."""

        def read(path: str | None, what: str) -> bytes | None:
            return None if path is None else read_file(path, what)

        if options.tls:
            # Checks the files now (missing, not PEM, key not matching) with a clear
            # error, instead of grpc failing every connection attempt later.
            client_ssl_context(options)
        return cls(
            ca=read(options.tls_ca, "tls_ca"),
            cert=read(options.tls_cert, "tls_cert"),
            key=read(options.tls_key, "tls_key"),
            tls=options.tls,
            user=options.user,
            password=options.password,
        )


def auth_failure(exc: BaseException) -> str | None:
    """Why etcd refused our credentials (None: it did not)."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return None
    details = exc.details() or ""
    if "authentication failed" in details or "invalid user ID or password" in details:
        return "authentication failed: wrong user or password"
    if "user name is empty" in details or "user name not found" in details:
        return "authentication required: etcd has auth enabled (give user and password)"
    if "authentication is not enabled" in details:
        return "authentication is not enabled on this etcd (drop user and password)"
    if exc.code() is grpc.StatusCode.PERMISSION_DENIED:
        return f"permission denied: {details}"
    return None


def _first_host(target: str) -> str | None:
    """The first address of an ``ipv4:``/``ipv6:`` address list (None: one endpoint)."""
    for scheme in ("ipv4:", "ipv6:"):
        if target.startswith(scheme):
            first = target.removeprefix(scheme).split(",")[0]
            return first.rpartition(":")[0].strip("[]")
    return None


def _token_expired(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and "invalid auth token" in (exc.details() or "")


class EtcdChannel:
    """One gRPC channel to the cluster and its stubs; :meth:`call` runs a unary RPC.

    With :class:`Security` it speaks TLS (grpc's own TLS, with the given CA and
    client certificate) and, with a user, authenticates (:meth:`authenticate`)
    and sends etcd's token with every call and stream, authenticating again
    when etcd says the token expired.
    """

    def __init__(
        self,
        target: str,
        timeout: float,
        retry: RetryPolicy | None = None,
        security: Security | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.security = security or Security()
        options = channel_options(self.retry)
        if self.security.tls:
            first = _first_host(target)
            if first is not None:
                # An address list has no one name for grpc to check the members'
                # certificates against: it would take the whole list. Each is
                # checked against the first address (a cluster certificate).
                options.append(("grpc.ssl_target_name_override", first))
            credentials = grpc.ssl_channel_credentials(
                root_certificates=self.security.ca,
                private_key=self.security.key,
                certificate_chain=self.security.cert,
            )
            self.channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(target, options=options)
        self.kv = rpc.KVStub(self.channel)
        self.lease = rpc.LeaseStub(self.channel)
        self.watch = rpc.WatchStub(self.channel)
        self.cluster = rpc.ClusterStub(self.channel)
        self.maintenance = rpc.MaintenanceStub(self.channel)
        self.auth = rpc.AuthStub(self.channel)
        #: the etcd member id that answered the last unary call (0: none yet).
        self.member_id = 0
        self._token: str | None = None
        self._token_stale = False

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("token", self._token),) if self._token else ()

    async def authenticate(self, timeout: float | None = None) -> None:
        """Get a token for the user (no-op without one); errors leave as coordkit errors."""
        user, password = self.security.user, self.security.password
        if user is None or password is None:
            return
        budget = self.timeout if timeout is None else timeout
        call = self.auth.Authenticate(
            rpc.AuthenticateRequest(name=user, password=password),
            timeout=budget,
            wait_for_ready=True,
        )
        try:
            reply = await self._unary(call, idempotent=True)
        except grpc.aio.AioRpcError as exc:
            raise map_error(exc) from exc
        self._token = str(reply.token)
        self._token_stale = False
        log.debug("authenticated to etcd as %r", user)

    async def call(
        self,
        method: Callable[..., Any],
        request: Any,
        *,
        idempotent: bool,
        timeout: float | None = None,
    ) -> Any:
        """Run ``method(request)`` within the deadline, retrying what is safe to retry.

        Reads are idempotent and retried on any unavailability; writes only when
        etcd reports it did not apply them. Retries follow the retry policy,
        within the deadline. Errors leave as coordkit errors.
        Cancelling the caller cancels the RPC (a write may or may not have been
        applied: etcd applies a transaction whole or not at all).
        """
        budget = self.timeout if timeout is None else timeout
        started = time.monotonic()

        async def attempt() -> Any:
            remaining = budget - (time.monotonic() - started)
            if self._token_stale:
                await self.authenticate(max(remaining, 0.001))
            call = method(
                request,
                timeout=max(remaining, 0.001),
                wait_for_ready=True,
                metadata=self._metadata(),
            )
            try:
                return await self._unary(call, idempotent)
            except grpc.aio.AioRpcError as exc:
                self._note_error(exc)  # refused, not applied: safe to retry
                raise

        try:
            reply = await self.retry.call(
                attempt,
                retry_on=lambda exc: _retryable(exc, idempotent),
                deadline=budget,
                what=f"etcd {type(request).__name__.removesuffix('Request')}",
                logger=log,
            )
        except grpc.aio.AioRpcError as exc:
            raise map_error(exc) from exc
        self.heard_from(reply)
        return reply

    def heard_from(self, reply: Any) -> None:
        """Note the member that sent ``reply`` (its header's member id)."""
        header = getattr(reply, "header", None)
        if header is not None and header.member_id:
            self.member_id = int(header.member_id)

    def describe(self, member_id: int | None = None) -> str:
        """The endpoints as the URL gave them, and the member (default: the
        member last heard from)."""
        member = self.member_id if member_id is None else member_id
        endpoints = self.target.removeprefix("ipv4:").removeprefix("ipv6:")
        return f"{endpoints} (member {member:x})" if member else endpoints

    async def _unary(self, call: Any, idempotent: bool) -> Any:
        task = asyncio.ensure_future(_await(call))
        task.add_done_callback(_retrieve)
        try:
            return await wait_task(task, call, cancel_call=idempotent)
        except anyio.get_cancelled_exc_class():
            # Cancelled while a write is in flight. Cancelling the RPC would not
            # stop etcd from applying a write it has already proposed, so, while
            # we are connected (the request went out), wait for etcd's answer:
            # then a cancelled write has happened or never will, and a caller's
            # cleanup (e.g. deleting by name prefix) sees it. Bounded by the
            # call's deadline; with the connection down, the outcome is unknown
            # as for ConnectionLostError.
            if not task.done():
                if self.channel.get_state() is grpc.ChannelConnectivity.READY:
                    with anyio.CancelScope(shield=True):
                        await _outcome_of(task, call)
                _abandon(call, task)
            raise

    def stream(self, method: Callable[..., Any]) -> Stream:
        """Open a bidirectional stream (``watch.Watch``, ``lease.LeaseKeepAlive``)
        that etcd ends if the member loses its leader."""
        call = method(metadata=REQUIRE_LEADER + self._metadata(), wait_for_ready=True)
        return Stream(call, on_error=self._note_error)

    def token_expired(self) -> None:
        """etcd said our token expired: authenticate before the next call or stream."""
        if self.security.user is not None:
            self._token_stale = True

    def _note_error(self, exc: BaseException) -> None:
        """etcd refused a call for an expired token: authenticate before the next one."""
        if _token_expired(exc) and self.security.user is not None:
            self._token_stale = True

    async def fresh_token(self) -> None:
        """Authenticate again if etcd said our token expired (before opening a stream)."""
        if self._token_stale:
            await self.authenticate()

    async def close(self) -> None:
        await self.channel.close(grace=None)
        # grpc.aio's poller thread hands completions of just-cancelled operations
        # to the loop they started on; if that loop closes first, grpc reports
        # "Event loop is closed" on whichever loop runs next. Let them land.
        await anyio.sleep(0.05)


async def _outcome_of(task: asyncio.Future[Any], call: Any) -> None:
    """Wait for a write's answer that nobody will read (its caller was cancelled)."""
    try:
        await wait_task(task, call)
    except (grpc.aio.AioRpcError, CoordkitError) as exc:
        log.debug("a cancelled etcd write ended with %s", describe_error(exc))
    except Exception:
        log.exception("unexpected error while waiting for a cancelled etcd write")


def ttl_seconds(ttl: float) -> int:
    """etcd leases take whole seconds; round up so a session never lives shorter."""
    return max(1, math.ceil(ttl))
