"""The shared retry policy: bounded, jittered, logged, tunable from the URL."""

from __future__ import annotations

import logging

import pytest

from coordkit.errors import ConfigurationError, ConnectionLostError
from coordkit.retry import RetryPolicy

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
    assert (
        gave_up.getMessage()
        == "connect to x:1: gave up after 4 attempt(s): ConnectionLostError: refused #4"
    )


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
