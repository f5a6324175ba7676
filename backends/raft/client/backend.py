"""The ``raft://`` Backend: a client of a coordkit Raft cluster.

It keeps one connection, to the leader (a follower answers with the leader's
address, and the client goes there), with many requests in flight on it. A
request that fails because the connection broke, the leader changed or the
cluster was busy is sent again, with the shared retry policy, until the
operation timeout. Writes carry ``(session, sequence)``: the cluster applies
each once however often it is sent (Raft dissertation §6.3), so a retried
sequential create never makes two nodes.

The session is kept alive by a background task every third of its TTL. If
no keepalive succeeds for a whole TTL the session is taken as lost on this
side (the cluster may have expired it; a lock holder must stop), and a new
one is opened once the cluster is reachable: the ZooKeeper rule.

Watches are served by the node the client is connected to, from its applied
state; when that node goes, each watch resumes on the next one from its last
revision + 1, so nothing is lost or repeated.
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel

from coordkit.backend import Backend, ConnectOptions, Session
from coordkit.background import Background
from coordkit.errors import (
    ClientClosedError,
    ConfigurationError,
    ConnectionLostError,
    CoordkitError,
    InvalidArgumentError,
    NodeExistsError,
    OperationTimeoutError,
    SessionExpiredError,
)
from coordkit.model import Capability, Event, Node, Status
from coordkit.retry import RetryPolicy
from coordkit.txn import Compare, Op, TxnResult

from ...store import (
    CloseSession,
    Command,
    Create,
    Delete,
    Set,
    Txn,
    encode_command,
    unwrap_result,
)
from ..protocol import Op as RequestOp
from ..protocol import Status as ReplyStatus
from ..wire import Address
from .chroot import Chroot
from .connection import Connection, ConnectionBroken, Reply
from .dialer import Dialer
from .watches import ClientWatch

__all__ = ["RaftBackend"]

log = logging.getLogger(__name__)


class _Retry(Exception):
    """The request did not run; send it again (after backing off)."""


_RETRYABLE = (_Retry, ConnectionBroken, ConnectionLostError)


@dataclass
class _Failure:
    """Why the last attempt of a request failed (named when it times out)."""

    cause: str


class RaftBackend(Backend):
    """A Backend over a Raft cluster of ``coordkit serve`` nodes (or embedded ones)."""

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

    def __init__(
        self,
        endpoints: Sequence[Address],
        options: ConnectOptions,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        label: str = "raft",
        root: str = "",
    ) -> None:
        if not endpoints:
            raise ConfigurationError("a raft:// URL needs at least one host:port")
        self.options = options
        self.label = label
        self._chroot = Chroot(root)
        self._retry = retry or RetryPolicy()
        self._dialer = Dialer(
            list(endpoints),
            ssl_context=ssl_context,
            connect_timeout=connect_timeout,
            retry=self._retry,
        )
        self._bg: Background | None = None
        self._conn: Connection | None = None
        self._conn_lock = anyio.Lock()
        self._connected = anyio.Event()
        self._session: Session | None = None
        self._session_ready = anyio.Event()
        self._seq = 0
        self._unacked: set[int] = set()
        self._watches: dict[int, ClientWatch] = {}
        self._watch_ids = 0
        self._last_kept = 0.0
        self._closed = False
        self._aborted = False

    # -- lifecycle --------

    async def open(self) -> None:
        self._bg = await Background.start(f"{self.label} client")
        try:
            await self._connection()
            await self._start_session()
            self._bg.start_soon(self._keepalive_loop)
            if self._chroot:
                await self._ensure_root()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._shutdown()
            raise

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        session = self._session
        if session is not None and not self._aborted and not session.lost:
            # Ending the session deletes its ephemeral nodes at once (one revision).
            try:
                with anyio.fail_after(self.options.timeout):
                    await self._write(CloseSession(session.id), session=session)
            except (CoordkitError, TimeoutError) as exc:
                log.warning("could not close session %#x (%s): it will expire", session.id, exc)
            session.mark_lost()
        await self._shutdown()

    async def abort(self) -> None:
        self._aborted = True
        await self._shutdown()

    async def _shutdown(self) -> None:
        for watch in list(self._watches.values()):
            watch.fail(ClientClosedError("the client was closed"))
        self._watches.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()
        if self._bg is not None:
            await self._bg.close()

    @property
    def session(self) -> Session:
        if self._session is None:
            raise ClientClosedError("the raft backend is not open")
        return self._session

    async def live_session(self) -> Session:
        while self.session.lost:
            await self._session_ready.wait()
        return self.session

    async def _ensure_root(self) -> None:
        root = self._chroot.root
        if await self._read_op("exists", root, True):
            return
        with contextlib.suppress(NodeExistsError):  # another client made it meanwhile
            await self._write(Create(root, b"", None, False, True))

    # -- connections --------

    async def _connection(self) -> Connection:
        """The live connection to the leader, connecting (once, for all callers) if needed."""
        conn = self._conn
        if conn is not None and conn.alive:
            return conn
        async with self._conn_lock:
            conn = self._conn
            if conn is not None and conn.alive:
                return conn
            if self._closed or self._aborted:
                raise ClientClosedError("the raft client is closed")
            if self._session is not None:
                self._session.mark_suspended()
            stream, node, address = await self._dialer.connect_leader()
            conn = Connection(stream, node=node, address=address, on_event=self._on_event)
            if self._bg is None or self._bg.closed or self._closed or self._aborted:
                await conn.aclose()
                raise ClientClosedError("the raft client is closed")
            self._bg.start_soon(self._read, conn, name=f"read {address}")
            self._conn = conn
            log.info("connected to %s at %s", node, address)
            if self._watches:
                self._bg.start_soon(self._resume_watches, conn)
            return conn

    async def _read(self, conn: Connection) -> None:
        try:
            await conn.read_loop()
        finally:
            await conn.aclose()  # its socket too, not left to the garbage collector
        if not (self._closed or self._aborted):
            log.info("connection to %s at %s lost: %s", conn.node, conn.address, conn.cause)
            self._dialer.forget_leader(conn.address)
            if self._watches:
                # Watches resume on the next connection; make one now, not at the next call.
                assert self._bg is not None
                self._bg.start_soon(self._reconnect_for_watches)

    async def _reconnect_for_watches(self) -> None:
        with contextlib.suppress(ClientClosedError):  # closed meanwhile: nothing to resume
            await self._retry.call(
                self._connection,
                retry_on=(ConnectionLostError, ConnectionBroken),
                what=f"{self.label}: reconnect to resume watches",
                logger=log,
            )

    # -- requests --------

    async def _call(self, header: dict[str, Any], payload: bytes = b"") -> Reply:
        """Send a request until it runs (or the operation timeout passes).

        The first attempt goes straight out; only a retry goes through the
        tenacity policy (building its retry state costs about as much client
        CPU as the request itself, measured with py-spy, and most requests
        never retry).
        """
        failure: _Failure = _Failure("no answer")
        try:
            with anyio.fail_after(self.options.timeout):
                try:
                    return await self._attempt(header, payload, failure)
                except _RETRYABLE:
                    pass
                async for attempt in self._retry.retrying(
                    retry_on=_RETRYABLE,
                    what=f"{self.label} {header.get('op')}",
                    logger=log,
                ):
                    with attempt:
                        return await self._attempt(header, payload, failure)
        except TimeoutError:
            raise OperationTimeoutError(
                f"{self.label}: {header.get('op')} did not complete within "
                f"{self.options.timeout} s (last: {failure.cause}); its outcome is unknown"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, header: dict[str, Any], payload: bytes, failure: _Failure) -> Reply:
        """One try: the reply, or a retryable error (its cause kept in ``failure``)."""
        try:
            conn = await self._connection()
            reply = await conn.request(dict(header), payload)
        except (ConnectionBroken, ConnectionLostError) as exc:
            failure.cause = str(exc)
            raise
        status = reply.header.get("s")
        if status == ReplyStatus.OK:
            return reply
        failure.cause = str(reply.header.get("m", status))
        self._handle_refusal(conn, reply)
        raise _Retry(failure.cause)

    def _handle_refusal(self, conn: Connection, reply: Reply) -> None:
        status = reply.header.get("s")
        message = str(reply.header.get("m", status))
        if status == ReplyStatus.REDIRECT:
            self._dialer.hint_leader(reply.header.get("addr"))
            self._abandon(conn, f"{conn.node} is not the leader")
        elif status == ReplyStatus.EXPIRED:
            raise SessionExpiredError(message)
        elif status == ReplyStatus.INVALID:
            raise InvalidArgumentError(message)
        elif status == ReplyStatus.UNAVAILABLE:
            self._abandon(conn, f"{conn.node} knows no leader")
        # BUSY: back off and retry on the same connection.

    def _abandon(self, conn: Connection, why: str) -> None:
        """Stop using ``conn`` (the next request finds the leader again)."""
        if self._conn is conn:
            self._conn = None
        self._dialer.forget_leader(conn.address)
        self._drop(conn, why)

    def _drop(self, conn: Connection, why: str) -> None:
        if self._bg is not None and not self._bg.closed:
            self._bg.start_soon(conn.aclose, why)

    async def _write(self, command: Command, *, session: Session | None = None) -> Any:
        """Apply ``command`` through the log, exactly once; return its result or raise its error."""
        session = session or self.session
        self._seq += 1
        seq = self._seq
        self._unacked.add(seq)
        try:
            header = {
                "op": RequestOp.WRITE,
                "sid": session.id,
                "seq": seq,
                "una": min(self._unacked),
            }
            try:
                # A write that may have been sent is waited for even if the caller
                # is cancelled (up to the operation timeout): a cancelled write has
                # then either happened, and cleanup can find what it made, or never
                # will. Never half: no orphan node created after its cleanup ran.
                with anyio.CancelScope(shield=True):
                    reply = await self._call(header, encode_command(command))
                await anyio.lowlevel.checkpoint_if_cancelled()
            except SessionExpiredError:
                self._on_session_expired(session)
                raise
            return unwrap_result(reply.payload)
        finally:
            # Answered or abandoned (cancelled, timed out): never sent again either way.
            self._unacked.discard(seq)

    async def _read_op(self, kind: str, path: str, consistent: bool) -> Any:
        path = self._chroot.inner(path)
        reply = await self._call({"op": RequestOp.READ, "k": kind, "p": path, "c": consistent})
        return unwrap_result(reply.payload)

    # -- sessions --------

    async def _start_session(self) -> None:
        ttl = self.options.session_ttl
        reply = await self._call({"op": RequestOp.OPEN_SESSION, "ttl": ttl})
        old, self._session = self._session, Session(int(reply.header["sid"]), ttl)
        if old is not None:
            old.hand_over(self._session)  # its listeners follow the new session
        self._seq = 0
        self._unacked.clear()
        self._last_kept = time.monotonic()
        self._session_ready.set()
        log.info("session %#x opened (ttl %.1f s)", self._session.id, ttl)

    def _on_session_expired(self, session: Session) -> None:
        if session is self._session and not session.lost:
            log.warning("session %#x expired", session.id)
            session.mark_lost()
            self._session_ready = anyio.Event()

    async def _keepalive_loop(self) -> None:
        """Keep the session alive; on loss open a new one (as a ZooKeeper client does)."""
        while True:
            session = self.session
            if session.lost:
                await self._renew_session()
                continue
            await anyio.sleep(max(session.ttl / 3, 0.01))
            asked_at = time.monotonic()
            try:
                with anyio.fail_after(max(session.ttl / 3, 0.05)):
                    conn = await self._connection()
                    reply = await conn.request({"op": RequestOp.KEEPALIVE, "sid": session.id})
            except ClientClosedError:
                return  # closing: the session is ended (or left to expire) by close()
            except (TimeoutError, ConnectionBroken, ConnectionLostError) as exc:
                self._missed_keepalive(session, str(exc) or type(exc).__name__)
                continue
            status = reply.header.get("s")
            if status == ReplyStatus.OK:
                self._last_kept = asked_at
                if session.state.value == "suspended":
                    log.info("session %#x restored", session.id)
                session.mark_connected()
            elif status == ReplyStatus.EXPIRED:
                self._on_session_expired(session)
            else:
                self._handle_refusal_quietly(conn, reply)
                self._missed_keepalive(session, str(reply.header.get("m", status)))

    def _handle_refusal_quietly(self, conn: Connection, reply: Reply) -> None:
        status = reply.header.get("s")
        if status == ReplyStatus.REDIRECT:
            self._dialer.hint_leader(reply.header.get("addr"))
            self._abandon(conn, f"{conn.node} is not the leader")
        elif status == ReplyStatus.UNAVAILABLE:
            self._abandon(conn, f"{conn.node} knows no leader")

    def _missed_keepalive(self, session: Session, cause: str) -> None:
        if session.state.value == "connected":
            log.warning("session %#x suspended: keepalive failed (%s)", session.id, cause)
        session.mark_suspended()
        if time.monotonic() - self._last_kept >= session.ttl:
            # The cluster may have expired it by now: a holder must not go on.
            log.warning(
                "session %#x lost: no keepalive confirmed for its whole TTL (%.1f s)",
                session.id,
                session.ttl,
            )
            self._on_session_expired(session)

    async def _renew_session(self) -> None:
        old = self.session
        try:
            await self._retry.call(
                self._start_session,
                retry_on=(CoordkitError,),
                what=f"{self.label}: open a new session",
                logger=log,
            )
        except CoordkitError:
            return  # logged by the policy; the loop tries again
        if old.id != self.session.id:
            # Best effort: end the old one if the cluster still has it.
            try:
                await self._call({"op": RequestOp.EXPIRE_SESSION, "sid": old.id})
            except CoordkitError as exc:
                log.debug("old session %#x not ended here (%s)", old.id, exc)

    async def expire_session(self) -> None:
        old = self.session
        await self._call({"op": RequestOp.EXPIRE_SESSION, "sid": old.id})
        self._on_session_expired(old)
        with anyio.fail_after(self.options.timeout):
            await self.live_session()

    # -- the data model --------

    async def create(
        self, path: str, value: bytes, *, ephemeral: bool, sequential: bool, make_parents: bool
    ) -> Node:
        owner = self.session.id if ephemeral else None
        command = Create(self._chroot.inner(path), value, owner, sequential, make_parents)
        node: Node = self._chroot.result(await self._write(command))
        return node

    async def get(self, path: str, *, consistent: bool) -> Node | None:
        node: Node | None = self._chroot.node(await self._read_op("get", path, consistent))
        return node

    async def set(self, path: str, value: bytes, *, version: int | None) -> Node:
        node: Node = self._chroot.result(
            await self._write(Set(self._chroot.inner(path), value, version))
        )
        return node

    async def delete(self, path: str, *, version: int | None, recursive: bool) -> None:
        await self._write(Delete(self._chroot.inner(path), version, recursive))

    async def children(self, path: str, *, consistent: bool) -> list[str]:
        names: list[str] = await self._read_op("children", path, consistent)
        return names

    async def exists(self, path: str) -> bool:
        return bool(await self._read_op("exists", path, True))

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]
    ) -> TxnResult:
        chroot = self._chroot
        command = Txn(
            tuple(map(chroot.compare, compares)),
            tuple(map(chroot.op, success)),
            tuple(map(chroot.op, failure)),
            self.session.id,
        )
        result: TxnResult = chroot.result(await self._write(command))
        return result

    async def status(self) -> Status:
        reply = await self._call({"op": RequestOp.STATUS})
        info = reply.header.get("status", {})
        details = {
            k: v
            for k, v in info.items()
            if k not in ("revision", "leader", "members", "addresses", "leader_addr")
        }
        details["nodes"] = await self.member_status()
        return Status(
            backend=self.label,
            revision=int(info.get("revision", 0)),
            session_id=self.session.id,
            leader=info.get("leader"),
            members=tuple(info.get("members", ())),
            details=details,
        )

    # -- operator requests --------

    async def admin(self, header: dict[str, Any]) -> Reply:
        """An operator request (membership, transfer, faults) to the leader."""
        return await self._call(header)

    async def compact(self, revision: int) -> int:
        """Forget the watch history below ``revision``; returns the oldest revision kept.

        A later ``watch(..., start_revision=r)`` with ``r`` below it raises
        :class:`~coordkit.CompactedError`.
        """
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
            raise InvalidArgumentError(f"revision must be an int >= 1, not {revision!r}")
        reply = await self._call({"op": RequestOp.COMPACT, "rev": revision})
        return int(unwrap_result(reply.payload))

    async def download_snapshot(self) -> AsyncIterator[bytes]:
        """A consistent snapshot of the leader's store, as the chunks of its file format."""
        conn = await self._connection()
        async for chunk in conn.stream({"op": RequestOp.SNAPSHOT}):
            yield chunk

    async def member_status(self) -> list[dict[str, Any]]:
        """What each configured member says of itself (unreachable ones: an error)."""
        reply = await self._call({"op": RequestOp.STATUS})
        info = reply.header.get("status", {})
        addresses: dict[str, str] = dict(info.get("addresses", {}))
        rows: list[dict[str, Any]] = []

        async def ask(name: str, address: str) -> None:
            try:
                endpoint = Address.parse(address)
                rows.append(await self._dialer.status_of(endpoint))
            except (CoordkitError, OSError, ValueError) as exc:
                rows.append({"node": name, "address": address, "error": str(exc)})

        async with anyio.create_task_group() as tg:
            for name, address in sorted(addresses.items()):
                tg.start_soon(ask, name, address)
        return sorted(rows, key=lambda row: str(row.get("node")))

    # -- watches --------

    @asynccontextmanager
    async def watch(
        self, path: str, *, recursive: bool, start_revision: int | None
    ) -> AsyncIterator[AsyncIterator[Event]]:
        self._watch_ids += 1
        watch = ClientWatch(
            self._watch_ids, self._chroot.inner(path), recursive, start_revision, self._chroot
        )
        self._watches[watch.id] = watch
        try:
            reply = await self._call(watch.request())
            if reply.payload:  # the watch could not start: e.g. CompactedError
                unwrap_result(reply.payload)
            watch.established(int(reply.header.get("rev", 0)))
            yield watch
        finally:
            self._watches.pop(watch.id, None)
            watch.close()
            conn = self._conn
            if conn is not None and conn.alive and not self._closed:
                self._drop_watch_on(conn, watch.id)

    def _drop_watch_on(self, conn: Connection, watch_id: int) -> None:
        async def unwatch() -> None:
            with contextlib.suppress(ConnectionBroken):  # gone with the connection anyway
                await conn.send({"t": "q", "i": 0, "op": RequestOp.UNWATCH, "w": watch_id})

        if self._bg is not None and not self._bg.closed:
            self._bg.start_soon(unwatch)

    def _on_event(self, watch_id: int, header: dict[str, Any], payload: bytes) -> None:
        watch = self._watches.get(watch_id)
        if watch is not None:
            watch.deliver(header, payload)

    async def _resume_watches(self, conn: Connection) -> None:
        for watch in list(self._watches.values()):
            if not watch.open:
                continue
            try:
                reply = await conn.request(watch.request())
            except ConnectionBroken:
                return  # the next connection resumes them
            if reply.header.get("s") == ReplyStatus.OK:
                log.info(
                    "watch on %s resumed on %s from revision %d",
                    watch.path,
                    conn.node,
                    watch.resume_from(),
                )
            else:
                watch.fail_from_reply(reply)


def _finite(value: float) -> bool:
    return math.isfinite(value)
