"""Lock: mutual exclusion, FIFO, fencing tokens, no herd, session loss, no orphan nodes."""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from recipe_support import clients, count_reads  # tests/support

import coordkit
from coordkit import Capability, Client, ConnectionLostError, LockLostError, SessionExpiredError
from coordkit.plugins import get_plugin_manager, native_recipe
from coordkit.recipes.base import SequentialLock, wait_until
from coordkit.recipes.lock import Lock

pytestmark = pytest.mark.anyio

PATH = "/locks/job"
KAZOO_NAME = re.compile(r"^[0-9a-f]{32}__lock__[0-9]{10}$")


class GenericLock(Lock):
    """The recipe's own Lock, even where the backend supplies a native one."""


@pytest.fixture(params=["Lock", "generic"])
def lock_class(request: pytest.FixtureRequest, backend_url: str) -> type[Lock]:
    """``Lock`` as users get it (native where a backend supplies one) and the generic one."""
    if request.param == "Lock":
        return Lock
    if native_recipe(coordkit.connect(backend_url).backend, "Lock") is None:
        pytest.skip("this backend has no native Lock: Lock is the generic recipe")
    return GenericLock


async def wait_queue_length(
    client: Client, path: str, length: int, lock_class: type[Lock] = GenericLock
) -> None:
    """Wait until ``length`` contenders are queued on ``path``.

    The generic layout is watched; a native layout is invisible to the Client
    API, so its queue is polled through ``contenders()``.
    """

    async def reached() -> bool:
        return len(await lock_class(client, path).contenders()) >= length

    with anyio.fail_after(10):
        if isinstance(lock_class(client, path), SequentialLock):
            await wait_until(client, path, reached, recursive=True)
        else:
            while not await reached():  # noqa: ASYNC110 - nothing to watch through the Client
                await anyio.sleep(0.01)


async def test_holders_never_overlap_and_tokens_increase(
    backend_url: str, lock_class: type[Lock]
) -> None:
    tasks, rounds = 20, 30
    log: list[tuple[str, int]] = []
    tokens: list[int] = []
    async with clients(backend_url, tasks) as conns:

        async def contend(i: int) -> None:
            for _ in range(rounds):
                async with lock_class(conns[i], PATH, f"task-{i}") as lock:
                    log.append(("enter", i))
                    assert lock.token is not None
                    tokens.append(lock.token)
                    await anyio.lowlevel.checkpoint()  # let any intruder run now
                    log.append(("exit", i))

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for i in range(tasks):
                    tg.start_soon(contend, i)
        assert await lock_class(conns[0], PATH).contenders() == []

    assert len(log) == 2 * tasks * rounds
    for enter, exit_ in zip(log[::2], log[1::2], strict=True):
        assert enter[0] == "enter" and exit_ == ("exit", enter[1]), "two holders overlapped"
    assert all(a < b for a, b in itertools.pairwise(tokens)), "tokens must increase"


async def test_waiters_acquire_in_the_order_they_queued(
    backend_url: str, lock_class: type[Lock]
) -> None:
    waiters = 8
    order: list[int] = []
    tokens: list[int] = []
    async with clients(backend_url, waiters + 1) as conns:
        holder = lock_class(conns[0], PATH, "holder")
        assert await holder.acquire()

        async def wait_turn(i: int) -> None:
            async with lock_class(conns[i + 1], PATH, f"w{i}") as lock:
                order.append(i)
                assert lock.token is not None
                tokens.append(lock.token)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(waiters):
                    tg.start_soon(wait_turn, i)
                    await wait_queue_length(conns[0], PATH, i + 2, lock_class)
                assert await holder.contenders() == ["holder"] + [f"w{i}" for i in range(waiters)]
                first_token = holder.token
                await holder.release()
    assert order == list(range(waiters))
    assert first_token is not None and first_token < tokens[0]
    assert tokens == sorted(set(tokens))


async def test_waiter_watches_only_its_predecessor(backend_url: str) -> None:
    async with clients(backend_url, 4) as conns:
        holder = GenericLock(conns[0], PATH, "h")
        assert await holder.acquire()
        counters = [count_reads(c) for c in conns[1:]]
        acquired = [anyio.Event() for _ in counters]
        may_release = [anyio.Event() for _ in counters]

        async def wait_turn(i: int) -> None:
            async with GenericLock(conns[i + 1], PATH, f"w{i}"):
                acquired[i].set()
                await may_release[i].wait()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(len(counters)):
                    tg.start_soon(wait_turn, i)
                    await counters[i][1].wait()  # it checked its predecessor: now waiting
                    await wait_queue_length(conns[0], PATH, i + 2)
                before = [sum(calls.values()) for calls, _ in counters]
                listed = counters[0][0]["children"]

                await holder.release()  # wakes w0 only
                await acquired[0].wait()
                # w0 saw the only contender ahead of it go: it holds without
                # reading the queue again (the handoff is the delete and its event).
                assert counters[0][0]["children"] == listed, "w0 read the queue on its handoff"
                assert sum(counters[1][0].values()) == before[1], "w1 woke on a non-predecessor"
                may_release[0].set()  # wakes w1 only
                await acquired[1].wait()
                assert sum(counters[2][0].values()) == before[2], "w2 woke on a non-predecessor"
                may_release[1].set()
                may_release[2].set()


