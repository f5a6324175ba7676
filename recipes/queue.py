"""Queue: a distributed FIFO with optional priorities and an optional ack mode.

Layout under the queue's ``path``::

    path/items/item-<priority>-<seq>    persistent, one per item, value = the item
    path/claims/item-<priority>-<seq>   ephemeral, only in ack mode: "being worked on"

The priority is encoded in the name (``priority + 2**31``, ten digits) before
the sequential suffix, so sorting the names sorts the items by
``(priority, sequence)``: a lower priority number comes first, and items of one
priority come in the order their ``put`` committed.

Taking an item is a compare-and-swap on the item node, so each take succeeds
for exactly one consumer; the losers move on to the next item. In ack mode the
take bumps the item's version and creates the claim in one transaction; the
version then identifies that one claim, so an ``ack`` after the claim was lost
(and the item possibly taken again) can never delete someone else's item.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar, cast, overload

import anyio

from coordkit import (
    BadVersionError,
    Client,
    Compare,
    CreateOp,
    DeleteOp,
    Event,
    InvalidArgumentError,
    LockLostError,
    Node,
    NoNodeError,
    Session,
    SessionExpiredError,
    SetOp,
    WrongTypeError,
)
from coordkit.paths import check_path, join, sequence_of
from coordkit.txn import Op

from .base import check_timeout

__all__ = ["MAX_PRIORITY", "MIN_PRIORITY", "Queue", "QueueItem"]

#: The lowest (most urgent) priority a ``put`` accepts.
MIN_PRIORITY = -(2**31)
#: The highest (least urgent) priority a ``put`` accepts.
MAX_PRIORITY = 2**31 - 1
_PREFIX = "item-"
#: how many names of one listing a consumer works through before it lists again:
#: an item put meanwhile with a more urgent priority waits at most this many takes.
LISTING_BATCH = 32


def _item_prefix(priority: int) -> str:
    return f"{_PREFIX}{priority - MIN_PRIORITY:010d}-"


def _priority_of(name: str) -> int:
    return int(name[len(_PREFIX) : len(_PREFIX) + 10]) + MIN_PRIORITY


def _is_item(name: str) -> bool:
    return name.startswith(_PREFIX) and sequence_of(name) is not None


@dataclass(eq=False)
class QueueItem:
    """An item taken in ack mode: process ``value``, then :meth:`ack` or :meth:`nack`.

    While the item is held, an ephemeral claim tied to the consumer's session
    keeps other consumers away from it. If that session ends before ``ack``
    (the process died, the session expired, the client closed), the claim
    vanishes with it and the item is delivered again, to this or another
    consumer, in its old place at the front of the queue: delivery is
    *at least once*.
    """

    queue: Queue[QueueItem]
    #: the item's bytes, exactly as given to ``put``.
    value: bytes
    #: the item node's name (``item-<priority>-<seq>``), unique within the queue.
    name: str
    #: the priority given to ``put``.
    priority: int
    #: the session the claim belongs to; if it is lost, so is the claim.
    session: Session
    _version: int = field(repr=False)
    _done: bool = field(default=False, repr=False)

    @property
    def lost(self) -> bool:
        """Whether the claim's session has ended (``ack`` would then fail)."""
        return self.session.lost

    async def ack(self) -> None:
        """Remove the item for good.

        Raises :class:`~coordkit.LockLostError` if the claim was lost first
        (its session ended): the item then stays in the queue, to be (or
        already) delivered again. Idempotent after a successful ack.
        """
        if self._done:
            return
        item, claim = self.queue._item_path(self.name), self.queue._claim_path(self.name)
        lost = LockLostError(f"the claim on {item} was lost; the item will be redelivered")
        if self.session.lost:
            raise lost
        try:
            result = await self.queue.client.txn(
                [Compare.version(item, "==", self._version), Compare.exists(claim)],
                [DeleteOp(claim), DeleteOp(item)],
            )
        except SessionExpiredError as exc:
            raise lost from exc
        if not result.succeeded:
            raise lost
        self._done = True

    async def nack(self) -> None:
        """Give the item back: it becomes takeable again at its old place.

        A no-op if the claim was already lost (the item is back anyway).
        """
        if self._done:
            return
        self._done = True
        self.queue._listed.clear()  # list afresh next time: the item is back in front
        if self.session.lost:
            return
        item, claim = self.queue._item_path(self.name), self.queue._claim_path(self.name)
        with suppress(SessionExpiredError):
            await self.queue.client.txn(
                [Compare.version(item, "==", self._version), Compare.exists(claim)],
                [DeleteOp(claim)],
            )


