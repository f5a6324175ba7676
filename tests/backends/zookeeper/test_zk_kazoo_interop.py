"""kazoo's own Lock and Election and coordkit's exclude and follow each other on ZooKeeper.

coordkit's Lock and Election use kazoo's node layout on every backend
(``<uuid4 hex>__lock__<10-digit seq>``, the identifier as data), so on
ZooKeeper a kazoo client on the same path is just another contender.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import pytest

import coordkit
from coordkit.backend import BackendURL
from coordkit.recipes import Election, Lock
from coordkit.recipes.base import wait_until

kazoo_client = pytest.importorskip("kazoo.client")
kazoo_exceptions = pytest.importorskip("kazoo.exceptions")

pytestmark = pytest.mark.anyio

#: how long a contender is given to (wrongly) get what another holds.
HELD_CHECK = 0.5


@asynccontextmanager
async def kazoo(url: str) -> AsyncIterator[Any]:
    """A started kazoo client on the same servers and chroot as ``url``.

    The chroot is created first (kazoo warns when it starts in a missing one),
    so the kazoo side may be opened before or after the coordkit client.
    """
    parsed = BackendURL.parse(url)
    client = kazoo_client.KazooClient(hosts=",".join(parsed.hosts))
    await anyio.to_thread.run_sync(client.start, 10)
    await anyio.to_thread.run_sync(client.ensure_path, parsed.path)
    client.chroot = parsed.path
    try:
        yield client
    finally:
        await anyio.to_thread.run_sync(client.stop)
        await anyio.to_thread.run_sync(client.close)


async def test_kazoo_lock_holder_blocks_coordkit_lock_until_released(zookeeper_url: str) -> None:
    async with kazoo(zookeeper_url) as kz, coordkit.connect(zookeeper_url) as client:
        theirs = kz.Lock("/locks/job", "kazoo-holder")
        assert await anyio.to_thread.run_sync(theirs.acquire)
        ours = Lock(client, "/locks/job")
        assert not await ours.acquire(timeout=HELD_CHECK)
        waiting = anyio.Event()

        async def wait_for_lock() -> None:
            assert await ours.acquire(timeout=10)
            waiting.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_lock)
            await anyio.to_thread.run_sync(theirs.release)
            with anyio.fail_after(10):
                await waiting.wait()
        await ours.release()


async def test_coordkit_lock_holder_blocks_kazoo_lock_until_released(zookeeper_url: str) -> None:
    async with kazoo(zookeeper_url) as kz, coordkit.connect(zookeeper_url) as client:
        ours = Lock(client, "/locks/job", identifier="coordkit-holder")
        assert await ours.acquire(timeout=10)
        theirs = kz.Lock("/locks/job", "kazoo-waiter")
        # kazoo sees our node as a contender, with our identifier as its data.
        assert await anyio.to_thread.run_sync(theirs.contenders) == ["coordkit-holder"]
        with pytest.raises(kazoo_exceptions.LockTimeout):  # kazoo raises, it does not return
            await anyio.to_thread.run_sync(lambda: theirs.acquire(timeout=HELD_CHECK))
        acquired = threading.Event()

        def kazoo_waits() -> None:
            if theirs.acquire(timeout=10):
                acquired.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, kazoo_waits)
            await ours.release()
        assert acquired.is_set()
        await anyio.to_thread.run_sync(theirs.release)


async def test_many_coordkit_and_kazoo_contenders_never_hold_the_lock_together(
    zookeeper_url: str,
) -> None:
    holders: list[str] = []
    overlaps: list[str] = []
    guard = threading.Lock()

    def enter(name: str) -> None:
        with guard:
            if holders:
                overlaps.append(f"{name} entered while {holders} held it")
            holders.append(name)

    def leave(name: str) -> None:
        with guard:
            holders.remove(name)

    async with kazoo(zookeeper_url) as kz, coordkit.connect(zookeeper_url) as client:

        async def coordkit_contender(i: int) -> None:
            for _ in range(3):
                async with Lock(client, "/locks/shared", identifier=f"ck-{i}"):
                    enter(f"ck-{i}")
                    await anyio.lowlevel.checkpoint()
                    leave(f"ck-{i}")

        def kazoo_contender(i: int) -> None:
            for _ in range(3):
                with kz.Lock("/locks/shared", f"kz-{i}"):
                    enter(f"kz-{i}")
                    leave(f"kz-{i}")

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(10):
                    tg.start_soon(coordkit_contender, i)
                for i in range(4):
                    tg.start_soon(anyio.to_thread.run_sync, kazoo_contender, i)
    assert overlaps == []


def kazoo_candidate(
    kz: Any, identity: str
) -> tuple[Callable[[], None], threading.Event, threading.Event]:
    """kazoo's Election on /election/sched: (blocking run, led, stop).

    ``run`` campaigns (call it in a thread); ``led`` is set once kazoo leads,
    and it leads until ``stop`` is set (10 s at most).
    """
    election = kz.Election("/election/sched", identity)
    led, stop = threading.Event(), threading.Event()

    def lead() -> None:
        led.set()
        stop.wait(10)

    return partial(election.run, lead), led, stop


async def test_coordkit_leader_is_kazoo_elections_first_contender_and_kazoo_follows(
    zookeeper_url: str,
) -> None:
    async with kazoo(zookeeper_url) as kz, coordkit.connect(zookeeper_url) as client:
        kazoo_runs, led, stop = kazoo_candidate(kz, "kazoo-candidate")
        async with anyio.create_task_group() as tg:
            ours = Election(client, "/election/sched", "coordkit-candidate")
            await ours.campaign()
            tg.start_soon(anyio.to_thread.run_sync, kazoo_runs)
            both = ["coordkit-candidate", "kazoo-candidate"]

            async def both_queued() -> bool:
                return bool(await ours.contenders() == both)

            with anyio.fail_after(10):  # kazoo signals nothing when it has queued: watch the tree
                await wait_until(client, "/election/sched", both_queued, recursive=True)
            assert not led.is_set()
            await ours.resign()
            assert await anyio.to_thread.run_sync(led.wait, 10)
            assert await ours.leader() == "kazoo-candidate"
            stop.set()


async def test_kazoo_leader_is_seen_by_coordkit_election_as_leader(zookeeper_url: str) -> None:
    async with kazoo(zookeeper_url) as kz, coordkit.connect(zookeeper_url) as client:
        kazoo_runs, led, stop = kazoo_candidate(kz, "kazoo-leader")
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, kazoo_runs)
            await anyio.to_thread.run_sync(led.wait, 10)
            ours = Election(client, "/election/sched", "coordkit-follower")
            assert await ours.leader() == "kazoo-leader"
            with pytest.raises(TimeoutError):
                with anyio.fail_after(HELD_CHECK):
                    await ours.campaign()
            stop.set()
        with anyio.fail_after(10):
            await ours.campaign()
        assert ours.is_leader
        await ours.resign()
