"""Lock and Election laid out as etcd's own ``concurrency`` package lays them out.

So ``etcdctl lock NAME`` / ``etcdctl elect NAME`` and coordkit clients exclude
and follow each other. For a coordkit path the etcd NAME is the URL's key
prefix followed by the path (:meth:`KeyLayout.native_name`); a contender's key
is ``NAME/<its lease id in hex>``, attached to that lease, and contenders are
ordered by create revision: each waits until no key with a lower create
revision remains (etcd's ``waitDeletes``), watching the next-lower one.

One key per lease means one contender per session: instances on the same
client take turns through a local FIFO semaphore first, then queue in etcd.
These classes import only coordkit and the etcd backend (never coordkit.recipes)
and offer the same public interface as the generic recipes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any

import anyio
import grpc
from aetcd import rpc

from coordkit import (
    Client,
    ConnectionLostError,
    CoordkitError,
    LockLostError,
    RecipeStateError,
    SessionExpiredError,
    WrongTypeError,
)
from coordkit.backend import Session
from coordkit.holding import Holdable, cancelled_on_loss
from coordkit.paths import check_path

from . import ops
from .keys import prefix_end
from .rpc import map_error

if TYPE_CHECKING:
    from .backend import EtcdBackend

__all__ = ["NATIVE_RECIPES", "EtcdElection", "EtcdLock"]

_NOPUT = rpc.WatchCreateRequest.FilterType.NOPUT
_DELETE = 1  # etcd's mvccpb.Event.DELETE


class _Contender(Holdable):
    """A key ``NAME/<lease hex>`` queued by create revision (shared by Lock and Election)."""

    def __init__(self, client: Client, path: str) -> None:
        if not isinstance(client, Client):
            raise WrongTypeError(f"client must be a coordkit.Client, not {type(client).__name__}")
        check_path(path)
        self.client = client
        self.path = path
        self.backend: EtcdBackend = client.backend  # type: ignore[assignment]
        self.name = self.backend.layout.native_name(path)
        self.prefix = (self.name + "/").encode()
        self._key: bytes | None = None
        self._token: int | None = None
        self._session: Session | None = None
        self._lost = False
        self._turn: anyio.Semaphore | None = None

    @property
    def token(self) -> int | None:
        """While held: our key's create revision (strictly increases from holder to
        holder). None once the session it was acquired under has ended."""
        if self._key is None or self._session is None or self._session.lost:
            return None
        return self._token

    async def _forget_lost(self) -> None:
        """Held under a session that has ended: the key went with the lease (we
        delete it anyway, in case the server has not noticed yet) and the local
        turn is given back, so the object can acquire or campaign afresh."""
        if self._key is not None and self._session is not None and self._session.lost:
            self._session, self._lost = None, True
            await self._drop_key()
            self._leave_turn()

    @property
    def lost(self) -> bool:
        if self._key is not None and self._session is not None:
            return self._session.lost
        return self._lost

    async def wait_lost(self) -> None:
        if self._session is None or self._key is None:
            raise RecipeStateError(f"{type(self).__name__} on {self.path} is not held")
        await self._session.wait_lost()

    async def _queue(self, value: bytes, blocking: bool) -> bool:
        """Put our key and wait until it is first; on False/errors the caller cleans up."""
        session = self.backend.session
        if session.lost:
            raise SessionExpiredError("the session has ended")
        key = self.prefix + f"{session.id:x}".encode()
        self._session, self._key = session, key
        put = ops.put_op(key, value, lease=session.id)
        reply = await self.backend.kv_txn(
            ops.txn_request(
                [ops.compare(key, ops.CREATE, ops.EQUAL, 0)], [put], [ops.range_op(key)]
            )
        )
        if reply.succeeded:
            mine = int(reply.header.revision)
        else:
            mine = int(ops.kvs(reply.responses[0])[0].create_revision)
            await self.backend.kv_txn(ops.txn_request([], [put], []))  # proclaim our value
        while True:
            ahead = await self.backend.read(
                ops.range_op(
                    self.prefix,
                    prefix_end(self.prefix),
                    limit=1,
                    sort_create=rpc.RangeRequest.DESCEND,
                    max_create_revision=mine - 1,
                ),
                ops.range_op(key, count_only=True),
            )
            if ops.count(ahead.responses[1]) == 0:
                # Gone with our lease (the session ended), or deleted by someone.
                if not await self.backend.lease_alive(session):
                    raise SessionExpiredError("the session ended while waiting")
                raise LockLostError(f"our key on {self.name} was deleted while queueing")
            found = ops.kvs(ahead.responses[0])
            if not found:
                self._token = mine
                return True
            if not blocking:
                return False
            await self._wait_deleted(found[0].key, int(ahead.header.revision), session)

    async def _wait_deleted(self, key: bytes, revision: int, session: Session) -> None:
        """Return once ``key`` may have been deleted after ``revision`` (the caller
        reads the queue again); raise if our session ends meanwhile."""
        stream = self.backend.channel.stream(self.backend.channel.watch.Watch)
        create = rpc.WatchCreateRequest(key=key, start_revision=revision + 1, filters=[_NOPUT])
        broken = False
        try:
            async with anyio.create_task_group() as tg:

                async def on_loss() -> None:
                    await session.wait_lost()
                    tg.cancel_scope.cancel()

                tg.start_soon(on_loss)
                try:
                    await stream.write(rpc.WatchRequest(create_request=create))
                    while True:
                        reply = await stream.read()
                        if reply is grpc.aio.EOF or reply.events or reply.canceled:
                            break  # deleted, or the stream ended: read the queue again
                except (grpc.aio.AioRpcError, ConnectionLostError):
                    broken = True  # the member went away or lost its leader
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await stream.close()
        if session.lost:
            raise SessionExpiredError("the session ended while waiting")
        if broken:
            await anyio.sleep(0.05)  # back off; the queue read retries within the timeout

    async def _drop_key(self) -> None:
        """Delete our key (shielded; if etcd is unreachable the lease takes it)."""
        key, self._key, self._token = self._key, None, None
        if key is None:
            return
        with anyio.CancelScope(shield=True), suppress(CoordkitError):
            await self.backend.kv_txn(ops.txn_request([], [ops.delete_op(key)], []))

    async def _contender_values(self) -> list[str]:
        reply = await self.backend.read(
            ops.range_op(self.prefix, prefix_end(self.prefix), sort_create=rpc.RangeRequest.ASCEND)
        )
        out = []
        for kv in ops.kvs(reply.responses[0]):
            value = kv.value.decode("utf-8", "replace")
            out.append(value or kv.key[len(self.prefix) :].decode())  # etcdctl lock: no value
        return out

    async def _enter_turn(self, blocking: bool) -> bool:
        """Take this client's turn for the name; ``_turn`` is set only once it is ours."""
        turn = self.backend.native_turn(self.name)
        if not blocking:
            try:
                turn.acquire_nowait()
            except anyio.WouldBlock:
                return False
        else:
            await turn.acquire()
        self._turn = turn
        return True

    def _leave_turn(self) -> None:
        turn, self._turn = self._turn, None
        if turn is not None:
            turn.release()


