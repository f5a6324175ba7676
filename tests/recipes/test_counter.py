"""Counter: atomic adds under contention across clients, ASCII decimal storage."""

from __future__ import annotations

import anyio
import pytest
from recipe_support import clients  # tests/support

import coordkit
from coordkit import InvalidArgumentError, WrongTypeError
from coordkit.recipes.counter import Counter

pytestmark = pytest.mark.anyio

PATH = "/counters/jobs"


async def test_concurrent_adds_from_many_clients_are_exact(backend_url: str) -> None:
    tasks, adds = 10, 20
    returned: list[int] = []
    async with clients(backend_url, tasks) as conns:

        async def work(i: int) -> None:
            counter = Counter(conns[i], PATH)
            for _ in range(adds):
                returned.append(await counter.add(1))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(tasks):
                    tg.start_soon(work, i)
        assert await Counter(conns[0], PATH).get() == tasks * adds
    # Each add saw its own result: no two adds were applied to the same value.
    assert sorted(returned) == list(range(1, tasks * adds + 1))


async def test_values_are_ascii_decimal_and_default_applies(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as client:
        counter = Counter(client, PATH, default=10)
        assert await counter.get() == 10
        assert not await client.exists(PATH)
        assert await counter.add(5) == 15
        assert await counter.add(-20) == -5
        node = await client.get(PATH)
        assert node is not None and node.value == b"-5"
        await client.set(PATH, b"")
        assert await counter.get() == 10  # an empty node reads as the default


async def test_rejects_bad_values_and_deltas(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as client:
        counter = Counter(client, PATH)
        with pytest.raises(WrongTypeError):
            await counter.add(True)
        with pytest.raises(WrongTypeError):
            await counter.add(1.5)  # type: ignore[arg-type]
        await client.create(PATH, b"1_000", make_parents=True)
        with pytest.raises(InvalidArgumentError, match="decimal"):
            await counter.get()
