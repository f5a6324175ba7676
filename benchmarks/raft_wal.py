"""The Raft node's write-ahead log: records/s and fsyncs/s, and how to do its file I/O.

Workload: 256-byte entries, one entry per request, every request must_sync.
"Batch 1" saves one request and waits for it before the next (one fsync per
record); "batch 64" submits 64 requests, then waits for the last (group commit:
one write and one fsync for all 64).

Three writers, each a queue drained by one writer task that calls back when
a batch is durable:

- ``thread``: the record bytes of a batch written and fsynced in ONE worker-
  thread call (``anyio.to_thread.run_sync``) -- what WriteAheadLog does;
- ``aiofiles``: the same bytes through aiofiles: ``await write``, ``await
  flush``, ``await fdatasync`` -- three thread hops per batch (asyncio only:
  aiofiles uses asyncio's executor, so it cannot run on trio);
- ``wal``: the real WriteAheadLog (thread variant), end to end: validation,
  encoding, the in-memory view, callbacks; on asyncio and on trio.

Each figure is the median of R runs of about S seconds each, on a tmpfs
(/dev/shm, fsync is nearly free: the cost of the code) and on the disk under
/tmp (fsync pays the device).

Run: .venv/bin/python benchmarks/raft_wal.py [--runs 5] [--seconds 1.0] [--dirs /dev/shm /tmp]
A benchmark, not a test: nothing here asserts speed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiofiles
import aiofiles.os
import anyio
import anyio.to_thread

from coordkit.backends.raft.core import ConfState, Entry, HardState
from coordkit.backends.raft.node.snapshots import SnapshotStore
from coordkit.backends.raft.node.wal import WriteAheadLog, WriteRequest
from coordkit.backends.raft.node.wal_format import (
    encode_entries,
    encode_hard_state,
    file_header,
    frame,
)

PAYLOAD = b"x" * 256
BATCHES = (1, 64)

fdatasync = aiofiles.os.wrap(os.fdatasync)


class Encoder:
    """The log's record bytes for a batch of one-entry requests (the same for every writer)."""

    def __init__(self) -> None:
        self.header, self.crc = file_header(1)

    def encode(self, requests: list[WriteRequest]) -> bytes:
        parts = []
        for r in requests:
            for body, _ in encode_entries(r.entries):
                record, self.crc = frame(body, self.crc)
                parts.append(record)
            if r.hard_state is not None:
                record, self.crc = frame(encode_hard_state(r.hard_state), self.crc)
                parts.append(record)
        return b"".join(parts)


class GroupCommit:
    """A queue drained by one writer task; ``flush(data)`` is the variant's I/O."""

    def __init__(self, flush: Callable[[bytes], Awaitable[None]]) -> None:
        self.flush = flush
        self.encoder = Encoder()
        self.queue: list[tuple[WriteRequest, Callable[[], None]]] = []
        self.work = anyio.Event()
        self.fsyncs = 0

    def submit(self, request: WriteRequest, on_durable: Callable[[], None]) -> None:
        self.queue.append((request, on_durable))
        self.work.set()

    async def run(self) -> None:
        while True:
            while not self.queue:
                self.work = anyio.Event()
                await self.work.wait()
            batch, self.queue = self.queue, []
            await self.flush(self.encoder.encode([r for r, _ in batch]))
            self.fsyncs += 1
            for _, on_durable in batch:
                on_durable()


def request(index: int) -> WriteRequest:
    return WriteRequest((Entry(1, index, data=PAYLOAD),), HardState(1, "n1", index - 1), None, True)


async def drive(
    submit: Callable[[WriteRequest, Callable[[], None]], None], batch: int, seconds: float
) -> int:
    """Save batches until ``seconds`` have passed; returns the number of records saved."""
    index = 1
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        done = anyio.Event()
        for i in range(batch):
            submit(request(index + i), done.set if i == batch - 1 else lambda: None)
        await done.wait()
        index += batch
    return index - 1


