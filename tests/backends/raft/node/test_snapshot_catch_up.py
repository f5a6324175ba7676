"""A follower far behind catches up through a streamed snapshot, then serves the same data.

Three ``coordkit serve`` processes snapshot every 200 entries and keep 50
behind. A follower is stopped; the others take writes until the leader's log
is compacted past the follower's last index, so entries alone can no longer
bring it back. Restarted, it receives the leader's snapshot (streamed in
chunks over the peer connection), installs it, and then answers reads from
its own state exactly as the leader does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

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

import coordkit
from coordkit.backends.store import unwrap_result

pytestmark = pytest.mark.anyio

SNAPSHOT_ENTRIES = 200
RETAIN = 50
WRITES = 800
WRITERS = 8


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the servers are processes; one client event loop is enough here


@pytest.fixture
def cluster() -> Iterator[RaftProcessCluster]:
    options = ("--snapshot-entries", str(SNAPSHOT_ENTRIES), "--snapshot-retain", str(RETAIN))
    with running_cluster(extra_args=options) as cluster:
        yield cluster


async def read_own_state(address: str, path: str) -> object:
    """``path`` as this node's own applied state has it (not redirected, not ReadIndex)."""
    answer = await node_request(address, {"op": "r", "k": "get", "p": path, "c": False})
    return unwrap_result(answer["payload"])


async def test_a_follower_behind_a_compacted_log_catches_up_by_snapshot(
    cluster: RaftProcessCluster,
) -> None:
    leader = await wait_for_leader(cluster)
    follower = next(name for name in cluster.members if name != leader)
    address = cluster.members[follower].address
    behind = int((await member_status(address))["applied"])
    await anyio.to_thread.run_sync(lambda: cluster.stop(follower))

    prefix = f"/catch-up-{uuid.uuid4().hex[:8]}"
    value = bytes(range(256)) * 4  # 1 KiB each: the snapshot is many chunks
    async with coordkit.connect(cluster.url, timeout=20) as client:
        await client.create(prefix, b"")

        async def write(who: int) -> None:
            for i in range(who, WRITES, WRITERS):
                await client.create(f"{prefix}/k{i:04d}", value + str(i).encode())

        async with anyio.create_task_group() as tg:
            for who in range(WRITERS):
                tg.start_soon(write, who)

    leader = await wait_for_leader(cluster)
    leader_address = cluster.members[leader].address

    async def compacted_past_the_follower() -> bool:
        status = await member_status(leader_address)
        return int(status["snapshot_index"]) - RETAIN > behind

    await until(compacted_past_the_follower)
    target = await member_status(leader_address)

    cluster.start(follower)

    async def caught_up() -> bool:
        status = await member_status(address)
        return "error" not in status and int(status["applied"]) >= int(target["commit"])

    await until(caught_up, timeout=60)
    log = cluster.members[follower].log_path.read_text()
    assert "installed the leader's snapshot" in log, "caught up without a snapshot"

    caught = await member_status(address)
    assert caught["revision"] >= target["revision"]
    for i in range(0, WRITES, 37):
        mine = await read_own_state(address, f"{prefix}/k{i:04d}")
        theirs = await read_own_state(leader_address, f"{prefix}/k{i:04d}")
        assert mine == theirs and mine is not None, (i, mine, theirs)
    children = await node_request(address, {"op": "r", "k": "children", "p": prefix, "c": False})
    assert len(unwrap_result(children["payload"])) == WRITES
