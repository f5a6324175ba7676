"""Barrier and DoubleBarrier: nobody passes early, everyone is released, nothing left behind."""

from __future__ import annotations

import anyio
import pytest
from recipe_support import clients  # tests/support

import coordkit
from coordkit import Client
from coordkit.recipes.barrier import Barrier, DoubleBarrier
from coordkit.recipes.base import wait_until

pytestmark = pytest.mark.anyio

PATH = "/barriers/b"


async def wait_children(client: Client, count: int) -> None:
    """Wait (watching) until ``PATH`` has ``count`` participant nodes (``ready`` excluded)."""

    async def reached() -> bool:
        try:
            names = await client.children(PATH)
        except coordkit.NoNodeError:
            return False
        return len([n for n in names if n != "ready"]) == count

    with anyio.fail_after(10):
        await wait_until(client, PATH, reached, recursive=True)


async def test_barrier_holds_waiters_until_removed(backend_url: str) -> None:
    async with clients(backend_url, 4) as conns:
        barrier = Barrier(conns[0], PATH)
        await barrier.create()
        await barrier.create()  # idempotent
        released: list[int] = []

        async def wait(i: int) -> None:
            assert await Barrier(conns[i], PATH).wait() is True
            released.append(i)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in (1, 2, 3):
                    tg.start_soon(wait, i)
                assert await Barrier(conns[0], PATH).wait(timeout=0.1) is False
                assert released == []
                assert await barrier.remove() is True
        assert sorted(released) == [1, 2, 3]
        assert await barrier.remove() is False
        assert await barrier.wait(timeout=1) is True  # not raised: passes at once


async def test_barrier_set_is_create(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as client:
        barrier = Barrier(client, PATH)
        await barrier.set()
        assert await client.exists(PATH)
        assert await barrier.wait(timeout=0.05) is False


async def test_double_barrier_enters_and_leaves_together(backend_url: str) -> None:
    n = 4
    left: list[int] = []
    async with clients(backend_url, n + 1) as conns:
        observer = conns[n]
        barriers = [DoubleBarrier(conns[i], PATH, n, f"p{i}") for i in range(n)]
        entered = [anyio.Event() for _ in range(n)]
        may_leave = [anyio.Event() for _ in range(n)]

        async def participate(i: int) -> None:
            assert await barriers[i].enter()
            entered[i].set()
            await may_leave[i].wait()
            assert await barriers[i].leave()
            left.append(i)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(participate, i)
                    if i < n - 1:
                        await wait_children(observer, i + 1)
                        assert not any(e.is_set() for e in entered), "entered before all arrived"
                for event in entered:
                    await event.wait()
                # Everyone but the last in name order leaves; the first in name
                # order stays to the end, so all wait for the last one.
                names = [b.node_name for b in barriers]
                last = names.index(max(names))
                for i in range(n):
                    if i != last:
                        may_leave[i].set()
                await wait_children(observer, 2)  # the first in order and the last remain
                assert left == [], "left before everyone was leaving"
                may_leave[last].set()
        assert sorted(left) == list(range(n))
        assert await observer.children(PATH) == []  # ready went with the last one out


async def test_double_barrier_enter_times_out_and_withdraws(backend_url: str) -> None:
    async with clients(backend_url, 2) as (a, b):
        first = DoubleBarrier(a, PATH, 2)
        assert await first.enter(timeout=0.1) is False
        assert await a.children(PATH) == []
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.enter)
            async with DoubleBarrier(b, PATH, 2) as second:
                assert second.participating
                tg.start_soon(first.leave)
        assert await a.children(PATH) == []
