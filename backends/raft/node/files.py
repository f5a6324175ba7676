"""The file operations the node's storage needs, behind one small interface.

The write-ahead log, the snapshot store and the data directory do all their I/O
through a :class:`FileSystem`, so that tests can inject one that counts fsyncs,
blocks at a chosen moment or loses everything not yet fsynced at a "power loss"
(``tests/support/powerloss.py``). :data:`OS_FILES` is the real one.

Every method is blocking: callers run them in a worker thread
(``anyio.to_thread.run_sync``), a whole batch of them per call.

Durability is POSIX's: data written to a file survives a power loss only once
that file is synced; a created, renamed or removed directory entry only once
its directory is synced.

The storage errors live here too, since every storage module imports this one.
"""

from __future__ import annotations

import abc
import fcntl
import os
from pathlib import Path

from coordkit.errors import CoordkitError

__all__ = [
    "OS_FILES",
    "CorruptLogError",
    "CorruptSnapshotError",
    "DataDirLockedError",
    "DataDirMismatchError",
    "FileLock",
    "FileSystem",
    "NodeStorageError",
    "OsFileSystem",
    "ReadableFile",
    "StorageBusyError",
    "WritableFile",
]


# -- errors ----------------------------------------------------------------------------------


class NodeStorageError(CoordkitError):
    """The node's durable storage cannot be used (corrupt, locked, failed, misused)."""


class CorruptLogError(NodeStorageError):
    """The write-ahead log is damaged before its tail; the node refuses to start."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"write-ahead log {path} is corrupt at byte {offset}: {reason}")
        self.path = path
        self.offset = offset


class CorruptSnapshotError(NodeStorageError):
    """A snapshot file is damaged (bad checksum, truncated, not a snapshot)."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"snapshot {path} is corrupt at byte {offset}: {reason}")
        self.path = path
        self.offset = offset


class DataDirMismatchError(NodeStorageError):
    """The data directory belongs to another cluster or node."""


class DataDirLockedError(NodeStorageError):
    """Another process holds the data directory's lock."""


class StorageBusyError(NodeStorageError):
    """The write-ahead log's queue is full; nothing was queued. Wait, then retry."""


# -- the interface -----------------------------------------------------------------------------


class WritableFile(abc.ABC):
    """A file open for writing at its end (appending)."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Append all of ``data`` (short writes are retried until done)."""

    @abc.abstractmethod
    def sync(self) -> None:
        """Make everything written so far durable (fsync)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the file; idempotent. Unsynced data is not made durable."""


class ReadableFile(abc.ABC):
    """A file open for sequential reading."""

    @abc.abstractmethod
    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end of the file, ``b""`` past it."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the file; idempotent."""


class FileLock(abc.ABC):
    """An exclusive advisory lock held on a file until released."""

    @abc.abstractmethod
    def release(self) -> None:
        """Release the lock; idempotent."""


class FileSystem(abc.ABC):
    """The file operations of the node's storage (blocking; run them in a thread)."""

    @abc.abstractmethod
    def create(self, path: Path) -> WritableFile:
        """A new empty file for writing; fails with FileExistsError if ``path`` exists."""

    @abc.abstractmethod
    def open_append(self, path: Path) -> WritableFile:
        """An existing file, for writing at its end."""

    @abc.abstractmethod
    def open_read(self, path: Path) -> ReadableFile:
        """An existing file, for reading from its start."""

    @abc.abstractmethod
    def list_dir(self, path: Path) -> list[str]:
        """The names in directory ``path``, sorted."""

    @abc.abstractmethod
    def make_dir(self, path: Path) -> None:
        """Create directory ``path`` (its parent must exist); FileExistsError if it does."""

    @abc.abstractmethod
    def sync_dir(self, path: Path) -> None:
        """Make the entries created, renamed or removed in directory ``path`` durable."""

    @abc.abstractmethod
    def rename(self, src: Path, dst: Path) -> None:
        """Atomically rename ``src`` to ``dst``, replacing ``dst`` if it exists."""

    @abc.abstractmethod
    def remove(self, path: Path) -> None:
        """Remove file ``path``."""

    @abc.abstractmethod
    def truncate(self, path: Path, size: int) -> None:
        """Cut file ``path`` to ``size`` bytes (durable once the file is synced)."""

    @abc.abstractmethod
    def sync_file(self, path: Path) -> None:
        """Make file ``path``'s content durable (fsync by path)."""

    @abc.abstractmethod
    def size(self, path: Path) -> int:
        """The size of file ``path`` in bytes."""

    @abc.abstractmethod
    def exists(self, path: Path) -> bool:
        """Whether ``path`` names an existing file or directory."""

    @abc.abstractmethod
    def is_dir(self, path: Path) -> bool:
        """Whether ``path`` names an existing directory."""

    @abc.abstractmethod
    def lock(self, path: Path) -> FileLock:
        """Take an exclusive lock on ``path`` (created if missing) without waiting.

        Raises BlockingIOError if another open of the file (in any process) holds it.
        """

    def read_bytes(self, path: Path) -> bytes:
        """The whole content of file ``path``."""
        f = self.open_read(path)
        try:
            parts: list[bytes] = []
            while chunk := f.read(1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        finally:
            f.close()


# -- the real files ------------------------------------------------------------------------------


def _sync_fd(fd: int) -> None:
    # fdatasync also flushes the metadata needed to read the data back (the
    # size of an appended file), which is all the log needs; it skips mtime.
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - macOS
        os.fsync(fd)


class _OsWritableFile(WritableFile):
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def _live(self) -> int:
        if self._fd is None:
            raise ValueError("I/O on a closed file")
        return self._fd

    def write(self, data: bytes) -> None:
        fd = self._live()
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    def sync(self) -> None:
        _sync_fd(self._live())

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class _OsReadableFile(ReadableFile):
    def __init__(self, path: Path) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()

    def read(self, n: int) -> bytes:
        return self._f.read(n)

    def close(self) -> None:
        self._f.close()


class _OsFileLock(FileLock):
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            # Closing the descriptor drops the flock with it.
            os.close(fd)


class OsFileSystem(FileSystem):
    """The operating system's files."""

    def create(self, path: Path) -> WritableFile:
        return _OsWritableFile(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))

    def open_append(self, path: Path) -> WritableFile:
        return _OsWritableFile(os.open(path, os.O_WRONLY | os.O_APPEND))

    def open_read(self, path: Path) -> ReadableFile:
        return _OsReadableFile(path)

    def list_dir(self, path: Path) -> list[str]:
        return sorted(os.listdir(path))

    def make_dir(self, path: Path) -> None:
        os.mkdir(path, 0o755)

    def sync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def remove(self, path: Path) -> None:
        os.remove(path)

    def truncate(self, path: Path, size: int) -> None:
        os.truncate(path, size)

    def sync_file(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def size(self, path: Path) -> int:
        return os.stat(path).st_size

    def exists(self, path: Path) -> bool:
        return os.path.exists(path)

    def is_dir(self, path: Path) -> bool:
        return os.path.isdir(path)

    def lock(self, path: Path) -> FileLock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        return _OsFileLock(fd)


OS_FILES: FileSystem = OsFileSystem()
"""The real file system."""