class EtcdLock(_Contender):
    """A mutex interoperable with ``etcdctl lock NAME`` (etcd's ``concurrency.Mutex``).

    Same interface and guarantees as :class:`coordkit.recipes.Lock`; the key's
    value is the identifier (``etcdctl`` writes an empty one).
    """

    def __init__(
        self,
        client: Client,
        path: str,
        identifier: str | None = None,
        *,
        reentrant: bool = False,
    ) -> None:
        super().__init__(client, path)
        if identifier is not None and not isinstance(identifier, str):
            raise WrongTypeError(f"identifier must be str, not {type(identifier).__name__}")
        self.identifier = identifier or ""
        self.reentrant = reentrant
        self._count = 0
        self._acquiring = False

    @property
    def is_held(self) -> bool:
        return self._key is not None and self._session is not None and not self._session.lost

    async def contenders(self) -> list[str]:
        """Identifiers of the queued contenders, holder first (lease hex for etcdctl's)."""
        return await self._contender_values()

    async def acquire(self, timeout: float | None = None, blocking: bool = True) -> bool:
        """Queue and wait our turn; True once held, False on timeout (or at once
        with ``blocking=False``). A lock lost with its session is acquired afresh."""
        await self._forget_lost()
        if self._key is not None:
            if not self.reentrant:
                raise RecipeStateError(
                    f"EtcdLock on {self.path} is already held by this object "
                    "(pass reentrant=True to count nested acquisitions)"
                )
            self._count += 1
            return True
        if self._acquiring:
            raise RecipeStateError(f"EtcdLock on {self.path} is already being acquired")
        self._acquiring, self._lost = True, False
        acquired = False
        try:
            with anyio.move_on_after(timeout):
                if await self._enter_turn(blocking):
                    acquired = await self._queue(self.identifier.encode(), blocking)
        finally:
            self._acquiring = False
            if not acquired:
                await self._drop_key()
                self._session = None
                self._leave_turn()
        if acquired:
            self._count = 1
        return acquired

    async def release(self) -> None:
        if self._key is None:
            raise RecipeStateError(f"EtcdLock on {self.path} is not held")
        self._count -= 1
        if self._count > 0:
            return
        self._lost = self._session is not None and self._session.lost
        self._session = None
        await self._drop_key()
        self._leave_turn()

    @asynccontextmanager
    async def _hold(self) -> AsyncIterator[None]:
        await self.acquire()
        assert self._session is not None
        try:
            async with cancelled_on_loss(self._session, f"EtcdLock on {self.path}"):
                yield
        finally:
            await self.release()

    def __repr__(self) -> str:
        state = "held" if self.is_held else "lost" if self.lost else "free"
        return f"EtcdLock({self.name!r}, identifier={self.identifier!r}, {state})"


