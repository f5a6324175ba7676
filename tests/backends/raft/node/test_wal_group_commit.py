"""Group commit: one fsync covers everything that queued while the previous one ran.

The file system here is the real one with its fsync instrumented: it counts
calls and can hold one until the test lets it go, so "requests that arrive while
an fsync runs" is a deterministic situation, not a timing accident.
"""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from wal_support import append, entries, open_node, stored

from coordkit.backends.raft.node.files import (
    NodeStorageError,
    OsFileSystem,
    WritableFile,
)

pytestmark = pytest.mark.anyio


class GatedFileSystem(OsFileSystem):
    """Real files; fsyncs are counted, and while ``hold`` is set each one waits for ``release``."""

    def __init__(self) -> None:
        self.fsyncs = 0
        self.hold = False
        self.holding = threading.Event()
        self.release = threading.Event()
        self.fail_syncs = False

    def _wrap(self, f: WritableFile) -> WritableFile:
        fs = self

        class Gated(WritableFile):
            def write(self, data: bytes) -> None:
                f.write(data)

            def sync(self) -> None:
                if fs.fail_syncs:
                    raise OSError(5, "Input/output error")
                if fs.hold:
                    fs.holding.set()
                    fs.release.wait(30)
                f.sync()
                fs.fsyncs += 1

            def close(self) -> None:
                f.close()

        return Gated()

    def create(self, path: Path) -> WritableFile:
        return self._wrap(super().create(path))

    def open_append(self, path: Path) -> WritableFile:
        return self._wrap(super().open_append(path))


async def test_requests_queued_during_an_fsync_share_the_next_one(tmp_path: Path) -> None:
    fs = GatedFileSystem()
    node = await open_node(tmp_path, fs=fs)
    wal = node.wal
    done: list[int] = []
    all_done = anyio.Event()

    def callback(i: int) -> None:
        done.append(i)
        if len(done) == 21:
            all_done.set()

    async with wal.writer():
        fs.fsyncs = 0
        fs.hold = True
        wal.submit(append(1, 1, term=1), lambda: callback(0))
        await anyio.to_thread.run_sync(fs.holding.wait, 30)  # the first fsync is running
        for i in range(1, 21):
            wal.submit(append(i + 1, i + 1, term=1), lambda i=i: callback(i))
        assert done == []  # nothing is acknowledged before its fsync returns
        fs.hold = False
        fs.release.set()
        await all_done.wait()
    assert fs.fsyncs == 2  # one for the first request, one for the twenty that queued behind it
    assert done == list(range(21))
    assert stored(wal) == list(entries(1, 21, 1))
    await node.close()


async def test_requests_without_must_sync_are_written_without_an_fsync(tmp_path: Path) -> None:
    fs = GatedFileSystem()
    node = await open_node(tmp_path, fs=fs)
    async with node.wal.writer():
        fs.fsyncs = 0
        for i in range(1, 11):
            await node.wal.save(append(i, i, term=1, commit=i - 1, sync=False))
        assert fs.fsyncs == 0
        await node.wal.save(append(11, 11, term=1, sync=True))
        assert fs.fsyncs == 1
    await node.close()


async def test_concurrent_savers_are_all_durable_with_fewer_fsyncs_than_saves(
    tmp_path: Path,
) -> None:
    fs = GatedFileSystem()
    node = await open_node(tmp_path, fs=fs)
    wal = node.wal
    next_index = 1

    async def saver(count: int) -> None:
        nonlocal next_index
        for _ in range(count):
            await wal.wait_writable()
            index, next_index = next_index, next_index + 1
            await wal.save(append(index, index, term=1))

    async with wal.writer():
        fs.fsyncs = 0
        async with anyio.create_task_group() as tg:
            for _ in range(16):
                tg.start_soon(saver, 25)
    assert stored(wal) == list(entries(1, 400, 1))
    assert 1 <= fs.fsyncs < 400
    await node.close()


async def test_a_failed_fsync_ends_the_writer_and_the_log_refuses_further_use(
    tmp_path: Path,
) -> None:
    fs = GatedFileSystem()
    node = await open_node(tmp_path, fs=fs)
    wal = node.wal
    acknowledged: list[int] = []
    with pytest.raises(NodeStorageError, match="Input/output error") as caught:
        async with wal.writer():
            await wal.save(append(1, 1, term=1))
            fs.fail_syncs = True
            wal.submit(append(2, 2, term=1), lambda: acknowledged.append(2))
            await wal.save(append(3, 3, term=1))
    assert isinstance(caught.value.__cause__, OSError)
    assert acknowledged == []  # never acknowledged what was not made durable
    assert wal.last_index() == 1  # nor showed it to the core
    with pytest.raises(NodeStorageError, match="failed earlier"):
        wal.submit(append(4, 4, term=1))
    fs.fail_syncs = False
    await node.close()
