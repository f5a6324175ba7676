"""The gRPC boundary of the etcd backend: the channel, retries, and error mapping.

We use aetcd's generated etcd v3 stubs (``aetcd.rpc``) over a ``grpc.aio``
channel directly: aetcd's high-level client talks to one endpoint, its watcher
spawns unowned asyncio tasks, and it lacks count-only ranges, nested
transactions and a streaming keepalive, all of which the backend needs.

:func:`map_error` is the one place where gRPC/etcd errors become coordkit errors.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import grpc
from aetcd import rpc

from coordkit.backend import BackendURL
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

__all__ = ["DEFAULT_PORT", "EtcdChannel", "WatchCompacted", "map_error", "target_of"]

DEFAULT_PORT = 2379

# etcd's server-side reasons that guarantee a request was not applied: safe to
# retry even for writes (the leader is being elected, or the member is busy).
_NOT_APPLIED = ("no leader", "not capable", "too many requests", "leader changed")

_CHANNEL_OPTIONS = [
    ("grpc.lb_policy_name", "pick_first"),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]


class WatchCompacted(Exception):
    """A watch response said its start revision was compacted (mapped by map_error)."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(compact_revision)
        self.compact_revision = compact_revision


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
            f"several etcd endpoints must be IP addresses (got {url.raw!r}); "
            "for host names, list one name that resolves to every member"
        ) from exc
    if all(addr.version == 4 for addr, _ in addresses):
        return "ipv4:" + ",".join(f"{addr}:{port}" for addr, port in addresses)
    if all(addr.version == 6 for addr, _ in addresses):
        return "ipv6:" + ",".join(f"[{addr}]:{port}" for addr, port in addresses)
    raise ConfigurationError(f"mixed IPv4/IPv6 endpoints are not supported: {url.raw!r}")


async def _settled(call: Any) -> Any:
    """The outcome of a unary grpc.aio call, waited for through anyio.

    Awaiting the call object itself awaits a task of grpc's own; when anyio
    cancels the awaiting task, the CancelledError comes out of grpc's task, no
    cancel scope claims it, and it silently ends the caller's task. Waiting on
    an anyio Event keeps cancellation anyio's: we cancel the RPC and re-raise.
    """
    finished = anyio.Event()
    call.add_done_callback(lambda _call: finished.set())
    try:
        await finished.wait()
    except BaseException:
        call.cancel()
        raise
    return await call  # already done: returns or raises at once


class EtcdChannel:
    """One gRPC channel to the cluster and its stubs; :meth:`call` runs a unary RPC."""

    def __init__(self, target: str, timeout: float) -> None:
        self.timeout = timeout
        self.channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self.kv = rpc.KVStub(self.channel)
        self.lease = rpc.LeaseStub(self.channel)
        self.watch = rpc.WatchStub(self.channel)
        self.cluster = rpc.ClusterStub(self.channel)
        self.maintenance = rpc.MaintenanceStub(self.channel)

    async def call(
        self,
        method: Callable[..., Awaitable[Any]],
        request: Any,
        *,
        idempotent: bool,
        timeout: float | None = None,
    ) -> Any:
        """Run ``method(request)`` within the deadline, retrying what is safe to retry.

        Reads are idempotent and retried on any unavailability; writes only when
        etcd reports it did not apply them. Errors leave as coordkit errors.
        """
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        delay = 0.05
        while True:
            remaining = deadline - time.monotonic()
            try:
                call = method(request, timeout=max(remaining, 0.001), wait_for_ready=True)
                return await _settled(call)
            except grpc.aio.AioRpcError as exc:
                if not _retryable(exc, idempotent) or deadline - time.monotonic() < delay:
                    raise map_error(exc) from exc
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def close(self) -> None:
        await self.channel.close(grace=None)
        # grpc.aio's poller thread hands completions of just-cancelled operations
        # to the loop they started on; if that loop closes first, grpc reports
        # "Event loop is closed" on whichever loop runs next. Let them land.
        await anyio.sleep(0.05)


def ttl_seconds(ttl: float) -> int:
    """etcd leases take whole seconds; round up so a session never lives shorter."""
    return max(1, math.ceil(ttl))
