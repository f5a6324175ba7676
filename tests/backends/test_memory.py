"""memory:// specifics the conformance kit cannot see: lazy expiry with no background task."""

from __future__ import annotations

import anyio
import pytest

import coordkit
from coordkit import EventType

pytestmark = pytest.mark.anyio


async def test_a_waiting_watch_sees_an_aborted_clients_ephemerals_expire(memory_url: str) -> None:
    # Nobody touches the store after the abort: only the waiting watch can expire
    # the session, so it must learn the new deadline while it is already waiting.
    async with (
        coordkit.connect(memory_url, session_ttl=0.3) as vanishing,
        coordkit.connect(memory_url) as watcher,
    ):
        await vanishing.create("/e", b"", ephemeral=True)
        async with watcher.watch("/e") as events:
            seen: list[EventType] = []

            async def wait_for_the_delete() -> None:
                async for event in events:
                    seen.append(event.type)
                    return

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(wait_for_the_delete)
                    await anyio.wait_all_tasks_blocked()  # the watch waits in __anext__
                    started = anyio.current_time()
                    await vanishing.abort()
            assert seen == [EventType.DELETED]
            assert anyio.current_time() - started >= 0.3 * 0.9  # not before the TTL
        assert await watcher.get("/e") is None
