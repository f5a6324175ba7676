"""Helpers for the Raft node storage tests: open a node's storage, make entries and snapshots."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordkit.backends.raft.core import ConfState, Entry, EntryType, HardState, SnapshotMeta
from coordkit.backends.raft.node.datadir import DataDir
from coordkit.backends.raft.node.files import OS_FILES, FileSystem
from coordkit.backends.raft.node.snapshots import SnapshotStore
from coordkit.backends.raft.node.wal import WriteAheadLog, WriteRequest

CONF = ConfState.of(["n1", "n2", "n3"])


def entry(index: int, term: int, size: int = 24) -> Entry:
    """A deterministic entry: its payload names its index and term."""
    head = f"{index}@{term}:".encode()
    return Entry(term, index, EntryType.NORMAL, (head * (size // len(head) + 1))[:size])


def entries(first: int, last: int, term: int, size: int = 24) -> tuple[Entry, ...]:
    return tuple(entry(i, term, size) for i in range(first, last + 1))


def append(first: int, last: int, term: int, *, commit: int = 0, sync: bool = True) -> WriteRequest:
    """Entries ``first..last`` of ``term`` and the hard state that goes with them."""
    return WriteRequest(entries(first, last, term), HardState(term, "n1", commit), None, sync)


def stored(wal: WriteAheadLog) -> list[Entry]:
    """Every entry the log serves (after its compaction point)."""
    return wal.entries(wal.first_index(), wal.last_index() + 1)


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def snapshot_data(meta: SnapshotMeta, size: int = 5000) -> bytes:
    seed = f"state@{meta.index}/{meta.term};".encode()
    return (seed * (size // len(seed) + 1))[:size]


async def write_snapshot(store: SnapshotStore, meta: SnapshotMeta, size: int = 5000) -> bytes:
    data = snapshot_data(meta, size)
    await store.write(meta, chunks_of(data, 1000))
    return data


async def read_all(store: SnapshotStore, meta: SnapshotMeta) -> bytes:
    return b"".join([c async for c in store.read(meta)])


@dataclass
class NodeStorage:
    """A node's opened storage: data directory, snapshot store, write-ahead log."""

    data: DataDir
    snapshots: SnapshotStore
    wal: WriteAheadLog

    async def close(self) -> None:
        await self.wal.close()
        await self.data.close()


async def open_node(
    root: Path, fs: FileSystem = OS_FILES, conf: ConfState | None = CONF, **wal_options: Any
) -> NodeStorage:
    data = await DataDir.open(root, cluster_id="c1", node_id="n1", fs=fs)
    snapshots = await SnapshotStore.open(data.snap_dir, fs=fs)
    wal = await WriteAheadLog.open(
        data.wal_dir, snapshots=snapshots, fs=fs, initial_conf=conf, **wal_options
    )
    return NodeStorage(data, snapshots, wal)
