"""The example recipe plugin: discovered through its entry point, and it works."""

from __future__ import annotations

import anyio
from coordkit_example_recipe import Latch

import coordkit
from coordkit.plugins import recipe_classes, reset_plugin_manager


def test_the_entry_point_registers_the_latch() -> None:
    reset_plugin_manager()
    assert recipe_classes()["Latch"] is Latch


def test_wait_returns_after_count_downs_from_other_clients() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        url = "memory://example-recipe-test"
        async with coordkit.connect(url) as waiter, coordkit.connect(url) as worker:
            latch = Latch(waiter, "/latches/start", 3)
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:

                    async def wait() -> None:
                        await latch.wait()
                        log.append("released")

                    tg.start_soon(wait)
                    for _ in range(3):
                        await anyio.wait_all_tasks_blocked()
                        log.append(f"left {await Latch(worker, '/latches/start', 3).count_down()}")
        return log

    assert anyio.run(main) == ["left 2", "left 1", "left 0", "released"]
