"""The raft:// client across failures of real ``coordkit serve`` processes (issue 13).

Exactly-once writes (Raft dissertation §6.3): sequential creates from several
clients while the leader is SIGKILLed and restarted, and while the nodes drop
the answers to applied writes at random, leave every acknowledged create
present exactly once and every unacknowledged one at most once. A session
and its ephemeral node survive a leader change; a watch resumes across a kill
of the node serving it with every event delivered once, in order; a client
given only dead endpoints fails with one clear error within its connect timeout.

``COORDKIT_RAFT_FAILOVER_KILLS`` sets how many leader kills the first test
makes (default 1).
"""

from __future__ import annotations

import os
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import anyio
import pytest
from raft_servers import (
    RaftProcessCluster,
    free_port,
    member_status,
    node_request,
    running_cluster,
    until,
    wait_for_leader,
)

import coordkit
from coordkit.backends.raft.client import RaftBackend
from coordkit.errors import CoordkitError
from coordkit.model import EventType

pytestmark = pytest.mark.anyio

KILLS = int(os.environ.get("COORDKIT_RAFT_FAILOVER_KILLS", "1"))
WRITERS = 4
#: generous: a write waits through a failover (about a second here) and retries.
TIMEOUT = 20.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[RaftProcessCluster]:
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def url(cluster: RaftProcessCluster) -> str:
    return f"{cluster.url}/failover-{uuid.uuid4().hex[:8]}"


@dataclass
class Creates:
    """What sequential-create writers were told: acknowledged value -> path, and unknowns."""

    acked: dict[str, str] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=set)

    def count(self) -> int:
        return len(self.acked)


async def sequential_creates(
    url: str, parent: str, who: int, stop: anyio.Event, creates: Creates
) -> None:
    async with coordkit.connect(url, timeout=TIMEOUT) as client:
        n = 0
        while not stop.is_set():
            n += 1
            value = f"{who}-{n}"
            try:
                node = await client.create(f"{parent}/item-", value.encode(), sequential=True)
            except CoordkitError as exc:
                print(f"create {value}: outcome unknown: {exc}")
                creates.unknown.add(value)
                continue
            creates.acked[value] = node.path


async def until_more(count: Callable[[], int], more: int = 30, timeout: float = 30.0) -> None:
    """Wait until the writers have acknowledged ``more`` further creates."""
    target = count() + more
    with anyio.fail_after(timeout):
        while count() < target:  # noqa: ASYNC110 - counters of other tasks: polled
            await anyio.sleep(0.01)


async def check_exactly_once(url: str, parent: str, creates: Creates) -> None:
    """Every acknowledged create is there exactly once, at the path it was acknowledged
    with; an unacknowledged one at most once; nothing else."""
    found: dict[str, list[str]] = defaultdict(list)
    async with coordkit.connect(url, timeout=TIMEOUT) as client:
        for name in await client.children(parent):
            node = await client.get(f"{parent}/{name}")
            assert node is not None
            found[node.value.decode()].append(node.path)
    duplicated = {value: paths for value, paths in found.items() if len(paths) > 1}
    assert duplicated == {}, f"creates applied more than once: {duplicated}"
    lost = sorted(set(creates.acked) - set(found))
    assert lost == [], f"acknowledged creates lost: {lost}"
    moved = {v: (p, found[v][0]) for v, p in creates.acked.items() if found[v] != [p]}
    assert moved == {}, f"acknowledged at one path, stored at another: {moved}"
    strangers = sorted(set(found) - set(creates.acked) - creates.unknown)
    assert strangers == [], f"nodes nobody created: {strangers}"
    print(
        f"{len(creates.acked)} creates acknowledged, {len(creates.unknown)} unknown "
        f"({len(creates.unknown & set(found))} of them applied)"
    )


async def all_up(cluster: RaftProcessCluster) -> None:
    """Every member answers and they agree on a leader (a member restarted by the test
    before may still be starting)."""

    async def answering() -> bool:
        statuses = [await member_status(m.address) for m in cluster.members.values()]
        return not any("error" in status for status in statuses)

    await until(answering)
    await wait_for_leader(cluster)


async def kill_leader(cluster: RaftProcessCluster) -> str:
    leader = await wait_for_leader(cluster)
    await anyio.to_thread.run_sync(lambda: cluster.stop(leader, kill=True))
    return leader


async def test_sequential_creates_survive_leader_kills_exactly_once(
    cluster: RaftProcessCluster, url: str, anyio_backend: str
) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("servers are processes: the client's event loop does not matter; asyncio")
    await all_up(cluster)
    creates = Creates()
    stop = anyio.Event()
    async with coordkit.connect(url) as client:
        await client.create("/seq", b"")
    async with anyio.create_task_group() as tg:
        for who in range(WRITERS):
            tg.start_soon(sequential_creates, url, "/seq", who, stop, creates)
        await until_more(creates.count)
        for _ in range(KILLS):
            killed_at = time.monotonic()
            leader = await kill_leader(cluster)
            await until_more(creates.count)
            print(f"killed {leader}: creates resumed after {time.monotonic() - killed_at:.2f} s")
            cluster.start(leader)
            await until_more(creates.count)
        stop.set()
    await check_exactly_once(url, "/seq", creates)


