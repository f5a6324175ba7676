"""Cancelling etcd calls at random moments, from many tasks at once (seeded).

grpc.aio waits on tasks of its own; awaited straight from an anyio task, a
cancellation came back as grpc's bare ``CancelledError``, which no cancel
scope claims: the task ended silently and anyio then cancelled every sibling
("completed 0 of 40"). These tests cancel in-flight calls and check that every
task runs to its end, the client and its session go on working, a cancelled
write has happened completely or not at all (and never lands later), and
nothing ephemeral outlives the session.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import anyio
import pytest
from aetcd import rpc
from etcd_servers import bounded, free_port

import coordkit
from coordkit import Client, ConnectionLostError, CoordkitError, EventType, NodeExistsError
from coordkit.backends.etcd import ops
from coordkit.backends.etcd.backend import EtcdBackend
from coordkit.backends.etcd.keys import prefix_end
from coordkit.backends.etcd.rpc import EtcdChannel
from coordkit.txn import Compare, CreateOp

pytestmark = [pytest.mark.anyio, pytest.mark.etcd]

SEED = 20261125


def backend_of(client: Client) -> EtcdBackend:
    backend = client.backend
    assert isinstance(backend, EtcdBackend)
    return backend


async def raw_keys(client: Client) -> dict[bytes, int]:
    """Every etcd key of the client's hierarchy (under its prefix), with its lease."""
    backend = backend_of(client)
    base = backend.layout.base
    reply = await backend.read(ops.range_op(base, prefix_end(base), keys_only=True))
    return {kv.key: int(kv.lease) for kv in ops.kvs(reply.responses[0])}


async def round_trip(client: Client) -> float:
    """Seconds one ephemeral create takes here: random deadlines scale with it."""
    started = anyio.current_time()
    await client.create("/probe", b"", ephemeral=True)
    await client.delete("/probe")
    return max((anyio.current_time() - started) / 2, 0.0005)


async def one_call(client: Client, i: int, r: int, kind: str) -> None:
    """Task ``i``'s call of round ``r``: one of the kinds ``cancel_calls`` mixes."""
    path = f"/c/t{i}-r{r}"
    if kind == "create":
        await client.create(path, b"x" * 64, ephemeral=True)
    elif kind == "sequential":
        await client.create(f"/c/s{i}-", b"", ephemeral=True, sequential=True)
    elif kind == "txn":
        await client.txn([Compare.missing(path)], [CreateOp(path, b"t", ephemeral=True)], [])
    elif kind == "set":
        await client.set("/shared", f"{i}-{r}".encode())
    else:
        await client.get("/shared")
        await client.children("/c")


@dataclass
class Cancelled:
    """What ``cancel_calls`` did: outcomes, tasks finished, and for each known
    path a create or txn wrote, whether it existed right after the call."""

    outcomes: Counter[str] = field(default_factory=Counter)
    existed: dict[str, bool] = field(default_factory=dict)
    finished: int = 0


async def cancel_calls(client: Client, rng: random.Random, tasks: int, rounds: int) -> Cancelled:
    """``tasks`` tasks each make ``rounds`` calls, most under a random deadline."""
    base = await round_trip(client)
    done = Cancelled()

    async def worker(i: int) -> None:
        # Mostly deadlines that land while a call is in flight, some that
        # never fire (so calls also complete, whatever this machine's speed).
        plan = [
            (
                rng.choice([None, rng.uniform(0, 2 * base), rng.uniform(0, 6 * base)]),
                rng.choice(["create", "sequential", "txn", "set", "read"]),
            )
            for _ in range(rounds)
        ]
        for r, (delay, kind) in enumerate(plan):
            with anyio.move_on_after(delay) as scope:
                await one_call(client, i, r, kind)
            done.outcomes["cancelled" if scope.cancelled_caught else "completed"] += 1
            if kind in ("create", "txn"):
                # Right after the call returned (or was cancelled) the write
                # has happened or never will: remember which.
                done.existed[f"/c/t{i}-r{r}"] = await client.exists(f"/c/t{i}-r{r}")
        done.finished += 1

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i in range(tasks):
                tg.start_soon(worker, i)
    return done


async def assert_still_working(client: Client, observer: Client) -> None:
    with anyio.fail_after(10):
        await client.create("/c/after", b"ok", ephemeral=True)
        async with observer.watch("/c/after") as events:
            await client.set("/c/after", b"again")
            event = await events.__anext__()
        assert event.type is EventType.UPDATED and event.node is not None
        assert event.node.value == b"again"


async def assert_whole_nodes(observer: Client, existed: dict[str, bool], lease: int) -> None:
    """No cancelled write landed late; each node is whole (data and index key)."""
    for path, was in existed.items():
        assert await observer.exists(path) is was, f"{path}: landed after its cancellation"
    keys = await raw_keys(observer)
    layout = backend_of(observer).layout
    names = await observer.children("/c")
    assert {layout.data(f"/c/{n}") for n in names} == {
        k for k in keys if k.startswith(layout.subtree("/c"))
    }
    for name in names:
        data, index = layout.data(f"/c/{name}"), layout.index(f"/c/{name}")
        assert index in keys, f"/c/{name} has no index key"
        assert keys[data] == keys[index] == lease
    assert len([k for k in keys if k.startswith(layout.children("/c"))]) == len(names)