async def test_expired_session_cancels_the_body_and_raises_lock_lost(
    backend_url: str, lock_class: type[Lock]
) -> None:
    async with clients(backend_url, 2) as (h, w):
        if Capability.EXPIRE_SESSION not in h.capabilities:
            pytest.skip("the backend cannot expire a session on demand")
        entered = anyio.Event()
        body_cancelled = False
        lost_token: list[int | None] = []

        async def hold() -> None:
            nonlocal body_cancelled
            lock = lock_class(h, PATH, "holder")
            with pytest.raises(LockLostError):
                async with lock:
                    lost_token.append(lock.token)
                    entered.set()
                    try:
                        await anyio.sleep_forever()
                    except anyio.get_cancelled_exc_class():
                        body_cancelled = True
                        raise
            assert lock.lost and not lock.is_held

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold)
                await entered.wait()
                waiter = lock_class(w, PATH, "waiter")
                tg.start_soon(waiter.acquire)
                await wait_queue_length(w, PATH, 2, lock_class)
                await h.expire_session()
            assert waiter.is_held
        assert body_cancelled
        assert waiter.token is not None and lost_token[0] is not None
        assert waiter.token > lost_token[0]
        assert await waiter.contenders() == ["waiter"]


async def test_lost_session_is_reported_outside_async_with(
    backend_url: str, lock_class: type[Lock]
) -> None:
    async with clients(backend_url, 1) as (h,):
        if Capability.EXPIRE_SESSION not in h.capabilities:
            pytest.skip("the backend cannot expire a session on demand")
        lock = lock_class(h, PATH)
        assert await lock.acquire()
        assert lock.is_held and not lock.lost
        await h.expire_session()
        with anyio.fail_after(10):
            await lock.wait_lost()
        assert lock.lost and not lock.is_held
        await lock.release()  # the node is already gone: no error
        assert lock.lost and lock.token is None
        assert await lock.acquire()  # a fresh session serves a new acquisition
        assert not lock.lost
        await lock.release()


async def test_vanished_holder_is_replaced_after_the_session_ttl(
    backend_url: str, lock_class: type[Lock]
) -> None:
    ttl = 1.5
    async with (
        coordkit.connect(backend_url, session_ttl=ttl) as h,
        coordkit.connect(backend_url) as w,
    ):
        if Capability.ABORT not in h.capabilities:
            pytest.skip("the backend cannot make a client vanish")
        assert await lock_class(h, PATH, "vanishing").acquire()
        waiter = lock_class(w, PATH, "waiter")
        await h.abort()
        started = anyio.current_time()
        with anyio.fail_after(ttl + 15):
            assert await waiter.acquire()
        elapsed = anyio.current_time() - started
        assert elapsed >= ttl * 0.5, f"the lock moved after {elapsed:.2f}s, before the TTL"
        assert await waiter.contenders() == ["waiter"]
        await waiter.release()


async def test_session_lost_while_waiting_raises_and_leaves_no_node(
    backend_url: str, lock_class: type[Lock]
) -> None:
    async with clients(backend_url, 2) as (h, w):
        if Capability.EXPIRE_SESSION not in w.capabilities:
            pytest.skip("the backend cannot expire a session on demand")
        holder = lock_class(h, PATH, "holder")
        assert await holder.acquire()
        waiter = lock_class(w, PATH, "waiter")
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:

                async def wait() -> None:
                    with pytest.raises(SessionExpiredError):
                        await waiter.acquire()

                tg.start_soon(wait)
                await wait_queue_length(h, PATH, 2, lock_class)
                await w.expire_session()
        assert await holder.contenders() == ["holder"]
        await holder.release()


