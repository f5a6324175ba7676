"""The one retry policy: exponential backoff with full jitter, bounded, built on tenacity.

Every reconnect, keepalive retry and conflict retry in coordkit and its
backends goes through :class:`RetryPolicy`, so they all back off alike and a
user tunes them in one place: URL options ``retry_initial_delay``,
``retry_max_delay`` and ``retry_max_attempts``, or ``coordkit.connect(retry=...)``.

Full jitter (each wait is uniform in ``[0, min(max_delay, initial * 2**n)]``)
keeps a crowd of clients that lost the same server from reconnecting in step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import anyio
import tenacity

from .errors import ConfigurationError

__all__ = ["RETRY_OPTIONS", "RetryPolicy"]

T = TypeVar("T")

#: URL query options read by :meth:`RetryPolicy.from_query`.
RETRY_OPTIONS = ("retry_initial_delay", "retry_max_delay", "retry_max_attempts")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How to retry: waits grow from ``initial_delay`` to ``max_delay`` seconds.

    ``max_attempts`` bounds the number of attempts (None: no bound but the
    deadline a caller gives, or the caller's own cancel scope).
    """

    initial_delay: float = 0.02
    max_delay: float = 1.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        for name in ("initial_delay", "max_delay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(f"retry {name} must be a number, not {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ConfigurationError(f"retry {name} must be > 0, not {value!r}")
        if self.max_delay < self.initial_delay:
            raise ConfigurationError(
                f"retry max_delay ({self.max_delay}) is below initial_delay ({self.initial_delay})"
            )
        attempts = self.max_attempts
        if attempts is not None and (
            isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1
        ):
            raise ConfigurationError(f"retry max_attempts must be an int >= 1, not {attempts!r}")

    @classmethod
    def from_query(cls, query: Mapping[str, str], base: RetryPolicy | None = None) -> RetryPolicy:
        """``base`` (default: the defaults) with the ``retry_*`` URL options applied."""
        policy = base or cls()
        changes: dict[str, Any] = {}
        for option in RETRY_OPTIONS:
            raw = query.get(option)
            if raw is None:
                continue
            field = option.removeprefix("retry_")
            try:
                changes[field] = int(raw) if field == "max_attempts" else float(raw)
            except ValueError:
                raise ConfigurationError(f"{option} must be a number, not {raw!r}") from None
        return replace(policy, **changes) if changes else policy

    def wait(self) -> tenacity.wait.wait_base:
        """The tenacity wait strategy (full jitter, capped)."""
        return tenacity.wait_random_exponential(multiplier=self.initial_delay, max=self.max_delay)

    def retrying(
        self,
        *,
        retry_on: type[BaseException] | tuple[type[BaseException], ...],
        deadline: float | None = None,
        what: str = "operation",
        logger: logging.Logger | None = None,
    ) -> tenacity.AsyncRetrying:
        """A tenacity ``AsyncRetrying`` for ``async for attempt in ...: with attempt: ...``.

        Retries while the attempt raises ``retry_on``; stops after
        ``max_attempts`` or once ``deadline`` seconds have passed, then
        re-raises the last error. Each retry is logged at DEBUG on ``logger``.
        """
        stop: tenacity.stop.stop_base = tenacity.stop_never
        if self.max_attempts is not None:
            stop = tenacity.stop_after_attempt(self.max_attempts)
        if deadline is not None:
            stop = stop | tenacity.stop_after_delay(deadline)
        log = logger or logging.getLogger("coordkit.retry")

        def before_sleep(state: tenacity.RetryCallState) -> None:
            outcome = state.outcome
            error = outcome.exception() if outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            log.debug(
                "%s failed (attempt %d: %s); retrying in %.3f s",
                what,
                state.attempt_number,
                _describe(error),
                wait,
            )

        return tenacity.AsyncRetrying(
            sleep=anyio.sleep,
            stop=stop,
            wait=self.wait(),
            retry=tenacity.retry_if_exception_type(retry_on),
            before_sleep=before_sleep,
            reraise=True,
        )

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        retry_on: type[BaseException] | tuple[type[BaseException], ...],
        deadline: float | None = None,
        what: str = "operation",
        logger: logging.Logger | None = None,
    ) -> T:
        """``await fn()``, retried per this policy; logs a WARNING when it gives up."""
        log = logger or logging.getLogger("coordkit.retry")
        attempts = 0
        try:
            async for attempt in self.retrying(
                retry_on=retry_on, deadline=deadline, what=what, logger=log
            ):
                with attempt:
                    attempts += 1
                    return await fn()
        except retry_on as exc:
            log.warning("%s: gave up after %d attempt(s): %s", what, attempts, _describe(exc))
            raise
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "no error"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