async def assert_nothing_outlives(url: str, lease: int) -> None:
    """Nothing ephemeral outlives the closed session, nor its lease."""
    async with coordkit.connect(url) as later:
        assert await later.children("/c") == []
        assert all(owner == 0 for owner in (await raw_keys(later)).values())
        channel = backend_of(later).channel
        reply = await channel.call(
            channel.lease.LeaseTimeToLive,
            rpc.LeaseTimeToLiveRequest(ID=lease),
            idempotent=True,
        )
        assert reply.TTL == -1, "the closed session's lease is still alive"


@bounded(90)
async def test_cancelled_calls_end_every_task_and_leave_whole_nodes_or_none(
    etcd_url: str,
) -> None:
    tasks, rounds = 12, 12
    async with coordkit.connect(etcd_url) as client, coordkit.connect(etcd_url) as observer:
        session = client.session
        await client.create("/c", b"")
        await client.create("/shared", b"")
        done = await cancel_calls(client, random.Random(SEED), tasks, rounds)
        # every task ran to its end; cancellations really hit calls in flight
        assert done.finished == tasks, f"{tasks - done.finished} tasks ended silently ({SEED=})"
        assert sum(done.outcomes.values()) == tasks * rounds
        assert done.outcomes["cancelled"] > tasks and done.outcomes["completed"] > 0
        # the client and its session go on working
        assert client.session is session and not session.lost
        await assert_still_working(client, observer)
        await assert_whole_nodes(observer, done.existed, session.id)
    await assert_nothing_outlives(etcd_url, session.id)


@bounded(90)
async def test_cancelled_watch_reads_lose_and_repeat_nothing(etcd_url: str) -> None:
    rng = random.Random(SEED + 1)
    async with coordkit.connect(etcd_url) as client, coordkit.connect(etcd_url) as writer:
        await writer.create("/w", b"")
        base = await round_trip(writer)
        expected: list[tuple[EventType, str, int]] = []
        got: list[tuple[EventType, str, int]] = []
        progress = anyio.Event()  # set (and replaced) whenever an event is read
        cancelled = 0
        async with client.watch("/w", recursive=True) as events:

            async def write() -> None:
                # In step with the reader, so each read waits for its event
                # (or is cancelled while waiting, or while building it).
                for n in range(30):
                    node = await writer.set("/w", str(n).encode())  # UPDATED: reads num_children
                    expected.append((EventType.UPDATED, "/w", node.mod_revision))
                    while len(got) < len(expected):
                        await progress.wait()
                    child = await writer.create(f"/w/k{n}", b"")
                    expected.append((EventType.CREATED, child.path, child.create_revision))
                    while len(got) < len(expected):
                        await progress.wait()

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(write)
                    while len(got) < 60:
                        with anyio.move_on_after(rng.uniform(0, 2 * base)) as scope:
                            event = await events.__anext__()
                            got.append((event.type, event.path, event.revision))
                            progress.set()
                            progress = anyio.Event()
                        cancelled += scope.cancelled_caught
        assert got == expected
        assert cancelled >= 10, f"only {cancelled} reads were cancelled"


@bounded(90)
async def test_calls_in_flight_when_the_client_aborts_fail_loudly(etcd_url: str) -> None:
    errors: list[BaseException] = []
    async with coordkit.connect(etcd_url) as client:
        await client.create("/x", b"")
        running = anyio.Event()

        async def reader() -> None:
            try:
                while True:
                    await client.get("/x")
                    with pytest.raises(NodeExistsError):
                        await client.create("/x", b"")
                    running.set()
            except CoordkitError as exc:
                errors.append(exc)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(reader)
                await running.wait()
                await client.abort()
    assert len(errors) == 4, errors


async def leases(client: Client) -> set[int]:
    channel = backend_of(client).channel
    reply = await channel.call(channel.lease.LeaseLeases, rpc.LeaseLeasesRequest(), idempotent=True)
    return {int(lease.ID) for lease in reply.leases}


@bounded(90)
async def test_a_cancelled_open_leaves_no_lease_or_key_behind(etcd_url: str) -> None:
    async with coordkit.connect(etcd_url) as observer:
        keys, granted = await raw_keys(observer), await leases(observer)
        started = anyio.current_time()
        async with coordkit.connect(etcd_url):
            opening = anyio.current_time() - started  # how long an open takes here
        rng = random.Random(SEED + 2)
        cut_short = attempts = 0  # opens cancelled before they completed
        while cut_short < 6 and attempts < 60:
            attempts += 1
            opened = False
            with anyio.move_on_after(rng.uniform(0, opening)):
                async with coordkit.connect(etcd_url) as client:
                    opened = True
                    await client.create("/e", b"", ephemeral=True)
                    await anyio.sleep_forever()
            cut_short += not opened
            opening *= 0.8 if opened else 1.1  # keep the deadlines around an open's length
        assert cut_short >= 1, f"no open was cancelled in {attempts} attempts"
        assert await raw_keys(observer) == keys
        assert await leases(observer) <= granted, "a cancelled open left its lease alive"


@bounded(90)
async def test_a_stream_write_waiting_for_a_connection_ends_when_its_call_is_cancelled(
    etcd_url: str,
) -> None:
    # Nothing listens on the port: with wait_for_ready the write waits to
    # connect. grpc leaves such a write pending forever once its call is
    # cancelled (e.g. by closing the channel); the backend must not wait on it.
    channel = EtcdChannel(f"127.0.0.1:{free_port()}", timeout=5)
    try:
        stream = channel.stream(channel.watch.Watch)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def write() -> None:
                    with pytest.raises(ConnectionLostError):
                        await stream.write(rpc.WatchRequest())

                tg.start_soon(write)
                await anyio.wait_all_tasks_blocked()
                stream.call.cancel()
    finally:
        await channel.close()
