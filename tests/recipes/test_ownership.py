"""Ownership: a holder whose own node goes, for any reason but its release, loses it.

Lock, Semaphore, ReadLock, WriteLock and Election holders are held while their
own node exists. Whatever removes it (session expiry, a delete by another
client or an operator, a transaction) cancels the ``async with`` body, raises
LockLostError out of the block and makes ``lost`` True; the next contender
gets it with a larger fencing token. Checked on every backend, native
recipes included, and under randomized cancellation by many clients.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from recipe_support import clients  # tests/support

from coordkit import Client, DeleteOp, LockLostError, RecipeStateError
from coordkit.recipes import Election, Semaphore
from coordkit.recipes.lock import Lock
from coordkit.recipes.rwlock import ReadLock, WriteLock

pytestmark = pytest.mark.anyio

PATH = "/owned/resource"
RECIPES = ["lock", "semaphore", "read_lock", "write_lock", "election"]


def make(recipe: str, client: Client, name: str) -> Any:
    """A holder of ``recipe`` on PATH; the waiter of a read lock is a writer."""
    if recipe == "lock":
        return Lock(client, PATH, name)
    if recipe == "semaphore":
        return Semaphore(client, PATH, 1, name)
    if recipe == "read_lock":
        return ReadLock(client, PATH, name) if name == "holder" else WriteLock(client, PATH, name)
    if recipe == "write_lock":
        return WriteLock(client, PATH, name)
    return Election(client, PATH, name)


def owned_node(holder: Any) -> str:
    """The path of the node a holder holds (an Election holds through its candidacy)."""
    lock = getattr(holder, "_candidacy", holder)
    assert lock._node is not None, "not held"
    return str(lock._node)


async def delete_behind_its_back(other: Client, holder: Any, how: str) -> None:
    """Remove the holder's node with another client, as an operator or a bug would."""
    lock = getattr(holder, "_candidacy", holder)
    path = owned_node(holder)
    if hasattr(lock, "prefix"):  # etcd's native layout: a key outside the node tree
        from coordkit.backends.etcd import ops

        key = lock.prefix + path.rsplit("/", 1)[1].encode()
        await other.backend.kv_txn(ops.txn_request([], [ops.delete_op(key)], []))  # type: ignore[attr-defined]
    elif how == "txn":
        result = await other.txn([], [DeleteOp(path)])
        assert result.succeeded
    else:
        await other.delete(path)


def token_of(holder: Any) -> int | None:
    return holder.token  # type: ignore[no-any-return]


def is_holding(holder: Any) -> bool:
    return bool(holder.is_leader if isinstance(holder, Election) else holder.is_held)


async def acquire(holder: Any) -> None:
    if isinstance(holder, Election):
        await holder.campaign()
    else:
        assert await holder.acquire()


@pytest.mark.parametrize(
    ("recipe", "how"), [(recipe, "delete") for recipe in RECIPES] + [("lock", "txn")]
)
async def test_a_holder_whose_node_is_deleted_is_cancelled_and_the_next_one_gets_it(
    backend_url: str, recipe: str, how: str
) -> None:
    async with clients(backend_url, 3) as (h, w, operator):
        holder, waiter = make(recipe, h, "holder"), make(recipe, w, "waiter")
        entered, done = anyio.Event(), anyio.Event()
        outcome: list[str] = []
        held_token: list[int | None] = []

        async def hold() -> None:
            try:
                async with holder:
                    held_token.append(token_of(holder))
                    entered.set()
                    try:
                        await anyio.sleep_forever()
                    except anyio.get_cancelled_exc_class():
                        outcome.append("body cancelled")
                        raise
            except LockLostError:
                outcome.append("LockLostError")
            done.set()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold)
                await entered.wait()
                assert is_holding(holder) and not holder.lost
                await delete_behind_its_back(operator, holder, how)
                await acquire(waiter)  # the next holder is in...
                with anyio.fail_after(20):  # ...and the old body must end, not run on
                    await done.wait()
        assert outcome == ["body cancelled", "LockLostError"]
        assert holder.lost and not is_holding(holder)
        assert is_holding(waiter)
        new_token = token_of(waiter)
        assert new_token is not None and held_token[0] is not None and new_token > held_token[0]


@pytest.mark.parametrize("recipe", ["lock", "election"])
async def test_wait_lost_returns_when_the_node_is_deleted(backend_url: str, recipe: str) -> None:
    async with clients(backend_url, 2) as (h, operator):
        holder = make(recipe, h, "holder")
        await acquire(holder)
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder.wait_lost)
                await anyio.lowlevel.checkpoint()
                await delete_behind_its_back(operator, holder, "delete")
        assert holder.lost and not is_holding(holder)
        # Releasing (resigning) after a loss is safe, and the next acquire starts afresh.
        if isinstance(holder, Election):
            await holder.resign()
        else:
            await holder.release()
        assert holder.lost
        await acquire(holder)
        assert is_holding(holder) and not holder.lost


