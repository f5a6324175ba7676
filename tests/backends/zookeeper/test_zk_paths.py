"""What a ZooKeeper watch guarantees when writes outrun its reads (see docs/backends/zookeeper.md).

ZooKeeper notifications carry no data and no zxid, so the backend reads each
changed node back; a state overwritten before that read reaches the server is
folded into the later one. The conformance kit's ordering test requires every
intermediate state and so cannot pass on ZooKeeper; this test pins what does
hold under the same load: ZooKeeper's order, no repeats, only real states each
with its own revision, every node's history in order, ending with its delete.
Path escaping (the characters ZooKeeper refuses) is checked here too.
"""

from __future__ import annotations

import anyio
import pytest

import coordkit
from coordkit.backend import BackendURL
from coordkit.backends.zookeeper_paths import decode_path, encode_path
from coordkit.client import Client
from coordkit.model import Event, EventType, Node

kazoo_client = pytest.importorskip("kazoo.client")

pytestmark = pytest.mark.anyio

WRITERS, TASKS, UPDATES = 4, 3, 8


async def test_folded_watch_keeps_order_and_real_states_under_concurrent_writes(
    zookeeper_url: str,
) -> None:
    written: dict[str, list[Node]] = {}
    events: list[Event] = []

    async def write(client: Client, path: str) -> None:
        states = written.setdefault(path, [])
        states.append(await client.create(path, b"0"))
        for n in range(1, UPDATES + 1):
            states.append(await client.set(path, str(n).encode(), version=n - 1))
        await client.delete(path, version=UPDATES)

    with anyio.fail_after(60):
        async with (
            coordkit.connect(zookeeper_url) as watcher,
            coordkit.connect(zookeeper_url) as w0,
            coordkit.connect(zookeeper_url) as w1,
            coordkit.connect(zookeeper_url) as w2,
            coordkit.connect(zookeeper_url) as w3,
        ):
            writers = [w0, w1, w2, w3]
            await w0.create("/load", b"")
            async with watcher.watch("/load", recursive=True) as stream:
                async with anyio.create_task_group() as tg:
                    for c, client in enumerate(writers):
                        for t in range(TASKS):
                            tg.start_soon(write, client, f"/load/c{c}-t{t}")
                last_write = (await w0.status()).revision
                fence = await w0.set("/load", b"fence")  # everything before it comes first
                async for event in stream:
                    if event.path == "/load":
                        break
                    events.append(event)
            assert (event.type, event.node, event.revision) == (
                EventType.UPDATED,
                fence,
                fence.mod_revision,
            )

    revisions = [e.revision for e in events]
    assert revisions == sorted(revisions), "events out of revision order"
    keys = [(e.type, e.path, e.revision) for e in events]
    assert len(set(keys)) == len(keys), "an event was repeated"
    assert {e.path for e in events} <= set(written)
    for path, states in written.items():
        history = [e for e in events if e.path == path]
        if not history:
            continue  # created and deleted before the watcher's first read: no event at all
        *changes, deleted = history
        assert changes, f"{path}: a delete without the create before it: {history}"
        assert deleted.type is EventType.DELETED, history
        assert changes[-1].revision < deleted.revision <= last_write
        assert changes[0].type is EventType.CREATED, history
        assert all(e.type is EventType.UPDATED for e in changes[1:]), history
        for event in changes:  # a real state, with the revision that produced it
            assert event.node in states, event
            assert event.node is not None and event.revision == event.node.mod_revision
        versions = [e.node.version for e in changes if e.node is not None]
        assert versions == sorted(set(versions)), f"{path}: states out of order: {versions}"


def test_paths_zookeeper_refuses_are_escaped_one_to_one() -> None:
    plain = "/locks/job/_c_0123__lock__0000000001"
    assert encode_path(plain) == plain  # what kazoo and zkCli see, unchanged
    for path in ["/k/\U0001f600", "/50%", "/%41", "/x\x85y", "/\ue000", "/\ufff0", "/ünï☃"]:
        assert decode_path(encode_path(path)) == path
        stored = encode_path(path)
        assert not any(
            0x80 <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xF8FF or ord(c) >= 0xFFF0 for c in stored
        ), stored
    assert encode_path("/k/\U0001f600") == "/k/%F0%9F%98%80"
    assert encode_path("/50%") == "/50%25"


async def test_an_escaped_name_is_what_kazoo_sees(zookeeper_url: str) -> None:
    async with coordkit.connect(zookeeper_url) as client:
        node = await client.create("/k/smile-\U0001f600", b"x", make_parents=True)
        assert node.path == "/k/smile-\U0001f600"
        assert await client.children("/k") == ["smile-\U0001f600"]
        parsed = BackendURL.parse(zookeeper_url)
        kz = kazoo_client.KazooClient(hosts=",".join(parsed.hosts) + parsed.path)
        await anyio.to_thread.run_sync(kz.start, 10)
        try:
            names = await anyio.to_thread.run_sync(kz.get_children, "/k")
            assert names == ["smile-%F0%9F%98%80"]
        finally:
            await anyio.to_thread.run_sync(kz.stop)
            await anyio.to_thread.run_sync(kz.close)
