"""Queue: exactly-once delivery, FIFO, priorities, ack-mode redelivery."""

from __future__ import annotations

from collections import Counter
from contextlib import AsyncExitStack

import anyio
import pytest

import coordkit
from coordkit.recipes.queue import LISTING_BATCH, Queue, QueueItem

pytestmark = pytest.mark.anyio

PRODUCERS = 4
CONSUMERS = 4
#: 800 items: 25 listings' worth (LISTING_BATCH), with every consumer contending for each.
ITEMS_EACH = 200


def _item(producer: int, n: int) -> bytes:
    return f"{producer}:{n}".encode()


def _parse(item: bytes) -> tuple[int, int]:
    producer, n = item.decode().split(":")
    return int(producer), int(n)


async def test_every_item_is_consumed_exactly_once(backend_url: str) -> None:
    total = PRODUCERS * ITEMS_EACH
    got: dict[int, list[bytes]] = {c: [] for c in range(CONSUMERS)}
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(coordkit.connect(backend_url))
            for _ in range(PRODUCERS + CONSUMERS)
        ]
        all_consumed = anyio.Event()

        async def produce(p: int) -> None:
            queue = Queue(clients[p], "/q")
            for n in range(ITEMS_EACH):
                await queue.put(_item(p, n))

        async def consume(c: int) -> None:
            queue = Queue(clients[PRODUCERS + c], "/q")
            while True:
                got[c].append(await queue.get())
                if sum(map(len, got.values())) == total:
                    all_consumed.set()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for c in range(CONSUMERS):
                    tg.start_soon(consume, c)
                for p in range(PRODUCERS):
                    tg.start_soon(produce, p)
                await all_consumed.wait()
                tg.cancel_scope.cancel()
        assert await Queue(clients[0], "/q").size() == 0

    expected = Counter(_item(p, n) for p in range(PRODUCERS) for n in range(ITEMS_EACH))
    assert Counter(item for items in got.values() for item in items) == expected
    # Items of one producer are taken in the order it put them, so every
    # consumer sees each producer's items in increasing order.
    for items in got.values():
        for p in range(PRODUCERS):
            seen = [n for producer, n in map(_parse, items) if producer == p]
            assert seen == sorted(seen)


async def test_single_consumer_gets_one_producers_items_in_fifo_order(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as producer, coordkit.connect(backend_url) as consumer:
        sent = [f"item-{n}".encode() for n in range(50)]
        for item in sent:
            await Queue(producer, "/fifo").put(item)
        queue = Queue(consumer, "/fifo")
        assert await queue.size() == len(sent)
        assert [await queue.get() for _ in sent] == sent
        assert await queue.size() == 0


async def test_lower_priority_numbers_come_first_then_fifo(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as client:
        queue = Queue(client, "/prio")
        puts = [(b"a", 5), (b"b", 1), (b"c", 3), (b"d", 1), (b"e", -2), (b"f", 0), (b"g", 5)]
        for value, priority in puts:
            await queue.put(value, priority=priority)
        got = [await queue.get() for _ in puts]
        assert got == [b"e", b"f", b"b", b"d", b"c", b"a", b"g"]


async def test_an_urgent_item_put_meanwhile_waits_at_most_one_listing(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as client:
        queue = Queue(client, "/urgent")
        for n in range(LISTING_BATCH + 8):
            await queue.put(b"%d" % n)
        assert await queue.get() == b"0"  # this consumer has listed a batch
        await queue.put(b"urgent", priority=-5)
        taken = [await queue.get() for _ in range(LISTING_BATCH)]
        assert b"urgent" in taken, "the urgent item waited longer than one listing"
        # Until then, the batch went in order; after it, the rest in order too.
        before = taken[: taken.index(b"urgent")]
        assert before == [b"%d" % n for n in range(1, len(before) + 1)]


async def test_get_blocks_until_an_item_is_put(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as a, coordkit.connect(backend_url) as b:
        got: list[bytes] = []
        waiting = Queue(a, "/blocking")
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def consume() -> None:
                    got.append(await waiting.get())

                tg.start_soon(consume)
                await anyio.wait_all_tasks_blocked()
                assert got == []
                await Queue(b, "/blocking").put(b"late")
        assert got == [b"late"]


async def test_get_times_out_without_an_item(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as client:
        with pytest.raises(TimeoutError):
            await Queue(client, "/empty").get(timeout=0.2)


async def test_rejects_bad_priorities(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as client:
        queue = Queue(client, "/bad")
        with pytest.raises(coordkit.InvalidArgumentError):
            await queue.put(b"x", priority=2**31)
        with pytest.raises(coordkit.WrongTypeError):
            await queue.put(b"x", priority=True)


async def test_acked_item_is_gone_and_claimed_item_is_hidden(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as a, coordkit.connect(backend_url) as b:
        first, second = Queue(a, "/acks", ack=True), Queue(b, "/acks", ack=True)
        await first.put(b"one")
        await first.put(b"two")
        item = await first.get()
        assert isinstance(item, QueueItem)
        assert (item.value, item.priority, item.lost) == (b"one", 0, False)
        assert await second.size() == 1  # "one" is claimed, not waiting
        other = await second.get()
        assert other.value == b"two"
        await item.ack()
        await other.ack()
        await item.ack()  # idempotent
        assert await first.size() == 0
        assert await a.children("/acks/items") == []
        assert await a.children("/acks/claims") == []


async def test_nack_puts_the_item_back_in_front(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as client:
        queue = Queue(client, "/nack", ack=True)
        for value in (b"1", b"2"):
            await queue.put(value)
        item = await queue.get()
        await item.nack()
        again = await queue.get()
        assert again.value == b"1"
        await again.ack()


@pytest.mark.parametrize("fault", ["expire_session", "abort"])
async def test_item_of_a_crashed_consumer_is_delivered_again(backend_url: str, fault: str) -> None:
    capability = {
        "expire_session": coordkit.Capability.EXPIRE_SESSION,
        "abort": coordkit.Capability.ABORT,
    }[fault]
    ttl = 1.5
    async with (
        coordkit.connect(backend_url, session_ttl=ttl) as crashing,
        coordkit.connect(backend_url) as survivor,
    ):
        if capability not in crashing.capabilities:
            pytest.skip(f"the backend lacks {capability.value}")
        await Queue(survivor, "/redeliver").put(b"job")
        taken = await Queue(crashing, "/redeliver", ack=True).get()
        assert taken.value == b"job"
        other = Queue(survivor, "/redeliver", ack=True)
        assert await other.size() == 0
        await getattr(crashing, fault)()
        with anyio.fail_after(ttl + 5):
            again = await other.get()
        assert again.value == b"job"
        await again.ack()
        if fault == "expire_session":
            assert taken.lost
            with pytest.raises(coordkit.LockLostError):
                await taken.ack()
        assert await survivor.children("/redeliver/items") == []
