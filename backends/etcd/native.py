"""Lock and Election laid out as etcd's own ``concurrency`` package lays them out.

So ``etcdctl lock NAME`` / ``etcdctl elect NAME`` and coordkit clients exclude
and follow each other. For a coordkit path the etcd NAME is the URL's key
prefix followed by the path (:meth:`KeyLayout.native_name`); a contender's key
is ``NAME/<its lease id in hex>``, attached to that lease, and contenders are
ordered by create revision: each waits until no key with a lower create
revision remains (etcd's ``waitDeletes``), watching the next-lower one.

:class:`EtcdLock` is the generic :class:`coordkit.recipes.Lock` with this
layout: it overrides only how a contender queues, lists the queue, waits
for its predecessor and withdraws (the hooks of the recipes'
``SequentialLock``). The fencing token (the key's create revision), FIFO
order, reentrancy, timeouts, cancellation cleanup, session loss and
``async with`` are the generic recipe's code. :class:`EtcdElection` is the
generic :class:`coordkit.recipes.Election` whose candidates queue as
:class:`EtcdLock` does, with its own ``leader()`` and ``observe()`` on the
etcd keys.

One key per lease means one contender per session: instances on the same
client take turns through a local FIFO semaphore first, then queue in etcd.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import grpc
from aetcd import rpc

from coordkit import (
    Client,
    ConnectionLostError,
    CoordkitError,
    OperationTimeoutError,
    SessionExpiredError,
)
from coordkit.backend import Session
from coordkit.model import Node
from coordkit.paths import join
from coordkit.recipes.base import Contender, unless_session_lost
from coordkit.recipes.election import Election
from coordkit.recipes.lock import Lock
from coordkit.retry import Backoff, describe_error

from . import ops
from .keys import prefix_end
from .rpc import Stream, map_error

if TYPE_CHECKING:
    from .backend import EtcdBackend

__all__ = ["NATIVE_RECIPES", "EtcdElection", "EtcdLock"]

log = logging.getLogger(__name__)

_NOPUT = rpc.WatchCreateRequest.FilterType.NOPUT
_DELETE = 1  # etcd's mvccpb.Event.DELETE
#: A watch stream that broke: the member went away or lost its leader.
_BROKEN = (grpc.aio.AioRpcError, ConnectionLostError, OperationTimeoutError)


class EtcdLock(Lock):
    """A mutex interoperable with ``etcdctl lock NAME`` (etcd's ``concurrency.Mutex``).

    Same interface and guarantees as :class:`coordkit.recipes.Lock` (it is
    one); the key's value is the identifier (``etcdctl`` writes an empty one).
    """

    #: the key we queued under (or may have: a put whose answer was lost).
    _key: bytes | None = None
    #: this client's turn for the name, while we hold it.
    _turn: anyio.Semaphore | None = None
    #: the revision the last queue listing was read at.
    _listed_at = 0
    _backoff: Backoff | None = None

    @property
    def backend(self) -> EtcdBackend:
        backend: EtcdBackend = self.client.backend
        return backend

    @property
    def name(self) -> str:
        """The etcd name (``etcdctl lock NAME``): the URL's key prefix, then the path."""
        return self.backend.layout.native_name(self.path)

    @property
    def prefix(self) -> bytes:
        return (self.name + "/").encode()

    async def contenders(self) -> list[str]:
        """Identifiers of the queued contenders, holder first (lease hex for etcdctl's)."""
        return await _contender_values(self.backend, self.prefix)

    # -- the SequentialLock hooks ------------------------------------------------

    async def _prepare(self) -> None:
        """Nothing to prepare: etcd keys need no parent."""

    async def _enter(self, blocking: bool) -> bool:
        """Take this client's turn for the name (one key per lease)."""
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

    def _leave(self) -> None:
        turn, self._turn, self._key = self._turn, None, None
        if turn is not None:
            turn.release()

    async def _create(self, prefix: str, session: Session) -> Node:
        """Put ``NAME/<lease hex>`` (or take over our own left-over key)."""
        if session.lost:
            raise SessionExpiredError("the session ended while waiting")
        key = self.prefix + f"{session.id:x}".encode()
        self._key = key
        put = ops.put_op(key, self.identifier.encode(), lease=session.id)
        reply = await self.backend.kv_txn(
            ops.txn_request(
                [ops.compare(key, ops.CREATE, ops.EQUAL, 0)], [put], [ops.range_op(key)]
            )
        )
        if reply.succeeded:
            revision = int(reply.header.revision)
        else:
            revision = int(ops.kvs(reply.responses[0])[0].create_revision)
            await self.backend.kv_txn(ops.txn_request([], [put], []))  # proclaim our value
        path = join(self.path, f"{session.id:x}")
        return Node(path, self.identifier.encode(), revision, revision, 0, session.id)

    async def _queue(self, *, consistent: bool) -> list[Contender]:
        """Every contender's key in create-revision order, named by its lease hex.

        Always a linearizable read: its revision is where the watch of
        :meth:`_wait_gone` starts.
        """
        reply = await self.backend.read(
            ops.range_op(
                self.prefix,
                prefix_end(self.prefix),
                keys_only=True,
                sort_create=rpc.RangeRequest.ASCEND,
            )
        )
        self._listed_at = int(reply.header.revision)
        return [
            Contender(kv.key[len(self.prefix) :].decode(), "", int(kv.create_revision))
            for kv in ops.kvs(reply.responses[0])
        ]

    async def _wait_gone(self, blockers: list[Contender], session: Session) -> Collection[str]:
        """Return once the predecessor's key may be gone (so nothing is named
        known gone: the caller lists the queue again); SessionExpiredError if
        ``session`` ends first."""
        key = self.prefix + blockers[-1].name.encode()

        if self._backoff is None:
            self._backoff = self.client.options.retry.backoff(
                what=f"etcd watch in {self.name}", logger=log
            )
        backoff = self._backoff

        async def wait() -> None:
            try:
                await _deleted_after(self.backend, key, self._listed_at)
                backoff.reset()
            except _BROKEN as exc:
                await backoff.wait(exc)  # then the queue is read again

        await unless_session_lost(wait, session)
        return ()

    async def _wait_node_gone(self, path: str, token: int) -> None:
        """Return once our held key (``path`` names its lease hex) is gone.

        A watch on deletes of the key from just after its creation, so a
        delete before the watch opened is seen too; a watch that ends without
        saying (compacted, cancelled by etcd) is followed by a read and a new
        watch from the read's revision. Broken streams are retried after the
        retry policy's wait.
        """
        key = self.prefix + path.rsplit("/", 1)[1].encode()
        after = token
        backoff = self.client.options.retry.backoff(what=f"etcd watch on {key!r}", logger=log)
        while True:
            try:
                await _deleted_after(self.backend, key, after)
                reply = await self.backend.read(ops.range_op(key))
            except _BROKEN as exc:
                await backoff.wait(exc)
                continue
            found = ops.kvs(reply.responses[0])
            if not found or int(found[0].create_revision) != token:
                return
            after = int(reply.header.revision)
            backoff.reset()

    async def _withdraw(self, known: str | None, prefix: str) -> None:
        """Delete our key (shielded; if etcd is unreachable the lease takes it)."""
        key, self._key = self._key, None
        if key is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                await self.backend.kv_txn(ops.txn_request([], [ops.delete_op(key)], []))
            except CoordkitError as exc:
                log.debug("could not delete %r (its lease will): %s", key, describe_error(exc))


async def _deleted_after(backend: EtcdBackend, key: bytes, revision: int) -> None:
    """Return once ``key`` is deleted after ``revision`` (or the watch ends
    without saying, e.g. its history was compacted: look again)."""
    stream = backend.channel.stream(backend.channel.watch.Watch)
    create = rpc.WatchCreateRequest(key=key, start_revision=revision + 1, filters=[_NOPUT])
    try:
        await stream.write(rpc.WatchRequest(create_request=create))
        while True:
            reply = await stream.read()
            if reply is grpc.aio.EOF or reply.events or reply.canceled or reply.compact_revision:
                return
    finally:
        with anyio.CancelScope(shield=True):
            await stream.close()


async def _contender_values(backend: EtcdBackend, prefix: bytes) -> list[str]:
    reply = await backend.read(
        ops.range_op(prefix, prefix_end(prefix), sort_create=rpc.RangeRequest.ASCEND)
    )
    out = []
    for kv in ops.kvs(reply.responses[0]):
        value = kv.value.decode("utf-8", "replace")
        out.append(value or kv.key[len(prefix) :].decode())  # etcdctl lock: no value
    return out


class _EtcdCandidacy(EtcdLock):
    """The election's queue: candidates queue as :class:`EtcdLock` does."""


class EtcdElection(Election):
    """Leader election interoperable with ``etcdctl elect NAME [PROPOSAL]``.

    :class:`coordkit.recipes.Election` whose candidates queue on etcd's
    layout. The leader is the contender with the lowest create revision;
    its key's value is its identity (etcdctl's proposal).
    """

    _candidacy_class = _EtcdCandidacy

    def __init__(self, client: Client, path: str, identity: str) -> None:
        super().__init__(client, path, identity)
        self.backend: EtcdBackend = client.backend  # type: ignore[assignment]
        self.name = self.backend.layout.native_name(path)
        self.prefix = (self.name + "/").encode()

    async def leader(self) -> str | None:
        """The current leader's identity, or None when nobody leads."""
        reply = await self.backend.read(
            ops.range_op(
                self.prefix, prefix_end(self.prefix), limit=1, sort_create=rpc.RangeRequest.ASCEND
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
        the watch resumes (after the retry policy's wait) from the revision
        after the last one seen: nothing is missed unless etcd compacted that
        history meanwhile (then the contenders are read afresh).
        """
        view = _Contenders()
        backoff = self.client.options.retry.backoff(
            what=f"etcd election watch in {self.name}", logger=log
        )
        while True:
            if view.next_revision == 0:
                reply = await self.backend.read(ops.range_op(self.prefix, prefix_end(self.prefix)))
                for leader in view.reset(ops.kvs(reply.responses[0]), int(reply.header.revision)):
                    yield leader
            try:
                async with self._watch(view.next_revision) as replies:
                    async for reply in replies:
                        for leader in view.apply(reply):
                            yield leader
                        backoff.reset()
                ended: Exception = ConnectionLostError("etcd ended the watch")
            except _BROKEN as exc:
                ended = exc
            await backoff.wait(ended)  # then resume from view.next_revision

    @asynccontextmanager
    async def _watch(self, start: int) -> AsyncIterator[AsyncIterator[Any]]:
        """A watch on every contender key from revision ``start``: its responses
        until the stream ends (an error of the stream is raised)."""
        channel = self.backend.channel
        stream = channel.stream(channel.watch.Watch)
        try:
            create = rpc.WatchCreateRequest(
                key=self.prefix, range_end=prefix_end(self.prefix), start_revision=start
            )
            try:
                with anyio.fail_after(self.backend.options.timeout):
                    await stream.write(rpc.WatchRequest(create_request=create))
                    await stream.read()  # created
            except TimeoutError as exc:
                raise map_error(exc) from exc
            yield _responses(stream)
        finally:
            with anyio.CancelScope(shield=True):
                await stream.close()


async def _responses(stream: Stream) -> AsyncIterator[Any]:
    while True:
        reply = await stream.read()
        if reply is grpc.aio.EOF:
            return
        yield reply
        if reply.canceled or reply.compact_revision:
            return


class _Contenders:
    """The election's contenders as last read, kept up to date from a watch.

    ``next_revision`` is the revision after the last one applied (0: read the
    contenders afresh); the leader is reported whenever it differs from the
    last one reported.
    """

    def __init__(self) -> None:
        self.keys: dict[bytes, tuple[int, str]] = {}  # key -> (create revision, identity)
        self.next_revision = 0
        self._last: object = object()  # nothing reported yet

    def reset(self, kvs: Any, revision: int) -> list[str | None]:
        """The contenders as read at ``revision``; returns the leader if it changed."""
        self.keys = {kv.key: _contender(kv) for kv in kvs}
        self.next_revision = revision + 1
        return self._report()

    def apply(self, reply: Any) -> list[str | None]:
        """One watch response (whole revisions, in order): the leaders it makes,
        worked out after each revision."""
        if reply.compact_revision:
            self.next_revision = 0  # history gone: read the contenders afresh
            return []
        leaders: list[str | None] = []
        events = list(reply.events)
        for i, event in enumerate(events):
            kv = event.kv
            if event.type == _DELETE:
                self.keys.pop(kv.key, None)
            else:
                self.keys[kv.key] = _contender(kv)
            self.next_revision = max(self.next_revision, int(kv.mod_revision) + 1)
            if i + 1 < len(events) and events[i + 1].kv.mod_revision == kv.mod_revision:
                continue  # the rest of this revision first
            leaders += self._report()
        return leaders

    def _report(self) -> list[str | None]:
        current = min(self.keys.values())[1] if self.keys else None
        if current == self._last:
            return []
        self._last = current
        return [current]


def _contender(kv: Any) -> tuple[int, str]:
    return int(kv.create_revision), kv.value.decode("utf-8", "replace")


NATIVE_RECIPES: dict[str, type[Any]] = {"Lock": EtcdLock, "Election": EtcdElection}
