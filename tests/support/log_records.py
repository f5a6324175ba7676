"""``LogRecords``: the records of a logger, and a wait for one that has not come yet.

caplog shows what was logged; tests of state changes also need to wait until
a line is logged (a server stopped, the client notices a moment later). The
records come from the event loop and from client libraries' own threads
(kazoo's), so the wait is a ``threading.Condition`` awaited in a worker
thread: no polling.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio


class LogRecords(logging.Handler):
    """Every record of one logger (and its children) while attached."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def lines(self, min_level: int = logging.INFO) -> list[str]:
        """``LEVEL message`` of every record at ``min_level`` or above, in order."""
        with self._changed:
            return [
                f"{r.levelname} {r.getMessage()}" for r in self.records if r.levelno >= min_level
            ]

    def count(self, pattern: str, min_level: int = logging.DEBUG) -> int:
        """How many records at ``min_level`` or above match ``pattern`` (a regex)."""
        with self._changed:
            return sum(
                1
                for r in self.records
                if r.levelno >= min_level and re.search(pattern, r.getMessage())
            )

    async def wait_for(self, pattern: str, times: int = 1, *, timeout: float = 30) -> None:
        """Return once ``times`` records match ``pattern``; TimeoutError after ``timeout`` s."""
        seen: Callable[[], bool] = lambda: self.count(pattern) >= times  # noqa: E731

        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(seen, timeout)

        if not await anyio.to_thread.run_sync(wait):
            raise TimeoutError(f"no {times} record(s) matching {pattern!r}: {self.lines(0)}")


def coordkit_lines(records: list[logging.LogRecord]) -> list[str]:
    """``LEVEL message`` of coordkit's records (e.g. ``caplog.records``) at INFO and above."""
    return [
        f"{r.levelname} {r.getMessage()}"
        for r in records
        if r.name.startswith("coordkit") and r.levelno >= logging.INFO
    ]


@contextmanager
def log_records(name: str = "coordkit") -> Iterator[LogRecords]:
    """Attach a :class:`LogRecords` to logger ``name`` (at DEBUG) for the block."""
    handler = LogRecords()
    logger = logging.getLogger(name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
