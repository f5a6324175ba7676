"""Write workloads through the coordkit API, shared by writes.py and service.py.

* :func:`sequential` — one write at a time on one client; the latency of each.
* :func:`in_flight` — ``width`` writers on one client, each starting its next
  write as soon as the last is acknowledged (``width`` writes in flight), for
  a fixed time; writes per second.
* :func:`failover` — a sequential writer runs while the cluster's leader is
  SIGKILLed; the time from the signal to the first acknowledged write that
  was started after it.

A write is ``create`` of a new node of 256 bytes, or ``set`` of an existing
one (one node per writer, so writers never conflict).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import anyio
import anyio.to_thread
from report import percentile
from servers import Cluster

import coordkit
from coordkit import CoordkitError

log = logging.getLogger("benchmarks.workloads")

VALUE = bytes(range(256))
WIDTH = 64
WARMUP = 20
#: One write attempt during a failover gives up after this long and the next begins.
ATTEMPT_TIMEOUT = 5.0
FAILOVER_TIMEOUT = 60.0

Write = Callable[[int], Awaitable[object]]


async def _writes(client: coordkit.Client, kind: str, width: int) -> tuple[str, Write]:
    """A fresh parent node and the write ``kind`` ("create" or "set") number ``i`` does."""
    parent = f"/w-{uuid.uuid4().hex[:12]}"
    await client.ensure_path(parent)
    if kind == "create":
        return parent, lambda i: client.create(f"{parent}/n{i}", VALUE)
    async with anyio.create_task_group() as tg:
        for slot in range(width):
            tg.start_soon(client.create, f"{parent}/{slot}", VALUE)
    return parent, lambda i: client.set(f"{parent}/{i % width}", VALUE)


async def sequential(url: str, kind: str, seconds: float) -> tuple[float, float]:
    """p50 and p99 latency (ms) of writes one at a time for ``seconds``."""
    latencies: list[float] = []
    async with coordkit.connect(url) as client:
        parent, write = await _writes(client, kind, 1)
        for i in range(WARMUP):
            await write(-i - 1 if kind == "create" else i)
        deadline = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < deadline or len(latencies) < 10:
            began = time.perf_counter()
            await write(i)
            latencies.append(time.perf_counter() - began)
            i += 1
        await client.delete(parent, recursive=True)
    return percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000


async def in_flight(url: str, kind: str, seconds: float, width: int = WIDTH) -> float:
    """Writes per second with ``width`` in flight on one client."""
    async with coordkit.connect(url) as client:
        parent, write = await _writes(client, kind, width)
        for i in range(WARMUP):
            await write(-i - 1 if kind == "create" else i)
        done = 0
        began = time.perf_counter()
        deadline = began + seconds

        async def writer(slot: int) -> None:
            nonlocal done
            i = slot
            while time.perf_counter() < deadline:
                await write(i)
                done += 1
                i += width

        async with anyio.create_task_group() as tg:
            for slot in range(width):
                tg.start_soon(writer, slot)
        elapsed = time.perf_counter() - began
        await client.delete(parent, recursive=True)
    return done / elapsed


async def failover(url: str, cluster: Cluster) -> float:
    """Seconds from SIGKILL of the leader to the next acknowledged write begun after it."""
    acked: list[tuple[float, float]] = []  # (began, acknowledged) of each write
    errors: dict[str, int] = {}
    progress = anyio.Event()

    async with coordkit.connect(url) as client:
        parent, write = await _writes(client, "create", 1)

        async def writer() -> None:
            nonlocal progress
            i = 0
            while True:
                i += 1
                began = time.perf_counter()
                try:
                    with anyio.fail_after(ATTEMPT_TIMEOUT):
                        await write(i)
                except (CoordkitError, TimeoutError) as exc:
                    # Expected while the leader is gone: the next write tries again.
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                acked.append((began, time.perf_counter()))
                progress.set()
                progress = anyio.Event()

        async def acked_after(at: float) -> float | None:
            after = [done for began, done in acked if began >= at]
            return min(after) - at if after else None

        with anyio.fail_after(FAILOVER_TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer)
                while len(acked) < WARMUP:
                    await progress.wait()
                killed = await anyio.to_thread.run_sync(cluster.kill_leader)
                while (seconds := await acked_after(killed.at)) is None:
                    await progress.wait()
                tg.cancel_scope.cancel()
        if errors:
            log.info("%s: failover of %s: errors meanwhile %s", url, killed.name, errors)
        with anyio.fail_after(FAILOVER_TIMEOUT):
            await client.delete(parent, recursive=True)
    return seconds