async def test_own_release_is_not_a_loss(backend_url: str) -> None:
    async with clients(backend_url, 1) as (h,):
        lock = Lock(h, PATH, "h")
        async with lock:
            pass
        assert not lock.lost
        assert await lock.acquire()
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:

                async def wait() -> None:
                    with pytest.raises(RecipeStateError):
                        await lock.wait_lost()

                tg.start_soon(wait)
                await anyio.lowlevel.checkpoint()
                await lock.release()
        assert not lock.lost


def _intervals_overlap(intervals: list[tuple[float, float, str]]) -> list[str]:
    ordered = sorted(intervals)
    return [
        f"{a[2]} [{a[0]:.4f}, {a[1]:.4f}] overlaps {b[2]} [{b[0]:.4f}, {b[1]:.4f}]"
        for a, b in itertools.pairwise(ordered)
        if b[0] < a[1]
    ]


async def test_randomly_cancelled_contenders_never_overlap(backend_url: str) -> None:
    """Many clients whose acquires and bodies are cancelled at random deadlines."""
    tasks, rounds = 12, 10
    rng = random.Random(11)
    choices = [0.0, 0.001, 0.005, 0.02, 0.1, None]
    deadlines = [[rng.choice(choices) for _ in range(rounds)] for _ in range(tasks)]
    held: list[tuple[float, float, str]] = []
    tokens: list[tuple[float, int]] = []
    async with clients(backend_url, tasks + 1) as conns:

        async def contend(i: int) -> None:
            for r in range(rounds):
                with anyio.move_on_after(deadlines[i][r]):
                    async with Lock(conns[i], PATH, f"c{i}") as lock:
                        start = anyio.current_time()
                        assert lock.token is not None
                        tokens.append((start, lock.token))
                        try:
                            await anyio.lowlevel.checkpoint()
                            await anyio.sleep(0.001 * (r % 3))
                        finally:
                            held.append((start, anyio.current_time(), f"c{i}/{r}"))

        with anyio.fail_after(180):
            async with anyio.create_task_group() as tg:
                for i in range(tasks):
                    tg.start_soon(contend, i)
        assert await Lock(conns[tasks], PATH).contenders() == [], "a cancelled acquire left a node"
    assert held, "nobody ever held the lock"
    assert _intervals_overlap(held) == []
    ordered = [token for _, token in sorted(tokens)]
    assert ordered == sorted(set(ordered)), "fencing tokens must increase from holder to holder"


class FencedResource:
    """What a lock protects: refuses a write whose token is older than one it has seen."""

    def __init__(self) -> None:
        self.highest = 0
        self.accepted: list[tuple[int, str]] = []
        self.refused = 0

    def write(self, token: int, who: str) -> bool:
        if token < self.highest:
            self.refused += 1
            return False
        self.highest = token
        self.accepted.append((token, who))
        return True


@pytest.mark.parametrize("recipe", ["lock", "election"])
async def test_holders_deleted_at_random_lose_and_fencing_orders_every_write(
    backend_url: str, recipe: str
) -> None:
    """Contenders hold in turn while an operator deletes whoever holds, at random moments.

    Every deleted holder's body ends with LockLostError; the protected
    resource, fenced by token, sees each holder's writes as one run in token
    order, never an old holder writing after a newer one.
    """
    contenders, deletions = 6, 8
    rng = random.Random(5)
    resource = FencedResource()
    lost_bodies: list[str] = []
    stop = anyio.Event()
    send, receive = anyio.create_memory_object_stream[tuple[Any, anyio.Event]](math.inf)
    with send, receive:
        async with clients(backend_url, contenders + 1) as conns:
            operator = conns[-1]

            async def contend(i: int) -> None:
                name = f"c{i}"
                while not stop.is_set():
                    holder, left = make(recipe, conns[i], name), anyio.Event()
                    try:
                        async with holder:
                            token = token_of(holder)
                            assert token is not None
                            send.send_nowait((holder, left))
                            try:
                                while not stop.is_set():
                                    resource.write(token, name)
                                    await anyio.sleep(0.002)
                            finally:
                                left.set()
                    except LockLostError:
                        lost_bodies.append(name)

            async def chaos() -> None:
                for _ in range(deletions):
                    holder, left = await receive.receive()  # the holder now: it holds until deleted
                    await anyio.sleep(rng.uniform(0.0, 0.02))
                    await delete_behind_its_back(operator, holder, "delete")
                    with anyio.fail_after(20):
                        await left.wait()
                stop.set()

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for i in range(contenders):
                        tg.start_soon(contend, i)
                    tg.start_soon(chaos)
    assert len(lost_bodies) == deletions
    tokens = [t for t, _ in resource.accepted]
    assert tokens == sorted(tokens)
    # Each holder's writes form one run, and runs change exactly when the token grows.
    runs = [who for who, _ in itertools.groupby(w for _, w in resource.accepted)]
    by_token = [t for t, _ in itertools.groupby(tokens)]
    assert len(runs) == len(by_token) >= deletions
