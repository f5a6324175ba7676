"""Recovery: a torn tail is cut off and the node starts; damage before it refuses to start.

The torn-tail test cuts the last record at every byte offset. Damage anywhere
else must stop the node with one CorruptLogError naming the file and the byte
offset of the damaged record, and change nothing on disk.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from wal_support import (
    CONF,
    append,
    entries,
    open_node,
    stored,
    write_snapshot,
)

from coordkit.backends.raft.core import HardState, SnapshotMeta
from coordkit.backends.raft.node.files import CorruptLogError, NodeStorageError
from coordkit.backends.raft.node.wal import WriteRequest
from coordkit.backends.raft.node.wal_format import RECORD_HEADER_SIZE, decode_segment, segment_seq

pytestmark = pytest.mark.anyio

WAL_LOGGER = "coordkit.backends.raft.node.wal_segments"


def segments(root: Path) -> list[Path]:
    return sorted((root / "wal").iterdir())


def record_offsets(path: Path) -> list[int]:
    seq = segment_seq(path.name)
    assert seq is not None
    return [at for at, _ in decode_segment(path, path.read_bytes(), seq, last=True).records]


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


async def make_log(root: Path, **options: int) -> None:
    """Entries 1..8 in three requests; the last record of the log is entries 7..8 alone."""
    node = await open_node(root, **options)
    async with node.wal.writer():
        await node.wal.save(append(1, 3, term=1, commit=1))
        await node.wal.save(append(4, 6, term=1, commit=3))
        await node.wal.save(WriteRequest(entries(7, 8, 1), must_sync=True))
    await node.close()


async def test_a_torn_last_record_is_cut_at_every_byte_offset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pristine = tmp_path / "pristine"
    await make_log(pristine)
    [seg] = segments(pristine)
    data = seg.read_bytes()
    last = record_offsets(seg)[-1]
    assert len(data) - last > RECORD_HEADER_SIZE
    for cut in range(last, len(data)):
        work = tmp_path / "work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)
        (work / "wal" / seg.name).write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=WAL_LOGGER):
            node = await open_node(work)
        torn = [r for r in caplog.records if "torn tail" in r.getMessage()]
        # A cut at the record's first byte leaves a clean log; any later one, a torn record.
        assert len(torn) == (cut > last), f"cut at {cut}"
        if torn:
            assert seg.name in torn[0].getMessage() and f"byte {last}" in torn[0].getMessage()
        assert stored(node.wal) == list(entries(1, 6, 1)), f"cut at {cut}"
        assert node.wal.hard_state == HardState(1, "n1", 3)
        await node.close()
        # The cut is durable: the next open finds a clean log.
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=WAL_LOGGER):
            node = await open_node(work)
        assert not caplog.records and node.wal.last_index() == 6
        await node.close()


async def test_a_bad_checksum_in_the_last_record_is_a_torn_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await make_log(tmp_path)
    [seg] = segments(tmp_path)
    last = record_offsets(seg)[-1]
    for offset in (last + RECORD_HEADER_SIZE + 5, last + 4):  # in the body; in the body's crc
        shutil.copy(seg, tmp_path / "copy")
        flip(seg, offset)
        with caplog.at_level(logging.WARNING, logger=WAL_LOGGER):
            node = await open_node(tmp_path)
        assert "torn tail" in caplog.text
        assert node.wal.last_index() == 6
        await node.close()
        caplog.clear()
        shutil.copy(tmp_path / "copy", seg)


async def test_zeros_after_the_last_record_are_a_torn_tail(tmp_path: Path) -> None:
    await make_log(tmp_path)
    [seg] = segments(tmp_path)
    with seg.open("ab") as f:
        f.write(bytes(4096))  # space a file system extended but never wrote
    node = await open_node(tmp_path)
    assert node.wal.last_index() == 8
    await node.close()


@pytest.mark.parametrize("where", ["body", "length", "crc"])
async def test_damage_before_the_tail_refuses_to_start_naming_file_and_offset(
    tmp_path: Path, where: str
) -> None:
    await make_log(tmp_path)
    [seg] = segments(tmp_path)
    target = record_offsets(seg)[-3]  # entries 4..6, two records before the end
    offset = {"body": target + RECORD_HEADER_SIZE + 3, "length": target + 1, "crc": target + 5}
    flip(seg, offset[where])
    before = seg.read_bytes()
    with pytest.raises(CorruptLogError) as caught:
        await open_node(tmp_path)
    assert caught.value.path == seg and caught.value.offset == target
    assert str(seg) in str(caught.value) and f"byte {target}" in str(caught.value)
    assert seg.read_bytes() == before  # nothing was "repaired"


async def test_damage_in_an_earlier_segment_refuses_even_in_its_last_record(
    tmp_path: Path,
) -> None:
    node = await open_node(tmp_path, segment_size=4096)
    async with node.wal.writer():
        for first in range(1, 400, 10):
            await node.wal.save(append(first, first + 9, term=1))
    await node.close()
    first_segment = segments(tmp_path)[0]
    last = record_offsets(first_segment)[-1]
    flip(first_segment, last + RECORD_HEADER_SIZE + 2)
    with pytest.raises(CorruptLogError) as caught:
        await open_node(tmp_path, segment_size=4096)
    assert (caught.value.path, caught.value.offset) == (first_segment, last)


async def test_a_damaged_file_header_refuses_to_start(tmp_path: Path) -> None:
    await make_log(tmp_path)
    [seg] = segments(tmp_path)
    flip(seg, 2)
    with pytest.raises(CorruptLogError, match="bad file header"):
        await open_node(tmp_path)


async def test_a_missing_middle_segment_refuses_to_start(tmp_path: Path) -> None:
    node = await open_node(tmp_path, segment_size=4096)
    async with node.wal.writer():
        for first in range(1, 400, 10):
            await node.wal.save(append(first, first + 9, term=1))
    await node.close()
    segments(tmp_path)[1].unlink()
    with pytest.raises(NodeStorageError, match="is missing"):
        await open_node(tmp_path, segment_size=4096)


async def test_a_snapshot_marker_without_a_valid_file_falls_back_on_an_older_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = await open_node(tmp_path)
    wal = node.wal
    async with wal.writer():
        await wal.save(append(1, 30, term=1, commit=30))
        for index in (10, 20):
            await write_snapshot(node.snapshots, SnapshotMeta(index, 1, CONF))
            wal.create_snapshot(index, CONF, b"")
        await wal.save(append(31, 31, term=1, commit=31))
    await node.close()
    # Damage the newest snapshot file: the log goes back to the one at 10.
    newest = sorted((tmp_path / "snap").iterdir())[-1]
    flip(newest, newest.stat().st_size // 2)
    with caplog.at_level(logging.WARNING):
        node = await open_node(tmp_path)
    assert node.wal.snapshot().meta == SnapshotMeta(10, 1, CONF)
    assert stored(node.wal) == list(entries(11, 31, 1))
    assert "unusable" in caplog.text and "no valid file" in caplog.text
    assert not newest.exists()
    await node.close()


async def test_an_installed_snapshot_without_its_file_refuses_to_start(tmp_path: Path) -> None:
    node = await open_node(tmp_path)
    meta = SnapshotMeta(50, 2, CONF)
    await write_snapshot(node.snapshots, meta)
    async with node.wal.writer():
        await node.wal.save(append(1, 10, term=1))
        await node.wal.save(WriteRequest(snapshot=meta, hard_state=HardState(2, None, 50)))
        await node.wal.save(append(51, 52, term=2, commit=50))
    await node.close()
    for f in (tmp_path / "snap").iterdir():
        f.unlink()
    with pytest.raises(NodeStorageError, match="installed at index 50"):
        await open_node(tmp_path)
