"""Power loss at random points under a stream of saves loses nothing acknowledged.

A single producer plays the Raft node's ready loop against a log on the
crashable file system: appends (sometimes overwriting an uncommitted suffix in
a new term), commit-only hard states without fsync, local snapshots with
compaction, and snapshots installed from a "leader". The power goes off after
a seeded number of file-system changes, possibly tearing unsynced writes. After
the reboot the log must be exactly the state after some prefix of the records
written -- a prefix that contains every request acknowledged with
``must_sync``. Then the producer goes on from there, and the power goes again.

The model below is written independently of the log's replay code: a dict of
entries, the overwrite rule, and the snapshot rules, nothing more.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from powerloss import CrashableFileSystem, PowerLossError
from wal_support import CONF, NodeStorage, entries, open_node, stored, write_snapshot

from coordkit.backends.raft.core import Entry, HardState, SnapshotMeta
from coordkit.backends.raft.node.files import NodeStorageError
from coordkit.backends.raft.node.wal import WriteRequest

pytestmark = pytest.mark.anyio

SEEDS = int(os.environ.get("COORDKIT_WAL_CRASH_SEEDS", "30"))
CYCLES = 3


@dataclass(frozen=True)
class Marker:
    meta: SnapshotMeta
    reset: bool


Record = tuple[Entry, ...] | HardState | Marker


@dataclass
class Model:
    """The log's state after a sequence of records, by the plain rules."""

    log: dict[int, Entry] = field(default_factory=dict)
    last: int = 0
    hard_state: HardState = field(default_factory=HardState)
    snap: SnapshotMeta = field(default_factory=lambda: SnapshotMeta(0, 0, CONF))

    def apply(self, record: Record) -> None:
        if isinstance(record, HardState):
            self.hard_state = record
        elif isinstance(record, Marker):
            if record.meta.index <= self.snap.index:
                return
            self.snap = record.meta
            if record.reset:
                self.log.clear()
                self.last = record.meta.index
        else:
            new = [e for e in record if e.index > self.snap.index]
            if not new:
                return
            for i in range(new[0].index, self.last + 1):
                self.log.pop(i, None)
            self.log.update((e.index, e) for e in new)
            self.last = new[-1].index

    def visible(self) -> list[Entry]:
        return [self.log[i] for i in range(self.snap.index + 1, self.last + 1)]


@dataclass
class Run:
    """The records written so far, and how far acknowledgements with must_sync reach."""

    records: list[Record] = field(default_factory=list)
    acked_upto: int = 0  # every record before this one was acknowledged as durable

    def model(self, upto: int) -> Model:
        m = Model()
        for r in self.records[:upto]:
            m.apply(r)
        return m


def request_records(request: WriteRequest) -> list[Record]:
    out: list[Record] = []
    if request.snapshot is not None:
        out.append(Marker(request.snapshot, reset=True))
    if request.entries:
        out.append(request.entries)
    if request.hard_state is not None:
        out.append(request.hard_state)
    return out


