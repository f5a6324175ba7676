"""Barrier (hold everyone until it is removed) and DoubleBarrier (start and finish together).

Barrier: a single node; :meth:`Barrier.wait` returns once it is gone.

DoubleBarrier (the ZooKeeper recipe, as kazoo lays it out): participants are
ephemeral children ``<uuid4 hex>`` of the path holding their identifier.
``enter`` returns once ``num_clients`` participants are present, signalled by a
persistent ``ready`` child created by whoever sees the count reached. ``leave``
returns once every participant has left: the participant first in name order
waits for the others and leaves last, the others leave and wait for it.
The last one out removes ``ready``, so the path is clean for the next round.
"""

from __future__ import annotations

import uuid
from contextlib import suppress

import anyio

from coordkit import (
    Client,
    InvalidArgumentError,
    NodeExistsError,
    NoNodeError,
    RecipeStateError,
    WrongTypeError,
)
from coordkit.paths import check_path, join

from .base import check_timeout, delete_nodes, wait_deleted, wait_until

__all__ = ["Barrier", "DoubleBarrier"]

READY = "ready"


class Barrier:
    """A barrier on ``path``: while its node exists, :meth:`wait` blocks.

    The node is persistent: it survives the session of whoever created it,
    so a crashed coordinator leaves waiters blocked until someone calls
    :meth:`remove`. Waiters hold no state on the servers; a waiter whose
    connection drops resumes watching when the backend reconnects.
    """

    def __init__(self, client: Client, path: str) -> None:
        if not isinstance(client, Client):
            raise WrongTypeError(f"client must be a coordkit.Client, not {type(client).__name__}")
        check_path(path)
        self.client = client
        self.path = path

    async def create(self) -> None:
        """Raise the barrier (create its node and missing parents); no-op if raised."""
        await self.client.ensure_path(self.path)

    set = create

    async def remove(self) -> bool:
        """Lower the barrier, releasing every waiter; False if it was not raised."""
        try:
            await self.client.delete(self.path)
        except NoNodeError:
            return False
        return True

    async def wait(self, timeout: float | None = None) -> bool:
        """Block until the barrier is removed (True) or ``timeout`` seconds pass (False).

        ``timeout=0`` looks once: True if the barrier is down now.
        """
        timeout = check_timeout(timeout)
        if timeout == 0:
            return not await self.client.exists(self.path)
        with anyio.move_on_after(timeout):
            await wait_deleted(self.client, self.path)
            return True
        return False

    def __repr__(self) -> str:
        return f"Barrier({self.path!r})"


class DoubleBarrier:
    """Enter together, leave together: ``num_clients`` participants on ``path``.

    ``async with DoubleBarrier(client, path, 3):`` enters, runs the body,
    then leaves. Guarantees: no :meth:`enter` returns True before
    ``num_clients`` participants have entered; no :meth:`leave` returns True
    before every participant has left. A path serves one round at a time:
    start a new round after every participant of the previous one has left.

    Session loss: a participant's node is ephemeral, so a participant whose
    session ends stops counting. If that happens during :meth:`enter` it
    raises :class:`~coordkit.SessionExpiredError` (its node is gone); during
    :meth:`leave` the others stop waiting for it. A partitioned participant
    counts until its session expires.
    """

    def __init__(
        self, client: Client, path: str, num_clients: int, identifier: str | None = None
    ) -> None:
        if not isinstance(client, Client):
            raise WrongTypeError(f"client must be a coordkit.Client, not {type(client).__name__}")
        check_path(path)
        if isinstance(num_clients, bool) or not isinstance(num_clients, int):
            raise WrongTypeError(f"num_clients must be int, not {type(num_clients).__name__}")
        if num_clients < 1:
            raise InvalidArgumentError(f"num_clients must be >= 1, not {num_clients}")
        self.client = client
        self.path = path
        self.num_clients = num_clients
        self.identifier = identifier or ""
        self.node_name = uuid.uuid4().hex
        self.participating = False

    @property
    def _node(self) -> str:
        return join(self.path, self.node_name)

    @property
    def _ready(self) -> str:
        return join(self.path, READY)

    async def _participants(self) -> list[str]:
        try:
            names = await self.client.children(self.path)
        except NoNodeError:
            return []
        return sorted(name for name in names if name != READY)

    async def enter(self, timeout: float | None = None) -> bool:
        """Join and wait until ``num_clients`` participants have joined.

        True once they have; False if ``timeout`` seconds pass first, in which
        case (as on cancellation or error) our participant node is removed.
        ``timeout=0`` joins and looks once without waiting.
        """
        timeout = check_timeout(timeout)
        if self.participating:
            raise RecipeStateError(f"already entered the double barrier {self.path}")
        entered = False
        try:
            with anyio.move_on_after(None if timeout == 0 else timeout):
                entered = await self._enter(wait=timeout != 0)
        finally:
            if not entered:
                await delete_nodes(self.client, self.path, known=self._node, prefix=self.node_name)
        self.participating = entered
        return entered

    async def _enter(self, *, wait: bool) -> bool:
        await self.client.ensure_path(self.path)
        session = self.client.session
        with suppress(NodeExistsError):
            value = self.identifier.encode("utf-8")
            await self.client.create(self._node, value, ephemeral=True)

        async def ready() -> bool:
            if await self.client.exists(self._ready):
                return True
            if len(await self._participants()) < self.num_clients:
                return False
            with suppress(NodeExistsError):
                await self.client.create(self._ready)
            return True

        if not wait:
            return await ready()
        # Watch first, then check: a ``ready`` created in between is seen.
        await wait_until(self.client, self._ready, ready, session=session)
        return True

    async def leave(self, timeout: float | None = None) -> bool:
        """Leave and wait until every participant has left.

        True once they have; False if ``timeout`` seconds pass first (call
        it again to finish leaving). ``timeout=0`` leaves and looks once:
        False if others are still to leave.
        """
        timeout = check_timeout(timeout)
        with anyio.move_on_after(None if timeout == 0 else timeout):
            if await self._leave(wait=timeout != 0):
                self.participating = False
                return True
        return False

    async def _leave(self, *, wait: bool) -> bool:
        while True:
            participants = await self._participants()
            if not participants or participants == [self.node_name]:
                await self._last_out()
                return True
            lowest, highest = participants[0], participants[-1]
            if lowest == self.node_name:
                # First in order: leave last, after the others.
                if not wait:
                    return False
                await wait_deleted(self.client, join(self.path, highest))
                continue
            if self.node_name in participants:
                with suppress(NoNodeError):
                    await self.client.delete(self._node)
            if not wait:
                if await self._participants():
                    return False  # others still to leave: call again
                await self._last_out()
                return True
            await wait_deleted(self.client, join(self.path, lowest))

    async def _last_out(self) -> None:
        for path in (self._node, self._ready):
            with suppress(NoNodeError):
                await self.client.delete(path)

    async def __aenter__(self) -> DoubleBarrier:
        await self.enter()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.leave()

    def __repr__(self) -> str:
        return f"DoubleBarrier({self.path!r}, num_clients={self.num_clients})"
