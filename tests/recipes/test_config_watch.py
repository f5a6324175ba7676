"""ConfigWatch: current value, ordered change stream, CAS updates, subtrees, recovery."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
import pytest

import coordkit
from coordkit.recipes.config_watch import ConfigWatch

pytestmark = pytest.mark.anyio

WRITES = 200


async def test_get_decodes_the_value_and_missing_is_none(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as client:
        config = ConfigWatch(client, "/app/config")
        assert await config.get() is None
        await client.create("/app/config", b'{"debug": true}', make_parents=True)
        assert await config.get() == {"debug": True}
        raw = ConfigWatch(client, "/app/config", decoder=bytes.decode)
        assert await raw.get() == '{"debug": true}'


async def test_changes_never_go_back_and_end_at_the_final_value(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as writer, coordkit.connect(backend_url) as reader:
        await writer.create("/stream", orjson.dumps({"n": -1}))
        seen: list[int] = []
        with anyio.fail_after(30):
            async with (
                ConfigWatch(reader, "/stream").changes() as values,
                anyio.create_task_group() as tg,
            ):

                async def write_all() -> None:
                    for n in range(WRITES):
                        await writer.set("/stream", orjson.dumps({"n": n}))

                tg.start_soon(write_all)
                async for value in values:
                    seen.append(value["n"])
                    if value["n"] == WRITES - 1:
                        break
        assert seen[0] == -1  # the value when the block started
        assert seen == sorted(set(seen))  # revision order, no repeats
        assert seen[-1] == WRITES - 1


async def test_update_loses_no_concurrent_change(backend_url: str) -> None:
    tasks, each = 10, 15
    async with coordkit.connect(backend_url) as a, coordkit.connect(backend_url) as b:
        clients = [a, b]
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:

                async def bump(client: coordkit.Client) -> None:
                    config = ConfigWatch(client, "/counter/config")
                    for _ in range(each):
                        await config.update(lambda old: {"n": (old or {"n": 0})["n"] + 1})

                for t in range(tasks):
                    tg.start_soon(bump, clients[t % 2])
        assert await ConfigWatch(a, "/counter/config").get() == {"n": tasks * each}


async def test_subtree_mode_reports_every_key_below_the_path(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as client:
        tree = ConfigWatch(client, "/svc", recursive=True)
        assert await tree.get() == {}
        await client.create("/svc/db/host", b'"db1"', make_parents=True)
        await client.create("/svc/db/port", b"5432")
        await client.create("/svc/name", b'"orders"')
        expected: dict[str, Any] = {"db/host": "db1", "db/port": 5432, "name": "orders"}
        assert await tree.get() == expected
        with pytest.raises(coordkit.WrongTypeError):
            await tree.update(lambda old: old)
        with anyio.fail_after(10):
            async with tree.changes() as values:
                assert await values.__anext__() == expected
                await tree.update(lambda old: old + 1, key="db/port")
                assert await values.__anext__() == {**expected, "db/port": 5433}
                await client.delete("/svc/name")
                assert await values.__anext__() == {"db/host": "db1", "db/port": 5433}


async def test_deleted_config_is_reported_as_none(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as client:
        await client.create("/gone", b"1")
        with anyio.fail_after(10):
            async with ConfigWatch(client, "/gone").changes() as values:
                assert await values.__anext__() == 1
                await client.delete("/gone")
                assert await values.__anext__() is None
                await ConfigWatch(client, "/gone").update(lambda old: 2)
                assert await values.__anext__() == 2


async def test_a_bad_value_raises_the_decoder_error_and_iteration_goes_on(
    backend_url: str,
) -> None:
    async with coordkit.connect(backend_url) as client:
        await client.create("/bad", b"1")
        with anyio.fail_after(10):
            async with ConfigWatch(client, "/bad").changes() as values:
                assert await values.__anext__() == 1
                await client.set("/bad", b"{not json")
                with pytest.raises(orjson.JSONDecodeError):
                    await values.__anext__()
                await client.set("/bad", b"3")
                assert await values.__anext__() == 3


async def test_a_broken_watch_is_reopened_and_the_latest_value_delivered(
    backend_url: str,
) -> None:
    """The event of the write made while the watch breaks is dropped: only the re-read finds it."""
    async with coordkit.connect(backend_url) as client:
        await client.create("/flaky", b"1")
        real_watch = client.watch
        opened: list[int] = []
        break_next = anyio.Event()

        @asynccontextmanager
        async def flaky_watch(path: str, **kwargs: Any) -> AsyncIterator[AsyncIterator[Any]]:
            opened.append(1)
            async with real_watch(path, **kwargs) as events:

                async def iterate() -> AsyncIterator[Any]:
                    async for event in events:
                        if break_next.is_set() and len(opened) == 1:
                            raise coordkit.ConnectionLostError("connection dropped")
                        yield event

                yield iterate()

        client.watch = flaky_watch  # type: ignore[method-assign]
        with anyio.fail_after(10):
            async with ConfigWatch(client, "/flaky").changes() as values:
                assert await values.__anext__() == 1
                break_next.set()
                await client.set("/flaky", b"2")
                assert await values.__anext__() == 2
        assert len(opened) == 2
