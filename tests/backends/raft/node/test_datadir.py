"""The data directory: created when missing, bound to one cluster and node, used by one process."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import anyio
import pytest
from powerloss import CrashableFileSystem

from coordkit.backends.raft.node.datadir import DataDir
from coordkit.backends.raft.node.files import DataDirLockedError, DataDirMismatchError
from coordkit.errors import InvalidArgumentError

pytestmark = pytest.mark.anyio

OPEN_IN_ANOTHER_PROCESS = """
import sys, anyio
from coordkit.backends.raft.node.datadir import DataDir
from coordkit.backends.raft.node.files import DataDirLockedError

async def main():
    try:
        data = await DataDir.open(sys.argv[1], cluster_id="c1", node_id="n1")
    except DataDirLockedError as exc:
        print(exc)
        sys.exit(3)
    await data.close()
    print("opened")

anyio.run(main)
"""


async def open_elsewhere(path: Path) -> tuple[int, str]:
    result = await anyio.run_process(
        [sys.executable, "-c", OPEN_IN_ANOTHER_PROCESS, str(path)], check=False
    )
    return result.returncode, result.stdout.decode().strip()


async def test_a_missing_directory_is_created_with_its_identity(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "node1"
    async with await DataDir.open(path, cluster_id="c1", node_id="n1") as data:
        assert data.path == path and data.wal_dir.is_dir() and data.snap_dir.is_dir()
        identity = json.loads((path / "IDENTITY").read_text())
        assert identity == {"format": 1, "cluster_id": "c1", "node_id": "n1"}
    # Reopening with the same identity works, again and again.
    for _ in range(2):
        data = await DataDir.open(path, cluster_id="c1", node_id="n1")
        await data.close()


@pytest.mark.parametrize(("cluster", "node"), [("c2", "n1"), ("c1", "n2")])
async def test_a_directory_of_another_cluster_or_node_is_refused_naming_both(
    tmp_path: Path, cluster: str, node: str
) -> None:
    data = await DataDir.open(tmp_path, cluster_id="c1", node_id="n1")
    await data.close()
    with pytest.raises(DataDirMismatchError) as caught:
        await DataDir.open(tmp_path, cluster_id=cluster, node_id=node)
    message = str(caught.value)
    assert "'c1'" in message and "'n1'" in message
    assert f"'{cluster}'" in message and f"'{node}'" in message
    # The refusal released the lock: the right identity still opens.
    data = await DataDir.open(tmp_path, cluster_id="c1", node_id="n1")
    await data.close()


async def test_a_second_process_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    data = await DataDir.open(tmp_path, cluster_id="c1", node_id="n1")
    code, out = await open_elsewhere(tmp_path)
    assert code == 3, out
    assert "in use" in out and f"process {os.getpid()}" in out and str(tmp_path) in out
    await data.close()
    code, out = await open_elsewhere(tmp_path)
    assert (code, out) == (0, "opened")


async def test_a_second_open_in_the_same_process_is_refused_too(tmp_path: Path) -> None:
    data = await DataDir.open(tmp_path, cluster_id="c1", node_id="n1")
    with pytest.raises(DataDirLockedError, match="in use"):
        await DataDir.open(tmp_path, cluster_id="c1", node_id="n1")
    await data.close()
    await data.close()  # idempotent
    again = await DataDir.open(tmp_path, cluster_id="c1", node_id="n1")
    await again.close()


@pytest.mark.parametrize("bad", ["", 7, None])
async def test_bad_ids_are_refused(tmp_path: Path, bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="cluster_id"):
        await DataDir.open(tmp_path / "x", cluster_id=bad, node_id="n1")  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


async def test_a_crash_while_creating_leaves_a_directory_that_opens(tmp_path: Path) -> None:
    for cut in range(30):
        root = tmp_path / f"try{cut}"
        root.mkdir()
        fs = CrashableFileSystem(root, random.Random(cut))
        fs.cut_power_after(cut)
        try:
            data = await DataDir.open(root / "node", cluster_id="c1", node_id="n1", fs=fs)
        except OSError:
            pass
        else:
            await data.close()
        fs = fs.crash(torn=True)
        data = await DataDir.open(root / "node", cluster_id="c1", node_id="n1", fs=fs)
        assert data.wal_dir.is_dir() and data.snap_dir.is_dir()
        await data.close()
