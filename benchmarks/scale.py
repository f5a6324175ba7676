"""A 3-process Raft cluster holding a million nodes: memory, snapshot, restart, catch-up.

The script starts 3 ``coordkit serve`` processes (fsync on, data on disk under
``--data-dir``), fills them through ``raft://`` with ``--nodes`` nodes of 100
bytes (default 1,000,000) under ``/data/<i // 1000>/<i>``, ``--batch``
creates per transaction and 8 transactions in flight, then measures, ``--runs``
times on the same filled cluster:

* **RSS** of every server process (VmRSS of /proc/PID/status), the largest;
* **snapshot save**: ``coordkit snapshot save FILE --url raft://...`` (the
  operator's backup: the leader streams a consistent snapshot to the CLI),
  wall time of the command and the file's size;
* **restart**: a follower is stopped (SIGTERM) and started again; the time from
  its start until it has applied everything the leader had committed (it
  restores its snapshot and replays its log), and its RSS after;
* **wiped follower catch-up**: a follower is SIGKILLed and its data directory
  deleted, ``coordkit member remove`` and ``coordkit member add`` take it out
  and back in, and it starts empty with ``--join``; the time from its start
  until it is a voter again and has applied everything (the leader installs a
  snapshot: nodes snapshot every ``--snapshot-entries`` entries, set low
  enough that the log it needs is gone).

The table shows medians of ``--runs`` and the issue's aim (RSS <= 1 GB).
A benchmark, not a test: nothing here asserts sizes or timings.

    python benchmarks/scale.py                          # 1,000,000 nodes, 5 runs
    python benchmarks/scale.py --nodes 200000 --runs 3 --json scale.json
    python benchmarks/scale.py --quick --runs 1         # 20,000 nodes (what CI does)
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import Metric, Report, add_run_arguments
from servers import RaftCluster, rss_mb, started_clusters

import coordkit
from coordkit.errors import (
    ClientClosedError,
    ConnectionLostError,
    OperationTimeoutError,
    SessionExpiredError,
)
from coordkit.retry import RetryPolicy
from coordkit.txn import Compare, CreateOp

VALUE_BYTES = 100
PER_PARENT = 1000
IN_FLIGHT = 8
STEP_TIMEOUT = 1800.0
#: a batch whose outcome is unknown (leader lost, reply lost) is tried again
RETRY = RetryPolicy(initial_delay=0.1, max_delay=2.0, max_attempts=30)

log = logging.getLogger("benchmarks.scale")

METRICS = [
    Metric("fill_per_s", "fill: creates/s (in txns)", "1/s", "higher", 0),
    Metric("rss_mb", "largest server RSS", "MiB", "lower", 0, aim=1024.0),
    Metric("snapshot_save_s", "snapshot save (CLI)", "s", "lower", 2),
    Metric("snapshot_mb", "snapshot file size", "MiB", "lower", 1),
    Metric("restart_s", "follower restart -> caught up", "s", "lower", 2),
    Metric("restart_rss_mb", "its RSS after the restart", "MiB", "lower", 0),
    Metric("catch_up_s", "wiped follower -> caught up", "s", "lower", 2),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1_000_000, help="nodes of 100 bytes")
    parser.add_argument("--batch", type=int, default=500, help="creates per transaction")
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median shown)")
    parser.add_argument(
        "--snapshot-entries",
        type=int,
        help="the nodes' --snapshot-entries (default: a quarter of the fill's transactions)",
    )
    add_run_arguments(parser, quick="a tiny smoke run (20,000 nodes)", verbose="log each step")
    args = parser.parse_args()
    if args.quick:
        args.nodes = min(args.nodes, 20_000)
    if args.nodes < 1 or args.batch < 1 or args.runs < 1:
        parser.error("--nodes, --batch and --runs must be positive")
    if args.snapshot_entries is None:
        args.snapshot_entries = max(4, args.nodes // args.batch // 4)
    return args


def value_of(i: int) -> bytes:
    return (i.to_bytes(8, "little") * (VALUE_BYTES // 8 + 1))[:VALUE_BYTES]


class Filler:
    """The client the fill writes through, opened again when its session expires
    (on a loaded machine a leader change can outlast the session's TTL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client: coordkit.Client | None = None
        self.renewals = 0
        self._lock = anyio.Lock()

    async def get(self) -> coordkit.Client:
        async with self._lock:
            if self.client is None:
                self.client = await coordkit.connect(self.url).__aenter__()
            return self.client

    async def renew(self, expired: coordkit.Client) -> None:
        async with self._lock:
            if self.client is not expired:
                return  # another batch renewed it already
            self.client, self.renewals = None, self.renewals + 1
            with anyio.CancelScope(shield=True):
                await expired.__aexit__(None, None, None)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.__aexit__(None, None, None)


async def fill(url: str, nodes: int, batch: int, notes: list[str]) -> float:
    """Create ``nodes`` nodes in transactions of ``batch``; creates per second."""
    attempts = [0]
    parents = (nodes + PER_PARENT - 1) // PER_PARENT
    filler = Filler(url)
    try:
        client = await filler.get()
        await client.ensure_path("/data")
        began = time.perf_counter()
        for start in range(0, parents, batch):
            ops = [CreateOp(f"/data/{p}") for p in range(start, min(parents, start + batch))]
            await client.txn(success=ops)
        slots = anyio.Semaphore(IN_FLIGHT)

        async def one(start: int) -> None:
            try:
                ops = [
                    CreateOp(f"/data/{i // PER_PARENT}/{i}", value_of(i))
                    for i in range(start, min(nodes, start + batch))
                ]

                # If only "if absent": a retry after a lost reply changes nothing.
                async def attempt() -> object:
                    attempts[0] += 1
                    client = await filler.get()
                    try:
                        return await client.txn([Compare.missing(ops[0].path)], ops)
                    except (SessionExpiredError, ClientClosedError):
                        await filler.renew(client)
                        raise

                await RETRY.call(
                    attempt,
                    retry_on=(
                        OperationTimeoutError,
                        ConnectionLostError,
                        SessionExpiredError,
                        ClientClosedError,
                    ),
                    what=f"fill batch {start}",
                    logger=log,
                )
            finally:
                slots.release()

        with anyio.fail_after(STEP_TIMEOUT):
            async with anyio.create_task_group() as tg:
                for start in range(0, nodes, batch):
                    await slots.acquire()  # released by the batch when acknowledged
                    tg.start_soon(one, start)
        rate = nodes / (time.perf_counter() - began)
    finally:
        await filler.close()
    batches = (nodes + batch - 1) // batch
    if attempts[0] > batches:
        notes.append(
            f"fill: {attempts[0] - batches} of {batches} transactions were tried again "
            "(no answer within the client's timeout: leader changes under load)"
        )
    if filler.renewals:
        notes.append(f"fill: the client's session expired {filler.renewals} time(s), reopened")
    return rate


def coordkit_cli(url: str, *args: str) -> float:
    """Run ``coordkit --url URL ARGS``; its wall time in seconds."""
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "coordkit.cli", "--url", url, *args],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"coordkit {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    log.info("coordkit %s: %s", args[0], done.stdout.strip())
    return time.perf_counter() - began


