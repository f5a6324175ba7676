"""Lock handoffs per second with 8 contenders, per backend side by side in one run.

Each contender has its own client connection and loops ``async with Lock(...)``
for a fixed time; a handoff is one acquisition. Every backend row is the
median of several runs; the ratio column compares with the reference row:
kazoo's own Lock on the same ZooKeeper when a ZooKeeper URL is given, else the
first row.

    python benchmarks/recipes_lock.py                    # memory, plus etcd and ZooKeeper
                                                         # started here (benchmarks/servers.py)
    python benchmarks/recipes_lock.py --backends memory,zookeeper --runs 3
    python benchmarks/recipes_lock.py --etcd etcd://10.0.0.5:2379/bench   # an existing server

URLs may also come from COORDKIT_BENCH_ETCD, COORDKIT_BENCH_ZOOKEEPER and
COORDKIT_BENCH_RAFT. A benchmark, not a test: nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import anyio

import coordkit
from coordkit.plugins import native_recipe
from coordkit.recipes.lock import Lock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import add_backend_arguments, backend_urls

CONTENDERS = 8


class GenericLock(Lock):
    """The recipe's own Lock even where the backend supplies a native one."""


@dataclass
class Row:
    name: str
    rates: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


async def coordkit_run(url: str, lock_class: type[Lock], seconds: float) -> float:
    """Handoffs per second of one run on ``url``."""
    path = f"/bench/lock-{uuid.uuid4().hex}"
    count = 0
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(coordkit.connect(url)) for _ in range(CONTENDERS)
        ]
        await clients[0].ensure_path(path)
        start = anyio.current_time()
        deadline = start + seconds

        async def contend(client: coordkit.Client) -> None:
            nonlocal count
            lock = lock_class(client, path)
            while anyio.current_time() < deadline:
                async with lock:
                    count += 1

        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(contend, client)
        elapsed = anyio.current_time() - start
        await clients[0].delete(path, recursive=True)
    return count / elapsed


def kazoo_run(url: str, seconds: float) -> float:
    """Handoffs per second of kazoo's own Lock, 8 threads with a client each."""
    from kazoo.client import KazooClient

    parts = urlsplit(url)
    hosts = parts.netloc + (parts.path if parts.path not in ("", "/") else "")
    path = f"/bench/kazoo-lock-{uuid.uuid4().hex}"
    clients = [KazooClient(hosts=hosts) for _ in range(CONTENDERS)]
    for client in clients:
        client.start()
    count = 0
    guard = threading.Lock()
    start = time.monotonic()
    deadline = start + seconds

    def contend(client: KazooClient) -> None:
        nonlocal count
        lock = client.Lock(path)
        while time.monotonic() < deadline:
            with lock, guard:
                count += 1

    threads = [threading.Thread(target=contend, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    clients[0].delete(path, recursive=True)
    for client in clients:
        client.stop()
        client.close()
    return count / elapsed


def measure(name: str, run: Callable[[], float], runs: int) -> Row:
    rates = [run() for _ in range(runs)]
    return Row(name, rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_backend_arguments(parser)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one run")
    args = parser.parse_args()
    notes: list[str] = []

    def on(url: str, lock_class: type[Lock] = Lock) -> Callable[[], float]:
        return lambda: anyio.run(coordkit_run, url, lock_class, args.seconds)

    with backend_urls(parser, args, notes) as urls:
        rows: list[Row] = []
        reference: Row | None = None
        for name, url in urls.items():
            native = native_recipe(coordkit.connect(url).backend, "Lock") is not None
            label = f"{name} Lock{' (native)' if native else ''}"
            rows.append(measure(label, on(url), args.runs))
            if native:
                rows.append(measure(f"{name} Lock (generic)", on(url, GenericLock), args.runs))
        if "zookeeper" in urls:
            zookeeper = urls["zookeeper"]
            kazoo = lambda: kazoo_run(zookeeper, args.seconds)  # noqa: E731
            reference = measure("zookeeper kazoo.Lock (reference)", kazoo, args.runs)
            rows.append(reference)
    reference = reference or rows[0]

    print(f"lock handoffs/s, {CONTENDERS} contenders, median of {args.runs} x {args.seconds}s")
    print(f"{'backend':<36} {'median':>10} {'min':>10} {'max':>10} {'ratio':>7}")
    for row in rows:
        print(
            f"{row.name:<36} {row.median:>10.0f} {min(row.rates):>10.0f} "
            f"{max(row.rates):>10.0f} {row.median / reference.median:>7.2f}"
        )
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
