"""``raft+embedded://``: durable with ``data_dir``, a temporary directory without, one
process per data directory; on asyncio and trio (the nodes run on their own loop)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest
from raft_servers import popen_dying_with_parent

import coordkit
from coordkit.backends.raft.embedded import EmbeddedRaftBackend
from coordkit.errors import CoordkitError

pytestmark = pytest.mark.anyio

#: another process embedding a cluster on a data directory: writes, says so, holds on.
HOLDER = """
import sys, anyio, coordkit

async def main():
    async with coordkit.connect(sys.argv[1]) as client:
        await client.create("/held", b"written by the holder")
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the test closes our stdin

anyio.run(main)
"""


def embedded_url(data_dir: Path | None = None) -> str:
    name = f"embedded-{uuid.uuid4().hex[:8]}"
    return f"raft+embedded://{name}?nodes=3" + (f"&data_dir={data_dir}" if data_dir else "")


def backend_of(client: coordkit.Client) -> EmbeddedRaftBackend:
    backend = client.backend
    assert isinstance(backend, EmbeddedRaftBackend)
    return backend


async def test_data_survives_closing_and_reopening_the_cluster(tmp_path: Path) -> None:
    url = embedded_url(tmp_path / "data")
    async with coordkit.connect(url) as client:
        created = await client.create("/kept", b"across a restart")
        cluster = backend_of(client).cluster
    await anyio.to_thread.run_sync(cluster.stop)  # every node of it stops, as at exit
    assert not cluster.nodes
    async with coordkit.connect(url) as client:
        assert backend_of(client).cluster is cluster  # the same cluster, started again
        node = await client.get("/kept")
        assert node is not None and node.value == b"across a restart"
        assert node.create_revision == created.create_revision
        later = await client.create("/later", b"")
        assert later.create_revision > created.create_revision
    await anyio.to_thread.run_sync(cluster.stop)


async def test_without_data_dir_a_temporary_directory_is_removed_when_the_cluster_stops() -> None:
    async with coordkit.connect(embedded_url()) as client:
        await client.create("/anything", b"")
        cluster = backend_of(client).cluster
        data_dir = cluster.data_dir
        assert sorted(p.name for p in data_dir.iterdir()) == ["n1", "n2", "n3"]
    await anyio.to_thread.run_sync(cluster.stop)
    assert not data_dir.exists()


async def test_a_second_process_on_the_same_data_dir_gets_one_clear_error(tmp_path: Path) -> None:
    data_dir = tmp_path / "shared"
    url = embedded_url(data_dir)  # the same URL: the name is part of the cluster's identity
    holder = popen_dying_with_parent(
        [sys.executable, "-c", HOLDER, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        with anyio.fail_after(90):
            line = await anyio.to_thread.run_sync(holder.stdout.readline)
        assert line == b"ready\n", line
        with pytest.raises(CoordkitError) as info:
            async with coordkit.connect(url):
                pass
        message = str(info.value)
        assert str(data_dir) in message and f"in use by process {holder.pid}" in message, message
    finally:
        holder.stdin.close()
        await anyio.to_thread.run_sync(lambda: holder.wait(timeout=60))
        holder.stdout.close()
    assert holder.returncode == 0
    # The holder is gone: this process may use the directory now, and finds its data.
    async with coordkit.connect(url) as client:
        node = await client.get("/held")
        assert node is not None and node.value == b"written by the holder"
        cluster = backend_of(client).cluster
    await anyio.to_thread.run_sync(cluster.stop)
