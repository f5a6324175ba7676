"""The crashable file layer (tests/support/powerloss.py) loses exactly what POSIX may lose.

The storage crash tests are only as good as this layer, so it is tested on its
own: synced data and synced directory entries survive a crash, everything else
goes, a torn crash keeps an in-order prefix of the unsynced writes, and the
crashed instance refuses to be used.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from powerloss import CrashableFileSystem, PowerLossError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "old.txt").write_bytes(b"before")
    return tmp_path


def write_file(fs: CrashableFileSystem, path: Path, data: bytes, *, sync: bool) -> None:
    f = fs.create(path)
    f.write(data)
    if sync:
        f.sync()
    f.close()


def test_files_present_before_count_as_durable(root: Path) -> None:
    fs = CrashableFileSystem(root)
    fs.crash()
    assert (root / "old.txt").read_bytes() == b"before"


def test_an_unsynced_append_is_lost_and_a_synced_one_kept(root: Path) -> None:
    fs = CrashableFileSystem(root)
    f = fs.open_append(root / "old.txt")
    f.write(b"+synced")
    f.sync()
    f.write(b"+unsynced")
    assert (root / "old.txt").read_bytes() == b"before+synced+unsynced"  # the page cache
    fs.crash()
    assert (root / "old.txt").read_bytes() == b"before+synced"


def test_a_new_file_needs_its_directory_synced(root: Path) -> None:
    fs = CrashableFileSystem(root)
    write_file(fs, root / "a", b"data", sync=True)
    fs = fs.crash()
    assert not (root / "a").exists()  # the file was synced, its directory entry was not

    write_file(fs, root / "b", b"data", sync=True)
    fs.sync_dir(root)
    fs = fs.crash()
    assert (root / "b").read_bytes() == b"data"

    write_file(fs, root / "c", b"data", sync=False)
    fs.sync_dir(root)
    fs.crash()
    assert (root / "c").read_bytes() == b""  # the entry is durable, the content is not


def test_rename_and_remove_are_undone_without_a_directory_sync(root: Path) -> None:
    fs = CrashableFileSystem(root)
    write_file(fs, root / "tmp", b"new", sync=True)
    fs.sync_dir(root)
    fs.rename(root / "tmp", root / "old.txt")
    fs = fs.crash()
    assert (root / "old.txt").read_bytes() == b"before"
    assert (root / "tmp").read_bytes() == b"new"

    fs.rename(root / "tmp", root / "old.txt")
    fs.sync_dir(root)
    fs = fs.crash()
    assert (root / "old.txt").read_bytes() == b"new"
    assert not (root / "tmp").exists()

    fs.remove(root / "old.txt")
    fs = fs.crash()
    assert (root / "old.txt").read_bytes() == b"new"
    fs.remove(root / "old.txt")
    fs.sync_dir(root)
    fs.crash()
    assert not (root / "old.txt").exists()


def test_truncate_is_durable_only_once_synced(root: Path) -> None:
    fs = CrashableFileSystem(root)
    fs.truncate(root / "old.txt", 2)
    fs = fs.crash()
    assert (root / "old.txt").read_bytes() == b"before"
    fs.truncate(root / "old.txt", 2)
    fs.sync_file(root / "old.txt")
    fs.crash()
    assert (root / "old.txt").read_bytes() == b"be"


def test_a_directory_made_without_syncing_its_parent_vanishes(root: Path) -> None:
    fs = CrashableFileSystem(root)
    fs.make_dir(root / "d")
    write_file(fs, root / "d" / "x", b"x", sync=True)
    fs.sync_dir(root / "d")
    fs = fs.crash()
    assert not (root / "d").exists()
    fs.make_dir(root / "d")
    fs.sync_dir(root)
    fs.crash()
    assert (root / "d").is_dir() and not list((root / "d").iterdir())


def test_a_torn_crash_keeps_an_in_order_prefix_of_the_unsynced_writes(root: Path) -> None:
    writes = [b"1111", b"2222", b"3333"]
    full = b"before" + b"".join(writes)
    seen = set()
    for seed in range(200):
        fs = CrashableFileSystem(root, random.Random(seed))
        f = fs.open_append(root / "old.txt")
        for w in writes:
            f.write(w)
        fs = fs.crash(torn=True)
        content = (root / "old.txt").read_bytes()
        assert full.startswith(content) and len(content) >= len(b"before")
        seen.add(len(content))
        # What survived a crash is durable from then on.
        fs.crash()
        assert (root / "old.txt").read_bytes() == content
        (root / "old.txt").write_bytes(b"before")
    # Every cut point is reachable: nothing, a torn write, whole writes, all of it.
    assert seen == set(range(len(b"before"), len(full) + 1))


def test_the_same_seed_tears_the_same_way(root: Path) -> None:
    results = []
    for _ in range(2):
        (root / "old.txt").write_bytes(b"before")
        fs = CrashableFileSystem(root, random.Random(7))
        f = fs.open_append(root / "old.txt")
        f.write(bytes(range(200)))
        fs.crash(torn=True)
        results.append((root / "old.txt").read_bytes())
    assert results[0] == results[1]


def test_the_crashed_instance_and_its_files_refuse_to_work(root: Path) -> None:
    fs = CrashableFileSystem(root)
    f = fs.open_append(root / "old.txt")
    reborn = fs.crash()
    with pytest.raises(PowerLossError):
        f.write(b"x")
    with pytest.raises(PowerLossError):
        fs.create(root / "new")
    with pytest.raises(PowerLossError):
        fs.crash()
    assert not (root / "new").exists()
    write_file(reborn, root / "new", b"ok", sync=True)  # the rebooted one works


def test_cut_power_after_fails_that_call_and_every_later_one(root: Path) -> None:
    fs = CrashableFileSystem(root)
    fs.cut_power_after(2)
    f = fs.open_append(root / "old.txt")  # not a change: not counted
    f.write(b"+1")
    f.sync()
    with pytest.raises(PowerLossError):
        f.write(b"+2")
    with pytest.raises(PowerLossError):
        fs.list_dir(root)
    fs.crash()
    assert (root / "old.txt").read_bytes() == b"before+1"


def test_a_crash_releases_locks(root: Path) -> None:
    fs = CrashableFileSystem(root)
    fs.lock(root / "LOCK")
    with pytest.raises(BlockingIOError):
        fs.lock(root / "LOCK")
    reborn = fs.crash()
    reborn.lock(root / "LOCK").release()


def test_paths_outside_the_root_are_refused(
    root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    fs = CrashableFileSystem(root)
    other = tmp_path_factory.mktemp("elsewhere")
    with pytest.raises(ValueError, match="outside"):
        fs.create(other / "x")
