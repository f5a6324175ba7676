"""Ownership of a held node: held while the node exists and its session lives.

:class:`Ownership` follows one hold and :func:`cancelled_on_loss` runs a body
that is cancelled once the hold is lost -- for any reason but the owner's own
release: the session ended, or the node was deleted by another client, an
operator or a transaction. Every holding recipe (Lock, the read/write locks,
Semaphore, and the backends' native locks through them) ends its ``async
with`` body this way.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

import anyio

from coordkit import ClientClosedError, LockLostError, RecipeStateError, Session

__all__ = ["Ownership", "cancelled_on_loss"]

log = logging.getLogger(__name__)


class Ownership:
    """One hold of a node: held while the node exists and its session lives.

    A hold ends in one of two ways: the owner gives it up (:meth:`release`),
    or it is **lost**: the session ends, or the node goes for any other
    reason (deleted by another client or an operator, removed by a
    transaction, the client closed or aborted under it). Only
    :meth:`wait_lost` looks at the node, with ``node_gone`` (a watch); so
    :attr:`lost` reflects a deleted node once a :meth:`wait_lost` (for
    instance the one ``async with`` runs for its body) has seen it, while a
    session loss shows at once.
    """

    def __init__(
        self,
        path: str,
        token: int,
        session: Session,
        node_gone: Callable[[], Awaitable[None]],
        what: str,
    ) -> None:
        self.path = path
        self.token = token
        self.session = session
        self.what = what
        self._node_gone = node_gone
        self._gone_cause: str | None = None
        self.released = False
        self._ended = anyio.Event()  # the node was seen gone, or we released

    @property
    def lost(self) -> bool:
        """Whether the hold was lost (never by our own release)."""
        return self.session.lost or self._gone_cause is not None

    @property
    def cause(self) -> str:
        """Why the hold was lost, for messages."""
        if self.session.lost:
            return "the session ended"
        return self._gone_cause or "not lost"

    def release(self) -> None:
        """The owner gives the hold up: the node's going from now on is no loss."""
        self.released = True
        self._ended.set()

    async def wait_lost(self) -> None:
        """Return once the hold is lost; RecipeStateError if released first."""
        if not self.lost and not self.released:
            async with anyio.create_task_group() as tg:

                async def until(wait: Callable[[], Awaitable[object]]) -> None:
                    await wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(until, self.session.wait_lost)
                tg.start_soon(until, self._ended.wait)
                tg.start_soon(until, self._watch_node)
        if not self.lost:
            raise RecipeStateError(f"{self.what} was released")

    async def _watch_node(self) -> None:
        try:
            await self._node_gone()
            cause = "its node was deleted"
        except ClientClosedError:
            cause = "the client was closed"
        if not self.released and self._gone_cause is None:
            self._gone_cause = cause
            log.warning("%s lost: %s", self.what, cause)
        self._ended.set()


@asynccontextmanager
async def cancelled_on_loss(owned: Ownership) -> AsyncIterator[None]:
    """Run the body, cancelled once ``owned`` is lost; then raise LockLostError.

    Any other exception of the body passes unchanged. Between the loss and
    the cancellation lies the time the backend takes to tell us (a watch
    event, a session expiry noticed): fencing tokens cover that window.
    """
    body_error: Exception | None = None
    async with anyio.create_task_group() as tg:

        async def cancel_on_loss() -> None:
            with suppress(RecipeStateError):  # released: the body is over anyway
                await owned.wait_lost()
                tg.cancel_scope.cancel()

        tg.start_soon(cancel_on_loss)
        try:
            yield
        except Exception as exc:  # re-raised below, outside the task group
            body_error = exc
        tg.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
    if owned.lost:
        raise LockLostError(f"{owned.what} lost: {owned.cause}")
