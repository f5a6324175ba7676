"""Sessions on etcd leases: grant, keep alive, replace after a loss, revoke.

A session is an etcd lease. One ``LeaseKeepAlive`` stream renews it every
third of its TTL; a lease's life is counted from when we *asked* (not from
the answer), so the client never believes in a session etcd has expired.

When the stream breaks the session is suspended and the stream is reopened
as the retry policy says, for as long as the backend is open (the client
must recover once etcd is back). A lease that has not been confirmed for a
whole TTL, or that etcd reports expired, is given up: the session is marked
lost, a new lease is granted and the old one revoked (best effort, so that
its keys do not outlive our giving it up). Each change of state is logged
once, on ``coordkit.backends.etcd.lease``: the connection lost (WARNING,
with the endpoint and the cause), the connection back with the session kept
(INFO), the session lost (WARNING, with the session id and why), a new
session in its place (INFO). Retries are logged at DEBUG; an unexpected
error in the loop with its traceback (ERROR), and the loop goes on.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

import anyio
import grpc
from aetcd import rpc

from coordkit.backend import ConnectOptions, Session
from coordkit.errors import ClientClosedError, ConnectionLostError, CoordkitError
from coordkit.retry import describe_error

from .rpc import EtcdChannel, Stream, map_error, ttl_seconds

__all__ = ["Leases"]

log = logging.getLogger(__name__)

#: What a keepalive meets when etcd or the network fails: handled by reconnecting.
_EXPECTED = (CoordkitError, grpc.aio.AioRpcError, TimeoutError, OSError)


class Leases:
    """The session of one etcd backend, kept alive on its channel.

    ``channel`` returns the backend's channel (raising
    :class:`~coordkit.ClientClosedError` once it is closed).
    """

    def __init__(self, channel: Callable[[], EtcdChannel], options: ConnectOptions) -> None:
        self._channel = channel
        self._options = options
        self._session: Session | None = None
        self._session_lock = anyio.Lock()
        self._last_renewed = 0.0
        self._renewed = anyio.Event()  # set (and replaced) at each confirmation
        #: the id of a lease being granted (revoked if open() fails).
        self.granting = 0
        #: the etcd member that answered the keepalives last (0: none yet; then
        #: the log names the member that answered the last call).
        self._member = 0

    # -- the current session ---------------------------------------------------

    @property
    def session(self) -> Session:
        if self._session is None:
            raise ClientClosedError("the etcd backend is not open")
        return self._session

    @property
    def current(self) -> Session | None:
        """The session, or None before the first grant."""
        return self._session

    @property
    def last_renewed(self) -> float:
        """``time.monotonic()`` when etcd last confirmed the session's lease
        (its grant or a keepalive answer)."""
        return self._last_renewed

    async def wait_renewed(self, since: float) -> None:
        """Return once etcd has confirmed the session's lease after ``since``
        (a ``time.monotonic()`` value)."""
        while self._last_renewed <= since:
            await self._renewed.wait()

    def _confirmed(self, asked_at: float) -> None:
        """etcd confirmed the lease in answer to a request sent at ``asked_at``:
        the lease lives at least a TTL from then (counting from the answer
        would let the client believe in its session after etcd expired it)."""
        self._last_renewed = max(self._last_renewed, asked_at)
        self._renewed.set()
        self._renewed = anyio.Event()

    # -- grant, revoke, replace ------------------------------------------------

    async def open(self, timeout: float | None = None) -> Session:
        """Grant the first session (within ``timeout`` seconds, default: the operation timeout)."""
        self._session = await self._grant(timeout)
        log.debug("etcd session %#x granted (ttl %g s)", self._session.id, self._session.ttl)
        return self._session

    async def _grant(self, timeout: float | None = None) -> Session:
        """A new lease. We choose its id, so a grant whose answer we never saw
        (cancelled, or the connection broke) can still be revoked by that id."""
        channel = self._channel()
        while True:
            self.granting = secrets.randbits(62) + 1
            asked_at = time.monotonic()
            try:
                reply = await channel.call(
                    channel.lease.LeaseGrant,
                    rpc.LeaseGrantRequest(
                        TTL=ttl_seconds(self._options.session_ttl), ID=self.granting
                    ),
                    idempotent=False,
                    timeout=timeout,
                )
            except CoordkitError as exc:
                if "lease already exists" in str(exc):
                    continue  # someone holds that id: pick another
                raise
            self.granting = 0
            self._confirmed(asked_at)
            return Session(int(reply.ID), float(reply.TTL))

    async def revoke(self, lease_id: int, channel: EtcdChannel | None = None) -> None:
        """Revoke a lease (best effort, bounded): its keys go at once."""
        if not lease_id:
            return
        try:
            channel = channel or self._channel()
        except ClientClosedError:
            return
        with anyio.move_on_after(min(self._options.timeout, 3.0)):
            try:
                await channel.call(
                    channel.lease.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease_id), idempotent=True
                )
            except CoordkitError as exc:  # gone already, or etcd unreachable: it expires
                log.debug("could not revoke etcd lease %#x: %s", lease_id, describe_error(exc))

    async def replace(self, old: Session, cause: str) -> None:
        """Mark ``old`` lost (``cause``: why) and grant a new session, once
        however many callers; then revoke the old lease."""
        # Shielded: marking the old session lost wakes its holders, which may
        # cancel the very task that runs this; the client needs the new lease.
        with anyio.CancelScope(shield=True):
            async with self._session_lock:
                if self._session is not old:
                    return
                if old.mark_lost():
                    log.warning("etcd session %#x lost: %s", old.id, cause)
                new = await self._grant()
                self._session = new
                old.hand_over(new)
                log.info(
                    "etcd session %#x opened at %s, replacing lost session %#x",
                    new.id,
                    self._channel().describe(),
                    old.id,
                )
            await self.revoke(old.id)

    # -- keepalive ---------------------------------------------------------------

    async def keep_alive(self) -> None:
        """Keep the session alive until cancelled (see the module docstring)."""
        while True:
            stream = await self._options.retry.call(
                self._reconnect,
                retry_on=Exception,  # _reconnect logs what was not expected
                forever=True,
                what="etcd session keepalive",
                logger=log,
            )
            try:
                while True:
                    await anyio.sleep(self.session.ttl / 3)
                    await self._round_trip(stream)
            except Exception as exc:
                self._suspend(self._cause(exc))
            finally:
                with anyio.CancelScope(shield=True):
                    await stream.close()

    async def _reconnect(self) -> Stream:
        """Open a keepalive stream and have one keepalive answered on it,
        replacing the session first if its lease has lapsed meanwhile."""
        try:
            session = self.session
            unconfirmed = time.monotonic() - self._last_renewed
            if unconfirmed > session.ttl:
                await self.replace(session, f"its lease was not renewed for {unconfirmed:.1f} s")
            channel = self._channel()
            await channel.fresh_token()
            stream = channel.stream(channel.lease.LeaseKeepAlive)
            try:
                await self._round_trip(stream)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await stream.close()
                raise
            return stream
        except Exception as exc:
            self._suspend(self._cause(exc))
            if isinstance(exc, _EXPECTED):
                raise map_error(exc) from exc
            raise

    async def _round_trip(self, stream: Stream) -> None:
        """One keepalive and its answer; raises if the stream fails."""
        session = self.session
        asked_at = time.monotonic()
        with anyio.fail_after(max(session.ttl / 3, 0.5)):
            await stream.write(rpc.LeaseKeepAliveRequest(ID=session.id))
            reply = await stream.read()
        if reply is grpc.aio.EOF:
            raise ConnectionLostError("etcd ended the keepalive stream")
        self._channel().heard_from(reply)
        self._member = int(reply.header.member_id)
        if session.id != reply.ID or session is not self._session:
            return  # the answer for a session replaced meanwhile
        if reply.TTL <= 0:
            await self.replace(session, "etcd reports its lease expired")
            return
        self._confirmed(asked_at)
        if session.mark_connected():
            log.info(
                "etcd connection to %s restored; session %#x kept",
                self._channel().describe(self._member or None),
                session.id,
            )

    def _suspend(self, cause: str) -> None:
        session = self._session
        if session is not None and session.mark_suspended():
            try:
                endpoint = self._channel().describe(self._member or None)
            except ClientClosedError:
                return  # closing: not a connection problem
            log.warning(
                "etcd connection to %s lost (%s); reconnecting, session %#x suspended",
                endpoint,
                cause,
                session.id,
            )

    @staticmethod
    def _cause(exc: Exception) -> str:
        """Why the keepalive failed, for the log; an unexpected error is logged
        with its traceback (the loop goes on regardless)."""
        if isinstance(exc, _EXPECTED):
            return describe_error(map_error(exc))
        log.error("unexpected error in the etcd session keepalive", exc_info=exc)
        return describe_error(exc)
