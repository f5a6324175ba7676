"""A 3-node cluster of real ``coordkit serve`` processes under steady writes and faults.

While clients write, compare-and-set and read a few registers through
``raft://``, the test kills the leader with SIGKILL, pauses a follower with
SIGSTOP/SIGCONT, restarts every node, tears the tail of a WAL, wipes a
follower's data and adds it back, and cuts the leader off from its peers
while a client keeps talking to it. Afterwards every acknowledged write is on
every node, and the recorded history is linearizable (Wing-Gong, the checker
of the Raft simulator): no lost write, no stale read.

``COORDKIT_RAFT_FAULT_ROUNDS`` repeats the fault sequence (default 1).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from raft_servers import (
    RaftProcessCluster,
    member_status,
    node_request,
    running_cluster,
    until,
    wait_for_leader,
)
from register_history import History

import coordkit
from coordkit.backends.store import unwrap_result
from coordkit.errors import CoordkitError

pytestmark = pytest.mark.anyio

ROUNDS = int(os.environ.get("COORDKIT_RAFT_FAULT_ROUNDS", "1"))
KEYS = [f"/reg{i}" for i in range(3)]
WRITERS = 4
#: the nodes' election timeout is 10 ticks of 20 ms: 0.2-0.4 s.
ELECTION_TIMEOUT = 0.4


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the servers are processes; one client event loop is enough here


@pytest.fixture
def cluster() -> Iterator[RaftProcessCluster]:
    with running_cluster() as cluster:
        yield cluster


@asynccontextmanager
async def workload(url: str, history: History, seed: int) -> AsyncIterator[Callable[[], int]]:
    """Writers and readers running until the block ends; yields a count of completed ops."""
    rng = random.Random(seed)
    stop = anyio.Event()
    done = 0

    async def writer(who: int) -> None:
        nonlocal done
        async with coordkit.connect(url, timeout=3.0) as client:
            n = 0
            while not stop.is_set():
                key = rng.choice(KEYS)
                n += 1
                value = f"w{who}-{n}"
                try:
                    if rng.random() < 0.3:
                        current = await history.get(client, key, who)
                        await history.cas(client, key, current or "", value, who)
                    elif rng.random() < 0.5:
                        await history.put(client, key, value, who)
                    else:
                        await history.get(client, key, who)
                    done += 1
                except CoordkitError:
                    await anyio.sleep(0.02)  # its outcome stays unknown in the history

    async with anyio.create_task_group() as tg:
        for who in range(WRITERS):
            tg.start_soon(writer, who)
        counter = _Counter(lambda: done, history)
        try:
            yield counter
        finally:
            stop.set()


class _Counter:
    """How many operations the workload completed (call it); carries the history too."""

    def __init__(self, count: Callable[[], int], history: History) -> None:
        self._count = count
        self.history = history

    def __call__(self) -> int:
        return self._count()


async def until_progress(ops: Callable[[], int], more: int = 20, timeout: float = 30.0) -> None:
    """Wait until the workload has completed ``more`` further operations (writes resumed)."""
    target = ops() + more
    with anyio.fail_after(timeout):
        while ops() < target:  # noqa: ASYNC110 - a counter in another task: polled
            await anyio.sleep(0.01)


async def leader_of(cluster: RaftProcessCluster) -> str:
    return await wait_for_leader(cluster)


def tear_wal_tail(data_dir: Path) -> int:
    """Cut a few bytes off the newest WAL segment, as a crash mid-write would."""
    segments = sorted((data_dir / "wal").glob("*"), key=lambda p: p.name)
    newest = segments[-1]
    size = newest.stat().st_size
    cut = min(7, size)
    with newest.open("r+b") as fh:
        fh.truncate(size - cut)
    return cut


async def test_faults_lose_no_acknowledged_write_and_keep_the_history_linearizable(
    cluster: RaftProcessCluster,
) -> None:
    url = cluster.url
    history = History()
    async with coordkit.connect(url) as admin:
        for key in KEYS:  # the registers exist before the faults
            await admin.create(key, b"")
            await history.put(admin, key, "init", -1)
    async with workload(url, history, seed=1) as ops:
        await until_progress(ops)
        for _ in range(ROUNDS):
            for fault in (
                fault_kill_leader,
                fault_pause_follower,
                fault_restart_every_node,
                fault_torn_wal_tail,
                fault_wipe_and_readd_follower,
                fault_isolate_leader,
            ):
                before, started = ops(), time.monotonic()
                await fault(cluster, ops)
                print(
                    f"{fault.__name__}: {ops() - before} operations meanwhile, "
                    f"{time.monotonic() - started:.2f} s"
                )
    print(
        f"{len(history.ops)} operations recorded, "
        f"{sum(not op.returned for op in history.ops)} with an unknown outcome"
    )
    await check_every_node_has_every_acknowledged_write(cluster, history)

    assert history.not_linearizable() == [], "a stale read or a lost write"


async def fault_kill_leader(cluster: RaftProcessCluster, ops: Callable[[], int]) -> None:
    leader = await leader_of(cluster)
    killed_at = time.monotonic()
    await anyio.to_thread.run_sync(lambda: cluster.stop(leader, kill=True))
    await until_progress(ops)
    print(f"SIGKILL of leader {leader}: writes resumed after {time.monotonic() - killed_at:.2f} s")
    cluster.start(leader)
    await until_progress(ops)


async def fault_pause_follower(cluster: RaftProcessCluster, ops: Callable[[], int]) -> None:
    leader = await leader_of(cluster)
    follower = next(n for n in cluster.members if n != leader)
    cluster.pause(follower)
    await until_progress(ops)  # two of three carry on
    await anyio.sleep(1.0)  # long enough for its peers to have given up on it
    cluster.resume(follower)
    await until_progress(ops)


async def fault_restart_every_node(cluster: RaftProcessCluster, ops: Callable[[], int]) -> None:
    for name in list(cluster.members):
        await anyio.to_thread.run_sync(lambda n=name: cluster.stop(n))
        cluster.start(name)
        await leader_of(cluster)
        await until_progress(ops)


async def fault_torn_wal_tail(cluster: RaftProcessCluster, ops: Callable[[], int]) -> None:
    leader = await leader_of(cluster)
    victim = next(n for n in cluster.members if n != leader)
    await anyio.to_thread.run_sync(lambda: cluster.stop(victim, kill=True))
    tear_wal_tail(cluster.members[victim].data_dir)
    cluster.start(victim)
    await until_progress(ops)
    with anyio.fail_after(30):
        # Another process's state has no event to wait on: it is polled.
        while "error" in (status := await member_status(cluster.members[victim].address)):  # noqa: ASYNC110
            await anyio.sleep(0.05)
    assert status["role"] in ("follower", "leader"), status


async def fault_wipe_and_readd_follower(
    cluster: RaftProcessCluster, ops: Callable[[], int]
) -> None:
    leader = await leader_of(cluster)
    victim = next(n for n in cluster.members if n != leader)
    member = cluster.members[victim]
    await anyio.to_thread.run_sync(lambda: cluster.wipe(victim))
    await node_request(cluster.members[leader].address, {"op": "member.remove", "name": victim})
    await until_progress(ops)
    leader = await leader_of(cluster)
    await node_request(
        cluster.members[leader].address,
        {"op": "member.add", "name": victim, "addr": member.address},
    )
    cluster.start(victim, join=True)
    with anyio.fail_after(60):  # caught up and promoted to voter
        while (await member_status(cluster.members[leader].address)).get("voters", []).count(  # noqa: ASYNC110
            victim
        ) == 0:
            await anyio.sleep(0.05)
    await until_progress(ops)


async def fault_isolate_leader(cluster: RaftProcessCluster, ops: Callable[[], int]) -> None:
    """Cut the leader off from its peers (its transport drops their messages) while clients
    keep talking to it: it must step down within an election timeout and never serve a
    stale read. Meanwhile readers ask the cut-off node itself, and a writer goes through the
    other two: a read served without confirming leadership would miss that writer's values,
    which the history shows."""
    leader = await leader_of(cluster)
    address = cluster.members[leader].address
    others = ",".join(m.address for n, m in cluster.members.items() if n != leader)
    history: History = ops.history  # type: ignore[attr-defined]
    isolated = anyio.Event()
    stepped_down = anyio.Event()

    async def read_from_the_cut_off_node(who: int) -> None:
        async def read() -> str | None:
            answer = await node_request(address, {"op": "r", "k": "get", "p": KEYS[0], "c": True})
            node = unwrap_result(answer["payload"])
            return None if node is None else str(node.value.decode())

        await isolated.wait()
        while not stepped_down.is_set():
            try:
                await history.get_via(read, KEYS[0], who)
            except (CoordkitError, AssertionError, OSError):
                await anyio.sleep(0.005)  # refused: the read tells nothing (dropped)

    async def write_through_the_majority(who: int) -> None:
        async with coordkit.connect(f"raft://{others}", timeout=2.0) as client:
            await isolated.wait()
            n = 0
            while not stepped_down.is_set():
                n += 1
                try:
                    await history.put(client, KEYS[0], f"majority-{n}", who)
                except CoordkitError:
                    await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_from_the_cut_off_node, 100)
        tg.start_soon(read_from_the_cut_off_node, 101)
        tg.start_soon(write_through_the_majority, 102)
        await node_request(address, {"op": "fault", "isolate": True})
        isolated.set()
        cut_at = time.monotonic()
        try:
            with anyio.fail_after(10):
                while (await member_status(address)).get("role") == "leader":  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            took = time.monotonic() - cut_at
            print(f"isolated leader {leader} stepped down after {took:.2f} s")
            # check-quorum: within an election timeout (plus this machine's scheduling slack)
            assert took < 4 * ELECTION_TIMEOUT + 1.0, took
            await anyio.sleep(0.5)  # the majority's writer goes on while the readers still ask
            stepped_down.set()
            await until_progress(ops)  # the majority elected a leader and goes on
        finally:
            stepped_down.set()
            with anyio.CancelScope(shield=True):
                await node_request(address, {"op": "fault", "isolate": False})
    await until_progress(ops)


async def _applied_at_least(address: str, index: int) -> bool:
    return int((await member_status(address)).get("applied", 0)) >= index


async def check_every_node_has_every_acknowledged_write(
    cluster: RaftProcessCluster, history: History
) -> None:
    """Once caught up, every node holds the same registers at the same revision, read
    from each node's own applied state."""
    leader = await leader_of(cluster)
    target = (await member_status(cluster.members[leader].address))["commit"]
    revisions = set()
    for member in cluster.members.values():
        await until(
            lambda m=member: _applied_at_least(m.address, target)  # type: ignore[misc]
        )
        revisions.add((await member_status(member.address))["revision"])
    assert len(revisions) == 1, f"the nodes applied different logs: revisions {revisions}"
    for key in KEYS:
        values = set()
        for member in cluster.members.values():
            answer = await node_request(
                member.address, {"op": "r", "k": "get", "p": key, "c": False}
            )
            node = unwrap_result(answer["payload"])
            values.add(node.value.decode())
        assert len(values) == 1, f"the nodes disagree on {key}: {values}"
        (final,) = values
        assert (
            final in history.acknowledged[key]
            or final == "init"
            or any(
                (op.key == key and op.arg == final) or (op.kind == "cas" and op.arg[1] == final)  # type: ignore[index]
                for op in history.ops
                if op.kind != "get"
            )
        ), f"{key} holds {final!r}, which nobody wrote"
