"""Writes on 3-member clusters side by side: Raft processes, etcd and ZooKeeper (issue 12).

In one run the script starts a 3-process ``coordkit serve`` cluster (fsync
on, data on disk), a 3-member etcd and a 3-server ZooKeeper on loopback
(``benchmarks/servers.py``, the test suite's helpers), and measures on each,
through the coordkit API (Python clients: coordkit's Raft client, aetcd,
kazoo), with 256-byte values:

* **sequential latency**: one ``create`` at a time, p50 and p99;
* **throughput**: ``create`` with 64 in flight on one client, writes/s;
* **failover**: a sequential writer runs while the leader's process is
  SIGKILLed (the Raft leader, etcd's leader member, ZooKeeper's leader); the
  time from the signal to the first acknowledged write begun after it. The
  killed member is restarted and the cluster caught up between runs.

Runs are interleaved (run 1 on every backend, then run 2, ...) so that
drifting load hits every backend alike; the table shows medians of ``--runs``
and ratios to ZooKeeper (the issue's reference). A backend whose server is not
installed is skipped, saying why. A benchmark, not a test: nothing here
asserts timings.

    python benchmarks/writes.py                       # 5 runs, 3 s per measurement
    python benchmarks/writes.py --backends raft,etcd --runs 3 --json writes.json
    python benchmarks/writes.py --quick --runs 1      # a smoke run (what CI does)
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import Metric, Report, add_run_arguments
from servers import Cluster, started_clusters
from workloads import WIDTH, failover, in_flight, sequential

BACKENDS = ("raft", "etcd", "zookeeper")

log = logging.getLogger("benchmarks.writes")

METRICS = [
    Metric("seq_p50_ms", "sequential create p50", "ms", "lower", 2, aim=0.8),
    Metric("seq_p99_ms", "sequential create p99", "ms", "lower", 2),
    Metric("inflight_per_s", f"creates/s, {WIDTH} in flight", "1/s", "higher", 0, aim=6400),
    Metric("failover_s", "SIGKILL leader -> next write", "s", "lower", 3, aim=0.4),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(BACKENDS), help="from raft, etcd, zookeeper")
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median shown)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one measurement")
    add_run_arguments(parser, quick="a tiny smoke run")
    args = parser.parse_args()
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    if unknown := sorted(set(wanted) - set(BACKENDS)):
        parser.error(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    args.wanted = wanted
    if args.quick:
        args.seconds = min(args.seconds, 0.3)
    return args


def measure(report: Report, name: str, cluster: Cluster, seconds: float, run: int) -> None:
    """One run on one cluster. A step that fails is noted and left out."""
    url = cluster.url("/bench")

    def step(keys: tuple[str, ...], func: Callable[..., Awaitable[Any]], *a: object) -> None:
        try:
            result = anyio.run(func, *a)
        except Exception as exc:  # one failed step must not lose the other figures
            log.warning("%s %s failed", name, func.__name__, exc_info=True)
            report.notes.append(f"{name} {func.__name__} (run {run + 1}) failed: {exc!r}"[:300])
            return
        values = result if isinstance(result, tuple) else (result,)
        for key, value in zip(keys, values, strict=True):
            report.add(name, key, value)

    step(("seq_p50_ms", "seq_p99_ms"), sequential, url, "create", seconds)
    step(("inflight_per_s",), in_flight, url, "create", seconds)
    try:
        step(("failover_s",), failover, url, cluster)
    finally:
        cluster.heal()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("kazoo", "coordkit"):  # servers are killed on purpose: reconnects expected
        logging.getLogger(noisy).setLevel(logging.ERROR)
    reference = "zookeeper" if "zookeeper" in args.wanted else args.wanted[0]
    report = Report("writes", args.runs, args.quick, reference, METRICS)
    report.settings = {"seconds": args.seconds, "value_bytes": 256, "in_flight": WIDTH}
    with started_clusters(args.wanted, report.notes, args.data_dir) as clusters:
        for name in args.wanted:
            report.add(name, METRICS[0].key, None)  # a column even if skipped
        for run in range(args.runs):
            for name, cluster in clusters.items():
                measure(report, name, cluster, args.seconds, run)
    print(report.table())
    if args.json:
        report.write_json(args.json)


if __name__ == "__main__":
    main()
