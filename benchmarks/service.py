"""The coordination service side by side through the coordkit API (issue 13).

Backends, in one run: ``raft://`` (3 ``coordkit serve`` processes, fsync on,
data on disk), ``raft+embedded://`` (3 nodes inside this process, data on
disk), etcd (3 members), ZooKeeper (3 servers) and ``memory://``. On each:

* **create / set**: 256-byte writes, 64 in flight on one client (writes/s),
  and one at a time (p50, p99 latency);
* **lock**: handoffs/s of one :class:`~coordkit.recipes.Lock` between 8
  contenders, each on its own client (``recipes_lock.py``'s workload);
* **queue**: items/s taken from one :class:`~coordkit.recipes.Queue` fed by
  one producer, by ``--consumers`` consumers (3), each on its own client,
  over ``--seconds`` of steady work;
* **watch**: delivery latency of a ``set`` to 100 watches of that node
  (10 clients with 10 watches each), p50 and p99 over every delivery; the
  next ``set`` waits until all 100 saw the last one;
* **idle sessions**: ``--sessions`` clients (1,000) connect and stay idle;
  the CPU seconds per second the servers spend on them over ``--idle-seconds``
  (utime + stime of /proc/PID/stat of every server process; for
  ``raft+embedded://`` and ``memory://`` this process itself, which also runs
  the 1,000 clients' keepalives), beside the same figure with one session.

Runs are interleaved across backends (run 1 on each, then run 2, ...); the
table shows medians of ``--runs`` and ratios to ZooKeeper. A backend whose
server is not installed is skipped, saying why. A benchmark, not a test:
nothing here asserts timings.

    python benchmarks/service.py                        # 5 runs of everything
    python benchmarks/service.py --backends raft,memory --runs 3 --json service.json
    python benchmarks/service.py --quick --runs 1       # a smoke run (what CI does)
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipes_lock import CONTENDERS
from recipes_lock import coordkit_run as lock_run
from report import Metric, Report, add_run_arguments, percentile
from servers import cpu_seconds, started_clusters
from workloads import WIDTH, in_flight, sequential

import coordkit
from coordkit.backends.raft.embedded import stop_all
from coordkit.errors import ConnectionLostError, OperationTimeoutError
from coordkit.recipes.lock import Lock
from coordkit.recipes.queue import Queue
from coordkit.retry import RetryPolicy

BACKENDS = ("raft", "raft_embedded", "etcd", "zookeeper", "memory")
SERVERS = ("raft", "etcd", "zookeeper")
WATCH_CLIENTS = 10
WATCHES_PER_CLIENT = 10
CONNECTING = 32  # sessions being opened at once
CONNECT_RETRY = RetryPolicy(initial_delay=0.1, max_delay=2.0, max_attempts=10)
STEPS = ("create", "set", "lock", "queue", "watch", "idle")
STEP_TIMEOUT = 300.0

log = logging.getLogger("benchmarks.service")

METRICS = [
    Metric("create_inflight_per_s", f"create/s, {WIDTH} in flight", "1/s", "higher", 0),
    Metric("set_inflight_per_s", f"set/s, {WIDTH} in flight", "1/s", "higher", 0),
    Metric("create_p50_ms", "sequential create p50", "ms", "lower", 2),
    Metric("create_p99_ms", "sequential create p99", "ms", "lower", 2),
    Metric("set_p50_ms", "sequential set p50", "ms", "lower", 2),
    Metric("set_p99_ms", "sequential set p99", "ms", "lower", 2),
    Metric(
        "lock_handoffs_per_s", f"lock handoffs/s, {CONTENDERS} clients", "1/s", "higher", 0, aim=600
    ),
    Metric("queue_items_per_s", "queue items/s", "1/s", "higher", 0),
    Metric("watch_p50_ms", "watch delivery p50, 100 watches", "ms", "lower", 2),
    Metric("watch_p99_ms", "watch delivery p99, 100 watches", "ms", "lower", 2, aim=10),
    Metric("idle_cpu_none", "server CPU, 1 session", "s/s", "lower", 3),
    Metric("idle_cpu_sessions", "server CPU, idle sessions", "s/s", "lower", 3),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help=f"from {', '.join(BACKENDS)}"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median shown)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one write/lock run")
    parser.add_argument("--consumers", type=int, default=3, help="queue consumers")
    parser.add_argument("--watch-events", type=int, default=50, help="sets seen by the watches")
    parser.add_argument("--sessions", type=int, default=1000, help="idle sessions")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="CPU measuring window")
    parser.add_argument(
        "--idle-runs",
        type=int,
        default=1,
        help="runs that measure idle sessions (1: the first only; 1,000 clients are slow to open)",
    )
    parser.add_argument(
        "--steps", default=",".join(STEPS), help=f"which measurements, from {', '.join(STEPS)}"
    )
    add_run_arguments(parser, quick="a tiny smoke run", verbose="log how long each step takes")
    args = parser.parse_args()
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    if unknown := sorted(set(wanted) - set(BACKENDS)):
        parser.error(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    args.wanted = wanted
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if unknown := sorted(set(args.steps) - set(STEPS)):
        parser.error(f"unknown steps {unknown}; choose from {', '.join(STEPS)}")
    if args.quick:
        args.seconds = min(args.seconds, 0.3)
        args.watch_events = min(args.watch_events, 3)
        args.sessions = min(args.sessions, 20)
        args.idle_seconds = min(args.idle_seconds, 0.5)
    return args


async def watch_run(url: str, events: int) -> tuple[float, float]:
    """p50 and p99 (ms) from a ``set`` to its event at each of 100 watches."""
    path = f"/watched-{uuid.uuid4().hex[:12]}"
    watches = WATCH_CLIENTS * WATCHES_PER_CLIENT
    delays: list[float] = []
    sent = 0.0
    state = {"ready": 0, "seen": 0}
    ready, all_seen = anyio.Event(), anyio.Event()

    async def watch(client: coordkit.Client) -> None:
        nonlocal all_seen
        async with client.watch(path) as stream:
            state["ready"] += 1
            if state["ready"] == watches:
                ready.set()
            async for _event in stream:
                delays.append(time.perf_counter() - sent)
                state["seen"] += 1
                if state["seen"] == watches:
                    all_seen.set()

    async with coordkit.connect(url) as writer:
        await writer.create(path, b"0")
        clients: list[coordkit.Client] = []

        async def open_client() -> None:
            clients.append(await coordkit.connect(url).__aenter__())

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(WATCH_CLIENTS):
                    tg.start_soon(open_client)
            with anyio.fail_after(STEP_TIMEOUT):
                async with anyio.create_task_group() as tg:
                    for client in clients:
                        for _ in range(WATCHES_PER_CLIENT):
                            tg.start_soon(watch, client)
                    await ready.wait()
                    for n in range(events):
                        state["seen"] = 0
                        all_seen = anyio.Event()
                        sent = time.perf_counter()
                        await writer.set(path, b"%d" % n)
                        await all_seen.wait()
                    tg.cancel_scope.cancel()
        finally:
            for client in clients:
                await client.__aexit__(None, None, None)
        await writer.delete(path)
    return percentile(delays, 0.5) * 1000, percentile(delays, 0.99) * 1000


async def queue_run(url: str, seconds: float, consumers: int) -> float:
    """Items/s taken from one Queue fed by one producer, over ``seconds`` of steady work."""
    path = f"/queue-{uuid.uuid4().hex[:12]}"
    taken = 0
    clients: list[coordkit.Client] = []

    async def open_client() -> None:
        clients.append(await coordkit.connect(url).__aenter__())

    async def produce(client: coordkit.Client) -> None:
        queue = Queue(client, path)
        n = 0
        while True:
            await queue.put(b"%d" % n)
            n += 1
            await anyio.lowlevel.checkpoint()  # memory:// may never yield by itself

    async def consume(client: coordkit.Client) -> None:
        nonlocal taken
        queue = Queue(client, path)
        while True:
            await queue.get()
            taken += 1
            await anyio.lowlevel.checkpoint()

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(1 + consumers):
                tg.start_soon(open_client)
        await clients[0].ensure_path(path)
        with anyio.fail_after(STEP_TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(produce, clients[0])
                for client in clients[1:]:
                    tg.start_soon(consume, client)
                began, before = time.perf_counter(), taken
                await anyio.sleep(seconds)  # the measuring window itself
                rate = (taken - before) / (time.perf_counter() - began)
                tg.cancel_scope.cancel()
        with anyio.fail_after(STEP_TIMEOUT):
            await clients[0].delete(path, recursive=True)
    finally:
        for client in clients:
            await client.__aexit__(None, None, None)
    return rate


def process_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


async def idle_run(url: str, pids: list[int], sessions: int, seconds: float) -> tuple[float, float]:
    """CPU s/s of ``pids`` with one client (the baseline), then with ``sessions`` idle ones."""
    async with coordkit.connect(url):  # also starts an embedded cluster not yet running
        began, before = time.perf_counter(), process_cpu(pids)
        await anyio.sleep(seconds)  # the measuring window itself
        none = (process_cpu(pids) - before) / (time.perf_counter() - began)

    opened = 0
    all_open, done = anyio.Event(), anyio.Event()
    limiter = anyio.CapacityLimiter(CONNECTING)

    async def session() -> None:
        nonlocal opened
        async with limiter:
            # Opening 1,000 sessions at once can outlast a connect timeout on a busy
            # machine; what is measured is the cost of the open sessions, so try again.
            client = await CONNECT_RETRY.call(
                lambda: coordkit.connect(url).__aenter__(),  # a new client each attempt
                retry_on=(ConnectionLostError, OperationTimeoutError),
                what="open an idle session",
                logger=log,
            )
        try:
            opened += 1
            if opened == sessions:
                all_open.set()
            await done.wait()
        finally:
            await client.__aexit__(None, None, None)

    with anyio.fail_after(STEP_TIMEOUT):
        async with anyio.create_task_group() as tg:
            for _ in range(sessions):
                tg.start_soon(session)
            await all_open.wait()
            began, before = time.perf_counter(), process_cpu(pids)
            await anyio.sleep(seconds)  # the measuring window itself
            busy = (process_cpu(pids) - before) / (time.perf_counter() - began)
            done.set()
    return none, busy


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    for noisy in ("kazoo", "coordkit"):  # embedded nodes log peers not yet up, etc.
        logging.getLogger(noisy).setLevel(logging.ERROR)
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)
    reference = "zookeeper" if "zookeeper" in args.wanted else args.wanted[0]
    report = Report("service", args.runs, args.quick, reference, METRICS)
    report.settings = {
        "seconds": args.seconds,
        "value_bytes": 256,
        "in_flight": WIDTH,
        "lock_contenders": CONTENDERS,
        "queue": {"producers": 1, "consumers": args.consumers},
        "watches": WATCH_CLIENTS * WATCHES_PER_CLIENT,
        "watch_events": args.watch_events,
        "sessions": args.sessions,
        "idle_seconds": args.idle_seconds,
        "idle_runs": min(args.idle_runs, args.runs),
    }
    for name in args.wanted:
        report.add(name, METRICS[0].key, None)  # a column even if skipped
    embedded_dir = Path(tempfile.mkdtemp(prefix="coordkit-bench-embedded-", dir=args.data_dir))
    servers = [b for b in args.wanted if b in SERVERS]
    try:
        with started_clusters(servers, report.notes, args.data_dir) as clusters:
            urls: dict[str, tuple[str, list[int]]] = {}
            for name in args.wanted:
                if name in clusters:
                    urls[name] = (clusters[name].url("/bench"), clusters[name].pids())
                elif name == "raft_embedded":
                    url = f"raft+embedded://bench/bench?nodes=3&data_dir={embedded_dir}"
                    urls[name] = (url, [os.getpid()])
                elif name == "memory":
                    urls[name] = ("memory://bench", [os.getpid()])
            for run in range(args.runs):
                for name, (url, pids) in urls.items():
                    measure(report, name, url, pids, args, run)
    finally:
        stop_all()
        shutil.rmtree(embedded_dir, ignore_errors=True)
    print(report.table())
    if args.json:
        report.write_json(args.json)


def measure(
    report: Report, name: str, url: str, pids: list[int], args: argparse.Namespace, run: int
) -> None:
    """One run of every step on one backend. A step that fails is noted and left out."""

    def step(
        keys: tuple[str, ...], what: str, func: Callable[..., Awaitable[Any]], *a: object
    ) -> None:
        began = time.perf_counter()
        try:
            result = anyio.run(func, *a)
        except Exception as exc:  # one failed step must not lose the other figures
            log.warning("%s %s failed", name, what, exc_info=True)
            report.notes.append(f"{name} {what} (run {run + 1}) failed: {exc!r}"[:300])
            return
        log.info("%s %s: %.1f s", name, what, time.perf_counter() - began)
        values = result if isinstance(result, tuple) else (result,)
        for key, value in zip(keys, values, strict=True):
            report.add(name, key, value)

    for kind in ("create", "set"):
        if kind in args.steps:
            keys = (f"{kind}_inflight_per_s",)
            step(keys, f"{kind} in flight", in_flight, url, kind, args.seconds)
            keys = (f"{kind}_p50_ms", f"{kind}_p99_ms")
            step(keys, f"sequential {kind}", sequential, url, kind, args.seconds)
    if "lock" in args.steps:
        step(("lock_handoffs_per_s",), "lock", lock_run, url, Lock, args.seconds)
    if "queue" in args.steps:
        step(("queue_items_per_s",), "queue", queue_run, url, args.seconds, args.consumers)
    if "watch" in args.steps:
        step(("watch_p50_ms", "watch_p99_ms"), "watch", watch_run, url, args.watch_events)
    if "idle" in args.steps and run < args.idle_runs:
        keys = ("idle_cpu_none", "idle_cpu_sessions")
        step(keys, "idle sessions", idle_run, url, pids, args.sessions, args.idle_seconds)


if __name__ == "__main__":
    main()
