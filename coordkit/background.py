"""A backend's background work, on asyncio and trio, outside its user's cancel scopes.

A backend is opened in one call and closed in another, while the user's code
runs in between; a task group entered in ``open`` would put that code inside
the group's cancel scope (a failing keepalive would cancel the user's task,
and trio would wrap the user's own exceptions in an ExceptionGroup). So the
backend's tasks run in a task group hosted by a task that belongs to the
event loop itself (an asyncio task; a trio system task), and the backend owns
that host: :meth:`Background.close` cancels it and waits until every task in
it has finished.

The host never raises into the event loop: a task that fails is logged with
its traceback and the rest go on.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup

__all__ = ["Background"]

log = logging.getLogger(__name__)


class Background:
    """A task group whose host task belongs to the event loop, owned by one object.

    ``await Background.start(name)``, then :meth:`start_soon` tasks; :meth:`close`
    cancels them all and returns once they have finished.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._tg: TaskGroup | None = None
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        self._closed = False

    @classmethod
    async def start(cls, name: str) -> Background:
        self = cls(name)
        started = anyio.Event()
        trio = _running_trio()
        if trio is not None:
            trio.lowlevel.spawn_system_task(self._host, started, name=name)
        else:
            import asyncio

            asyncio.get_running_loop().create_task(self._host(started), name=name)
        await started.wait()
        return self

    async def _host(self, started: anyio.Event) -> None:
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    started.set()
                    await anyio.sleep_forever()
        except BaseException:  # never into the event loop (trio would abort the run)
            if not self._scope.cancel_called:
                log.exception("background tasks of %s failed", self.name)
        finally:
            self._tg = None
            started.set()
            self._done.set()

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str = "") -> None:
        """Run ``fn(*args)`` in the background; its failure is logged, not raised."""
        if self._tg is None or self._closed:
            raise RuntimeError(f"{self.name}: background tasks are closed")
        self._tg.start_soon(self._guarded, fn, args, name or getattr(fn, "__name__", "task"))

    async def _guarded(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], what: str
    ) -> None:
        try:
            await fn(*args)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception:
            log.exception("%s: background task %s failed", self.name, what)

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Cancel every task and wait until they have all finished. Idempotent."""
        self._closed = True
        self._scope.cancel()
        with anyio.CancelScope(shield=True):
            await self._done.wait()


def _running_trio() -> Any:
    """The trio module if this task runs under trio, else None (without sniffio)."""
    trio = sys.modules.get("trio")
    if trio is None:
        return None
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return None
    return trio
