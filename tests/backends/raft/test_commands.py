"""The Raft operator commands, run as real ``coordkit`` processes against a real cluster.

``coordkit cluster up -n 3 --data-dir D`` starts and supervises three ``coordkit
serve`` processes and prints the URL; then, in order: ``coordkit status`` shows one
leader and each member's role, term, commit, applied index, lag and last contact;
SIGKILL of the leader's process gives a new leader and ``coordkit put/get`` go on;
``member add`` joins a fourth node as a learner, promoted to voter once caught up,
and ``member remove`` takes it out; ``snapshot save`` writes a snapshot a store
loads; ``member remove`` of the leader itself leaves a cluster with a new leader.
A mistake (unknown member, bad address, bad -n) is one ``coordkit: error: ...`` line on
standard error and a non-zero exit, and changes nothing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from raft_servers import TOKEN_ENV, free_port, member_status, popen_dying_with_parent, until

import coordkit as coordkit_client
from coordkit.backends.store import StoreLoader

pytestmark = pytest.mark.anyio

CLI = [sys.executable, "-m", "coordkit.cli"]
COLUMNS = ["node", "address", "role", "term", "commit", "applied", "lag", "last contact"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # every test drives other processes: one client event loop is enough


@dataclass
class LocalCluster:
    """A running ``coordkit cluster up`` and what it printed."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    stdout: Path
    stderr: Path
    url: str = ""

    def pid_of(self, name: str) -> int:
        """The pid of the latest process the supervisor started for ``name``."""
        started = re.findall(rf"\b{name} started \(pid (\d+)", self.stderr.read_text())
        assert started, f"{name} was never started:\n{self.stderr.read_text()}"
        return int(started[-1])

    @classmethod
    def start(cls, root: Path, nodes: int) -> LocalCluster:
        """``coordkit cluster up -n NODES`` with its data under ``root/data``."""
        out, err = root / "up.out", root / "up.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = popen_dying_with_parent(
                [*CLI, "cluster", "up", "-n", str(nodes), "--data-dir", str(root / "data")],
                stdout=stdout,
                stderr=stderr,
            )
        return cls(process, root / "data", out, err)

    @property
    def saved(self) -> dict[str, object]:
        saved: dict[str, object] = json.loads((self.data_dir / "cluster.json").read_text())
        return saved


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("cluster-up")
    cluster = LocalCluster.start(root, nodes=3)
    process = cluster.process
    try:
        anyio.run(_wait_for_url, cluster)
        yield cluster
    finally:
        process.send_signal(signal.SIGTERM)  # the supervisor stops its nodes
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for log in sorted((root / "data").glob("*.log")):
            print(f"--- {log.name} ---\n{log.read_text()[-3000:]}")
        print(f"--- cluster up ---\n{cluster.stderr.read_text()[-3000:]}")


async def _wait_for_url(cluster: LocalCluster) -> None:
    async def printed() -> bool:
        assert cluster.process.poll() is None, cluster.stderr.read_text()
        found = re.search(r"^url: (raft://\S+)$", cluster.stdout.read_text(), re.MULTILINE)
        if found:
            cluster.url = found.group(1)
        return found is not None

    await until(printed, timeout=60)


async def coordkit(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = await anyio.run_process([*CLI, *args], check=False, env=env)
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def node_table(output: str) -> list[dict[str, str]]:
    """The rows of ``coordkit status``'s member table, by column."""
    lines = output.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[:2] == ["node", "address"])
    assert re.split(r"\s{2,}", lines[at].strip()) == COLUMNS, lines[at]
    rows = []
    for line in lines[at + 1 :]:
        cells = re.split(r"\s{2,}", line.strip())
        if cells[2] == "unreachable":
            rows.append({"node": cells[0], "role": "unreachable"})
        else:
            rows.append(dict(zip(COLUMNS, cells, strict=True)))
    return rows


async def status_rows(cluster: LocalCluster) -> list[dict[str, str]]:
    result = await coordkit("status", "--url", cluster.url)
    if result.returncode != 0:
        return []
    return node_table(result.stdout)


async def one_leader(cluster: LocalCluster, *, members: int, not_: str = "") -> dict[str, str]:
    """Once every member answers and exactly one leads (not ``not_``): the leader's status.

    Polled in this process (a ``coordkit status`` process per poll would be slow).
    """
    leaders: list[dict[str, str]] = []

    async def settled() -> bool:
        nonlocal leaders
        first = await member_status(cluster.url.removeprefix("raft://").split(",")[0])
        addresses = dict(first.get("addresses", {}))
        if len(addresses) != members:
            return False
        statuses = [await member_status(a) for a in addresses.values()]
        if any("error" in status for status in statuses):
            return False
        leaders = [
            {"node": str(st["node"]), "address": str(st["address"])}
            for st in statuses
            if st.get("role") == "leader"
        ]
        return len(leaders) == 1 and leaders[0]["node"] != not_

    await until(settled, timeout=60, interval=0.1)
    return leaders[0]


