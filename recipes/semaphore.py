"""Semaphore: at most ``max_leases`` holders at once, granted in FIFO order.

Each contender queues as an ephemeral sequential child
``<uuid4 hex>__lease__<10-digit sequence>`` of the semaphore's path; the first
``max_leases`` in sequence order hold a lease. A waiter is admitted once fewer
than ``max_leases`` contenders are ahead of it, which can only change when one
of the ``max_leases`` contenders just ahead of it goes: it reacts to those
deletions only (one watch on the directory, filtered on the client), so a
release makes at most ``max_leases`` waiters re-read the queue.

The path's own value records ``max_leases`` (ASCII decimal), so every client
of the semaphore agrees on the limit.
"""

from __future__ import annotations

import logging

from coordkit import (
    BadVersionError,
    Client,
    InvalidArgumentError,
    NodeExistsError,
    WrongTypeError,
)
from coordkit.retry import Conflict

from .base import Contender, SequentialLock, list_contenders

__all__ = ["Semaphore"]

log = logging.getLogger(__name__)

LEASE_MARKER = "__lease__"


class Semaphore(SequentialLock):
    """A counting semaphore on ``path``: ``async with Semaphore(client, path, 3) as lease: ...``.

    Guarantees: never more than ``max_leases`` holders among all clients;
    leases granted in the order contenders queued; :attr:`token` is the
    lease node's create revision (increasing in queue order); a cancelled,
    failed or timed-out :meth:`acquire` leaves no node behind. One object
    holds at most one lease (a second :meth:`acquire` raises RecipeStateError).

    Every client must pass the same ``max_leases`` for a path: the first
    one records it on the path node and a different value raises
    :class:`~coordkit.InvalidArgumentError` on :meth:`acquire`.

    Loss: as with :class:`~coordkit.recipes.Lock`, the lease is held while
    its node exists (the session ending, a delete by anyone, a transaction
    end it); :attr:`lost` turns True, :meth:`wait_lost` returns, and
    inside ``async with`` the body is cancelled and
    :class:`~coordkit.LockLostError` raised. During a partition the holder
    keeps the lease until the backend declares the session lost.
    """

    marker = LEASE_MARKER
    markers = (LEASE_MARKER,)

    def __init__(
        self, client: Client, path: str, max_leases: int, identifier: str | None = None
    ) -> None:
        if isinstance(max_leases, bool) or not isinstance(max_leases, int):
            raise WrongTypeError(f"max_leases must be int, not {type(max_leases).__name__}")
        if max_leases < 1:
            raise InvalidArgumentError(f"max_leases must be >= 1, not {max_leases}")
        super().__init__(client, path, identifier)
        self.max_leases = max_leases

    def _blockers(self, ahead: list[Contender]) -> list[Contender]:
        if len(ahead) < self.max_leases:
            return []
        # We are admitted once fewer than max_leases are ahead: only a deletion
        # among the max_leases nearest ones changes which are nearest.
        return ahead[-self.max_leases :]

    async def _prepare(self) -> None:
        """Create the semaphore's node holding ``max_leases``, or check the one there."""
        want = str(self.max_leases).encode("ascii")

        async def attempt() -> None:
            try:
                await self.client.create(self.path, want, make_parents=True)
                return
            except NodeExistsError:
                pass
            node = await self.client.get(self.path)
            if node is None:
                raise Conflict("removed meanwhile")  # create it again
            if node.value == want:
                return
            if node.value:
                raise InvalidArgumentError(
                    f"semaphore {self.path} has max_leases={node.value.decode('ascii', 'replace')}"
                    f", not {self.max_leases}"
                )
            try:  # a bare directory (e.g. made by ensure_path): record our limit
                await self.client.set(self.path, want, version=node.version)
            except BadVersionError as exc:
                raise Conflict("changed meanwhile") from exc

        options = self.client.options
        await options.retry.on_conflict(
            attempt, deadline=options.timeout, what=f"Semaphore setup of {self.path}", logger=log
        )

    async def holders(self) -> list[str]:
        """Identifiers of the current lease holders, in queue order."""
        return (await self.contenders())[: self.max_leases]

    async def lease_count(self) -> int:
        """How many leases are held right now."""
        queue = await list_contenders(self.client, self.path, self.markers)
        return min(len(queue), self.max_leases)