def leader_commit(cluster: RaftCluster) -> int:
    statuses = [s for s in cluster.statuses() if s.get("role") == "leader"]
    if not statuses:
        cluster.leader()
        return leader_commit(cluster)
    return int(statuses[0]["commit"])


def until_applied(cluster: RaftCluster, name: str, index: int, voter: bool = False) -> float:
    """Poll ``name``'s status until it has applied ``index`` (and is a voter); the time."""
    import raft_servers

    member = cluster.processes.members[name]
    began = time.perf_counter()

    async def check() -> bool:
        status: dict[str, Any] = await raft_servers.member_status(member.address)
        if "error" in status or status.get("applied", -1) < index:
            return False
        return not voter or name in status.get("voters", [])

    anyio.run(lambda: raft_servers.until(check, timeout=STEP_TIMEOUT, interval=0.05))
    return time.perf_counter() - began


def one_run(cluster: RaftCluster, report: Report, root: Path, run: int) -> None:
    url = cluster.url("")
    rss = [rss_mb(pid) for pid in cluster.pids()]
    report.add("raft", "rss_mb", max(rss))
    log.info("RSS of the servers: %s MiB", [round(r) for r in rss])

    snapshot = root / f"backup-{run}.snap"
    report.add("raft", "snapshot_save_s", coordkit_cli(url, "snapshot", "save", str(snapshot)))
    report.add("raft", "snapshot_mb", snapshot.stat().st_size / 2**20)
    snapshot.unlink()

    leader = cluster.leader()
    follower = next(n for n in cluster.processes.members if n != leader)
    commit = leader_commit(cluster)
    cluster.processes.stop(follower)
    cluster.processes.start(follower)
    report.add("raft", "restart_s", until_applied(cluster, follower, commit))
    process = cluster.processes.members[follower].process
    assert process is not None
    report.add("raft", "restart_rss_mb", rss_mb(process.pid))

    leader = cluster.leader()
    victim = next(n for n in cluster.processes.members if n != leader)
    address = cluster.processes.members[victim].address
    cluster.processes.wipe(victim)
    coordkit_cli(url, "member", "remove", victim)
    coordkit_cli(url, "member", "add", victim, address)
    commit = leader_commit(cluster)
    cluster.processes.start(victim, join=True)
    report.add("raft", "catch_up_s", until_applied(cluster, victim, commit, voter=True))
    cluster.wait_caught_up(STEP_TIMEOUT)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)
    report = Report("scale", args.runs, args.quick, "", METRICS)
    report.settings = {
        "nodes": args.nodes,
        "value_bytes": VALUE_BYTES,
        "batch": args.batch,
        "in_flight": IN_FLIGHT,
        "snapshot_entries": args.snapshot_entries,
    }
    extra = ("--snapshot-entries", str(args.snapshot_entries))
    with (
        tempfile.TemporaryDirectory(prefix="coordkit-bench-scale-", dir=args.data_dir) as root,
        started_clusters(["raft"], report.notes, args.data_dir, raft_args=extra) as clusters,
    ):
        cluster = clusters["raft"]
        assert isinstance(cluster, RaftCluster)
        began = time.perf_counter()
        rate = anyio.run(fill, cluster.url(""), args.nodes, args.batch, report.notes)
        report.add("raft", "fill_per_s", rate)
        log.info("filled %d nodes in %.1f s", args.nodes, time.perf_counter() - began)
        cluster.wait_caught_up(STEP_TIMEOUT)
        for run in range(args.runs):
            one_run(cluster, report, Path(root), run)
    print(report.table())
    if args.json:
        report.write_json(args.json)


if __name__ == "__main__":
    main()
