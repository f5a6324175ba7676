"""Snapshot files: streamed in and out in chunks, checked on the way, never half visible."""

from __future__ import annotations

import contextlib
import logging
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from wal_support import CONF, chunks_of, read_all, snapshot_data, write_snapshot

from coordkit.backends.raft.core import ConfState, SnapshotMeta
from coordkit.backends.raft.node.files import CorruptSnapshotError, NodeStorageError
from coordkit.backends.raft.node.snapshots import SnapshotStore

pytestmark = pytest.mark.anyio

META = SnapshotMeta(100, 3, ConfState.of(["n1", "n2", "n3"], ["n4"]))


async def store_in(path: Path) -> SnapshotStore:
    return await SnapshotStore.open(path)  # pytest's tmp_path exists


def files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


async def test_chunks_come_back_as_written(tmp_path: Path) -> None:
    store = await store_in(tmp_path)
    data = bytes(range(256)) * 1000
    sizes = [1, 7, 4096, 100_000, 3]
    pieces, at = [], 0
    for i in range(200):
        size = sizes[i % len(sizes)]
        pieces.append(data[at : at + size])
        at = (at + size) % len(data)

    async def source() -> AsyncIterator[bytes]:
        for p in pieces:
            yield p
        yield b""  # empty chunks are allowed and skipped

    assert await store.write(META, source()) == META
    assert store.contains(META) and store.metas() == [META]
    assert b"".join([c async for c in store.read(META)]) == b"".join(pieces)
    assert await store.verify(META)
    # The store reopened from disk knows it too, with its whole meta.
    again = await store_in(tmp_path)
    assert again.metas() == [META]
    assert await again.latest() == META


