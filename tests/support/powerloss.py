"""A file system that loses everything not fsynced when the power goes (Jepsen's lazyfs idea).

:class:`CrashableFileSystem` implements the node's
:class:`~coordkit.backends.raft.node.files.FileSystem` on real files under one
root directory, and keeps a model of what is *durable* under POSIX rules:

- a file's content is durable up to its last ``sync()`` (or ``sync_file``);
- a directory entry -- a file or directory created, renamed or removed -- is
  durable once its directory is synced (``sync_dir``).

:meth:`CrashableFileSystem.crash` is the power loss: it rewrites the real tree
under the root to its durable state (files not durably linked vanish, removed
or renamed ones come back under their durable names, each file's content goes
back to its last sync), kills the old instance (every later call on it, or on a
file it opened, raises :class:`PowerLossError`, and its locks are released),
and returns a fresh instance for the "rebooted" node. With ``torn=True`` each
file keeps a random prefix of its unsynced writes, in write order, the last one
cut at a random byte (the page cache flushed part of the way when the power
went), drawn from the instance's seeded ``random.Random``.

Reads go to the real files, which hold everything written (as the page cache
would). Nothing is really fsynced: the model alone decides what a crash keeps.
Operations are serialised by a lock, so a crash never splits one.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from coordkit.backends.raft.node.files import (
    OS_FILES,
    FileLock,
    FileSystem,
    ReadableFile,
    WritableFile,
)

__all__ = ["CrashableFileSystem", "PowerLossError"]


class PowerLossError(OSError):
    """The file system (or a file opened on it) was used after its crash."""


@dataclass(eq=False)
class _File:
    durable: bytes = b""
    # Unsynced operations, in order: (offset, data) for a write, (size, None) for a truncate.
    ops: list[tuple[int, bytes | None]] = field(default_factory=list)
    size: int = 0

    def content(self, ops: list[tuple[int, bytes | None]]) -> bytes:
        buf = bytearray(self.durable)
        for at, data in ops:
            if data is None:
                del buf[at:]
                buf.extend(bytes(at - len(buf)))
            else:
                if at > len(buf):
                    buf.extend(bytes(at - len(buf)))
                buf[at : at + len(data)] = data
        return bytes(buf)


@dataclass(eq=False)
class _Dir:
    entries: dict[str, _File | _Dir] = field(default_factory=dict)
    durable: dict[str, _File | _Dir] = field(default_factory=dict)


def _baseline(path: Path) -> _Dir:
    """Everything already on disk under ``path`` counts as durable."""
    d = _Dir()
    for child in sorted(path.iterdir()):
        node: _File | _Dir
        if child.is_dir():
            node = _baseline(child)
        else:
            data = child.read_bytes()
            node = _File(durable=data, size=len(data))
        d.entries[child.name] = node
    d.durable = dict(d.entries)
    return d


class _Handle(WritableFile):
    def __init__(self, fs: CrashableFileSystem, node: _File, real: WritableFile) -> None:
        self._fs = fs
        self._node = node
        self._real = real

    def write(self, data: bytes) -> None:
        with self._fs._guard(changes=True):
            self._real.write(data)
            self._node.ops.append((self._node.size, bytes(data)))
            self._node.size += len(data)

    def sync(self) -> None:
        with self._fs._guard(changes=True):
            # No real fsync: the model decides what a crash keeps, and tests run faster.
            self._fs._synced(self._node)

    def close(self) -> None:
        self._real.close()


class _Lock(FileLock):
    def __init__(self, real: FileLock) -> None:
        self.real = real

    def release(self) -> None:
        self.real.release()


class CrashableFileSystem(FileSystem):
    """Real files under ``root`` (which must exist), with power loss on demand."""

    def __init__(self, root: Path, rng: random.Random | None = None) -> None:
        self.root = Path(os.path.abspath(root))
        self.rng = rng if rng is not None else random.Random(0)
        self._tree = _baseline(self.root)
        self._mutex = threading.RLock()
        self._dead = False
        self._crashed = False
        self._budget: int | None = None
        self._handles: list[_Handle] = []
        self._locks: list[_Lock] = []
        self.fsyncs = 0  # file syncs that made something durable, for tests to count
        self.dir_syncs = 0

    # -- the model ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self, *, changes: bool = False) -> Iterator[None]:
        with self._mutex:
            # Checked under the lock: a call that waited for a crash to finish must fail.
            if self._dead:
                raise PowerLossError("the power is off")
            if changes and self._budget is not None:
                if self._budget == 0:
                    self._dead = True
                    raise PowerLossError("the power went off")
                self._budget -= 1
            yield

    def cut_power_after(self, changes: int) -> None:
        """Let ``changes`` more changing calls through; the next one finds the power off.

        From then on every call fails with PowerLossError, as on a dead machine,
        until :meth:`crash` reboots it. Deterministic crash points for tests.
        """
        with self._mutex:
            self._budget = changes

    def _parts(self, path: Path) -> tuple[str, ...]:
        full = Path(os.path.abspath(path))
        try:
            return full.relative_to(self.root).parts
        except ValueError:
            raise ValueError(f"{path} is outside the crashable root {self.root}") from None

    def _dir(self, parts: tuple[str, ...]) -> _Dir:
        d = self._tree
        for part in parts:
            node = d.entries[part]
            if not isinstance(node, _Dir):
                raise NotADirectoryError("/".join(parts))
            d = node
        return d

    def _parent(self, path: Path) -> tuple[_Dir, str]:
        parts = self._parts(path)
        if not parts:
            raise ValueError("the crashable root itself cannot be changed")
        return self._dir(parts[:-1]), parts[-1]

    def _file(self, path: Path) -> _File:
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if not isinstance(node, _File):
            raise FileNotFoundError(str(path))
        return node

    def _synced(self, node: _File) -> None:
        node.durable = node.content(node.ops)
        node.ops.clear()
        self.fsyncs += 1

    # -- FileSystem ------------------------------------------------------------------------

    def create(self, path: Path) -> WritableFile:
        with self._guard(changes=True):
            parent, name = self._parent(path)
            real = OS_FILES.create(path)
            node = _File()
            parent.entries[name] = node
            handle = _Handle(self, node, real)
            self._handles.append(handle)
            return handle

    def open_append(self, path: Path) -> WritableFile:
        with self._guard():
            node = self._file(path)
            handle = _Handle(self, node, OS_FILES.open_append(path))
            self._handles.append(handle)
            return handle

    def open_read(self, path: Path) -> ReadableFile:
        with self._guard():
            return OS_FILES.open_read(path)

    def list_dir(self, path: Path) -> list[str]:
        with self._guard():
            return OS_FILES.list_dir(path)

    def make_dir(self, path: Path) -> None:
        with self._guard(changes=True):
            parent, name = self._parent(path)
            OS_FILES.make_dir(path)
            parent.entries[name] = _Dir()

    def sync_dir(self, path: Path) -> None:
        with self._guard(changes=True):
            d = self._dir(self._parts(path))
            d.durable = dict(d.entries)
            self.dir_syncs += 1

    def rename(self, src: Path, dst: Path) -> None:
        with self._guard(changes=True):
            src_parent, src_name = self._parent(src)
            dst_parent, dst_name = self._parent(dst)
            OS_FILES.rename(src, dst)
            dst_parent.entries[dst_name] = src_parent.entries.pop(src_name)

    def remove(self, path: Path) -> None:
        with self._guard(changes=True):
            parent, name = self._parent(path)
            OS_FILES.remove(path)
            parent.entries.pop(name, None)

    def truncate(self, path: Path, size: int) -> None:
        with self._guard(changes=True):
            node = self._file(path)
            OS_FILES.truncate(path, size)
            node.ops.append((size, None))
            node.size = size

    def sync_file(self, path: Path) -> None:
        with self._guard(changes=True):
            self._synced(self._file(path))

    def size(self, path: Path) -> int:
        with self._guard():
            return OS_FILES.size(path)

    def exists(self, path: Path) -> bool:
        with self._guard():
            return OS_FILES.exists(path)

    def is_dir(self, path: Path) -> bool:
        with self._guard():
            return OS_FILES.is_dir(path)

    def lock(self, path: Path) -> FileLock:
        with self._guard():
            if not OS_FILES.exists(path):
                # Creating the lock file is a directory change like any other.
                self.create(path).close()
            lock = _Lock(OS_FILES.lock(path))
            self._locks.append(lock)
            return lock

    # -- power loss --------------------------------------------------------------------------

    def unsynced_bytes(self) -> int:
        """Bytes written but not yet synced, over every file (for tests)."""
        with self._guard():
            total = 0
            stack = [self._tree]
            while stack:
                d = stack.pop()
                for node in d.entries.values():
                    if isinstance(node, _Dir):
                        stack.append(node)
                    else:
                        total += sum(len(data) for _, data in node.ops if data is not None)
            return total

    def crash(self, *, torn: bool = False) -> CrashableFileSystem:
        """Lose power: put the real tree back to its durable state; returns the rebooted fs."""
        with self._mutex:
            if self._crashed:
                raise PowerLossError("already crashed: use the file system crash() returned")
            self._dead = self._crashed = True
            for handle in self._handles:
                handle.close()
            for lock in self._locks:
                lock.real.release()
            self._restore(self._tree, self.root, torn)
            reborn = CrashableFileSystem.__new__(CrashableFileSystem)
            reborn.root = self.root
            reborn.rng = self.rng
            reborn._tree = self._tree
            reborn._mutex = threading.RLock()
            reborn._dead = reborn._crashed = False
            reborn._budget = None
            reborn._handles = []
            reborn._locks = []
            reborn.fsyncs = reborn.dir_syncs = 0
            return reborn

    def _restore(self, d: _Dir, path: Path, torn: bool) -> None:
        for name in OS_FILES.list_dir(path):
            if name not in d.durable:
                child = path / name
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        for name, node in d.durable.items():
            child = path / name
            if isinstance(node, _Dir):
                if not child.is_dir():
                    if child.exists():
                        child.unlink()
                    child.mkdir()
                self._restore(node, child, torn)
            else:
                kept = self._survivors(node) if torn else []
                content = node.content(kept)
                if child.is_dir():
                    shutil.rmtree(child)
                child.write_bytes(content)
                node.durable, node.ops, node.size = content, [], len(content)
        d.entries = dict(d.durable)

    def _survivors(self, node: _File) -> list[tuple[int, bytes | None]]:
        """The unsynced operations that made it to disk: a prefix, the last one torn."""
        if not node.ops:
            return []
        n = self.rng.randrange(len(node.ops) + 1)
        kept = list(node.ops[:n])
        if n < len(node.ops):
            at, data = node.ops[n]
            if data is not None:
                kept.append((at, data[: self.rng.randrange(len(data) + 1)]))
        return kept
