"""What every held recipe shares: ``async with`` that stacks holds of one object.

A lock, a semaphore lease or a leadership is held while its own node exists
(``coordkit.recipes.base``: the body is cancelled when the session ends or the
node goes for any other reason, and :class:`~coordkit.LockLostError` is raised
from the block instead of the cancellation).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Self

__all__ = ["Holdable"]


class Holdable:
    """``async with obj:`` enters ``obj._hold()``; nested entries of one object stack."""

    _holds: list[AbstractAsyncContextManager[None]]

    def _hold(self) -> AbstractAsyncContextManager[None]:
        """Acquire, run the body (cancelled if the hold is lost), release."""
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