T = TypeVar("T", bound="bytes | QueueItem")


class Queue(Generic[T]):
    """A distributed FIFO queue of ``bytes`` items (see the module docstring for the layout).

    Without ack (``ack=False``, a ``Queue[bytes]``) :meth:`get` removes the
    item as it takes it and returns its bytes: each item goes to at most one
    consumer and, barring a take whose reply is lost in a partition, exactly
    one. With ``ack=True`` (a ``Queue[QueueItem]``) :meth:`get` returns a
    :class:`QueueItem` to acknowledge; an item whose consumer's session ends
    before the ack is delivered again (at least once).

    Ordering: items leave in ``(priority, sequence)`` order, lower priority
    numbers first; the sequence is the order in which ``put`` calls committed,
    so one producer's items of one priority come out in the order it put them.
    With several consumers, items are *taken* in that order but may of course
    finish in any order.

    Session loss and partitions: ``put`` and the no-ack ``get`` use only
    persistent nodes, so a session loss does not affect them; a call whose
    reply is lost in a partition has an unknown outcome (the backend raises
    :class:`~coordkit.ConnectionLostError` or :class:`~coordkit.OperationTimeoutError`).
    In ack mode claims are ephemeral: a consumer cut off for longer than its
    session TTL loses its claims and the items are redelivered.
    """

    @overload
    def __init__(self: Queue[bytes], client: Client, path: str) -> None: ...
    @overload
    def __init__(self: Queue[bytes], client: Client, path: str, *, ack: Literal[False]) -> None: ...
    @overload
    def __init__(
        self: Queue[QueueItem], client: Client, path: str, *, ack: Literal[True]
    ) -> None: ...
    @overload
    def __init__(
        self: Queue[bytes | QueueItem], client: Client, path: str, *, ack: bool
    ) -> None: ...

    def __init__(self, client: Client, path: str, *, ack: bool = False) -> None:
        check_path(path)
        if not isinstance(ack, bool):
            raise WrongTypeError("ack must be bool")
        self.client = client
        self.path = path
        self.ack = ack
        self._items = join(path, "items")
        self._claims = join(path, "claims")
        #: names of our last listing not tried yet, the next one last.
        self._listed: list[str] = []

    def _item_path(self, name: str) -> str:
        return join(self._items, name)

    def _claim_path(self, name: str) -> str:
        return join(self._claims, name)

    async def put(self, item: bytes, priority: int = 0) -> None:
        """Append ``item``; lower ``priority`` numbers are taken first.

        ``priority`` must be an int in ``[MIN_PRIORITY, MAX_PRIORITY]``.
        Durable once it returns (a persistent node).
        """
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise WrongTypeError("priority must be int")
        if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise InvalidArgumentError(
                f"priority must be in [{MIN_PRIORITY}, {MAX_PRIORITY}], not {priority}"
            )
        await self.client.create(
            self._item_path(_item_prefix(priority)), item, sequential=True, make_parents=True
        )

    async def size(self) -> int:
        """How many items are waiting to be taken (items claimed in ack mode not counted)."""
        return len(await self._available(consistent=True))

    async def get(self, timeout: float | None = None) -> T:
        """Take the first available item, waiting until there is one.

        Returns the item's bytes, or in ack mode a :class:`QueueItem`. Raises
        :class:`TimeoutError` after ``timeout`` seconds without an item;
        ``timeout=0`` looks once (a linearizable listing) and raises
        TimeoutError at once if nothing is there.

        Cancellation never loses an item: the take itself is shielded, and an
        item taken while the caller was being cancelled is still returned
        (the cancellation then lands at the caller's next await). Only a take
        whose reply is lost in a partition has an unknown outcome: lost with
        it in no-ack mode, redelivered once the session ends in ack mode.
        """
        timeout = check_timeout(timeout)
        if timeout == 0:
            taken = await self._try_take(consistent=True)
            if taken is None:
                raise TimeoutError(f"no item in the queue {self.path}")
            return taken
        with anyio.fail_after(timeout):
            # Fast path: a possibly stale listing costs at most a wasted try.
            taken = await self._try_take(consistent=False)
            if taken is not None:
                return taken
            # The watch is in place before we look again, so an item put (or a
            # claim dropped) after this consistent listing wakes us.
            while True:
                async with self.client.watch(self.path, recursive=True) as events:
                    taken = await self._try_take(consistent=True)
                    while taken is None and await self._next_change(events):
                        taken = await self._try_take(consistent=True)
                if taken is not None:
                    return taken
                # The watch ended without an item: open a new one and look again.

    async def _next_change(self, events: AsyncIterator[Event]) -> bool:
        """Wait for a change that may free an item; False if the watch ended."""
        async for event in events:
            if event.path.startswith(self._items + "/") or (
                self.ack and event.path.startswith(self._claims + "/")
            ):
                return True
        return False

    async def _available(self, *, consistent: bool = True) -> list[str]:
        """Names of the items nobody holds a claim on, in queue order."""
        try:
            names = await self.client.children(self._items, consistent=consistent)
        except NoNodeError:
            return []
        names = [n for n in names if _is_item(n)]
        if not names or not self.ack:
            return sorted(names)  # no-ack takes check claims item by item (rare)
        try:
            claimed = set(await self.client.children(self._claims, consistent=consistent))
        except NoNodeError:
            claimed = set()
        return sorted(n for n in names if n not in claimed)

    async def _try_take(self, *, consistent: bool) -> T | None:
        """Take the first item of our listing that nobody else takes first; None if none.

        The listing is kept between calls and worked through in order (at most
        :data:`LISTING_BATCH` names), so a backlog is not listed again for
        every item; when it runs out, the queue is listed afresh, once per call.
        Stale reads are safe here: every take is a compare-and-swap on the
        item's version, so a stale name or node only makes the take fail.
        """
        listed = False
        while True:
            if not self._listed:
                if listed:
                    return None  # everything we just listed was taken by others
                self._listed = (await self._available(consistent=consistent))[:LISTING_BATCH]
                self._listed.reverse()  # pop() from the end takes the first
                listed = True
                if not self._listed:
                    return None
            name = self._listed.pop()
            node = await self.client.get(self._item_path(name), consistent=False)
            if node is None:
                continue  # another consumer took it
            taken = await (self._claim(name, node) if self.ack else self._remove(name, node))
            if taken is not None:
                return cast(T, taken)

    async def _remove(self, name: str, node: Node) -> bytes | None:
        # Only a claim changes an item's version: a claimed item is not ours.
        if node.version > 0 and await self.client.exists(self._claim_path(name)):
            return None
        # Shielded, and returned even if a cancellation came meanwhile (it then lands
        # at the caller's next await): a take that happened is never dropped.
        with anyio.CancelScope(shield=True):
            try:
                # The version check lets a concurrent ack-mode claim win over us.
                await self.client.delete(self._item_path(name), version=node.version)
            except (NoNodeError, BadVersionError):
                return None
        return node.value

    async def _claim(self, name: str, node: Node) -> QueueItem | None:
        item, claim = self._item_path(name), self._claim_path(name)
        # Read before the txn: if the session is replaced meanwhile, the item
        # may report ``lost`` spuriously, never the other way round.
        session = self.client.session
        compares = [Compare.version(item, "==", node.version), Compare.missing(claim)]
        ops: list[Op] = [
            SetOp(item, node.value, version=node.version),
            CreateOp(claim, ephemeral=True),
        ]
        with anyio.CancelScope(shield=True):  # as in _remove: a claim made is returned
            try:
                result = await self.client.txn(compares, ops)
            except NoNodeError:
                # The compares held, so the claims folder is what is missing.
                await self.client.ensure_path(self._claims)
                result = await self.client.txn(compares, ops)
        if not result.succeeded:
            return None
        return QueueItem(
            cast("Queue[QueueItem]", self),
            node.value,
            name,
            _priority_of(name),
            session,
            _version=node.version + 1,
        )
