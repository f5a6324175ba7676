"""Queue.get under cancellation: no item is ever lost, in plain and ack mode.

Many consumers race gets against random cancel-scope deadlines, ``get``
timeouts and task groups cancelled at random moments, while a producer puts.
Afterwards every item put was received exactly once or is still in the queue
(and in ack mode no claim is left dangling).
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from recipe_support import clients  # tests/support

from coordkit import NoNodeError
from coordkit.recipes import Queue, QueueItem

pytestmark = pytest.mark.anyio

PATH = "/queues/cancelled"
ITEMS = 30
CONSUMERS = 5
DEADLINES = [0.0, 0.0002, 0.001, 0.002, 0.005, 0.01, 0.03]


@pytest.mark.parametrize("ack", [False, True], ids=["plain", "ack"])
async def test_randomly_cancelled_gets_never_lose_an_item(backend_url: str, ack: bool) -> None:
    rng = random.Random(2024 + ack)
    received: list[bytes] = []
    put_all = anyio.Event()
    everything = anyio.Event()
    cancelled = Counter[str]()

    async with clients(backend_url, CONSUMERS + 2) as conns:
        producer, observer = conns[-2], conns[-1]

        async def produce() -> None:
            queue = Queue(producer, PATH)
            for n in range(ITEMS):
                await queue.put(f"item-{n}".encode())
                if n % 10 == 0:
                    await anyio.sleep(rng.uniform(0, 0.01))
            put_all.set()

        async def record(queue: Queue[Any], got: Any) -> None:
            value: bytes = got.value if isinstance(got, QueueItem) else got
            received.append(value)  # no await between the get's return and this line
            if isinstance(got, QueueItem):
                with anyio.CancelScope(shield=True):
                    await got.ack()
            if len(received) >= ITEMS:
                everything.set()

        async def consume(i: int) -> None:
            queue: Queue[Any] = Queue(conns[i], PATH, ack=ack)
            local = random.Random(rng.random())
            while not everything.is_set():
                if put_all.is_set() and await queue.size() == 0:
                    return  # nothing left to take (what is missing was lost)
                how = local.choice(["scope", "timeout", "task group"])
                delay = local.choice(DEADLINES)
                if how == "scope":
                    with anyio.move_on_after(delay) as scope:
                        got = await queue.get()
                        await record(queue, got)
                    if scope.cancelled_caught:
                        cancelled[how] += 1
                elif how == "timeout":
                    try:
                        got = await queue.get(timeout=delay)
                    except TimeoutError:
                        cancelled[how] += 1
                        continue
                    await record(queue, got)
                else:
                    async with anyio.create_task_group() as tg:

                        async def get_one(queue: Queue[Any] = queue) -> None:
                            got = await queue.get()
                            await record(queue, got)

                        tg.start_soon(get_one)
                        await anyio.sleep(delay)
                        tg.cancel_scope.cancel()
                    cancelled[how] += 1

        with anyio.fail_after(150):
            async with anyio.create_task_group() as tg:
                tg.start_soon(produce)
                for i in range(CONSUMERS):
                    tg.start_soon(consume, i)

        remaining = await _values_left(observer, ack)

    counts = Counter(received)
    assert [v for v, n in counts.items() if n > 1] == [], "an item was received twice"
    everything_put = {f"item-{n}".encode() for n in range(ITEMS)}
    assert set(received).isdisjoint(remaining), "an item was received and is still queued"
    missing = everything_put - set(received) - set(remaining)
    assert missing == set(), f"{len(missing)} items lost by cancelled gets"
    assert sum(cancelled.values()) > 0, "no get was cancelled: the test proved nothing"


async def _values_left(client: Any, ack: bool = False) -> list[bytes]:
    """The items still queued; in ack mode, none may be claimed by a live consumer."""
    items, claims = f"{PATH}/items", f"{PATH}/claims"
    try:
        names = await client.children(items)
    except NoNodeError:
        names = []
    if ack:
        try:
            claimed = await client.children(claims)
        except NoNodeError:
            claimed = []
        assert claimed == [], f"claims left behind by cancelled gets: {claimed}"
    values = []
    for name in names:
        node = await client.get(f"{items}/{name}")
        if node is not None:
            values.append(node.value)
    return values


@pytest.mark.parametrize("ack", [False, True], ids=["plain", "ack"])
@pytest.mark.parametrize("path", ["fast", "waiting"])
async def test_a_get_cancelled_during_its_take_still_returns_the_item(
    backend_url: str, ack: bool, path: str
) -> None:
    """The cancellation arrives exactly while the take is in flight (deterministic).

    The caller's cancel scope is cancelled inside the client call that takes
    the item (a delete, or the claim's transaction), after the backend applied
    it and before the reply is back: ``get`` must return the item, with the cancellation landing at
    the caller's next await. ``waiting``: the get found the queue empty and
    was woken by its watch, so the take happens inside the watch.
    """
    async with clients(backend_url, 2) as (consumer, producer):
        queue: Queue[Any] = Queue(consumer, PATH, ack=ack)
        scope = anyio.CancelScope()
        take_call = "txn" if ack else "delete"
        real = getattr(consumer, take_call)

        async def cancelling_take(*args: Any, **kwargs: Any) -> Any:
            result = await real(*args, **kwargs)  # the server has taken the item...
            scope.cancel()  # ...and the caller is cancelled while the reply comes back
            await anyio.lowlevel.checkpoint()
            return result

        setattr(consumer, take_call, cancelling_take)
        got: list[Any] = []
        if path == "fast":
            await Queue(producer, PATH).put(b"x")

        async def get() -> None:
            with scope:
                got.append(await queue.get())
                await anyio.sleep_forever()  # the pending cancellation lands here

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(get)
                if path == "waiting":
                    await _wait_until_watching(consumer)
                    await Queue(producer, PATH).put(b"x")
        setattr(consumer, take_call, real)
        assert scope.cancelled_caught
        values = [g.value if isinstance(g, QueueItem) else g for g in got]
        if ack and got:
            assert await Queue(producer, PATH, ack=True).size() == 0, "the claim was dropped"
            await got[0].ack()  # received and claimed: the ack removes it
        left = await _values_left(producer, ack)  # in ack mode: no claim left dangling
        assert values + left == [b"x"], f"received {values}, still queued {left}"


async def _wait_until_watching(client: Any) -> None:
    """Return once the consumer's get has opened its watch and found nothing (a listing)."""
    opened = anyio.Event()
    real_watch = client.watch

    def watch(*args: Any, **kwargs: Any) -> Any:
        opened.set()
        return real_watch(*args, **kwargs)

    client.watch = watch
    try:
        await opened.wait()
    finally:
        client.watch = real_watch
    # The get lists the queue once inside the watch before it waits; the put
    # below lands either before that listing (taken then) or after (woken).