async def run_thread(directory: Path, batch: int, seconds: float) -> tuple[float, float]:
    path = directory / "segment"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    limiter = anyio.CapacityLimiter(1)

    def write_and_sync(data: bytes) -> None:
        os.write(fd, data)
        os.fdatasync(fd)

    async def flush(data: bytes) -> None:
        await anyio.to_thread.run_sync(write_and_sync, data, limiter=limiter)

    writer = GroupCommit(flush)
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        start = time.perf_counter()
        records = await drive(writer.submit, batch, seconds)
        elapsed = time.perf_counter() - start
        tg.cancel_scope.cancel()
    os.close(fd)
    return records / elapsed, writer.fsyncs / elapsed


async def run_aiofiles(directory: Path, batch: int, seconds: float) -> tuple[float, float]:
    async with aiofiles.open(directory / "segment", "ab") as f:

        async def flush(data: bytes) -> None:
            await f.write(data)
            await f.flush()
            await fdatasync(f.fileno())

        writer = GroupCommit(flush)
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run)
            start = time.perf_counter()
            records = await drive(writer.submit, batch, seconds)
            elapsed = time.perf_counter() - start
            tg.cancel_scope.cancel()
    return records / elapsed, writer.fsyncs / elapsed


async def run_wal(directory: Path, batch: int, seconds: float) -> tuple[float, float]:
    (directory / "wal").mkdir()
    (directory / "snap").mkdir()
    snapshots = await SnapshotStore.open(directory / "snap")
    wal = await WriteAheadLog.open(
        directory / "wal", snapshots=snapshots, initial_conf=ConfState.of(["n1"])
    )
    async with wal.writer():
        fsyncs = wal.fsyncs
        start = time.perf_counter()
        records = await drive(wal.submit, batch, seconds)
        elapsed = time.perf_counter() - start
        fsyncs = wal.fsyncs - fsyncs
    await wal.close()
    return records / elapsed, fsyncs / elapsed


VARIANTS: dict[str, Callable[[Path, int, float], Awaitable[tuple[float, float]]]] = {
    "thread": run_thread,
    "aiofiles": run_aiofiles,
    "wal": run_wal,
}


COMBOS = {
    "thread": ("thread", "asyncio"),
    "aiofiles": ("aiofiles", "asyncio"),
    "wal": ("wal", "asyncio"),
    "wal-trio": ("wal", "trio"),
}


def run_once(
    variant: str, backend: str, base: Path, batch: int, seconds: float
) -> tuple[float, float]:
    directory = Path(tempfile.mkdtemp(prefix="raft-wal-bench-", dir=base))
    try:
        return anyio.run(VARIANTS[variant], directory, batch, seconds, backend=backend)
    finally:
        shutil.rmtree(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--dirs", nargs="+", default=["/dev/shm", "/tmp"])
    parser.add_argument("--variants", nargs="+", choices=list(COMBOS), default=list(COMBOS))
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    args = parser.parse_args()
    print(f"256-byte entries, must_sync; medians of {args.runs} runs of {args.seconds} s")
    print("(the variants take turns, in a rotating order, so load changes hit them alike)")
    print(f"{'directory':<10} {'variant':<18} {'batch':>5} {'records/s':>11} {'fsyncs/s':>10}")
    for d in args.dirs:
        for batch in args.batches:
            results: dict[str, list[tuple[float, float]]] = {v: [] for v in args.variants}
            for round_ in range(args.runs):
                turn = round_ % len(args.variants)
                for name in args.variants[turn:] + args.variants[:turn]:
                    variant, backend = COMBOS[name]
                    results[name].append(run_once(variant, backend, Path(d), batch, args.seconds))
            for name, runs in results.items():
                variant, backend = COMBOS[name]
                records = statistics.median(r for r, _ in runs)
                fsyncs = statistics.median(f for _, f in runs)
                label = f"{variant} ({backend})"
                print(
                    f"{d:<10} {label:<18} {batch:>5} {records:>11,.0f} {fsyncs:>10,.0f}", flush=True
                )


if __name__ == "__main__":
    main()
