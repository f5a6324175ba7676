"""A node's data directory: its identity, its lock, and where its log and snapshots live.

Layout::

    <path>/IDENTITY   {"format": 1, "cluster_id": ..., "node_id": ...}, written once
    <path>/LOCK       flock()ed by the process using the directory; holds its pid
    <path>/wal/       the write-ahead log's segments
    <path>/snap/      the snapshot files

:meth:`DataDir.open` takes the lock first, so two processes never race on the
rest: a second process gets :class:`~.files.DataDirLockedError`. A directory of
another cluster or node is refused with :class:`~.files.DataDirMismatchError`
naming both. The lock is released by :meth:`DataDir.close` (or by the
process's death: flock locks go with the process).

Typical use::

    data = await DataDir.open(path, cluster_id="c1", node_id="n1")
    snapshots = await SnapshotStore.open(data.snap_dir, fs=data.fs)
    wal = await WriteAheadLog.open(data.wal_dir, snapshots=snapshots, fs=data.fs,
                                   initial_conf=ConfState.of(["n1", "n2", "n3"]))
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import anyio.to_thread

from coordkit.errors import InvalidArgumentError

from .files import (
    OS_FILES,
    DataDirLockedError,
    DataDirMismatchError,
    FileLock,
    FileSystem,
    NodeStorageError,
)

__all__ = ["DataDir"]

log = logging.getLogger(__name__)

IDENTITY = "IDENTITY"
LOCK = "LOCK"
FORMAT = 1


class DataDir:
    """An opened, locked data directory. Open with :meth:`open`; :meth:`close` when done."""

    def __init__(self, path: Path, cluster_id: str, node_id: str, fs: FileSystem, lock: FileLock):
        self.path = path
        self.cluster_id = cluster_id
        self.node_id = node_id
        self.fs = fs
        self._lock: FileLock | None = lock

    @property
    def wal_dir(self) -> Path:
        return self.path / "wal"

    @property
    def snap_dir(self) -> Path:
        return self.path / "snap"

    @classmethod
    async def open(
        cls, path: Path | str, *, cluster_id: str, node_id: str, fs: FileSystem = OS_FILES
    ) -> DataDir:
        """Open (creating it if missing) and lock the data directory of node ``node_id``."""
        for name, value in (("cluster_id", cluster_id), ("node_id", node_id)):
            if not isinstance(value, str) or not value or len(value) > 256:
                raise InvalidArgumentError(f"{name} must be a non-empty string, not {value!r}")
        root, lock = await anyio.to_thread.run_sync(_prepare, fs, Path(path), cluster_id, node_id)
        log.info("data directory %s opened (cluster %s, node %s)", root, cluster_id, node_id)
        return cls(root, cluster_id, node_id, fs, lock)

    async def close(self) -> None:
        """Release the lock (idempotent)."""
        if self._lock is not None:
            lock, self._lock = self._lock, None
            await anyio.to_thread.run_sync(lock.release)

    async def __aenter__(self) -> DataDir:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _make_dirs(fs: FileSystem, path: Path) -> None:
    """Create ``path`` and any missing parents, each entry made durable in its parent."""
    if fs.is_dir(path):
        return
    if fs.exists(path):
        raise NodeStorageError(f"data directory {path} exists and is not a directory")
    _make_dirs(fs, path.parent)
    with contextlib.suppress(FileExistsError):
        fs.make_dir(path)
    fs.sync_dir(path.parent)


def _prepare(fs: FileSystem, path: Path, cluster_id: str, node_id: str) -> tuple[Path, FileLock]:
    root = path.absolute()
    _make_dirs(fs, root)
    try:
        lock = fs.lock(root / LOCK)
    except BlockingIOError:
        holder = ""
        with contextlib.suppress(OSError, ValueError):
            holder = fs.read_bytes(root / LOCK).decode().strip()
        by = f" by process {holder}" if holder.isdigit() else ""
        raise DataDirLockedError(
            f"data directory {root} is in use{by}: one process per data directory"
        ) from None
    try:
        _record_pid(fs, root)
        _check_identity(fs, root, cluster_id, node_id)
        for sub in ("wal", "snap"):
            _make_dirs(fs, root / sub)
    except BaseException:
        lock.release()
        raise
    return root, lock


def _record_pid(fs: FileSystem, root: Path) -> None:
    # Informational only (named in the error a second process gets); the lock
    # itself is the flock, so the file is rewritten in place, not replaced.
    with contextlib.suppress(OSError):
        fs.truncate(root / LOCK, 0)
        f = fs.open_append(root / LOCK)
        try:
            f.write(f"{os.getpid()}\n".encode())
        finally:
            f.close()


def _check_identity(fs: FileSystem, root: Path, cluster_id: str, node_id: str) -> None:
    path = root / IDENTITY
    if not fs.exists(path):
        # Written whole under a temporary name, then renamed: never half there.
        tmp = root / (IDENTITY + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            fs.remove(tmp)
        body = {"format": FORMAT, "cluster_id": cluster_id, "node_id": node_id}
        f = fs.create(tmp)
        try:
            f.write(json.dumps(body, sort_keys=True).encode() + b"\n")
            f.sync()
        finally:
            f.close()
        fs.rename(tmp, path)
        fs.sync_dir(root)
        log.info("data directory %s initialised for cluster %s, node %s", root, cluster_id, node_id)
        return
    try:
        found = json.loads(fs.read_bytes(path))
        theirs = (str(found["cluster_id"]), str(found["node_id"]))
        if found.get("format") != FORMAT:
            raise ValueError(f"unknown format {found.get('format')!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise NodeStorageError(f"data directory {root}: unreadable {IDENTITY}: {exc}") from None
    if theirs != (cluster_id, node_id):
        raise DataDirMismatchError(
            f"data directory {root} belongs to cluster {theirs[0]!r}, node {theirs[1]!r};"
            f" this is cluster {cluster_id!r}, node {node_id!r}"
        )