def one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("coordkit: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in result.stderr


async def test_cluster_up_prints_the_url_and_status_shows_one_leader(
    local_cluster: LocalCluster,
) -> None:
    assert local_cluster.url.startswith("raft://127.0.0.1:")
    assert len(local_cluster.url.split(",")) == 3
    leader = await one_leader(local_cluster, members=3)
    rows = await status_rows(local_cluster)
    assert [r["role"] for r in rows].count("leader") == 1, rows
    for row in rows:
        assert row["role"] in ("leader", "follower"), row
        assert int(row["term"]) >= 1 and int(row["commit"]) >= 1
        assert int(row["applied"]) <= int(row["commit"]) + int(row["lag"])
        assert int(row["lag"]) >= 0
        if row["node"] == leader["node"]:
            assert row["last contact"] == "-"
        else:
            assert re.fullmatch(r"\d+\.\d\d s ago", row["last contact"]), row


async def test_sigkill_of_the_leader_gives_a_new_leader_and_writes_resume(
    local_cluster: LocalCluster,
) -> None:
    url = local_cluster.url
    old = await one_leader(local_cluster, members=3)
    addresses = url.removeprefix("raft://").split(",")
    os.kill(local_cluster.pid_of(old["node"]), signal.SIGKILL)

    async def another_leads() -> bool:
        others = [await member_status(a) for a in addresses if a != old["address"]]
        return any(st.get("role") == "leader" for st in others)

    await until(another_leads, timeout=30)
    put = await coordkit("put", "/after-kill", "still-here", "--url", url)
    assert put.returncode == 0, put.stderr
    get = await coordkit("get", "/after-kill", "--url", url)
    assert (get.returncode, get.stdout) == (0, "still-here\n"), get.stderr
    assert f"{old['node']} exited with status -9" in local_cluster.stderr.read_text()
    await one_leader(local_cluster, members=3)  # the supervisor restarted the killed node


async def test_member_add_joins_a_learner_promoted_once_caught_up_and_remove_takes_it_out(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    url = local_cluster.url
    await one_leader(local_cluster, members=3)
    address = f"127.0.0.1:{free_port()}"
    added = await coordkit("member", "add", "n4", address, "--url", url)
    assert added.returncode == 0, added.stderr
    assert "learner" in added.stdout
    saved = local_cluster.saved
    ports: dict[str, int] = saved["ports"]  # type: ignore[assignment]
    peers = ",".join(
        [f"{name}=127.0.0.1:{port}" for name, port in ports.items()] + [f"n4={address}"]
    )
    with (tmp_path / "n4.log").open("wb") as log:
        joiner = popen_dying_with_parent(
            [
                *CLI,
                "serve",
                "--name",
                "n4",
                "--join",
                "--listen",
                address,
                "--data-dir",
                str(tmp_path / "n4"),
                "--peers",
                peers,
                "--cluster-id",
                str(saved["id"]),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, TOKEN_ENV: str(saved["token"])},
        )
    try:

        async def voter() -> bool:
            status = await member_status(address)
            return "n4" in status.get("voters", ())

        await until(voter, timeout=60)
        removed = await coordkit("member", "remove", "n4", "--url", url)
        assert removed.returncode == 0, removed.stderr
        assert "n4 removed" in removed.stdout

        await one_leader(local_cluster, members=3)  # n4 is out of the configuration
    finally:
        joiner.terminate()
        joiner.wait(timeout=30)
        print((tmp_path / "n4.log").read_text()[-3000:])


async def test_snapshot_save_writes_a_snapshot_of_the_store(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    url = local_cluster.url
    async with coordkit_client.connect(url) as client:
        await client.create("/snap/key", b"in-the-snapshot", make_parents=True)
    target = tmp_path / "backup.snap"
    saved = await coordkit("snapshot", "save", str(target), "--url", url)
    assert saved.returncode == 0, saved.stderr
    assert f"snapshot written to {target}" in saved.stdout
    loader = StoreLoader()
    loader.feed(target.read_bytes())
    store = loader.finish()
    node = store.get("/snap/key")
    assert node is not None and node.value == b"in-the-snapshot"
    assert not (tmp_path / "backup.snap.partial").exists()


async def test_mistakes_are_one_line_and_change_nothing(local_cluster: LocalCluster) -> None:
    url = local_cluster.url
    leader = await one_leader(local_cluster, members=3)
    before = (await member_status(leader["address"]))["members"]
    one_error_line(await coordkit("member", "remove", "nosuch", "--url", url), "nosuch")
    one_error_line(
        await coordkit("member", "add", "n9", "not-an-address", "--url", url), "not-an-address"
    )
    one_error_line(
        await coordkit("member", "add", "n1", f"127.0.0.1:{free_port()}", "--url", url),
        "already a member",
    )
    one_error_line(await coordkit("cluster", "up", "-n", "0"), "-n")
    assert (await member_status(leader["address"]))["members"] == before


async def test_member_remove_of_the_leader_itself_leaves_a_new_leader(
    local_cluster: LocalCluster,
) -> None:
    """Last in this module: the cluster has two members afterwards."""
    url = local_cluster.url
    old = (await one_leader(local_cluster, members=3))["node"]
    removed = await coordkit("member", "remove", old, "--url", url)
    assert removed.returncode == 0, removed.stderr
    new = await one_leader(local_cluster, members=2, not_=old)
    assert new["node"] != old
    async with coordkit_client.connect(url) as client:
        await client.create("/after-remove", b"yes")


async def test_the_nodes_of_cluster_up_stop_when_it_is_killed(tmp_path: Path) -> None:
    cluster = LocalCluster.start(tmp_path, nodes=1)
    process = cluster.process
    try:
        await _wait_for_url(cluster)

        async def node_started() -> bool:
            return "n1 started (pid" in cluster.stderr.read_text()

        await until(node_started, timeout=30)
        node = cluster.pid_of("n1")
        os.kill(process.pid, signal.SIGKILL)  # no chance to stop its nodes itself
        process.wait()

        async def node_gone() -> bool:
            return _exited(node)

        await until(node_gone, timeout=30)
        log = (tmp_path / "data" / "n1.log").read_text()
        assert f"process {process.pid} (the supervisor) is gone" in log, log[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _exited(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie not yet reaped by init counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
