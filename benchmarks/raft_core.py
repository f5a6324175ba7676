"""Micro-benchmark of the sans-I/O Raft core: committed entries per second, no I/O.

Three RaftCores exchange messages in memory (persisting to MemoryStorage) as
fast as they can. Modes:

- batched: 64 proposals per Ready cycle; the leader sends one append per
  follower per Ready, carrying all of them (``batch_appends``, 1 MiB messages);
- batch call: the same 64 commands in one ``propose([...])`` call;
- async: batched, with ``async_storage_writes``: each round's writes complete
  (``persisted()``) only after its messages went out, as with a real disk;
- unbatched: one proposal per Ready cycle, one entry per append message.

Also reports the deterministic simulator's throughput (random fault schedules
per second, as run by tests/backends/raft/core/test_raft_soak.py).

Run: .venv/bin/python benchmarks/raft_core.py [--entries N] [--runs R] [--schedules S]
Prints medians of R runs. A benchmark, not a test: nothing here asserts speed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

from coordkit.backends.raft.core import (
    ConfState,
    MemoryStorage,
    Message,
    RaftConfig,
    RaftCore,
    Ready,
    Role,
)

PAYLOAD = b"x" * 64


class Pump:
    """Delivers every message at once, handling Readies as the contract says.

    With asynchronous writes, the writes handed out in one round become
    durable together at its end (one "fsync" per node per round), after that
    round's messages were sent.
    """

    def __init__(self, config: RaftConfig) -> None:
        rng = random.Random(0)
        ids = ["n1", "n2", "n3"]
        self.disks = {i: MemoryStorage(ConfState.of(ids)) for i in ids}
        self.cores = {i: RaftCore(i, self.disks[i], config, rng) for i in ids}
        self.in_flight: dict[str, list[Ready]] = {i: [] for i in ids}
        self.applied = 0

    def _write(self, nid: str, rd: Ready) -> None:
        disk = self.disks[nid]
        if rd.entries:
            disk.append(rd.entries)
        if rd.hard_state is not None:
            disk.set_hard_state(rd.hard_state)

    def drain(self) -> None:
        queue: list[Message] = []
        pending = list(self.cores)
        while pending or queue:
            for nid in pending:
                core = self.cores[nid]
                while core.has_ready():
                    rd = core.ready()
                    if core.cfg.async_storage_writes:
                        self.in_flight[nid].append(rd)
                    else:
                        self._write(nid, rd)
                    queue.extend(rd.messages)
                    if nid == "n1":
                        self.applied += len(rd.committed_entries)
                    core.advance(rd)
            pending = []
            for nid, readies in self.in_flight.items():
                for rd in readies:
                    self._write(nid, rd)
                    self.cores[nid].persisted(rd)
                    queue.extend(rd.persisted_messages)
                if readies:
                    readies.clear()
                    pending.append(nid)
            for m in queue:
                self.cores[m.to].step(m)
                if m.to not in pending:
                    pending.append(m.to)
            queue = []


MODES = {
    # name: (config, proposals per cycle, one propose() call per cycle)
    "batched": (RaftConfig(max_size_per_msg=1 << 20, max_inflight_msgs=256), 64, False),
    "batch call": (RaftConfig(max_size_per_msg=1 << 20, max_inflight_msgs=256), 64, True),
    "async": (
        RaftConfig(max_size_per_msg=1 << 20, max_inflight_msgs=256, async_storage_writes=True),
        64,
        False,
    ),
    "unbatched": (
        RaftConfig(batch_appends=False, max_size_per_msg=0, max_inflight_msgs=256),
        1,
        False,
    ),
}


def committed_per_second(mode: str, entries: int) -> float:
    config, per_cycle, one_call = MODES[mode]
    pump = Pump(config)
    leader = pump.cores["n1"]
    leader.campaign()
    pump.drain()
    assert leader.role is Role.LEADER
    start_applied = pump.applied
    start = time.perf_counter()
    proposed = 0
    while proposed < entries:
        if one_call:
            leader.propose([PAYLOAD] * per_cycle)
        else:
            for _ in range(per_cycle):
                leader.propose(PAYLOAD)
        proposed += per_cycle
        pump.drain()
    elapsed = time.perf_counter() - start
    committed = pump.applied - start_applied
    assert committed >= entries, (committed, entries)
    return committed / elapsed


def schedules_per_second(count: int) -> float:
    here = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(here / "tests" / "backends" / "raft" / "core"))
    from sim.schedule import run_schedule

    start = time.perf_counter()
    for seed in range(count):
        run_schedule(seed)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--schedules", type=int, default=200)
    args = parser.parse_args()
    rates = {}
    for mode in MODES:
        count = args.entries if MODES[mode][1] > 1 else args.entries // 4
        rates[mode] = statistics.median(committed_per_second(mode, count) for _ in range(args.runs))
    print(f"3-node Raft core, no I/O, {len(PAYLOAD)}-byte entries, median of {args.runs} runs")
    print(f"{'mode':<12}{'entries/s':>14}")
    for mode, rate in rates.items():
        print(f"{mode:<12}{rate:>14,.0f}")
    print(f"{'batched/unbatched':<18}{rates['batched'] / rates['unbatched']:>7.1f}x")
    if args.schedules:
        rate = statistics.median(schedules_per_second(args.schedules) for _ in range(3))
        print(f"simulator: {rate:,.1f} fault schedules/s (median of 3 x {args.schedules})")


if __name__ == "__main__":
    main()
