"""Semaphore: at most N holders, FIFO admission, bounded wakeups, loss and cancellation."""

from __future__ import annotations

import random

import anyio
import anyio.lowlevel
import pytest
from recipe_support import clients, count_reads, wait_queue_length  # tests/support

from coordkit import Capability, InvalidArgumentError, LockLostError
from coordkit.recipes.semaphore import Semaphore

pytestmark = pytest.mark.anyio

PATH = "/sem/workers"


async def test_never_more_than_max_leases_holders(backend_url: str) -> None:
    limit, tasks, rounds = 3, 12, 10
    holding = peak = 0
    async with clients(backend_url, tasks) as conns:

        async def work(i: int) -> None:
            nonlocal holding, peak
            for _ in range(rounds):
                async with Semaphore(conns[i], PATH, limit, f"t{i}"):
                    holding += 1
                    peak = max(peak, holding)
                    assert holding <= limit
                    await anyio.lowlevel.checkpoint()
                    holding -= 1

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(tasks):
                    tg.start_soon(work, i)
        assert await conns[0].children(PATH) == []
    assert 1 <= peak <= limit


async def test_max_leases_holders_at_once_and_no_more(backend_url: str) -> None:
    async with clients(backend_url, 4) as conns:
        sems = [Semaphore(c, PATH, 3, f"s{i}") for i, c in enumerate(conns)]
        assert [await s.acquire(blocking=False) for s in sems[:3]] == [True, True, True]
        assert await sems[3].acquire(blocking=False) is False
        assert await sems[3].acquire(timeout=0.1) is False
        assert await sems[0].holders() == ["s0", "s1", "s2"]
        assert await sems[0].lease_count() == 3
        await sems[1].release()
        assert await sems[3].acquire(blocking=False)
        assert await sems[0].holders() == ["s0", "s2", "s3"]
        for s in (sems[0], sems[2], sems[3]):
            await s.release()
        assert await conns[0].children(PATH) == []


async def test_waiters_are_admitted_in_queue_order(backend_url: str) -> None:
    limit, waiters = 2, 5
    async with clients(backend_url, limit + waiters) as conns:
        holding = [Semaphore(conns[i], PATH, limit) for i in range(limit)]
        for sem in holding:
            assert await sem.acquire()
        admitted: list[int] = []
        events = [anyio.Event() for _ in range(waiters)]
        sems = [Semaphore(conns[limit + i], PATH, limit, f"w{i}") for i in range(waiters)]

        async def wait_turn(i: int) -> None:
            assert await sems[i].acquire()
            admitted.append(i)
            events[i].set()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(waiters):
                    tg.start_soon(wait_turn, i)
                    await wait_queue_length(conns[0], PATH, Semaphore.markers, limit + i + 1)
                for i in range(waiters):
                    await holding.pop(0).release()  # frees exactly one lease
                    await events[i].wait()
                    assert admitted == list(range(i + 1))
                    holding.append(sems[i])
        for sem in holding:
            await sem.release()


async def test_a_release_wakes_only_waiters_within_max_leases_behind_it(backend_url: str) -> None:
    # Holders a, b; waiters w0 (waits on a or b), w1 (on b or w0), w2 (on w0 or w1).
    async with clients(backend_url, 5) as conns:
        a, b = (Semaphore(c, PATH, 2) for c in conns[:2])
        assert await a.acquire() and await b.acquire()
        sems = [Semaphore(c, PATH, 2, f"w{i}") for i, c in enumerate(conns[2:])]
        counters = [count_reads(c) for c in conns[2:]]
        admitted = [anyio.Event() for _ in sems]

        async def wait_turn(i: int) -> None:
            assert await sems[i].acquire()
            admitted[i].set()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(len(sems)):
                    tg.start_soon(wait_turn, i)
                    await counters[i][1].wait()  # it checked what it watches: now waiting
                before = [sum(calls.values()) for calls, _ in counters]
                await a.release()  # admits w0; a is not among the two ahead of w1 or w2
                await admitted[0].wait()
                after = [sum(calls.values()) for calls, _ in counters]
                assert after[1:] == before[1:], "a release woke waiters it cannot admit"
                await b.release()  # admits w1
                await admitted[1].wait()
                assert sum(counters[2][0].values()) == before[2]
                tg.cancel_scope.cancel()
        for sem in sems[:2]:
            await sem.release()
        assert await conns[0].children(PATH) == []


async def test_cancelled_acquires_leave_no_node(backend_url: str) -> None:
    seed = 99
    rng = random.Random(seed)
    async with clients(backend_url, 4) as conns:
        holder = Semaphore(conns[0], PATH, 2)
        assert await holder.acquire()

        async def churn(i: int) -> None:
            for _ in range(10):
                sem = Semaphore(conns[1 + i % 3], PATH, 2, f"t{i}")
                with anyio.move_on_after(rng.uniform(0, 0.02)):
                    async with sem:
                        await anyio.sleep(rng.uniform(0, 0.005))
                assert not sem.is_held

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(churn, i)
        assert len(await conns[0].children(PATH)) == 1, f"orphan nodes (seed {seed})"
        await holder.release()


async def test_expired_session_cancels_the_body(backend_url: str) -> None:
    async with clients(backend_url, 2) as (h, w):
        if Capability.EXPIRE_SESSION not in h.capabilities:
            pytest.skip("the backend cannot expire a session on demand")
        entered = anyio.Event()
        cancelled = False
        waiter = Semaphore(w, PATH, 1, "waiter")

        async def hold() -> None:
            nonlocal cancelled
            with pytest.raises(LockLostError):
                async with Semaphore(h, PATH, 1, "holder"):
                    entered.set()
                    try:
                        await anyio.sleep_forever()
                    except anyio.get_cancelled_exc_class():
                        cancelled = True
                        raise

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold)
                await entered.wait()
                tg.start_soon(waiter.acquire)
                await wait_queue_length(w, PATH, Semaphore.markers, 2)
                await h.expire_session()
        assert cancelled and waiter.is_held
        assert await waiter.holders() == ["waiter"]
        await waiter.release()


async def test_clients_must_agree_on_max_leases(backend_url: str) -> None:
    async with clients(backend_url, 2) as (a, b):
        first = Semaphore(a, PATH, 2)
        assert await first.acquire()
        with pytest.raises(InvalidArgumentError, match="max_leases=2"):
            await Semaphore(b, PATH, 3).acquire()
        assert len(await a.children(PATH)) == 1
        await first.release()
        node = await a.get(PATH)
        assert node is not None and node.value == b"2"
    with pytest.raises(InvalidArgumentError):
        Semaphore(a, PATH, 0)
