"""The write-ahead log: what is saved comes back, through the core's Storage contract.

Round trips across reopen, suffix overwrite, rotation, compaction deleting
segments, installed snapshots, the initial configuration, and bad requests
refused without changing anything.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from wal_support import (
    CONF,
    append,
    entries,
    entry,
    open_node,
    stored,
    write_snapshot,
)

from coordkit.backends.raft.core import (
    CompactedError,
    ConfState,
    HardState,
    SnapshotMeta,
    UnavailableError,
)
from coordkit.backends.raft.node.files import NodeStorageError, StorageBusyError
from coordkit.backends.raft.node.wal import WriteAheadLog, WriteRequest
from coordkit.errors import InvalidArgumentError

pytestmark = pytest.mark.anyio


async def test_a_new_log_starts_empty_with_the_initial_configuration(tmp_path: Path) -> None:
    node = await open_node(tmp_path)
    wal = node.wal
    assert (wal.first_index(), wal.last_index()) == (1, 0)
    assert wal.initial_state() == (HardState(), CONF)
    assert wal.term(0) == 0
    assert wal.snapshot().meta == SnapshotMeta(0, 0, CONF)
    await node.close()
    # The configuration is on disk: a reopen without one still has it, a different one is ignored.
    node = await open_node(tmp_path, conf=ConfState.of(["x"]))
    assert node.wal.initial_state()[1] == CONF
    await node.close()


async def test_saved_entries_and_hard_state_come_back_after_reopen(tmp_path: Path) -> None:
    node = await open_node(tmp_path)
    async with node.wal.writer():
        await node.wal.save(append(1, 5, term=1, commit=3))
        await node.wal.save(append(6, 9, term=2, commit=7))
    assert stored(node.wal) == list(entries(1, 5, 1) + entries(6, 9, 2))
    await node.close()

    node = await open_node(tmp_path)
    wal = node.wal
    assert stored(wal) == list(entries(1, 5, 1) + entries(6, 9, 2))
    assert wal.initial_state() == (HardState(2, "n1", 7), CONF)
    assert (wal.first_index(), wal.last_index(), wal.term(5), wal.term(6)) == (1, 9, 1, 2)
    await node.close()


async def test_reads_follow_the_storage_contract(tmp_path: Path) -> None:
    node = await open_node(tmp_path)
    wal = node.wal
    async with wal.writer():
        await wal.save(append(1, 10, term=1))
    assert wal.entries(3, 6) == list(entries(3, 5, 1))
    # max_size bounds the bytes but always returns at least one entry.
    assert len(wal.entries(1, 11, max_size=1)) == 1
    assert len(wal.entries(1, 11, max_size=2 * entry(1, 1).size)) == 2
    with pytest.raises(UnavailableError):
        wal.entries(5, 12)
    with pytest.raises(UnavailableError):
        wal.term(11)
    with pytest.raises(CompactedError):
        wal.entries(0, 3)
    await node.close()


async def test_an_overwritten_suffix_is_replaced_now_and_after_reopen(tmp_path: Path) -> None:
    node = await open_node(tmp_path)
    async with node.wal.writer():
        await node.wal.save(append(1, 10, term=1))
        await node.wal.save(append(6, 8, term=2))  # a new leader overwrites 6..10
    expected = list(entries(1, 5, 1) + entries(6, 8, 2))
    assert stored(node.wal) == expected
    await node.close()
    node = await open_node(tmp_path)
    assert stored(node.wal) == expected
    await node.close()


async def test_segments_rotate_at_the_size_setting_and_replay_across_them(tmp_path: Path) -> None:
    node = await open_node(tmp_path, segment_size=4096)
    async with node.wal.writer():
        for first in range(1, 800, 10):
            await node.wal.save(append(first, first + 9, term=1, commit=first))
    assert node.wal.segment_count > 5
    files = sorted((tmp_path / "wal").iterdir())
    assert all(f.stat().st_size <= 4096 for f in files)
    await node.close()
    node = await open_node(tmp_path, segment_size=4096)
    assert stored(node.wal) == list(entries(1, 800, 1))
    assert node.wal.hard_state.commit == 791
    await node.close()


async def test_compaction_deletes_segments_covered_by_a_durable_snapshot(tmp_path: Path) -> None:
    node = await open_node(tmp_path, segment_size=4096)
    wal = node.wal
    async with wal.writer():
        for first in range(1, 400, 10):
            await wal.save(append(first, first + 9, term=1, commit=first + 9))
        before = wal.segment_count
        meta = SnapshotMeta(300, 1, CONF)
        await write_snapshot(node.snapshots, meta)
        snap = wal.create_snapshot(300, CONF, b"")
        assert snap.meta == meta and snap.data == b""
        wal.compact(290)  # keep a tail of 10 for slow followers
        assert (wal.first_index(), wal.snapshot().meta) == (291, meta)
        await wal.save(append(401, 401, term=1, commit=401))  # the marker is durable by now
    assert wal.segment_count < before
    await node.close()

    node = await open_node(tmp_path, segment_size=4096)
    assert node.wal.snapshot().meta == meta
    assert node.wal.first_index() == 301  # a reopened log starts after its snapshot
    assert stored(node.wal) == list(entries(301, 401, 1))
    await node.close()


async def test_deleted_segments_take_no_state_with_them(tmp_path: Path) -> None:
    """The hard state and snapshot marker live on in every later segment's first records."""
    node = await open_node(tmp_path, segment_size=4096)
    wal = node.wal
    meta = SnapshotMeta(40, 1, CONF)
    async with wal.writer():
        await wal.save(append(1, 40, term=1, commit=40))
        await write_snapshot(node.snapshots, meta)
        wal.create_snapshot(40, CONF, b"")
        wal.compact(40)
        # Entries alone (no hard state, no marker) until the segments holding those are gone.
        index = 41
        while wal.segment_count < 3:
            await wal.save(WriteRequest(entries(index, index + 9, 1), must_sync=True))
            index += 10
        await write_snapshot(node.snapshots, SnapshotMeta(index - 1, 1, CONF))
        wal.create_snapshot(index - 1, CONF, b"")
        wal.compact(index - 1)
        await wal.save(WriteRequest(entries(index, index, 1), must_sync=True))
        assert wal.segment_count == 1
    await node.close()
    node = await open_node(tmp_path, segment_size=4096)
    assert node.wal.hard_state == HardState(1, "n1", 40)
    assert node.wal.snapshot().meta == SnapshotMeta(index - 1, 1, CONF)
    assert stored(node.wal) == list(entries(index, index, 1))
    await node.close()


