"""Background tasks of a backend: outside the user's cancel scopes, owned and awaited."""

from __future__ import annotations

import logging

import anyio
import anyio.lowlevel
import pytest

from coordkit.background import Background

pytestmark = pytest.mark.anyio


async def test_tasks_run_until_close_which_waits_for_them() -> None:
    bg = await Background.start("test")
    ticks = 0
    finished = anyio.Event()

    async def ticker() -> None:
        nonlocal ticks
        try:
            while True:
                ticks += 1
                await anyio.lowlevel.checkpoint()
        finally:
            finished.set()

    bg.start_soon(ticker)
    while ticks < 10:
        await anyio.lowlevel.checkpoint()
    await bg.close()
    assert finished.is_set()  # close returned only after the task ended
    with pytest.raises(RuntimeError, match="closed"):
        bg.start_soon(ticker)


async def test_a_failing_task_is_logged_and_touches_neither_the_others_nor_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bg = await Background.start("flaky")
    survivor_ran = anyio.Event()

    async def broken() -> None:
        raise KeyError("boom")

    async def survivor() -> None:
        await anyio.sleep(0.01)
        survivor_ran.set()

    with caplog.at_level(logging.ERROR, logger="coordkit.background"):
        bg.start_soon(broken)
        bg.start_soon(survivor)
        with anyio.fail_after(5):
            await survivor_ran.wait()  # the caller's task is not cancelled either
    await bg.close()
    (record,) = caplog.records
    assert "flaky: background task broken failed" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is KeyError


async def test_the_callers_exceptions_are_not_wrapped() -> None:
    """Code between start and close is not inside the tasks' group."""
    bg = await Background.start("plain")
    bg.start_soon(anyio.sleep_forever)
    with pytest.raises(ValueError, match="mine"):
        try:
            raise ValueError("mine")
        finally:
            await bg.close()
