"""Helpers shared by the recipe tests: many clients, queue lengths, counted reads."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Collection
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio

import coordkit
from coordkit import Client
from coordkit.model import EventType
from coordkit.recipes import Lock
from coordkit.recipes.base import list_contenders, wait_until


@asynccontextmanager
async def clients(url: str, count: int, **options: Any) -> AsyncIterator[list[Client]]:
    """``count`` clients of ``url``, each with its own session, closed on exit."""
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(coordkit.connect(url, **options)) for _ in range(count)
        ]


async def wait_queue_length(
    client: Client, path: str, markers: Collection[str], length: int
) -> None:
    """Wait (watching) until at least ``length`` contenders are queued on ``path``."""

    async def reached() -> bool:
        return len(await list_contenders(client, path, markers)) >= length

    with anyio.fail_after(10):
        await wait_until(client, path, reached, recursive=True)


def count_reads(client: Client) -> tuple[Counter[str], anyio.Event]:
    """Count the client's reads and watches.

    The event is set at the first read after a watch opened: a waiter has
    then checked what it watches, and makes no further call until woken.
    """
    calls: Counter[str] = Counter()
    checked = anyio.Event()
    for name in ("children", "exists", "get", "watch"):
        original = getattr(client, name)

        def counted(*args: Any, _original: Any = original, _name: str = name, **kw: Any) -> Any:
            calls[_name] += 1
            if _name != "watch" and calls["watch"]:
                checked.set()
            return _original(*args, **kw)

        setattr(client, name, counted)
    return calls, checked


async def create_watch_and_lock(url: str) -> None:
    """Two clients of ``url``: a watched create, a read by the other, then a Lock held
    by one, refused to the other, and taken by it after (a smoke of a backend's paths)."""
    async with coordkit.connect(url) as client, coordkit.connect(url) as other:
        async with client.watch("/", recursive=True) as events:
            await client.create("/a", b"1")
            event = await anext(events)
            assert (event.type, event.path) == (EventType.CREATED, "/a")
        node = await other.get("/a")
        assert node is not None and node.value == b"1"
        held = []
        async with Lock(client, "/locks/x"):
            held.append("client")
            assert not await Lock(other, "/locks/x").acquire(timeout=0.2)
        async with Lock(other, "/locks/x"):
            held.append("other")
        assert held == ["client", "other"]