@pytest.mark.parametrize("log_end", [20, 80])
async def test_an_installed_snapshot_replaces_the_whole_log(tmp_path: Path, log_end: int) -> None:
    """Also the entries past the snapshot's index: they are an overwritten suffix."""
    node = await open_node(tmp_path)
    wal = node.wal
    meta = SnapshotMeta(50, 3, ConfState.of(["n1", "n2"]))
    await write_snapshot(node.snapshots, meta)
    async with wal.writer():
        await wal.save(append(1, log_end, term=1))
        install = WriteRequest(snapshot=meta, hard_state=HardState(3, None, 50), must_sync=True)
        await wal.save(install)
        assert (wal.first_index(), wal.last_index(), wal.term(50)) == (51, 50, 3)
        await wal.save(append(51, 55, term=3, commit=52))
    await node.close()
    node = await open_node(tmp_path)
    assert node.wal.snapshot().meta == meta
    assert node.wal.initial_state()[1] == meta.conf
    assert stored(node.wal) == list(entries(51, 55, 3))
    await node.close()


async def test_snapshots_need_their_file_and_no_data(tmp_path: Path) -> None:
    node = await open_node(tmp_path)
    wal = node.wal
    async with wal.writer():
        await wal.save(append(1, 20, term=1))
    with pytest.raises(InvalidArgumentError, match="SnapshotStore"):
        wal.create_snapshot(10, CONF, b"state")
    with pytest.raises(NodeStorageError, match="no snapshot file"):
        wal.create_snapshot(10, CONF, b"")
    with pytest.raises(UnavailableError):
        wal.create_snapshot(21, CONF, b"")
    with pytest.raises(InvalidArgumentError, match="no snapshot file"):
        wal.submit(WriteRequest(snapshot=SnapshotMeta(30, 2, CONF)))
    with pytest.raises(ValueError, match="past the snapshot"):
        wal.compact(5)
    assert (wal.first_index(), wal.last_index(), wal.snapshot().meta.index) == (1, 20, 0)
    await node.close()


