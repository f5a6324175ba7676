"""Snapshot files: written atomically, streamed in checksummed chunks, never held whole.

A snapshot is the state machine after applying every entry up to ``meta.index``.
This module moves it as opaque byte chunks: the state machine serialises itself
into chunks, :meth:`SnapshotStore.write` puts them in a file, :meth:`SnapshotStore.read`
streams them back (to restore the state machine, or to send to a peer), and
:meth:`SnapshotStore.begin_receive` writes one arriving from a peer chunk by chunk.

File layout (little-endian; ``Q`` u64, ``I`` u32, ``H`` u16)::

    header   b"CKSNAP\\0\\0" | H version | I meta length | meta | I crc32(all before)
    meta     Q index | Q term | conf (as in the write-ahead log)
    chunk    I length (1 .. 0xFFFFFFFE) | I crc | data        -- any number of these
    trailer  I 0xFFFFFFFF | Q chunk count | Q data bytes | I last chunk crc | I crc32(the 24 before)

Chunk crcs are chained from the header crc (``crc32(data, previous)``), so a
lost, repeated or reordered chunk is caught; the trailer proves the file is
complete. A file is only ever seen under its final name complete and fsynced:
it is written under a ``.tmp`` name, fsynced, renamed, and the directory fsynced.
After a crash, either the old set of snapshots or the new one is there, and
left-over ``.tmp`` files are removed when the store opens.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import uuid
import zlib
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread

from ..core import SnapshotMeta
from .files import OS_FILES, CorruptSnapshotError, FileSystem, NodeStorageError, ReadableFile
from .files import WritableFile as _WritableFile
from .wal_format import decode_conf, encode_conf

__all__ = ["SnapshotReceiver", "SnapshotStore"]

log = logging.getLogger(__name__)

MAGIC = b"CKSNAP\x00\x00"
VERSION = 1
SUFFIX = ".snap"
TMP_SUFFIX = ".tmp"

_HEAD = struct.Struct("<8sHI")
_META = struct.Struct("<QQ")
_U32 = struct.Struct("<I")
_FRAME = struct.Struct("<II")
_TRAILER = struct.Struct("<IQQI")
_END = 0xFFFFFFFF
MAX_CHUNK = 16 << 20  # larger chunks are split when written, refused when read
_FLUSH_AT = 1 << 20  # frames are written to the file about a MiB at a time


def _name(meta: SnapshotMeta) -> str:
    return f"{meta.index:020d}-{meta.term:020d}{SUFFIX}"


def _header(meta: SnapshotMeta) -> tuple[bytes, int]:
    body = _META.pack(meta.index, meta.term) + encode_conf(meta.conf)
    head = _HEAD.pack(MAGIC, VERSION, len(body)) + body
    crc = zlib.crc32(head)
    return head + _U32.pack(crc), crc


# -- reading ---------------------------------------------------------------------------------


class _Reader:
    """Blocking, sequential reader of one snapshot file, verifying as it goes."""

    def __init__(self, path: Path, f: ReadableFile) -> None:
        self.path = path
        self._f = f
        self._pos = 0
        self._crc = 0
        self._count = 0
        self._total = 0
        self.done = False

    def _exact(self, n: int, what: str) -> bytes:
        data = self._f.read(n)
        if len(data) != n:
            raise CorruptSnapshotError(self.path, self._pos + len(data), f"file ends inside {what}")
        self._pos += n
        return data

    def header(self) -> SnapshotMeta:
        head = self._exact(_HEAD.size, "the header")
        magic, version, meta_len = _HEAD.unpack(head)
        if magic != MAGIC:
            raise CorruptSnapshotError(self.path, 0, "not a snapshot file (bad magic)")
        if version != VERSION:
            raise CorruptSnapshotError(self.path, 0, f"unsupported format version {version}")
        if meta_len > 1 << 20:
            raise CorruptSnapshotError(self.path, 0, f"impossible header length {meta_len}")
        body = self._exact(meta_len, "the header")
        (crc,) = _U32.unpack(self._exact(4, "the header"))
        if zlib.crc32(head + body) != crc:
            raise CorruptSnapshotError(self.path, 0, "bad header checksum")
        try:
            index, term = _META.unpack_from(body, 0)
            conf, end = decode_conf(body, _META.size)
        except (struct.error, ValueError) as exc:
            raise CorruptSnapshotError(self.path, 0, f"unreadable header: {exc}") from None
        if end != len(body):
            raise CorruptSnapshotError(self.path, 0, "unreadable header: trailing bytes")
        self._crc = crc
        return SnapshotMeta(index, term, conf)

    def chunks(self, budget: int) -> list[bytes]:
        """The next chunks, about ``budget`` bytes of them; empty (and ``done``) at the end."""
        out: list[bytes] = []
        size = 0
        while size < budget and not self.done:
            at = self._pos
            length, crc = _FRAME.unpack(self._exact(_FRAME.size, "a chunk header"))
            if length == _END:
                self._trailer(at, crc)
                break
            if length == 0 or length > MAX_CHUNK:
                raise CorruptSnapshotError(self.path, at, f"impossible chunk length {length}")
            data = self._exact(length, "a chunk")
            if zlib.crc32(data, self._crc) != crc:
                raise CorruptSnapshotError(self.path, at, "bad chunk checksum")
            self._crc = crc
            self._count += 1
            self._total += length
            out.append(data)
            size += length
        return out

    def _trailer(self, at: int, count_low: int) -> None:
        # The trailer's first u32 was read as a chunk header: (0xFFFFFFFF, low word of count).
        rest = self._exact(_TRAILER.size + 4 - _FRAME.size, "the trailer")
        raw = _U32.pack(_END) + _U32.pack(count_low) + rest
        _, count, total, last_crc, check = struct.unpack("<IQQII", raw)
        if zlib.crc32(raw[:-4]) != check:
            raise CorruptSnapshotError(self.path, at, "bad trailer checksum")
        if (count, total, last_crc) != (self._count, self._total, self._crc):
            raise CorruptSnapshotError(self.path, at, "trailer does not match the chunks")
        if self._f.read(1):
            raise CorruptSnapshotError(self.path, self._pos, "bytes after the trailer")
        self.done = True

    def close(self) -> None:
        self._f.close()


# -- writing ---------------------------------------------------------------------------------


class SnapshotReceiver:
    """A snapshot being written chunk by chunk; visible only after :meth:`commit`.

    Chunks are buffered up to about a MiB, then written from a worker thread, so
    memory stays bounded whatever the snapshot's size. Use it from one task.
    """

    def __init__(self, store: SnapshotStore, meta: SnapshotMeta) -> None:
        self.meta = meta
        self._store = store
        self._tmp = store.directory / f"{_name(meta)}.{uuid.uuid4().hex}{TMP_SUFFIX}"
        self._file: _WritableFile | None = None
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._header, self._crc = _header(meta)
        self._count = 0
        self._total = 0
        self._state = "open"  # -> "committed" | "aborted"

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk`` (any size; empty chunks are skipped)."""
        if self._state != "open":
            raise NodeStorageError(f"snapshot {_name(self.meta)} is already {self._state}")
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise TypeError(f"snapshot chunks are bytes, not {type(chunk).__name__}")
        view = memoryview(chunk)
        for start in range(0, len(view), MAX_CHUNK):
            piece = bytes(view[start : start + MAX_CHUNK])
            self._crc = zlib.crc32(piece, self._crc)
            self._buffer.append(_FRAME.pack(len(piece), self._crc))
            self._buffer.append(piece)
            self._buffered += len(piece)
            self._count += 1
            self._total += len(piece)
        if self._buffered >= _FLUSH_AT:
            await self._flush()

    async def _flush(self, final: bytes = b"") -> None:
        data = b"".join(self._buffer) + final
        self._buffer.clear()
        self._buffered = 0
        fs = self._store.fs

        def write() -> None:
            if self._file is None:
                self._file = fs.create(self._tmp)
                self._file.write(self._header)
            self._file.write(data)
            if final:
                self._file.sync()
                self._file.close()

        try:
            await anyio.to_thread.run_sync(write)
        except BaseException:
            await self.abort()
            raise

    async def commit(self) -> SnapshotMeta:
        """Make the snapshot durable under its final name; returns its meta.

        Writes the trailer, fsyncs the file, renames it into place (replacing a
        file of the same snapshot) and fsyncs the directory: after a crash the
        snapshot is either complete or absent.
        """
        if self._state != "open":
            raise NodeStorageError(f"snapshot {_name(self.meta)} is already {self._state}")
        head = _TRAILER.pack(_END, self._count, self._total, self._crc)
        await self._flush(head + _U32.pack(zlib.crc32(head)))
        store = self._store
        final = store.directory / _name(self.meta)

        def publish() -> None:
            store.fs.rename(self._tmp, final)
            store.fs.sync_dir(store.directory)

        try:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(publish)
        except BaseException:
            await self.abort()
            raise
        self._state = "committed"
        store._known[_name(self.meta)] = self.meta
        log.info("snapshot %s written (%d bytes)", final.name, self._total)
        return self.meta

    async def abort(self) -> None:
        """Drop the partial snapshot (idempotent; a no-op after commit)."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._buffer.clear()
        fs, tmp, f = self._store.fs, self._tmp, self._file
        self._file = None

        def drop() -> None:
            if f is not None:
                f.close()
            with contextlib.suppress(FileNotFoundError):
                fs.remove(tmp)

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(drop)


# -- the store -------------------------------------------------------------------------------


class SnapshotStore:
    """The snapshot files of one node, in one directory.

    Invariant: every ``.snap`` file the store knows (:meth:`metas`) was complete
    and fsynced when it got its name, and its header was checked when the store
    opened; :meth:`verify` and :meth:`latest` also check every chunk.
    """

    def __init__(self, directory: Path, fs: FileSystem, known: dict[str, SnapshotMeta]) -> None:
        self.directory = directory
        self.fs = fs
        self._known = known

    @classmethod
    async def open(cls, directory: Path | str, *, fs: FileSystem = OS_FILES) -> SnapshotStore:
        """Open the store in ``directory`` (which must exist).

        Left-over temporary files are removed, and so are files whose header is
        unreadable or disagrees with their name; each removal is logged.
        """
        path = Path(directory)
        known = await anyio.to_thread.run_sync(_scan, fs, path)
        return cls(path, fs, known)

    def metas(self) -> list[SnapshotMeta]:
        """The snapshots on file, oldest first."""
        return sorted(self._known.values(), key=lambda m: (m.index, m.term))

    def contains(self, meta: SnapshotMeta) -> bool:
        """Whether a complete file of exactly this snapshot (index, term, conf) is on file."""
        return self._known.get(_name(meta)) == meta

    async def verify(self, meta: SnapshotMeta) -> bool:
        """Read the whole file of ``meta`` and check every checksum.

        A damaged file is removed (and logged) and False returned.
        """
        if not self.contains(meta):
            return False
        path = self.directory / _name(meta)

        def check() -> str | None:
            try:
                reader = _Reader(path, self.fs.open_read(path))
            except FileNotFoundError:
                return "file is missing"
            try:
                if reader.header() != meta:
                    return "header does not match the file name"
                while not reader.done:
                    reader.chunks(_FLUSH_AT)
            except CorruptSnapshotError as exc:
                return str(exc)
            finally:
                reader.close()
            return None

        problem = await anyio.to_thread.run_sync(check)
        if problem is None:
            return True
        log.error("snapshot %s is unusable and is removed: %s", path.name, problem)
        await self._remove([meta])
        return False

    async def latest(self) -> SnapshotMeta | None:
        """The newest snapshot whose whole file verifies; damaged ones are removed."""
        for meta in reversed(self.metas()):
            if await self.verify(meta):
                return meta
        return None

    async def read(
        self, meta: SnapshotMeta, *, chunk_budget: int = _FLUSH_AT
    ) -> AsyncIterator[bytes]:
        """Stream the chunks of snapshot ``meta``, verifying each on the way.

        The file's completeness (the trailer) is checked after the last chunk:
        a consumer must treat everything received as void if iteration raises
        :class:`~.files.CorruptSnapshotError`. Stop early with ``aclose()`` (or
        ``contextlib.aclosing``) to close the file.
        """
        path = self.directory / _name(meta)
        try:
            f = await anyio.to_thread.run_sync(self.fs.open_read, path)
        except FileNotFoundError:
            raise NodeStorageError(f"no snapshot file for {meta}") from None
        reader = _Reader(path, f)
        try:
            found = await anyio.to_thread.run_sync(reader.header)
            if found != meta:
                raise CorruptSnapshotError(path, 0, f"header says {found}, expected {meta}")
            while not reader.done:
                for chunk in await anyio.to_thread.run_sync(reader.chunks, chunk_budget):
                    yield chunk
        finally:
            reader.close()

    def begin_receive(self, meta: SnapshotMeta) -> SnapshotReceiver:
        """Start writing snapshot ``meta`` chunk by chunk (for one arriving from a peer).

        Nothing is visible until :meth:`SnapshotReceiver.commit`; call
        :meth:`SnapshotReceiver.abort` if the transfer fails.
        """
        return SnapshotReceiver(self, meta)

    async def write(self, meta: SnapshotMeta, chunks: AsyncIterable[bytes]) -> SnapshotMeta:
        """Write snapshot ``meta`` from ``chunks``, atomically; returns ``meta`` once durable.

        If ``chunks`` raises, or the task is cancelled, the partial file is removed
        and nothing changes; ``chunks`` is closed (``aclose``) if it has not ended.
        """
        receiver = self.begin_receive(meta)
        try:
            async for chunk in chunks:
                await receiver.write(chunk)
            return await receiver.commit()
        except BaseException:
            await receiver.abort()
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
            raise

    async def prune(
        self, keep: int = 2, *, in_use: SnapshotMeta | None = None
    ) -> list[SnapshotMeta]:
        """Remove all but the ``keep`` newest snapshots, never ``in_use``; returns the removed.

        Pass the write-ahead log's snapshot as ``in_use``: a newer file that the
        log does not (yet) refer to does not push it out.
        """
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        metas = self.metas()
        doomed = [m for m in metas[: max(0, len(metas) - keep)] if m != in_use]
        await self._remove(doomed)
        return doomed

    async def _remove(self, metas: list[SnapshotMeta]) -> None:
        if not metas:
            return
        for meta in metas:
            self._known.pop(_name(meta), None)

        def remove() -> None:
            for meta in metas:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.remove(self.directory / _name(meta))
            self.fs.sync_dir(self.directory)

        await anyio.to_thread.run_sync(remove)


def _scan(fs: FileSystem, directory: Path) -> dict[str, SnapshotMeta]:
    known: dict[str, SnapshotMeta] = {}
    removed = False
    for name in fs.list_dir(directory):
        path = directory / name
        if name.endswith(TMP_SUFFIX):
            log.info("removing the unfinished snapshot %s", name)
            fs.remove(path)
            removed = True
            continue
        if not name.endswith(SUFFIX):
            continue
        reader = _Reader(path, fs.open_read(path))
        try:
            meta = reader.header()
            if _name(meta) != name:
                raise CorruptSnapshotError(path, 0, "header does not match the file name")
        except CorruptSnapshotError as exc:
            log.error("removing the unusable snapshot %s: %s", name, exc)
            reader.close()
            fs.remove(path)
            removed = True
            continue
        reader.close()
        known[name] = meta
    if removed:
        fs.sync_dir(directory)
    return known