async def test_cancelled_acquires_leave_no_orphan_node(
    backend_url: str, lock_class: type[Lock]
) -> None:
    seed = 20240607
    rng = random.Random(seed)
    tasks, rounds = 16, 12
    holders = 0
    outcomes: Counter[str] = Counter()
    async with clients(backend_url, 4) as conns:
        # Scale the random deadlines to this backend's speed: an uncontended
        # acquire + release takes ``base`` seconds.
        started = anyio.current_time()
        async with lock_class(conns[0], PATH):
            pass
        base = max(anyio.current_time() - started, 0.001)

        async def contend(i: int, delays: list[float]) -> None:
            nonlocal holders
            for delay in delays:
                lock = lock_class(conns[i % len(conns)], PATH, f"t{i}")
                entered = False
                with anyio.move_on_after(delay):
                    async with lock:
                        entered = True
                        holders += 1
                        try:
                            assert holders == 1, f"two holders (seed {seed})"
                            await anyio.sleep(delay / 4)
                        finally:
                            holders -= 1
                outcomes["held" if entered else "cancelled"] += 1
                assert not lock.is_held

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(tasks):
                    tg.start_soon(contend, i, [rng.uniform(0, 8 * base) for _ in range(rounds)])
        assert await lock_class(conns[0], PATH).contenders() == [], f"orphan nodes (seed {seed})"
    # Both outcomes happened, cancellation many times: it hit waiting acquires.
    assert outcomes["cancelled"] > tasks and outcomes["held"] > 0, outcomes


async def test_unknown_create_outcome_is_cleaned_up_by_prefix(backend_url: str) -> None:
    async with clients(backend_url, 1) as (client,):
        original = client.create

        async def create_then_fail(*args: Any, **kwargs: Any) -> Any:
            await original(*args, **kwargs)
            raise ConnectionLostError("the reply was lost")

        client.create = create_then_fail  # type: ignore[method-assign]
        with pytest.raises(ConnectionLostError):
            await GenericLock(client, PATH).acquire()
        assert await client.children(PATH) == []


async def test_acquire_times_out_and_leaves_no_node(
    backend_url: str, lock_class: type[Lock]
) -> None:
    async with clients(backend_url, 2) as (h, w):
        holder = lock_class(h, PATH, "holder")
        assert await holder.acquire()
        waiter = lock_class(w, PATH, "waiter")
        with anyio.fail_after(10):
            assert await waiter.acquire(timeout=0.2) is False
        assert await waiter.acquire(blocking=False) is False
        assert not waiter.is_held and waiter.token is None
        assert await holder.contenders() == ["holder"]
        await holder.release()
        assert await waiter.acquire(blocking=False) is True
        await waiter.release()
        assert await lock_class(h, PATH).contenders() == []


async def test_reentrancy_is_explicit(backend_url: str, lock_class: type[Lock]) -> None:
    async with clients(backend_url, 1) as (client,):
        plain = lock_class(client, PATH)
        async with plain:
            with pytest.raises(RuntimeError, match="reentrant=True"):
                await plain.acquire()
        reentrant = lock_class(client, PATH, reentrant=True)
        async with reentrant:
            token = reentrant.token
            async with reentrant:
                assert reentrant.token == token
            assert reentrant.is_held  # one level left
            assert len(await lock_class(client, PATH).contenders()) == 1
        assert not reentrant.is_held
        assert await lock_class(client, PATH).contenders() == []
        with pytest.raises(RuntimeError, match="not held"):
            await reentrant.release()


async def test_nodes_use_kazoo_naming_and_hold_the_identifier(backend_url: str) -> None:
    async with (
        clients(backend_url, 1) as (client,),
        GenericLock(client, PATH, "worker-7 ✓") as lock,
    ):
        (name,) = await client.children(PATH)
        assert KAZOO_NAME.match(name)
        node = await client.get(f"{PATH}/{name}")
        assert node is not None
        assert node.value == "worker-7 ✓".encode()
        assert node.ephemeral_owner == client.session.id
        assert lock.token == node.create_revision
        assert await lock.contenders() == ["worker-7 ✓"]


async def test_body_errors_pass_through_unchanged(backend_url: str, lock_class: type[Lock]) -> None:
    async with clients(backend_url, 1) as (client,):
        with pytest.raises(KeyError):
            async with lock_class(client, PATH):
                raise KeyError("boom")
        assert await lock_class(client, PATH).contenders() == []


class _NativeLock:
    def __init__(self, client: Client, path: str, *args: Any, **kwargs: Any) -> None:
        self.args = (path, *args)
        self.kwargs = kwargs


class _NativePlugin:
    @coordkit.hookimpl
    def coordkit_native_recipe(self, backend: object, name: str) -> type[Any] | None:
        return _NativeLock if name == "Lock" else None


async def test_a_backend_native_lock_replaces_the_generic_one(memory_url: str) -> None:
    manager = get_plugin_manager()
    plugin = _NativePlugin()
    manager.register(plugin)
    try:
        async with coordkit.connect(memory_url) as client:
            lock: Any = Lock(client, PATH, "me", reentrant=True)
            assert isinstance(lock, _NativeLock)
            assert lock.args == (PATH, "me") and lock.kwargs == {"reentrant": True}

            class Mine(Lock):
                pass

            assert type(Mine(client, PATH)) is Mine  # subclasses are never swapped
    finally:
        manager.unregister(plugin)