async def test_dropped_replies_never_duplicate_a_sequential_create(
    cluster: RaftProcessCluster, url: str, anyio_backend: str
) -> None:
    """Each node loses the answer to 20 % of the writes it applied (closing the client's
    connection instead): the client sends each such write again with the same sequence
    number, and the cluster answers it from its dedup table, never applying it twice."""
    if anyio_backend != "asyncio":
        pytest.skip("servers are processes: the client's event loop does not matter; asyncio")
    await all_up(cluster)
    creates = Creates()
    stop = anyio.Event()
    async with coordkit.connect(url) as client:
        await client.create("/seq", b"")
    addresses = [m.address for m in cluster.members.values()]
    dropped = 0
    try:
        for seed, address in enumerate(addresses):
            await node_request(address, {"op": "fault", "drop_replies": 0.2, "seed": seed})
        async with anyio.create_task_group() as tg:
            for who in range(WRITERS):
                tg.start_soon(sequential_creates, url, "/seq", who, stop, creates)
            await until_more(creates.count, more=200, timeout=60)
            stop.set()
    finally:
        with anyio.CancelScope(shield=True):
            for address in addresses:
                answer = await node_request(address, {"op": "fault", "drop_replies": 0})
                dropped += int(answer["dropped"])
    print(f"{dropped} answers dropped by the nodes")
    assert dropped >= 20, "too few answers were dropped for the test to mean anything"
    await check_exactly_once(url, "/seq", creates)


async def test_a_session_and_its_ephemeral_node_survive_a_leader_change(
    cluster: RaftProcessCluster, url: str
) -> None:
    """The leader dies; the client reconnects to the new one, which took over the session
    with its TTL extended: the same session, never lost, its ephemeral node still there
    after more than a TTL (so a deadline the new leader did not inherit would have fired)."""
    await all_up(cluster)
    # Long enough that the client itself never gives the session up during the
    # failover on a loaded machine (it does after a whole TTL without a keepalive).
    ttl = 5.0
    async with coordkit.connect(url, session_ttl=ttl, timeout=TIMEOUT) as client:
        session = client.session
        await client.create("/eph", b"mine", ephemeral=True)
        killed = await kill_leader(cluster)
        try:
            new_leader = await wait_for_leader(cluster)
            assert new_leader != killed
            # A write through the new leader proves the client moved over to it.
            await client.create("/after", b"")
            with anyio.fail_after(3 * ttl):
                await anyio.sleep(1.5 * ttl)  # a time span is the point here, not a condition
        finally:
            cluster.start(killed)
        assert client.session is session, "the session was replaced"
        assert not session.lost, "the session was lost"
        async with coordkit.connect(url, timeout=TIMEOUT) as other:
            node = await other.get("/eph")
            assert node is not None, "the ephemeral node is gone"
            assert node.ephemeral_owner == session.id


async def test_a_watch_resumes_across_a_kill_of_the_node_serving_it(
    cluster: RaftProcessCluster, url: str
) -> None:
    """One writer makes N creates in turn; a watcher on another client streams them. Its
    node (the leader: a client talks to the leader) is SIGKILLed a third of the way: the
    events received are exactly the writes made, in order, none lost or repeated."""
    await all_up(cluster)
    writes = 150
    async with (
        coordkit.connect(url, timeout=TIMEOUT) as watching,
        coordkit.connect(url, timeout=TIMEOUT) as writer,
    ):
        await writer.create("/w", b"")
        made: list[tuple[str, bytes, int]] = []
        received: list[tuple[str, bytes, int]] = []
        killed: list[str] = []
        served_by: list[object] = []
        backend = watching.backend
        assert isinstance(backend, RaftBackend)

        reading = anyio.CancelScope()

        async def write() -> None:
            for i in range(writes):
                node = await writer.create(f"/w/k{i:04d}", str(i).encode())
                made.append((node.path, node.value, node.create_revision))
            # Every write is acknowledged: its event has a while to arrive, no longer.
            reading.deadline = anyio.current_time() + 15

        async with (
            watching.watch("/w", recursive=True) as events,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(write)
            with reading:
                async for event in events:
                    assert event.type is EventType.CREATED and event.node is not None
                    received.append((event.path, event.node.value, event.revision))
                    if len(received) == writes // 3:
                        serving = backend._conn.node if backend._conn else None
                        leader = await wait_for_leader(cluster)
                        assert serving == leader, (serving, leader)
                        served_by.append(backend._conn)
                        killed.append(await kill_leader(cluster))
                    if len(received) == 2 * writes // 3 and killed:
                        cluster.start(killed[0])
                    if len(received) >= writes:
                        break
        assert killed, "no node was killed"
        assert backend._conn is not served_by[0], "the watch never moved to another connection"
        assert received == made


async def test_only_dead_endpoints_fail_with_one_clear_error_within_the_connect_timeout() -> None:
    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    connect_timeout = 1.5
    url = f"raft://{','.join(dead)}?connect_timeout={connect_timeout}"
    started = time.monotonic()
    with pytest.raises(CoordkitError) as info:
        async with coordkit.connect(url):
            pass
    elapsed = time.monotonic() - started
    message = str(info.value)
    print(f"{type(info.value).__name__} after {elapsed:.2f} s: {message}")
    assert elapsed < connect_timeout + 1.0, elapsed
    for endpoint in dead:
        assert endpoint in message
    assert "refused" in message
