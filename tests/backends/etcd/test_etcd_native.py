"""Native interop: coordkit's Lock/Election on etcd and ``etcdctl lock``/``elect`` agree."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from urllib.parse import urlsplit

import anyio
import pytest
from anyio.abc import Process
from etcd_servers import ETCDCTL, EtcdCluster, bounded

import coordkit
import coordkit.plugins
from coordkit.backends.etcd.native import EtcdElection, EtcdLock
from coordkit.recipes.lock import Lock

pytestmark = [pytest.mark.anyio, pytest.mark.etcd]

PATH = "/locks/job"


def native_name(url: str, path: str) -> str:
    return urlsplit(url).path + path


@asynccontextmanager
async def etcdctl(server: EtcdCluster, *args: str) -> AsyncIterator[Process]:
    """``etcdctl`` running in the background; interrupted (it then unlocks/resigns) at exit."""
    command = [ETCDCTL, f"--endpoints={server.endpoints}", *args]
    async with await anyio.open_process(command, env={"ETCDCTL_API": "3"}) as process:
        try:
            yield process
        finally:
            process.send_signal(signal.SIGINT)  # etcdctl releases and closes its session
            with anyio.fail_after(10):
                await process.wait()


async def first_line(process: Process) -> str:
    """The first line etcdctl prints (it prints once it holds the lock or leads)."""
    assert process.stdout is not None
    data = b""
    while b"\n" not in data:
        data += await process.stdout.receive()
    return data.split(b"\n", 1)[0].decode()


@bounded(60)
async def test_generic_lock_and_election_resolve_to_the_etcd_native_classes(
    etcd_url: str,
) -> None:
    async with coordkit.connect(etcd_url) as client:
        assert type(Lock(client, PATH)) is EtcdLock
        native = coordkit.plugins.native_recipe(client.backend, "Election")
        assert native is EtcdElection


@bounded(60)
async def test_etcdctl_lock_blocks_a_coordkit_lock_until_it_releases(
    etcd_url: str, etcd_server: EtcdCluster
) -> None:
    name = native_name(etcd_url, PATH)
    async with coordkit.connect(etcd_url) as client:
        lock = Lock(client, PATH, "coordkit")
        async with etcdctl(etcd_server, "lock", name) as holder:
            with anyio.fail_after(10):
                key = await first_line(holder)
            assert key.startswith(name + "/")
            assert await lock.acquire(blocking=False) is False
            assert await lock.acquire(timeout=0.3) is False
            assert len(await lock.contenders()) == 1  # etcdctl's, named by its lease
        with anyio.fail_after(10):
            assert await lock.acquire()
        assert lock.token is not None and lock.token > 0
        await lock.release()


@bounded(60)
async def test_coordkit_lock_blocks_etcdctl_lock_until_released(
    etcd_url: str, etcd_server: EtcdCluster
) -> None:
    name = native_name(etcd_url, PATH)
    async with coordkit.connect(etcd_url) as client:
        lock = Lock(client, PATH, "coordkit")
        assert await lock.acquire()
        async with etcdctl(etcd_server, "lock", name) as waiter:
            with anyio.move_on_after(0.5) as still_waiting:
                await first_line(waiter)
            assert still_waiting.cancelled_caught, "etcdctl got the lock while coordkit held it"
            contenders = await lock.contenders()
            assert contenders[0] == "coordkit" and len(contenders) == 2
            await lock.release()
            with anyio.fail_after(10):
                assert (await first_line(waiter)).startswith(name + "/")


@bounded(60)
async def test_etcdctl_elect_leads_and_coordkit_follows_then_takes_over(
    etcd_url: str, etcd_server: EtcdCluster
) -> None:
    name = native_name(etcd_url, "/election")
    async with coordkit.connect(etcd_url) as client:
        election = EtcdElection(client, "/election", "coordkit")
        async with etcdctl(etcd_server, "elect", name, "from-etcdctl") as leader:
            with anyio.fail_after(10):
                assert (await first_line(leader)).startswith(name + "/")
            assert await election.leader() == "from-etcdctl"
            assert await election.contenders() == ["from-etcdctl"]
            with anyio.move_on_after(0.3) as blocked:
                await election.campaign()
            assert blocked.cancelled_caught, "coordkit led while etcdctl did"
            assert await election.leader() == "from-etcdctl"  # the cancelled campaign left
        with anyio.fail_after(10):
            async with election:
                assert await election.leader() == "coordkit"
                assert election.token is not None


@bounded(60)
async def test_etcdctl_observer_follows_a_coordkit_leader(
    etcd_url: str, etcd_server: EtcdCluster
) -> None:
    name = native_name(etcd_url, "/election")
    async with (
        coordkit.connect(etcd_url) as client,
        EtcdElection(client, "/election", "coordkit-leader"),
        etcdctl(etcd_server, "elect", "-l", name) as observer,
    ):
        with anyio.fail_after(10):
            assert (await first_line(observer)).startswith(name + "/")


@bounded(60)
async def test_observe_reports_each_new_leader(etcd_url: str) -> None:
    async with coordkit.connect(etcd_url) as a, coordkit.connect(etcd_url) as b:
        first, second = EtcdElection(a, "/el", "a"), EtcdElection(b, "/el", "b")
        seen: list[str | None] = []
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                changed = anyio.Event()

                async def watch() -> None:
                    async for leader in first.observe():
                        seen.append(leader)
                        changed.set()
                        if leader == "b":
                            return

                tg.start_soon(watch)
                await first.campaign()
                tg.start_soon(second.campaign)
                while "a" not in seen:
                    await changed.wait()
                    changed = anyio.Event()
                await first.resign()
        assert seen[-1] == "b" and "a" in seen
        await second.resign()


@bounded(60)
async def test_holders_never_overlap_across_clients_and_tasks(etcd_url: str) -> None:
    holding: list[str] = []
    tokens: list[int] = []
    async with (
        coordkit.connect(etcd_url) as a,
        coordkit.connect(etcd_url) as b,
        coordkit.connect(etcd_url) as c,
    ):

        async def worker(client: coordkit.Client, who: str) -> None:
            for _ in range(3):
                async with Lock(client, PATH, who) as lock:
                    holding.append(who)
                    assert len(holding) == 1, f"two holders: {holding}"
                    assert lock.token is not None
                    tokens.append(lock.token)
                    await anyio.lowlevel.checkpoint()
                    holding.remove(who)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i, client in enumerate((a, b, c) * 3):
                    tg.start_soon(worker, client, f"w{i}")
    assert len(tokens) == 27 and tokens == sorted(tokens) and len(set(tokens)) == 27


@bounded(60)
async def test_cancelled_and_timed_out_acquires_leave_no_key(
    etcd_url: str, etcd_server: EtcdCluster
) -> None:
    name = native_name(etcd_url, PATH)
    async with coordkit.connect(etcd_url) as a, coordkit.connect(etcd_url) as b:
        holder = Lock(a, PATH, "holder")
        assert await holder.acquire()
        waiter = Lock(b, PATH, "waiter")
        assert await waiter.acquire(timeout=0.2) is False
        with anyio.move_on_after(0.2):
            await waiter.acquire()
        assert await holder.contenders() == ["holder"]
        keys = etcd_server.etcdctl("get", "--prefix", "--keys-only", name + "/").split()
        assert keys == [f"{name}/{a.session.id:x}"]
        await holder.release()


@bounded(60)
async def test_expired_session_cancels_the_lock_body_and_raises_lock_lost(etcd_url: str) -> None:
    async with coordkit.connect(etcd_url) as client:
        entered = anyio.Event()
        cancelled = False
        with pytest.raises(coordkit.LockLostError), anyio.fail_after(20):
            async with Lock(client, PATH) as lock:
                entered.set()
                try:
                    await client.expire_session()
                    await anyio.sleep_forever()
                except anyio.get_cancelled_exc_class():
                    cancelled = True
                    raise
        assert cancelled and lock.lost and not lock.is_held
        # the client goes on with a fresh session, and the lock is free again
        assert not client.session.lost
        async with Lock(client, PATH):
            pass


@bounded(30)
async def test_a_lock_or_leadership_lost_with_its_session_is_taken_again(etcd_url: str) -> None:
    async with coordkit.connect(etcd_url) as client, coordkit.connect(etcd_url) as other:
        lock = EtcdLock(client, PATH, "a")
        election = EtcdElection(client, "/election", "a")
        assert await lock.acquire()
        await election.campaign()
        first_lock, first_lead = lock.token, election.token
        assert first_lock is not None and first_lead is not None
        await client.expire_session()
        await lock.wait_lost()
        assert lock.token is None and election.token is None  # no fencing token now
        assert not lock.is_held and not election.is_leader
        # nothing to release or resign first; the local turn was given back
        assert await lock.acquire(timeout=10)
        await election.campaign()
        assert lock.token is not None and lock.token > first_lock
        assert election.token is not None and election.token > first_lead
        assert await EtcdLock(other, PATH).acquire(blocking=False) is False
        await lock.release()
        await election.resign()
        assert await election.leader() is None


@bounded(20)
async def test_out_of_turn_use_raises_recipe_state_error_as_the_generic_recipes_do(
    etcd_url: str,
) -> None:
    async with coordkit.connect(etcd_url) as client:
        lock = EtcdLock(client, PATH)
        with pytest.raises(coordkit.RecipeStateError):
            await lock.release()
        assert await lock.acquire()
        with pytest.raises(coordkit.RecipeStateError):
            await lock.acquire()  # not reentrant
        await lock.release()
        election = EtcdElection(client, "/election", "a")
        await election.campaign()
        with pytest.raises(coordkit.RecipeStateError):
            await election.campaign()
        await election.resign()


@bounded(30)
async def test_observe_reports_a_leader_that_came_and_went_between_reads(etcd_url: str) -> None:
    async with coordkit.connect(etcd_url) as client, coordkit.connect(etcd_url) as watcher:
        first, second = EtcdElection(client, "/el", "a"), EtcdElection(client, "/el", "b")
        await first.campaign()
        async with aclosing(EtcdElection(watcher, "/el", "w").observe()) as leaders:
            assert await leaders.__anext__() == "a"
            # While the observer is not looking: a resigns, b leads and resigns,
            # a leads again. A re-read would see only "a"; every revision counts.
            await first.resign()
            await second.campaign()
            await second.resign()
            await first.campaign()
            assert [await leaders.__anext__() for _ in range(4)] == [None, "b", None, "a"]
            await first.resign()
            assert await leaders.__anext__() is None
