"""A power cut while writing a snapshot leaves the old one or the new one, never a broken one.

The power is cut at every file-system change the write makes in turn (and the
unsynced writes torn at random), so every intermediate state of the write is
a crash point.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from powerloss import CrashableFileSystem, PowerLossError
from wal_support import CONF, read_all, snapshot_data, write_snapshot

from coordkit.backends.raft.core import SnapshotMeta
from coordkit.backends.raft.node.snapshots import SnapshotStore

pytestmark = pytest.mark.anyio

OLD = SnapshotMeta(10, 1, CONF)
NEW = SnapshotMeta(20, 2, CONF)


async def test_a_snapshot_write_is_atomic_under_power_loss(tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    snap.mkdir()
    fs = CrashableFileSystem(tmp_path, random.Random(1))
    await write_snapshot(await SnapshotStore.open(snap, fs=fs), OLD, size=3_000_000)
    interrupted = 0
    for cut in range(200):
        fs.cut_power_after(cut)
        try:
            await write_snapshot(await SnapshotStore.open(snap, fs=fs), NEW, size=3_000_000)
        except PowerLossError:
            interrupted += 1
        else:
            # The write returned: the new snapshot is durable. The power goes now.
            fs = fs.crash(torn=True)
            store = await SnapshotStore.open(snap, fs=fs)
            assert await store.latest() == NEW
            assert await read_all(store, NEW) == snapshot_data(NEW, 3_000_000)
            break
        fs = fs.crash(torn=cut % 2 == 1)
        store = await SnapshotStore.open(snap, fs=fs)
        # Interrupted before the renamed entry was made durable: only the old one.
        assert await store.latest() == OLD, f"cut after {cut} changes"
        assert store.metas() == [OLD]
        assert await read_all(store, OLD) == snapshot_data(OLD, 3_000_000)
        assert not [p for p in snap.iterdir() if p.name.endswith(".tmp")]
    else:
        pytest.fail("the write never completed")
    assert interrupted > 5  # create, writes, fsync, rename, directory fsync


async def test_received_chunks_are_atomic_under_power_loss(tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    snap.mkdir()
    fs = CrashableFileSystem(tmp_path, random.Random(2))
    data = snapshot_data(NEW, 2_500_000)
    for cut in range(0, 40, 3):
        fs.cut_power_after(cut)
        try:
            receiver = (await SnapshotStore.open(snap, fs=fs)).begin_receive(NEW)
            for at in range(0, len(data), 700_000):
                await receiver.write(data[at : at + 700_000])
            await receiver.commit()
        except PowerLossError:
            pass
        fs = fs.crash(torn=True)
        store = await SnapshotStore.open(snap, fs=fs)
        if store.contains(NEW):
            assert await read_all(store, NEW) == data
        assert await store.latest() in (None, NEW)
