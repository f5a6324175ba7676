"""The one retry policy: exponential backoff with full jitter, bounded, built on tenacity.

Every reconnect, keepalive retry and conflict retry in coordkit, its backends
and its recipes goes through :class:`RetryPolicy`, so they all back off alike
and a user tunes them in one place: URL options ``retry_initial_delay``,
``retry_max_delay`` and ``retry_max_attempts``, or ``coordkit.connect(retry=...)``
(the client's policy is ``client.options.retry``).

Full jitter (each wait is uniform in ``[0, min(max_delay, initial * 2**n)]``)
keeps a crowd of clients that lost the same server from reconnecting in step,
and a crowd of writers that lost the same compare-and-set race from racing
again in step.

Two kinds of retry use it:

* **bounded** (:meth:`RetryPolicy.call`, :meth:`RetryPolicy.retrying`): an
  operation retried until it succeeds, fails with an error that is not
  retried, runs out of ``max_attempts`` or would pass its ``deadline``; then
  the last error is raised and one WARNING says so. :meth:`RetryPolicy.on_conflict`
  is the same for compare-and-set loops: losing every race ends in
  :class:`~coordkit.OperationTimeoutError` (nothing was changed).
* **unbounded** (``forever=True``, or :meth:`RetryPolicy.backoff` for a loop
  that keeps running between failures, such as a watch that is reopened
  whenever it breaks): waits as the policy says but never gives up, since
  the client must recover when the server comes back. ``max_attempts`` and
  deadlines do not apply; the waits start small again after a success.

Every retry is logged at DEBUG on the caller's logger; giving up at WARNING.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import anyio
import tenacity

from .errors import ConfigurationError, OperationTimeoutError

__all__ = ["RETRY_OPTIONS", "Backoff", "Conflict", "RetryOn", "RetryPolicy", "describe_error"]

T = TypeVar("T")

#: URL query options read by :meth:`RetryPolicy.from_query`.
RETRY_OPTIONS = ("retry_initial_delay", "retry_max_delay", "retry_max_attempts")

#: What to retry: exception types, or a predicate on the exception.
RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]

_log = logging.getLogger(__name__)


class Conflict(Exception):
    """Raised by an attempt of :meth:`RetryPolicy.on_conflict` that lost a race.

    A concurrent change came first (a version moved, a node appeared), and
    the attempt changed nothing: it is safe to read again and retry. Never
    escapes :meth:`RetryPolicy.on_conflict`.
    """


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How to retry: waits grow from ``initial_delay`` to ``max_delay`` seconds.

    ``max_attempts`` bounds the number of attempts of a bounded retry (None:
    no bound but the deadline a caller gives, or the caller's own cancel
    scope). Immutable and validated on construction: a bad value raises
    :class:`~coordkit.ConfigurationError`.
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
        retry_on: RetryOn,
        deadline: float | None = None,
        what: str = "operation",
        logger: logging.Logger | None = None,
        forever: bool = False,
    ) -> tenacity.AsyncRetrying:
        """A tenacity ``AsyncRetrying`` for ``async for attempt in ...: with attempt: ...``.

        Retries while the attempt raises what ``retry_on`` names (any other
        exception, cancellation included, passes at once). Stops after
        ``max_attempts``, or before a wait that would end past ``deadline``
        seconds from the first attempt; then logs a WARNING on ``logger`` and
        re-raises the last error. With ``forever`` it never stops by itself
        (``max_attempts`` and ``deadline`` are ignored). Each retry is logged
        at DEBUG on ``logger``.
        """
        stop: tenacity.stop.stop_base = tenacity.stop_never
        if not forever:
            if self.max_attempts is not None:
                stop = tenacity.stop_after_attempt(self.max_attempts)
            if deadline is not None:
                stop = stop | tenacity.stop_before_delay(deadline)
        log = logger or _log
        return tenacity.AsyncRetrying(
            sleep=anyio.sleep,
            stop=stop,
            wait=self.wait(),
            retry=_retry_condition(retry_on),
            before_sleep=_log_retry(log, what),
            retry_error_callback=_give_up(log, what),
        )

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        retry_on: RetryOn,
        deadline: float | None = None,
        what: str = "operation",
        logger: logging.Logger | None = None,
        forever: bool = False,
    ) -> T:
        """``await fn()``, retried per this policy (see :meth:`retrying`)."""
        async for attempt in self.retrying(
            retry_on=retry_on, deadline=deadline, what=what, logger=logger, forever=forever
        ):
            with attempt:
                return await fn()
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    async def on_conflict(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        deadline: float | None,
        what: str,
        logger: logging.Logger | None = None,
    ) -> T:
        """Run a compare-and-set attempt ``fn`` until it does not raise :class:`Conflict`.

        For read-modify-write loops: ``fn`` reads, computes and writes only if
        nothing changed meanwhile, raising :class:`Conflict` when something
        did. Losing every race until ``max_attempts`` or ``deadline`` raises
        :class:`~coordkit.OperationTimeoutError`; nothing was changed then.
        """
        try:
            return await self.call(
                fn, retry_on=Conflict, deadline=deadline, what=what, logger=logger
            )
        except Conflict as exc:
            raise OperationTimeoutError(
                f"{what}: every attempt lost a race with a concurrent change "
                f"({describe_error(exc)}); nothing was changed"
            ) from exc

    def backoff(self, *, what: str, logger: logging.Logger | None = None) -> Backoff:
        """The waits of this policy for a long-lived loop (see :class:`Backoff`)."""
        return Backoff(self, what, logger or _log)


class Backoff:
    """The policy's waits for a loop that runs until cancelled, failing now and then.

    For loops whose work is not one call that can be retried as a whole (a
    watch followed for hours that breaks and is reopened, an async generator
    that yields between failures): :meth:`wait` after a failure sleeps the
    policy's next (jittered, growing) wait; :meth:`reset` after a success
    starts the waits small again. It never gives up.
    """

    def __init__(self, policy: RetryPolicy, what: str, logger: logging.Logger) -> None:
        self._wait = policy.wait()
        self._what = what
        self._log = logger
        self._state = tenacity.RetryCallState(tenacity.AsyncRetrying(), None, (), {})
        self._state.attempt_number = 0

    @property
    def failures(self) -> int:
        """Failures since the last success."""
        return self._state.attempt_number

    def reset(self) -> None:
        self._state.attempt_number = 0

    async def wait(self, error: BaseException | None = None) -> None:
        """Sleep before the next try (``error``: the failure, for the DEBUG line)."""
        self._state.attempt_number += 1
        delay = self._wait(self._state)
        self._log.debug(
            "%s failed (attempt %d: %s); retrying in %.3f s",
            self._what,
            self._state.attempt_number,
            describe_error(error),
            delay,
        )
        await anyio.sleep(delay)


def _log_retry(log: logging.Logger, what: str) -> Callable[[tenacity.RetryCallState], None]:
    """tenacity's ``before_sleep``: one DEBUG line per retry."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.debug(
            "%s failed (attempt %d: %s); retrying in %.3f s",
            what,
            state.attempt_number,
            describe_error(error),
            wait,
        )

    return before_sleep


def _give_up(log: logging.Logger, what: str) -> Callable[[tenacity.RetryCallState], None]:
    """tenacity's ``retry_error_callback``: one WARNING, then the last error again."""

    def gave_up(state: tenacity.RetryCallState) -> None:
        assert state.outcome is not None
        error = state.outcome.exception()
        assert error is not None
        log.warning(
            "%s: gave up after %d attempt(s) in %.1f s: %s",
            what,
            state.attempt_number,
            state.seconds_since_start or 0.0,
            describe_error(error),
        )
        raise error

    return gave_up


def _retry_condition(retry_on: RetryOn) -> tenacity.retry_base:
    if isinstance(retry_on, type | tuple):
        return tenacity.retry_if_exception_type(retry_on)
    return tenacity.retry_if_exception(retry_on)


def describe_error(error: BaseException | None) -> str:
    """``Type: message`` (or just ``Type``) for a log line."""
    if error is None:
        return "no error"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
