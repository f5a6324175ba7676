"""ReadWriteLock: shared readers, exclusive writers, writers not starved, kazoo layout."""

from __future__ import annotations

import random
import re

import anyio
import anyio.lowlevel
import pytest
from recipe_support import clients, wait_queue_length  # tests/support

from coordkit.recipes.base import SequentialLock
from coordkit.recipes.lock import Lock
from coordkit.recipes.rwlock import ReadWriteLock

pytestmark = pytest.mark.anyio

PATH = "/locks/table"


class PlainLock(Lock):
    """The generic Lock, even where the backend supplies a native one."""


async def test_readers_share_the_lock(backend_url: str) -> None:
    async with clients(backend_url, 3) as conns:
        readers = [ReadWriteLock(c, PATH, f"r{i}").read_lock for i, c in enumerate(conns)]
        for reader in readers:
            assert await reader.acquire(blocking=False)
        assert all(r.is_held for r in readers)
        assert await readers[0].contenders() == ["r0", "r1", "r2"]
        for reader in readers:
            await reader.release()


async def test_a_writer_excludes_readers_and_writers(backend_url: str) -> None:
    async with clients(backend_url, 3) as (a, b, c):
        reader = ReadWriteLock(a, PATH).read_lock
        writer = ReadWriteLock(b, PATH).write_lock
        assert await reader.acquire()
        assert await writer.acquire(timeout=0.1) is False
        await reader.release()
        assert await writer.acquire(blocking=False)
        assert await ReadWriteLock(c, PATH).read_lock.acquire(blocking=False) is False
        assert await ReadWriteLock(c, PATH).write_lock.acquire(blocking=False) is False
        # kazoo's layout: the generic Lock is a writer too (a native Lock, as on
        # etcd, has its own layout and does not interoperate).
        assert await PlainLock(c, PATH).acquire(blocking=False) is False
        await writer.release()
        assert await a.children(PATH) == []


async def test_a_waiting_writer_is_not_starved_by_later_readers(backend_url: str) -> None:
    order: list[str] = []
    async with clients(backend_url, 3) as (a, b, c):
        first_reader = ReadWriteLock(a, PATH, "r1").read_lock
        assert await first_reader.acquire()

        async def take(lock: SequentialLock, name: str) -> None:
            async with lock:
                order.append(name)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(take, ReadWriteLock(b, PATH, "w").write_lock, "w")
                await wait_queue_length(a, PATH, Lock.markers, 2)
                tg.start_soon(take, ReadWriteLock(c, PATH, "r2").read_lock, "r2")
                await wait_queue_length(a, PATH, Lock.markers, 3)
                assert order == []  # r2 queued behind the writer, not beside r1
                await first_reader.release()
    assert order == ["w", "r2"]


async def test_mixed_readers_and_writers_never_break_exclusion(backend_url: str) -> None:
    seed = 7
    rng = random.Random(seed)
    tasks, rounds = 10, 12
    readers = writers = 0
    async with clients(backend_url, tasks) as conns:

        async def work(i: int, roles: list[bool]) -> None:
            nonlocal readers, writers
            rw = ReadWriteLock(conns[i], PATH, f"t{i}")
            for is_writer in roles:
                if is_writer:
                    async with rw.write_lock:
                        assert readers == 0 and writers == 0, f"seed {seed}"
                        writers += 1
                        await anyio.lowlevel.checkpoint()
                        writers -= 1
                else:
                    async with rw.read_lock:
                        assert writers == 0, f"seed {seed}"
                        readers += 1
                        await anyio.lowlevel.checkpoint()
                        readers -= 1

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(tasks):
                    tg.start_soon(work, i, [rng.random() < 0.3 for _ in range(rounds)])
        assert await conns[0].children(PATH) == []


async def test_nodes_use_kazoo_naming(backend_url: str) -> None:
    async with clients(backend_url, 1) as (client,):
        rw = ReadWriteLock(client, PATH, "me")
        async with rw.read_lock:
            (reader,) = await client.children(PATH)
        async with rw.write_lock:
            (writer,) = await client.children(PATH)
    assert re.fullmatch(r"[0-9a-f]{32}__rlock__[0-9]{10}", reader)
    assert re.fullmatch(r"[0-9a-f]{32}__lock__[0-9]{10}", writer)


async def test_cancelled_waiters_leave_no_node(backend_url: str) -> None:
    async with clients(backend_url, 3) as (a, b, c):
        writer = ReadWriteLock(a, PATH).write_lock
        assert await writer.acquire()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ReadWriteLock(b, PATH).read_lock.acquire)
                tg.start_soon(ReadWriteLock(c, PATH).write_lock.acquire)
                await wait_queue_length(a, PATH, Lock.markers, 3)
                tg.cancel_scope.cancel()
        assert len(await a.children(PATH)) == 1
        await writer.release()
        assert await a.children(PATH) == []