async def test_requests_that_do_not_continue_the_log_are_refused(tmp_path: Path) -> None:
    node = await open_node(tmp_path)
    wal = node.wal
    wal.submit(append(1, 5, term=1))
    with pytest.raises(InvalidArgumentError, match="do not continue"):
        wal.submit(append(7, 8, term=1))
    gap = WriteRequest((entry(6, 1), entry(8, 1)))
    with pytest.raises(InvalidArgumentError, match="not contiguous"):
        wal.submit(gap)
    with pytest.raises(InvalidArgumentError, match="WriteRequest"):
        wal.submit(entries(6, 6, 1))  # type: ignore[arg-type]
    wal.submit(append(6, 6, term=1))  # the refused ones changed nothing
    async with wal.writer():
        pass
    assert stored(wal) == list(entries(1, 6, 1))
    await node.close()


async def test_a_full_queue_refuses_until_the_writer_makes_room(tmp_path: Path) -> None:
    node = await open_node(tmp_path, max_pending=2)
    wal = node.wal
    wal.submit(append(1, 1, term=1))
    wal.submit(append(2, 2, term=1))
    with pytest.raises(StorageBusyError, match="full"):
        wal.submit(append(3, 3, term=1))
    async with wal.writer():
        await wal.wait_writable()
        wal.submit(append(3, 3, term=1))
    assert stored(wal) == list(entries(1, 3, 1))
    await node.close()


async def test_a_request_bigger_than_the_byte_bound_goes_alone(tmp_path: Path) -> None:
    node = await open_node(tmp_path, max_pending_bytes=1000)
    wal = node.wal
    wal.submit(append(1, 100, term=1))  # ~5 KB: accepted into an empty queue
    with pytest.raises(StorageBusyError):
        wal.submit(append(101, 101, term=1))
    async with wal.writer():
        await wal.save(append(101, 101, term=1))
    assert wal.last_index() == 101
    await node.close()


async def test_callbacks_run_in_submission_order_after_the_view_is_updated(tmp_path: Path) -> None:
    node = await open_node(tmp_path)
    wal = node.wal
    seen: list[tuple[int, int]] = []
    all_done = anyio.Event()

    def callback(i: int) -> None:
        seen.append((i, wal.last_index()))
        if i == 49:
            all_done.set()

    async with wal.writer():
        for i in range(50):
            wal.submit(append(i + 1, i + 1, term=1, sync=i % 3 == 0), lambda i=i: callback(i))
            if i % 7 == 0:
                await anyio.lowlevel.checkpoint()
        await all_done.wait()
    # Each callback sees its own request in the log: reads only show what is written.
    assert [i for i, _ in seen] == list(range(50))
    assert all(last >= i + 1 for i, last in seen)
    await node.close()


async def test_save_needs_a_running_writer_and_one_writer_at_a_time(tmp_path: Path) -> None:
    node = await open_node(tmp_path)
    with pytest.raises(NodeStorageError, match="writer"):
        await node.wal.save(append(1, 1, term=1))
    async with node.wal.writer():
        with pytest.raises(NodeStorageError, match="already running"):
            async with node.wal.writer():
                pass
    await node.close()
    with pytest.raises(NodeStorageError, match="closed"):
        node.wal.submit(append(1, 1, term=1))


async def test_an_error_in_the_writer_block_passes_through_unchanged(tmp_path: Path) -> None:
    node = await open_node(tmp_path)
    with pytest.raises(KeyError, match="mine"):
        async with node.wal.writer():
            await node.wal.save(append(1, 1, term=1))
            raise KeyError("mine")
    assert node.wal.last_index() == 1
    await node.close()


async def test_open_refuses_bad_settings_and_a_missing_directory(tmp_path: Path) -> None:
    node = await open_node(tmp_path)
    with pytest.raises(InvalidArgumentError, match="segment_size"):
        await WriteAheadLog.open(tmp_path / "wal", snapshots=node.snapshots, segment_size=10)
    with pytest.raises(NodeStorageError, match="does not exist"):
        await WriteAheadLog.open(tmp_path / "nope", snapshots=node.snapshots)
    await node.close()