async def test_latest_is_the_newest_that_verifies(tmp_path: Path) -> None:
    store = await store_in(tmp_path)
    older, newer = SnapshotMeta(10, 1, CONF), SnapshotMeta(20, 2, CONF)
    assert await store.latest() is None
    for meta in (older, newer):
        await write_snapshot(store, meta)
    assert await store.latest() == newer
    path = tmp_path / files(tmp_path)[-1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    assert await store.latest() == older  # the damaged one is removed on the way
    assert not path.exists() and store.metas() == [older]


@pytest.mark.parametrize("damage", ["chunk", "truncated", "trailer", "extra"])
async def test_a_damaged_file_fails_reading_with_its_name_and_offset(
    tmp_path: Path, damage: str
) -> None:
    store = await store_in(tmp_path)
    await write_snapshot(store, META, size=5000)
    [name] = files(tmp_path)
    path = tmp_path / name
    data = bytearray(path.read_bytes())
    if damage == "chunk":
        data[200] ^= 0xFF
    elif damage == "truncated":
        del data[-30:]
    elif damage == "trailer":
        data[-6] ^= 0xFF
    else:
        data += b"x"
    path.write_bytes(bytes(data))
    received = []
    with pytest.raises(CorruptSnapshotError) as caught:
        async for chunk in store.read(META):
            received.append(chunk)
    assert caught.value.path == path and str(path) in str(caught.value)
    assert 0 < caught.value.offset <= len(data)
    assert not await store.verify(META)
    assert not path.exists()


async def test_a_file_whose_header_disagrees_is_not_read_as_another_snapshot(
    tmp_path: Path,
) -> None:
    store = await store_in(tmp_path)
    await write_snapshot(store, META)
    other = SnapshotMeta(100, 3, CONF)  # same index and term, another configuration
    assert not store.contains(other)
    with pytest.raises(CorruptSnapshotError, match="header says"):
        await read_all(store, other)
    with pytest.raises(NodeStorageError, match="no snapshot file"):
        await read_all(store, SnapshotMeta(7, 1, CONF))


async def test_opening_removes_unfinished_and_unreadable_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await store_in(tmp_path)
    await write_snapshot(store, META)
    (tmp_path / "00000000000000000200-00000000000000000004.snap.abc.tmp").write_bytes(b"half")
    (tmp_path / "00000000000000000300-00000000000000000004.snap").write_bytes(b"garbage")
    renamed = tmp_path / "00000000000000000400-00000000000000000004.snap"
    renamed.write_bytes((tmp_path / files(tmp_path)[0]).read_bytes())  # header says index 100
    with caplog.at_level(logging.INFO):
        again = await store_in(tmp_path)
    assert again.metas() == [META]
    assert files(tmp_path) == ["00000000000000000100-00000000000000000003.snap"]
    assert "unfinished" in caplog.text and "unusable" in caplog.text


async def test_a_received_snapshot_appears_only_on_commit(tmp_path: Path) -> None:
    store = await store_in(tmp_path)
    data = snapshot_data(META, 50_000)
    receiver = store.begin_receive(META)
    async for chunk in chunks_of(data, 4096):
        await receiver.write(chunk)
        assert not store.contains(META)
    assert await receiver.commit() == META
    assert await read_all(store, META) == data
    with pytest.raises(NodeStorageError, match="committed"):
        await receiver.write(b"more")
    await receiver.abort()  # a no-op once committed
    assert await read_all(store, META) == data


async def test_an_aborted_receive_leaves_nothing(tmp_path: Path) -> None:
    store = await store_in(tmp_path)
    receiver = store.begin_receive(META)
    await receiver.write(b"x" * 2_000_000)  # big enough to reach the disk
    assert any(n.endswith(".tmp") for n in files(tmp_path))
    await receiver.abort()
    await receiver.abort()
    assert files(tmp_path) == [] and not store.contains(META)
    with pytest.raises(NodeStorageError, match="aborted"):
        await receiver.commit()


async def test_a_failing_source_or_a_cancel_leaves_nothing(tmp_path: Path) -> None:
    store = await store_in(tmp_path)

    async def failing() -> AsyncIterator[bytes]:
        yield b"x" * 2_000_000
        raise ConnectionError("peer went away")

    with pytest.raises(ConnectionError):
        await store.write(META, failing())
    assert files(tmp_path) == []

    started = anyio.Event()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"y" * 500_000
            started.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(store.write, META, endless())
        await started.wait()
        tg.cancel_scope.cancel()
    assert files(tmp_path) == [] and not store.contains(META)


async def test_a_reader_stopped_early_closes_its_file(tmp_path: Path) -> None:
    store = await store_in(tmp_path)
    await write_snapshot(store, META, size=3_000_000)
    stream = store.read(META, chunk_budget=1000)
    async with contextlib.aclosing(stream):
        async for _ in stream:
            break
    assert await store.verify(META)


async def test_prune_keeps_the_newest_and_the_one_in_use(tmp_path: Path) -> None:
    store = await store_in(tmp_path)
    metas = [SnapshotMeta(i * 10, 1, CONF) for i in range(1, 6)]
    for meta in metas:
        await write_snapshot(store, meta, size=100)
    assert await store.prune(keep=2, in_use=metas[0]) == metas[1:3]
    assert store.metas() == [metas[0], metas[3], metas[4]]
    assert len(files(tmp_path)) == 3
    with pytest.raises(ValueError, match="keep"):
        await store.prune(keep=0)


async def test_neither_writing_nor_reading_holds_the_snapshot_in_memory(tmp_path: Path) -> None:
    """32 MiB through the store in 256 KiB chunks; the peak stays a few MiB."""
    store = await store_in(tmp_path)
    chunk = bytes(256 << 10)

    async def source() -> AsyncIterator[bytes]:
        for _ in range(128):
            yield chunk

    tracemalloc.start()
    try:
        await store.write(META, source())
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        total = 0
        async for piece in store.read(META):
            total += len(piece)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 32 << 20
    assert write_peak < 8 << 20 and read_peak < 8 << 20, (write_peak, read_peak)