class EtcdElection(_Contender):
    """Leader election interoperable with ``etcdctl elect NAME [PROPOSAL]``.

    The leader is the contender with the lowest create revision; its key's
    value is its identity (etcdctl's proposal).
    """

    def __init__(self, client: Client, path: str, identity: str) -> None:
        super().__init__(client, path)
        if not isinstance(identity, str):
            raise WrongTypeError(f"identity must be str, not {type(identity).__name__}")
        self.identity = identity

    @property
    def is_leader(self) -> bool:
        return self._key is not None and self._session is not None and not self._session.lost

    async def campaign(self) -> None:
        """Block until this candidate leads. Cancellation withdraws the candidacy.
        A leadership lost with its session is not in the way: campaign again."""
        await self._forget_lost()
        if self._key is not None:
            raise RecipeStateError(f"EtcdElection on {self.path} is already campaigning or leading")
        self._lost = False
        won = False
        try:
            await self._enter_turn(True)
            won = await self._queue(self.identity.encode(), True)
        finally:
            if not won:
                await self._drop_key()
                self._session = None
                self._leave_turn()

    async def resign(self) -> None:
        """Give up leadership (a no-op if not leading)."""
        if self._key is None:
            return
        self._lost = self._session is not None and self._session.lost
        self._session = None
        await self._drop_key()
        self._leave_turn()

    async def contenders(self) -> list[str]:
        """Identities of every candidate, the leader first, then in line order
        (etcdctl's empty proposals show as their lease hex)."""
        return await self._contender_values()

    async def leader(self) -> str | None:
        """The current leader's identity, or None when nobody leads."""
        reply = await self.backend.read(
            ops.range_op(
                self.prefix,
                prefix_end(self.prefix),
                limit=1,
                sort_create=rpc.RangeRequest.ASCEND,
            )
        )
        found = ops.kvs(reply.responses[0])
        return found[0].value.decode("utf-8", "replace") if found else None

    async def observe(self) -> AsyncIterator[str | None]:
        """The leader's identity now, then each new leader in order (None: nobody).

        Event-sourced, like the generic recipe's: the contenders are read at
        one revision and then kept up to date from a watch starting right after
        it, and the leader is worked out after every revision, so a leader
        that came and went between two of our reads is still reported (the
        same identity is never reported twice in a row). If the stream breaks,
        the watch resumes from the revision after the last one seen: nothing
        is missed unless etcd compacted that history meanwhile (then the
        contenders are read afresh).
        """
        end = prefix_end(self.prefix)
        last: object = object()
        contenders: dict[bytes, tuple[int, str]] = {}  # key -> (create revision, identity)
        next_revision = 0  # 0: read the contenders afresh
        while True:
            if next_revision == 0:
                reply = await self.backend.read(ops.range_op(self.prefix, end))
                contenders = {kv.key: _contender(kv) for kv in ops.kvs(reply.responses[0])}
                next_revision = int(reply.header.revision) + 1
                current = _leader_of(contenders)
                if current != last:
                    last = current
                    yield current
            stream = self.backend.channel.stream(self.backend.channel.watch.Watch)
            try:
                create = rpc.WatchCreateRequest(
                    key=self.prefix, range_end=end, start_revision=next_revision
                )
                try:
                    with anyio.fail_after(self.backend.options.timeout):
                        await stream.write(rpc.WatchRequest(create_request=create))
                        await stream.read()  # created
                except TimeoutError as exc:
                    raise map_error(exc) from exc
                while True:
                    reply = await stream.read()
                    if reply is grpc.aio.EOF:
                        break
                    if reply.compact_revision:
                        next_revision = 0  # history gone: read the contenders afresh
                        break
                    if reply.canceled:
                        break
                    # A response holds whole revisions, in order: the leader is
                    # worked out after each one.
                    events = list(reply.events)
                    for i, event in enumerate(events):
                        kv = event.kv
                        if event.type == _DELETE:
                            contenders.pop(kv.key, None)
                        else:
                            contenders[kv.key] = _contender(kv)
                        next_revision = max(next_revision, int(kv.mod_revision) + 1)
                        if i + 1 < len(events) and events[i + 1].kv.mod_revision == kv.mod_revision:
                            continue  # the rest of this revision first
                        current = _leader_of(contenders)
                        if current != last:
                            last = current
                            yield current
            except (grpc.aio.AioRpcError, ConnectionLostError):
                pass  # the member went away or lost its leader: resume the watch
            finally:
                with anyio.CancelScope(shield=True):
                    await stream.close()
            await anyio.sleep(0.05)  # back off; reads retry within the timeout

    @asynccontextmanager
    async def _hold(self) -> AsyncIterator[None]:
        await self.campaign()
        assert self._session is not None
        try:
            async with cancelled_on_loss(self._session, f"EtcdElection on {self.path}"):
                yield
        finally:
            await self.resign()


def _contender(kv: Any) -> tuple[int, str]:
    return int(kv.create_revision), kv.value.decode("utf-8", "replace")


def _leader_of(contenders: dict[bytes, tuple[int, str]]) -> str | None:
    """The identity of the contender with the lowest create revision."""
    return min(contenders.values())[1] if contenders else None


NATIVE_RECIPES: dict[str, type[Any]] = {"Lock": EtcdLock, "Election": EtcdElection}
