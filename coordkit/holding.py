"""What every held recipe shares: ``async with`` whose body ends with the session.

A lock, a semaphore lease or a leadership is held under the client's session.
Inside ``async with`` the body is cancelled if that session ends, and
:class:`~coordkit.LockLostError` is raised from the block instead of the
cancellation. The generic recipes (``coordkit.recipes``) and backend-native
ones (etcd's Lock and Election) both build on this module, which is why it
lives in the core: backends do not import the recipes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Self

import anyio

from .backend import Session
from .errors import LockLostError

__all__ = ["Holdable", "cancelled_on_loss"]


@asynccontextmanager
async def cancelled_on_loss(session: Session, what: str) -> AsyncIterator[None]:
    """Run the body, cancelled if ``session`` ends; then raise LockLostError for ``what``.

    Any other exception of the body passes unchanged.
    """
    body_error: Exception | None = None
    async with anyio.create_task_group() as tg:

        async def cancel_on_loss() -> None:
            await session.wait_lost()
            tg.cancel_scope.cancel()

        tg.start_soon(cancel_on_loss)
        try:
            yield
        except Exception as exc:  # re-raised below, outside the task group
            body_error = exc
        tg.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
    if session.lost:
        raise LockLostError(f"{what} lost: the session ended")


class Holdable:
    """``async with obj:`` enters ``obj._hold()``; nested entries of one object stack."""

    _holds: list[AbstractAsyncContextManager[None]]

    def _hold(self) -> AbstractAsyncContextManager[None]:
        """Acquire, run the body (see :func:`cancelled_on_loss`), release."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        hold = self._hold()
        await hold.__aenter__()
        self.__dict__.setdefault("_holds", []).append(hold)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._holds.pop().__aexit__(exc_type, exc, tb)