class Producer:
    """The ready loop of a node, with random but Raft-shaped requests."""

    def __init__(self, rng: random.Random, node: NodeStorage, run: Run, model: Model) -> None:
        self.rng = rng
        self.node = node
        self.run = run
        self.last = model.last
        self.term = max(model.hard_state.term, 1)
        self.commit = model.hard_state.commit
        # Only entries written in their latest version are applied, so only those
        # can be in a snapshot (as with the core's async storage writes).
        self.acked_last = model.last
        self.pending: dict[int, int] = {}  # unacknowledged request -> lowest index it rewrites
        self.sequence = 0

    @property
    def written(self) -> int:
        return min([self.acked_last, *(first - 1 for first in self.pending.values())])

    def hard_state(self) -> HardState:
        return HardState(self.term, "n1", self.commit)

    def submit(self, request: WriteRequest) -> anyio.Event:
        done = anyio.Event()
        records = request_records(request)
        self.run.records.extend(records)
        end = len(self.run.records)

        self.sequence += 1
        seq = self.sequence
        if request.snapshot is not None:
            self.pending[seq] = 0
        elif request.entries:
            self.pending[seq] = request.entries[0].index

        def on_durable() -> None:
            if request.must_sync:
                self.run.acked_upto = max(self.run.acked_upto, end)
            if request.entries:
                self.acked_last = request.entries[-1].index
            elif request.snapshot is not None:
                self.acked_last = request.snapshot.index
            self.pending.pop(seq, None)
            done.set()

        self.node.wal.submit(request, on_durable)
        return done

    async def step(self) -> anyio.Event | None:
        rng, wal = self.rng, self.node.wal
        roll = rng.random()
        if roll < 0.75:
            first = self.last + 1
            # A Ready carries a hard state only when it changed.
            hard_state: HardState | None = None
            if rng.random() < 0.15 and self.last > self.commit:
                self.term += 1  # a new leader overwrites the uncommitted suffix
                first = rng.randint(self.commit + 1, self.last)
                hard_state = self.hard_state()
            self.last = first + rng.randint(0, 6)
            if rng.random() < 0.4:
                self.commit = rng.randint(self.commit, first - 1)
                hard_state = self.hard_state()
            ents = entries(first, self.last, self.term, size=rng.choice((8, 40, 300)))
            return self.submit(WriteRequest(ents, hard_state, None, rng.random() < 0.85))
        if roll < 0.85:
            self.commit = rng.randint(self.commit, self.last)
            return self.submit(WriteRequest((), self.hard_state(), None, False))
        if roll < 0.95:
            index = min(self.commit, self.written)
            if index <= wal.snapshot().meta.index:
                return None
            meta = SnapshotMeta(index, wal.term(index), CONF)
            await write_snapshot(self.node.snapshots, meta, size=rng.choice((10, 3000)))
            if wal.snapshot().meta.index >= index:
                return None
            self.run.records.append(Marker(meta, reset=False))
            wal.create_snapshot(index, CONF, b"")
            wal.compact(max(index - rng.choice((0, 5)), wal.first_index() - 1))
            return None
        # A snapshot from a leader of a newer term: past this node's commit index,
        # within or past its log, whose uncommitted suffix it replaces.
        self.term += 1
        index = rng.randint(self.commit + 1, self.last + 20)
        meta = SnapshotMeta(index, self.term, CONF)
        await write_snapshot(self.node.snapshots, meta, size=500)
        self.last = self.commit = index
        return self.submit(WriteRequest((), self.hard_state(), meta, True))

    async def go(self, steps: int) -> None:
        for _ in range(steps):
            await self.node.wal.wait_writable()
            done = await self.step()
            choice = self.rng.random()
            if done is not None and choice < 0.3:
                await done.wait()
            elif choice < 0.7:
                await anyio.lowlevel.checkpoint()


async def power_cycle(rng: random.Random, fs: CrashableFileSystem, root: Path, run: Run) -> Model:
    """Run the producer until the power goes (or it is done), then check the reboot."""
    node = await open_node(root, fs=fs, segment_size=4096)
    model = run.model(len(run.records))
    assert (node.wal.hard_state, stored(node.wal)) == (model.hard_state, model.visible())
    fs.cut_power_after(rng.randrange(3, 500))
    producer = Producer(rng, node, run, model)
    try:
        async with node.wal.writer():
            await producer.go(300)
    except (NodeStorageError, PowerLossError):
        pass
    rebooted = fs.crash(torn=rng.random() < 0.5)

    node = await open_node(root, fs=rebooted, segment_size=4096)
    got = (node.wal.hard_state, node.wal.snapshot().meta, stored(node.wal))
    await node.close()
    found = None
    m = run.model(run.acked_upto)
    for upto in range(run.acked_upto, len(run.records) + 1):
        if upto > run.acked_upto:
            m.apply(run.records[upto - 1])
        # After a reopen the log starts after its snapshot, which may be an older
        # one than the model's newest if that one's marker did not survive.
        if got[0] == m.hard_state and got[2] == m.visible() and got[1] == m.snap:
            found = upto
    assert found is not None, (
        f"recovered {got[0]}, snapshot {got[1].index}, entries up to"
        f" {got[2][-1].index if got[2] else got[1].index}; acknowledged up to record"
        f" {run.acked_upto} of {len(run.records)}"
    )
    del run.records[found:]
    run.acked_upto = found
    return run.model(found)


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_no_acknowledged_save_is_lost_across_power_cuts(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    root = tmp_path / "node"
    root.mkdir()
    fs = CrashableFileSystem(tmp_path, rng)
    run = Run()
    cuts = 0
    for _ in range(CYCLES):
        await power_cycle(rng, fs, root, run)
        fs = CrashableFileSystem(tmp_path, rng)  # a fresh model of the rebooted disk
        cuts += 1
    assert cuts == CYCLES
