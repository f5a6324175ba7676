"""The shared retry policy: bounded, jittered, logged, tunable from the URL."""

from __future__ import annotations

import logging

import anyio
import pytest

import coordkit
from coordkit.errors import ConfigurationError, ConnectionLostError, OperationTimeoutError
from coordkit.retry import Conflict, RetryPolicy

pytestmark = pytest.mark.anyio


async def test_retries_until_success_then_returns_the_result() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionLostError("down")
        return "ok"

    policy = RetryPolicy(initial_delay=0.001, max_delay=0.002)
    assert await policy.call(flaky, retry_on=ConnectionLostError) == "ok"
    assert calls == 3


async def test_gives_up_after_max_attempts_with_the_last_error_and_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionLostError(f"refused #{calls}")

    policy = RetryPolicy(initial_delay=0.001, max_delay=0.001, max_attempts=4)
    with (
        caplog.at_level(logging.DEBUG, logger="coordkit.retry"),
        pytest.raises(ConnectionLostError, match="refused #4"),
    ):
        await policy.call(down, retry_on=ConnectionLostError, what="connect to x:1")
    assert calls == 4
    retries = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(retries) == 3 and "connect to x:1 failed (attempt 1" in retries[0].getMessage()
    (gave_up,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = gave_up.getMessage()
    assert message.startswith("connect to x:1: gave up after 4 attempt(s) in ")
    assert message.endswith(" s: ConnectionLostError: refused #4")


async def test_errors_it_does_not_retry_pass_at_once() -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await RetryPolicy(initial_delay=0.001).call(broken, retry_on=ConnectionLostError)
    assert calls == 1


def test_waits_grow_with_full_jitter_and_stay_under_the_cap() -> None:
    policy = RetryPolicy(initial_delay=0.01, max_delay=0.08)
    wait = policy.wait()

    class State:
        attempt_number = 0

    state = State()
    for attempt in range(1, 12):
        state.attempt_number = attempt
        samples = [wait(state) for _ in range(200)]  # type: ignore[arg-type]
        assert all(0 <= s <= 0.08 for s in samples)
        assert max(samples) > min(samples)  # jittered
    state.attempt_number = 1
    early = max(wait(state) for _ in range(200))  # type: ignore[arg-type]
    assert early <= 0.02


def test_url_options_tune_it_and_bad_values_are_rejected() -> None:
    query = {"retry_initial_delay": "0.5", "retry_max_delay": "4", "retry_max_attempts": "7"}
    assert RetryPolicy.from_query(query) == RetryPolicy(0.5, 4.0, 7)
    assert RetryPolicy.from_query({}) == RetryPolicy()
    with pytest.raises(ConfigurationError, match="retry_max_delay must be a number"):
        RetryPolicy.from_query({"retry_max_delay": "soon"})
    with pytest.raises(ConfigurationError, match="initial_delay must be > 0"):
        RetryPolicy(initial_delay=-1)
    with pytest.raises(ConfigurationError, match="below initial_delay"):
        RetryPolicy(initial_delay=2, max_delay=1)
    with pytest.raises(ConfigurationError, match="max_attempts must be an int >= 1"):
        RetryPolicy(max_attempts=0)


async def test_a_predicate_chooses_what_is_retried() -> None:
    errors = [ConnectionLostError("transient"), ConnectionLostError("fatal")]
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        raise errors[calls - 1]

    policy = RetryPolicy(initial_delay=0.001, max_delay=0.001)
    with pytest.raises(ConnectionLostError, match="fatal"):
        await policy.call(flaky, retry_on=lambda exc: "transient" in str(exc))
    assert calls == 2


async def test_no_wait_is_started_that_would_end_past_the_deadline() -> None:
    """The deadline is checked before each wait (tenacity's stop_before_delay):
    with no time left, the first failure is the last attempt."""
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionLostError("down")

    policy = RetryPolicy(initial_delay=0.001, max_delay=0.001, max_attempts=3)
    with pytest.raises(ConnectionLostError):
        await policy.call(down, retry_on=ConnectionLostError, deadline=0)
    assert calls == 1
    with pytest.raises(ConnectionLostError):
        await policy.call(down, retry_on=ConnectionLostError, deadline=60)
    assert calls == 1 + 3


async def test_forever_ignores_max_attempts() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 6:
            raise ConnectionLostError("down")
        return "up"

    policy = RetryPolicy(initial_delay=0.001, max_delay=0.001, max_attempts=2)
    assert await policy.call(flaky, retry_on=ConnectionLostError, forever=True) == "up"
    assert calls == 6


async def test_cancellation_passes_through_the_retries() -> None:
    attempts = 0

    async def hang() -> None:
        nonlocal attempts
        attempts += 1
        await anyio.sleep_forever()

    with anyio.move_on_after(0.05) as scope:
        await RetryPolicy().call(hang, retry_on=BaseException)
    assert scope.cancelled_caught and attempts == 1


async def test_conflicts_are_retried_then_end_in_a_timeout_error() -> None:
    calls = 0

    async def race() -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Conflict("version moved")
        return calls

    policy = RetryPolicy(initial_delay=0.001, max_delay=0.001, max_attempts=3)
    assert await policy.on_conflict(race, deadline=None, what="add") == 3

    async def always_lose() -> None:
        raise Conflict("version moved")

    with pytest.raises(OperationTimeoutError, match="add: every attempt lost a race"):
        await policy.on_conflict(always_lose, deadline=None, what="add")


def test_connect_takes_the_policy_from_the_url_or_the_argument() -> None:
    client = coordkit.connect("memory://retry?retry_max_delay=2&retry_max_attempts=5")
    assert client.options.retry == RetryPolicy(max_delay=2.0, max_attempts=5)
    assert coordkit.connect("memory://retry").options.retry == RetryPolicy()
    mine = RetryPolicy(initial_delay=0.5, max_delay=3)
    client = coordkit.connect("memory://retry?retry_max_delay=9", retry=mine)
    assert client.options.retry is mine
    with pytest.raises(ConfigurationError, match="retry_max_attempts must be"):
        coordkit.connect("memory://retry?retry_max_attempts=many")
    with pytest.raises(ConfigurationError, match="retry must be a RetryPolicy"):
        coordkit.connect("memory://retry", retry=3.0)  # type: ignore[arg-type]


async def test_backoff_waits_grow_and_start_small_again_after_a_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backoff = RetryPolicy(initial_delay=0.001, max_delay=0.004).backoff(what="watch /a")
    with caplog.at_level(logging.DEBUG, logger="coordkit.retry"):
        for _ in range(3):
            await backoff.wait(ConnectionLostError("down"))
    assert backoff.failures == 3
    backoff.reset()
    assert backoff.failures == 0
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[2].startswith("watch /a failed (attempt 3: ConnectionLostError: down)")
