"""Timeouts mean what they say, for every recipe that takes one.

``timeout=0`` tries once without waiting (True on a free lock or semaphore,
not False); ``None`` and infinity wait for ever; a negative, NaN or
non-numeric timeout is rejected with an error naming the parameter, before
anything reaches the backend.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
from recipe_support import clients  # tests/support

from coordkit import InvalidArgumentError, WrongTypeError
from coordkit.recipes import Barrier, DoubleBarrier, Queue, Semaphore
from coordkit.recipes.base import check_timeout
from coordkit.recipes.lock import Lock
from coordkit.recipes.rwlock import ReadLock, WriteLock

pytestmark = pytest.mark.anyio

PATH = "/timeouts/x"
LOCKS = {
    "lock": lambda c, name: Lock(c, PATH, name),
    "semaphore": lambda c, name: Semaphore(c, PATH, 1, name),
    "read_lock": lambda c, name: ReadLock(c, PATH, name),
    "write_lock": lambda c, name: WriteLock(c, PATH, name),
}


@pytest.mark.parametrize("kind", list(LOCKS))
async def test_timeout_zero_takes_a_free_lock_and_gives_up_at_once_on_a_busy_one(
    backend_url: str, kind: str
) -> None:
    async with clients(backend_url, 2) as (a, b):
        first = LOCKS[kind](a, "first")
        with anyio.fail_after(30):
            assert await first.acquire(timeout=0) is True, "timeout=0 on a free lock"
            assert first.is_held and first.token is not None
            other = WriteLock(b, PATH, "other") if kind == "read_lock" else LOCKS[kind](b, "other")
            assert await other.acquire(timeout=0) is False, "timeout=0 on a busy lock"
            assert not other.is_held
            assert await first.contenders() == ["first"], "the failed try left its node"
            await first.release()
            assert await other.acquire(timeout=0.0) is True
            await other.release()


async def test_timeout_zero_on_barriers_and_queues(backend_url: str) -> None:
    async with clients(backend_url, 1) as (client,):
        with anyio.fail_after(30):
            barrier = Barrier(client, "/timeouts/barrier")
            await barrier.create()
            assert await barrier.wait(timeout=0) is False
            await barrier.remove()
            assert await barrier.wait(timeout=0) is True

            alone = DoubleBarrier(client, "/timeouts/double", 1)
            assert await alone.enter(timeout=0) is True
            assert await alone.leave(timeout=0) is True
            pair = DoubleBarrier(client, "/timeouts/pair", 2)
            assert await pair.enter(timeout=0) is False
            assert await client.children("/timeouts/pair") == [], "the failed enter left its node"

            queue = Queue(client, "/timeouts/queue")
            with pytest.raises(TimeoutError):
                await queue.get(timeout=0)
            await queue.put(b"one")
            assert await queue.get(timeout=0) == b"one"


@pytest.mark.parametrize("timeout", [math.inf, None])
async def test_none_and_infinity_wait_until_the_lock_is_free(
    backend_url: str, timeout: float | None
) -> None:
    async with clients(backend_url, 2) as (a, b):
        holder = Lock(a, PATH, "holder")
        assert await holder.acquire()
        waiter = Lock(b, PATH, "waiter")
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter.acquire, timeout)
                while len(await holder.contenders()) < 2:  # noqa: ASYNC110 - waiting on a read
                    await anyio.sleep(0.01)
                await holder.release()
        assert waiter.is_held


BAD = [
    (-1, InvalidArgumentError, "timeout must be a number >= 0, got -1"),
    (-0.5, InvalidArgumentError, "timeout must be a number >= 0, got -0.5"),
    (math.nan, InvalidArgumentError, "timeout must be a number >= 0, got nan"),
    (-math.inf, InvalidArgumentError, "timeout must be a number >= 0, got -inf"),
    ("1", WrongTypeError, "timeout must be a number >= 0 or None, got str '1'"),
    (True, WrongTypeError, "timeout must be a number >= 0 or None, got bool True"),
    ([1], WrongTypeError, "timeout must be a number >= 0 or None, got list [1]"),
]


@pytest.mark.parametrize(("timeout", "error", "message"), BAD, ids=[repr(b[0]) for b in BAD])
async def test_bad_timeouts_are_rejected_naming_the_parameter_and_change_nothing(
    backend_url: str, timeout: Any, error: type[Exception], message: str
) -> None:
    async with clients(backend_url, 1) as (client,):
        calls: list[Any] = [
            Lock(client, PATH).acquire(timeout),
            Semaphore(client, PATH + "s", 2).acquire(timeout),
            ReadLock(client, PATH + "r").acquire(timeout),
            WriteLock(client, PATH + "w").acquire(timeout),
            Barrier(client, "/timeouts/b").wait(timeout),
            DoubleBarrier(client, "/timeouts/d", 2).enter(timeout),
            DoubleBarrier(client, "/timeouts/d", 2).leave(timeout),
            Queue(client, "/timeouts/q").get(timeout),
        ]
        for call in calls:
            with pytest.raises(error) as caught:
                await call
            assert str(caught.value) == message
            assert isinstance(caught.value, ValueError)  # TypeError too, for a wrong type
        assert await client.children("/") in ([], ["timeouts"])
        if await client.exists("/timeouts"):
            assert await client.children("/timeouts") == [], "a rejected call changed the store"


def test_check_timeout_accepts_what_it_should() -> None:
    assert check_timeout(None) is None
    assert check_timeout(math.inf) is None
    assert check_timeout(0) == 0.0
    assert check_timeout(2) == 2.0 and isinstance(check_timeout(2), float)
    with pytest.raises(InvalidArgumentError, match=r"^deadline must be a number >= 0, got -2$"):
        check_timeout(-2, "deadline")
    with pytest.raises(TypeError):
        check_timeout("soon")
