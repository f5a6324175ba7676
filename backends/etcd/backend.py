"""The ``etcd://`` backend: the node hierarchy on etcd v3 keys, sessions on leases.

Needs the ``coordkit[etcd]`` extra (aetcd's stubs and grpcio); runs on asyncio
only, because grpc.aio does. See :mod:`~coordkit.backends.etcd.keys` for the
key layout and ``docs/backends/etcd.md`` for the whole story.

Guarantees under faults: every mutation is one etcd transaction (one
revision), guarded by compares, so a concurrent change makes it retry or fail
cleanly, never half-apply. Reads are linearizable unless ``consistent=False``
(then serializable: served by the member we talk to, possibly stale). A
write whose connection breaks mid-flight raises :class:`ConnectionLostError`
(its outcome is unknown); requests etcd refused because it had no leader are
retried within the operation timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import grpc
from aetcd import rpc
from anyio.abc import TaskGroup

from coordkit.backend import (
    SECURITY_OPTIONS,
    Backend,
    BackendURL,
    ConnectOptions,
    Session,
    check_options,
)
from coordkit.connecting import client_ssl_context, diagnose
from coordkit.errors import (
    BadVersionError,
    CannotConnectError,
    ClientClosedError,
    ConnectionLostError,
    CoordkitError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    OperationTimeoutError,
    UnsupportedError,
)
from coordkit.model import Capability, Event, Node, Status
from coordkit.paths import SEQUENCE_DIGITS, parent
from coordkit.retry import Conflict
from coordkit.txn import Compare, Op, TxnResult

from . import ops
from .keys import KeyLayout, depth, prefix_end
from .lease import Leases
from .rpc import DEFAULT_PORT, EtcdChannel, Security, auth_failure, map_error, target_of
from .txn import run_txn
from .watch import EtcdWatch

__all__ = ["EtcdBackend"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def _ancestors(path: str) -> list[str]:
    """Proper ancestors of ``path`` below the root, top-down (``/a/b/c`` → ``/a``, ``/a/b``)."""
    parts = path.split("/")[1:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


class EtcdBackend(Backend):
    """A coordkit hierarchy stored in etcd under the URL's key prefix."""

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

    def __init__(self, url: BackendURL, options: ConnectOptions) -> None:
        self.url = url
        self.options = options
        self.layout = KeyLayout.from_url_path(url.path)
        check_options(url, SECURITY_OPTIONS)
        self._target = target_of(url)
        self._endpoints = url.host_ports(DEFAULT_PORT) or [("127.0.0.1", DEFAULT_PORT)]
        self._security = Security.from_options(options)
        self._ssl_context = client_ssl_context(options)
        self._channel: EtcdChannel | None = None
        self._leases = Leases(lambda: self.channel, options)
        self._runner: asyncio.Task[None] | None = None
        self._tg: TaskGroup | None = None
        self._aborted = False
        self._closed = False
        self._turns: dict[str, anyio.Semaphore] = {}

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise UnsupportedError(
                "the etcd backend runs on asyncio only (grpc.aio, the transport under aetcd)"
            ) from None
        self._channel = EtcdChannel(
            self._target, self.options.timeout, self.options.retry, self._security
        )
        try:
            await self._first_contact(self._channel)
            # The keepalive runs in a task group hosted by a task of its own, so
            # that close() may end it from inside the client's shielded scope,
            # and abort() from any task: neither has to exit a cancel scope
            # entered in open().
            started = anyio.Event()
            self._runner = asyncio.get_running_loop().create_task(self._run(started))
            await started.wait()
        except BaseException as exc:
            # Cancelled or failed half-way: leave no keepalive task, lease or channel.
            with anyio.CancelScope(shield=True):
                await self._stop_runner()
                leases, session = self._leases, self._leases.current
                # A grant can only have reached etcd over a connection that was up.
                reached = self._channel.channel.get_state() is grpc.ChannelConnectivity.READY
                if reached and not isinstance(exc, CannotConnectError):
                    await leases.revoke(leases.granting or (session.id if session else 0))
                self._leases = Leases(lambda: self.channel, self.options)
                await self._channel.close()
                self._channel = None
            raise

    async def _first_contact(self, channel: EtcdChannel) -> None:
        """Authenticate and grant the first session within the connect timeout,
        or raise one CannotConnectError naming each endpoint and its cause."""
        within = self.options.connect_timeout
        try:
            with anyio.fail_after(within):
                await channel.authenticate(within)
                # A read under the prefix: etcd with auth on refuses it without
                # a user (it grants leases to anyone), so that shows here.
                await channel.call(
                    channel.kv.Range,
                    rpc.RangeRequest(key=self.layout.data("/"), count_only=True, serializable=True),
                    idempotent=True,
                    timeout=within,
                )
                await self._leases.open(timeout=within)
            return
        except (TimeoutError, ConnectionLostError, OperationTimeoutError):
            causes = await diagnose(self._endpoints, self._ssl_context, within, what="etcd")
        except CoordkitError as exc:
            refused = auth_failure(exc.__cause__ or exc)
            if refused is None:
                raise
            if self._security.user is None and refused.startswith("permission denied"):
                refused += " (no user given: etcd has auth enabled, give user and password)"
            causes = {endpoint: refused for endpoint in channel.describe().split(",")}
        raise CannotConnectError.tried("etcd", causes, within) from None

    async def _run(self, started: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._leases.keep_alive)
            started.set()
            await anyio.sleep_forever()

    async def _stop_runner(self) -> None:
        runner, self._runner, self._tg = self._runner, None, None
        if runner is not None:
            runner.cancel()
            await asyncio.wait([runner])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._stop_runner()
        session = self._leases.current
        if session is not None and not self._aborted:
            # Revoking the lease deletes the session's ephemeral nodes at once.
            await self._leases.revoke(session.id, self._channel)
            session.mark_lost()
        if self._channel is not None:
            await self._channel.close()

    async def abort(self) -> None:
        self._aborted = True
        await self._stop_runner()
        if self._channel is not None:
            await self._channel.close()

    async def expire_session(self) -> None:
        old = self.session
        await self.channel.call(
            self.channel.lease.LeaseRevoke, rpc.LeaseRevokeRequest(ID=old.id), idempotent=True
        )
        await self._leases.replace(old, "its lease was revoked (expire_session)")

    # -- what native recipes use -----------------------------------------------

    @property
    def channel(self) -> EtcdChannel:
        if self._channel is None or self._closed or self._aborted:
            raise ClientClosedError("the etcd backend is not open")
        return self._channel

    @property
    def session(self) -> Session:
        return self._leases.session

    @property
    def last_renewed(self) -> float:
        """``time.monotonic()`` when etcd last confirmed the session's lease
        (its grant or a keepalive answer)."""
        return self._leases.last_renewed

    async def wait_renewed(self, since: float) -> None:
        """Return once etcd has confirmed the session's lease after ``since``
        (a ``time.monotonic()`` value)."""
        await self._leases.wait_renewed(since)

    def start_soon(self, func: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run ``func`` in the backend's task group (cancelled when the backend closes)."""
        if self._tg is None:
            raise ClientClosedError("the etcd backend is not open")
        self._tg.start_soon(func)

    def native_turn(self, name: str) -> anyio.Semaphore:
        """The FIFO turn of this client's contenders for native lock/election ``name``
        (etcd's layout allows one key per lease)."""
        return self._turns.setdefault(name, anyio.Semaphore(1, fast_acquire=False))

    async def kv_txn(self, request: Any, *, idempotent: bool = False) -> Any:
        return await self.channel.call(self.channel.kv.Txn, request, idempotent=idempotent)

    async def read(self, *requests: Any) -> Any:
        """Several range ops read atomically at one revision (a read-only txn)."""
        return await self.kv_txn(ops.txn_request([], list(requests), []), idempotent=True)

    def lease_for(self, ephemeral: bool) -> int:
        return self.session.id if ephemeral else 0

    # -- reads -----------------------------------------------------------------

    async def get(self, path: str, *, consistent: bool) -> Node | None:
        layout, stale = self.layout, not consistent
        reply = await self.read(
            ops.range_op(layout.data(path), serializable=stale),
            ops.range_op(
                layout.children(path),
                prefix_end(layout.children(path)),
                count_only=True,
                serializable=stale,
            ),
        )
        found = ops.kvs(reply.responses[0])
        count = ops.count(reply.responses[1])
        if path == "/":
            return ops.root_node(found[0] if found else None, count)
        return ops.node_of(path, found[0], count) if found else None

    async def children(self, path: str, *, consistent: bool) -> list[str]:
        layout, stale = self.layout, not consistent
        prefix = layout.children(path)
        reply = await self.read(
            ops.range_op(layout.data(path), count_only=True, serializable=stale),
            ops.range_op(prefix, prefix_end(prefix), keys_only=True, serializable=stale),
        )
        if path != "/" and ops.count(reply.responses[0]) == 0:
            raise NoNodeError(path)
        return sorted(layout.name_of(kv.key) for kv in ops.kvs(reply.responses[1]))

    async def status(self) -> Status:
        channel = self.channel
        state = await channel.call(channel.maintenance.Status, rpc.StatusRequest(), idempotent=True)
        members = await channel.call(
            channel.cluster.MemberList, rpc.MemberListRequest(), idempotent=True
        )
        # The member's header may lag; a linearizable read gives the cluster's revision.
        current = await self.read(ops.range_op(self.layout.data("/"), count_only=True))
        names = {m.ID: m.name or f"{m.ID:x}" for m in members.members}
        endpoints = {
            m.ID: urlsplit(m.clientURLs[0]).netloc for m in members.members if m.clientURLs
        }
        return Status(
            backend="etcd",
            revision=int(current.header.revision),
            session_id=self.session.id,
            leader=names.get(state.leader),
            members=tuple(sorted(names.values())),
            details={
                "version": state.version,
                "raft_term": int(state.raftTerm),
                "db_size": int(state.dbSize),
                "cluster_id": int(current.header.cluster_id),
                "prefix": self.layout.prefix,
                "target": self._target,
                # the member this client talks to (pick_first: all calls go there)
                "member": names.get(state.header.member_id),
                "endpoint": endpoints.get(state.header.member_id),
            },
        )

    # -- writes ----------------------------------------------------------------

    async def create(
        self, path: str, value: bytes, *, ephemeral: bool, sequential: bool, make_parents: bool
    ) -> Node:
        layout, lease = self.layout, self.lease_for(ephemeral)
        parent_path = parent(path)

        async def attempt() -> Node:
            compares: list[Any] = []
            writes: list[Any] = []
            seq_version, seq_next = 0, 0
            reads = [ops.range_op(layout.data(a)) for a in _ancestors(path)] if make_parents else []
            if sequential:
                reads.append(ops.range_op(layout.sequence(parent_path)))
            if reads:
                seen = (await self.read(*reads)).responses
                if sequential:
                    counter = ops.kvs(seen[-1])
                    if counter:
                        seq_version, seq_next = counter[0].version, int(counter[0].value)
                if make_parents:
                    self._plan_parents(path, seen, compares, writes)
            if not make_parents and parent_path != "/":
                compares.append(ops.compare(layout.data(parent_path), ops.CREATE, ops.GREATER, 0))
                compares.append(ops.compare(layout.data(parent_path), ops.LEASE, ops.EQUAL, 0))
            final = f"{path}{seq_next:0{SEQUENCE_DIGITS}d}" if sequential else path
            if sequential:
                key = layout.sequence(parent_path)
                compares.append(ops.compare(key, ops.VERSION, ops.EQUAL, seq_version))
                writes.append(ops.put_op(key, str(seq_next + 1).encode()))
            compares.append(ops.compare(layout.data(final), ops.CREATE, ops.EQUAL, 0))
            writes.append(ops.put_op(layout.data(final), value, lease=lease))
            writes.append(ops.put_op(layout.index(final), b"", lease=lease))
            diagnose = [
                ops.range_op(layout.data(parent_path)),
                ops.range_op(layout.data(final)),
                ops.range_op(layout.sequence(parent_path)),
            ]
            reply = await self.kv_txn(ops.txn_request(compares, writes, diagnose))
            if reply.succeeded:
                rev = int(reply.header.revision)
                return Node(final, value, rev, rev, 0, lease or None, 0)
            parent_kv, node_kv, counter = (ops.kvs(r) for r in reply.responses)
            raced = sequential and (counter[0].version if counter else 0) != seq_version
            if node_kv and not raced:
                raise NodeExistsError(final)
            if parent_path != "/" and not parent_kv and not make_parents:
                raise NoNodeError(f"parent of {path!r} does not exist")
            if parent_kv and parent_kv[0].lease:
                raise NoChildrenForEphemeralsError(f"{parent_path!r} is ephemeral")
            raise Conflict("a sequence counter or an ancestor changed meanwhile")

        return await self._on_conflict(attempt, f"etcd create {path}")

    def _plan_parents(self, path: str, seen: Any, compares: list[Any], writes: list[Any]) -> None:
        """Pin each ancestor as read (by mod revision) and create the missing ones."""
        layout, deepest_lease = self.layout, 0
        for ancestor, response in zip(_ancestors(path), seen, strict=False):
            found = ops.kvs(response)
            mod = found[0].mod_revision if found else 0
            compares.append(ops.compare(layout.data(ancestor), ops.MOD, ops.EQUAL, mod))
            if found:
                deepest_lease = found[0].lease
                continue
            if deepest_lease:
                raise NoChildrenForEphemeralsError(f"{parent(ancestor)!r} is ephemeral")
            writes.append(ops.put_op(layout.data(ancestor), b""))
            writes.append(ops.put_op(layout.index(ancestor), b""))
        if deepest_lease and not writes:
            raise NoChildrenForEphemeralsError(f"{parent(path)!r} is ephemeral")

    async def set(self, path: str, value: bytes, *, version: int | None) -> Node:
        layout = self.layout
        key, kids = layout.data(path), layout.children(path)
        compares: list[Any] = []
        if path != "/":
            compares.append(ops.compare(key, ops.CREATE, ops.GREATER, 0))
        if version is not None:
            etcd_version = version if path == "/" else version + 1
            compares.append(ops.compare(key, ops.VERSION, ops.EQUAL, etcd_version))
        writes = [
            ops.put_op(key, value, ignore_lease=path != "/", prev_kv=True),
            ops.range_op(key),
            ops.range_op(kids, prefix_end(kids), count_only=True),
        ]
        reply = await self.kv_txn(ops.txn_request(compares, writes, [ops.range_op(key)]))
        if reply.succeeded:
            kv = ops.kvs(reply.responses[1])[0]
            return ops.node_of(path, kv, ops.count(reply.responses[2]))
        if not ops.kvs(reply.responses[0]) and path != "/":
            raise NoNodeError(path)
        raise BadVersionError(f"{path}: version is not {version}")

    async def delete(self, path: str, *, version: int | None, recursive: bool) -> None:
        if recursive:
            await self._delete_tree(path, version)
            return
        layout = self.layout
        key, kids = layout.data(path), layout.children(path)
        compares = [
            ops.compare(key, ops.CREATE, ops.GREATER, 0),
            ops.compare(kids, ops.CREATE, ops.EQUAL, 0, range_end=prefix_end(kids)),
        ]
        if version is not None:
            compares.append(ops.compare(key, ops.VERSION, ops.EQUAL, version + 1))
        writes = [
            ops.delete_op(key),
            ops.delete_op(layout.index(path)),
            ops.delete_op(layout.sequence(path)),
        ]
        diagnose = [ops.range_op(key), ops.range_op(kids, prefix_end(kids), count_only=True)]

        async def attempt() -> None:
            reply = await self.kv_txn(ops.txn_request(compares, writes, diagnose))
            if reply.succeeded:
                return
            found, count = ops.kvs(reply.responses[0]), ops.count(reply.responses[1])
            if not found:
                raise NoNodeError(path)
            if version is not None and found[0].version != version + 1:
                raise BadVersionError(f"{path}: version is {found[0].version - 1}, not {version}")
            if count:
                raise NotEmptyError(path)
            raise Conflict("a child came and went meanwhile")

        await self._on_conflict(attempt, f"etcd delete {path}")

    async def _delete_tree(self, path: str, version: int | None) -> None:
        """Delete ``path`` and its subtree in one transaction, pinned to what was read."""
        layout = self.layout
        key, below = layout.data(path), layout.subtree(path)

        async def attempt() -> None:
            seen = await self.read(
                ops.range_op(key), ops.range_op(below, prefix_end(below), keys_only=True)
            )
            found = ops.kvs(seen.responses[0])
            if not found:
                raise NoNodeError(path)
            if version is not None and found[0].version != version + 1:
                raise BadVersionError(f"{path}: version is {found[0].version - 1}, not {version}")
            levels = {depth(layout.path_of(kv.key)) for kv in ops.kvs(seen.responses[1])}
            read_at = int(seen.header.revision)
            compares = [
                ops.compare(key, ops.MOD, ops.EQUAL, found[0].mod_revision),
                # nothing below was created or changed since the read
                ops.compare(below, ops.MOD, ops.LESS, read_at + 1, range_end=prefix_end(below)),
            ]
            seq_below = layout.sequence_subtree(path)
            writes = [
                ops.delete_op(key),
                ops.delete_op(layout.index(path)),
                ops.delete_op(layout.sequence(path)),
                ops.delete_op(below, prefix_end(below)),
                ops.delete_op(seq_below, prefix_end(seq_below)),
            ]
            for level in sorted(levels):
                at = layout.descendants_at(path, level)
                writes.append(ops.delete_op(at, prefix_end(at)))
            reply = await self.kv_txn(ops.txn_request(compares, writes, []))
            if not reply.succeeded:
                raise Conflict("the subtree changed meanwhile")

        await self._on_conflict(attempt, f"etcd recursive delete {path}")

    async def _on_conflict(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        """Run a compare-and-set ``attempt`` until no concurrent change beats it
        (the retry policy's waits, within the operation timeout)."""
        return await self.options.retry.on_conflict(
            attempt, deadline=self.options.timeout, what=what, logger=log
        )

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]
    ) -> TxnResult:
        return await self._on_conflict(
            lambda: run_txn(self, compares, success, failure), "etcd transaction"
        )

    # -- watches ---------------------------------------------------------------

    @asynccontextmanager
    async def watch(
        self, path: str, *, recursive: bool, start_revision: int | None
    ) -> AsyncIterator[AsyncIterator[Event]]:
        watch = EtcdWatch(self, path, recursive, start_revision)
        try:
            await watch.start()
            yield watch
        except grpc.aio.AioRpcError as exc:
            raise map_error(exc) from exc
        finally:
            with anyio.CancelScope(shield=True):
                await watch.stop()
