"""The write-ahead log's bytes: segment files of checksummed, length-prefixed records.

A segment file is a 20-byte file header followed by records::

    file header   b"CKWAL\\0" | u16 version | u64 segment sequence | u32 crc32(first 16 bytes)
    record        u32 body length | u32 body crc | u32 crc32(the previous 8 bytes) | body
    body          u8 record type | payload

All integers are little-endian. The body crc is chained: it is
``crc32(body, previous body crc)``, starting from the file header's crc, so a
record that is lost, repeated or moved within a segment breaks the chain at that
point, and a segment renamed into another's place fails at its first record.
The chain restarts in every segment, so each segment verifies (and is deleted)
on its own. The record header has its own crc so that a damaged length is told
apart from a record cut short by a crash.

Payloads (``Q`` u64, ``I`` u32, ``H`` u16, ``B`` u8)::

    ENTRIES     Q first index | I count | count x (Q term | B entry type | I length | data)
    HARD_STATE  Q term | Q commit | H vote length (0xFFFF: no vote) | vote (UTF-8)
    SNAPSHOT    B flags (1: reset) | Q index | Q term | conf
    conf        H voter count | voters | H learner count | learners; each H length | UTF-8

Reading rules (:func:`decode_segment`): the last segment may end in a torn
record -- short, or with a bad checksum when it is the last record in the file
or only zeros follow it -- which is reported as a :class:`TornTail` to cut off.
Any other damage, and any damage in an earlier segment, is a
:class:`~.files.CorruptLogError` naming the file and byte offset.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core import ConfState, Entry, EntryType, HardState, SnapshotMeta
from .files import CorruptLogError

__all__ = [
    "FILE_HEADER_SIZE",
    "MAX_RECORD_SIZE",
    "RECORD_HEADER_SIZE",
    "DecodedSegment",
    "EntriesRecord",
    "HardStateRecord",
    "Record",
    "SnapshotRecord",
    "TornTail",
    "decode_conf",
    "decode_segment",
    "encode_conf",
    "encode_entries",
    "encode_hard_state",
    "encode_snapshot",
    "file_header",
    "frame",
    "segment_name",
    "segment_seq",
]

MAGIC = b"CKWAL\x00"
VERSION = 1
SEGMENT_SUFFIX = ".wal"

_FILE_HEAD = struct.Struct("<6sHQ")
FILE_HEADER_SIZE = _FILE_HEAD.size + 4
_REC_HEAD = struct.Struct("<II")
RECORD_HEADER_SIZE = _REC_HEAD.size + 4
_U32 = struct.Struct("<I")
_ENTRIES_HEAD = struct.Struct("<QI")
_ENTRY_HEAD = struct.Struct("<QBI")
_HARD_STATE = struct.Struct("<QQH")
_SNAPSHOT = struct.Struct("<BQQ")
_U16 = struct.Struct("<H")

# A record bigger than this is damage, not data (the writer splits entry runs
# into records of about 1 MiB; one entry may exceed that, up to this bound).
MAX_RECORD_SIZE = 256 << 20
ENTRIES_RECORD_TARGET = 1 << 20

T_ENTRIES = 1
T_HARD_STATE = 2
T_SNAPSHOT = 3

_NO_VOTE = 0xFFFF
_RESET = 1

# Stable on-disk codes: never renumber, only add.
_ENTRY_CODES = {EntryType.NORMAL: 0, EntryType.CONF_CHANGE: 1, EntryType.NOOP: 2}
_ENTRY_TYPES = {code: t for t, code in _ENTRY_CODES.items()}


def segment_name(seq: int) -> str:
    return f"{seq:016d}{SEGMENT_SUFFIX}"


def segment_seq(name: str) -> int | None:
    """The sequence number in a segment file name, or None for any other name."""
    stem, dot, suffix = name.partition(".")
    if "." + suffix != SEGMENT_SUFFIX or not dot or len(stem) != 16 or not stem.isdigit():
        return None
    return int(stem)


# -- records ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntriesRecord:
    """A contiguous run of entries; on replay it replaces any stored entry at or after its first."""

    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class HardStateRecord:
    hard_state: HardState


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """A snapshot marker. ``reset``: the snapshot was installed and replaces the whole log."""

    meta: SnapshotMeta
    reset: bool


Record = EntriesRecord | HardStateRecord | SnapshotRecord


# -- encoding --------------------------------------------------------------------------------


def file_header(seq: int) -> tuple[bytes, int]:
    """The header of segment ``seq`` and the crc that seeds its record chain."""
    head = _FILE_HEAD.pack(MAGIC, VERSION, seq)
    crc = zlib.crc32(head)
    return head + _U32.pack(crc), crc


def frame(body: bytes, prev_crc: int) -> tuple[bytes, int]:
    """One record around ``body``, chained after ``prev_crc``; returns it and its crc."""
    crc = zlib.crc32(body, prev_crc)
    head = _REC_HEAD.pack(len(body), crc)
    return head + _U32.pack(zlib.crc32(head)) + body, crc


def encode_entries(entries: Sequence[Entry]) -> list[tuple[bytes, int]]:
    """ENTRIES record bodies for contiguous ``entries``, ~1 MiB each, with their last index."""
    bodies: list[tuple[bytes, int]] = []
    start = 0
    while start < len(entries):
        parts: list[bytes] = []
        size = 0
        end = start
        while end < len(entries) and (end == start or size < ENTRIES_RECORD_TARGET):
            e = entries[end]
            parts.append(_ENTRY_HEAD.pack(e.term, _ENTRY_CODES[e.type], len(e.data)))
            parts.append(e.data)
            size += _ENTRY_HEAD.size + len(e.data)
            end += 1
        head = bytes([T_ENTRIES]) + _ENTRIES_HEAD.pack(entries[start].index, end - start)
        bodies.append((head + b"".join(parts), entries[end - 1].index))
        start = end
    return bodies


def encode_hard_state(hs: HardState) -> bytes:
    vote = b"" if hs.vote is None else hs.vote.encode()
    if len(vote) >= _NO_VOTE:
        raise ValueError(f"node id too long: {hs.vote!r}")
    head = _HARD_STATE.pack(hs.term, hs.commit, _NO_VOTE if hs.vote is None else len(vote))
    return bytes([T_HARD_STATE]) + head + vote


def _encode_ids(ids: Iterable[str]) -> bytes:
    raw = [i.encode() for i in ids]
    if any(len(r) >= _NO_VOTE for r in raw) or len(raw) >= _NO_VOTE:
        raise ValueError("configuration too large")
    return _U16.pack(len(raw)) + b"".join(_U16.pack(len(r)) + r for r in raw)


def encode_conf(conf: ConfState) -> bytes:
    """The binary form of a configuration (shared with the snapshot file header)."""
    return _encode_ids(conf.voters) + _encode_ids(conf.learners)


def encode_snapshot(meta: SnapshotMeta, reset: bool) -> bytes:
    head = _SNAPSHOT.pack(_RESET if reset else 0, meta.index, meta.term)
    return bytes([T_SNAPSHOT]) + head + encode_conf(meta.conf)


# -- decoding --------------------------------------------------------------------------------


class _PayloadError(ValueError):
    """A record whose checksum holds but whose payload does not parse."""


def _decode_ids(body: bytes, pos: int) -> tuple[tuple[str, ...], int]:
    (n,) = _U16.unpack_from(body, pos)
    pos += 2
    ids = []
    for _ in range(n):
        (length,) = _U16.unpack_from(body, pos)
        pos += 2
        raw = body[pos : pos + length]
        if len(raw) != length:
            raise _PayloadError("truncated node id")
        ids.append(raw.decode())
        pos += length
    return tuple(ids), pos


def decode_conf(body: bytes, pos: int) -> tuple[ConfState, int]:
    """A configuration encoded by :func:`encode_conf` at ``pos``, and the position after it."""
    voters, pos = _decode_ids(body, pos)
    learners, pos = _decode_ids(body, pos)
    return ConfState.of(voters, learners), pos


def _decode_entries(body: bytes) -> EntriesRecord:
    first, count = _ENTRIES_HEAD.unpack_from(body, 1)
    pos = 1 + _ENTRIES_HEAD.size
    entries = []
    for i in range(count):
        term, code, length = _ENTRY_HEAD.unpack_from(body, pos)
        pos += _ENTRY_HEAD.size
        data = body[pos : pos + length]
        if len(data) != length or code not in _ENTRY_TYPES:
            raise _PayloadError("malformed entry")
        pos += length
        entries.append(Entry(term, first + i, _ENTRY_TYPES[code], data))
    if pos != len(body) or not entries or first < 1:
        raise _PayloadError("malformed entries record")
    return EntriesRecord(tuple(entries))


def _decode_body(body: bytes) -> Record:
    try:
        kind = body[0]
        if kind == T_ENTRIES:
            return _decode_entries(body)
        if kind == T_HARD_STATE:
            term, commit, vote_len = _HARD_STATE.unpack_from(body, 1)
            pos = 1 + _HARD_STATE.size
            vote = None if vote_len == _NO_VOTE else body[pos : pos + vote_len].decode()
            end = pos + (0 if vote_len == _NO_VOTE else vote_len)
            if end != len(body):
                raise _PayloadError("malformed hard state")
            return HardStateRecord(HardState(term, vote, commit))
        if kind == T_SNAPSHOT:
            flags, index, term = _SNAPSHOT.unpack_from(body, 1)
            conf, pos = decode_conf(body, 1 + _SNAPSHOT.size)
            if pos != len(body) or flags & ~_RESET:
                raise _PayloadError("malformed snapshot marker")
            return SnapshotRecord(SnapshotMeta(index, term, conf), bool(flags & _RESET))
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise _PayloadError(str(exc)) from exc
    raise _PayloadError(f"unknown record type {body[0]}")


@dataclass(frozen=True, slots=True)
class TornTail:
    """The last segment ends in a torn record: keep ``offset`` bytes, drop ``dropped``."""

    offset: int
    dropped: int
    reason: str


@dataclass(frozen=True, slots=True)
class DecodedSegment:
    """The valid records of one segment, where they end, and the crc to chain on from."""

    seq: int
    records: tuple[tuple[int, Record], ...]  # (byte offset, record)
    end: int
    crc: int
    torn: TornTail | None
    max_index: int  # highest entry index in the segment (0 if none)


def _only_zeros(data: bytes, start: int) -> bool:
    return data.count(0, start) == len(data) - start


def decode_segment(path: Path, data: bytes, seq: int, *, last: bool) -> DecodedSegment:
    """Decode a whole segment file; see the module docstring for what counts as torn.

    ``seq`` is the sequence number from the file name; the header must agree.
    """

    def corrupt(offset: int, reason: str) -> CorruptLogError:
        return CorruptLogError(path, offset, reason)

    if len(data) < FILE_HEADER_SIZE or _only_zeros(data, 0):
        if last:
            return DecodedSegment(seq, (), 0, 0, TornTail(0, len(data), "torn file header"), 0)
        raise corrupt(0, "file header missing")
    magic, version, head_seq = _FILE_HEAD.unpack_from(data, 0)
    (head_crc,) = _U32.unpack_from(data, _FILE_HEAD.size)
    if zlib.crc32(data[: _FILE_HEAD.size]) != head_crc or magic != MAGIC:
        raise corrupt(0, "not a write-ahead log segment (bad file header)")
    if version != VERSION:
        raise corrupt(0, f"unsupported segment format version {version}")
    if head_seq != seq:
        raise corrupt(0, f"header says segment {head_seq}, file name says {seq}")

    records: list[tuple[int, Record]] = []
    crc = head_crc
    pos = FILE_HEADER_SIZE
    max_index = 0
    size = len(data)

    def torn_or_corrupt(is_tail: bool, reason: str) -> DecodedSegment:
        # A damaged record is a torn tail only in the last segment, and only if
        # it is the last thing in the file (or nothing but zeros, never-written
        # space, follows it); anything else is damage to data that was durable.
        if last and is_tail:
            tail = TornTail(pos, size - pos, reason)
            return DecodedSegment(seq, tuple(records), pos, crc, tail, max_index)
        raise corrupt(pos, reason)

    while pos < size:
        if size - pos < RECORD_HEADER_SIZE:
            return torn_or_corrupt(True, "record header cut short")
        length, body_crc = _REC_HEAD.unpack_from(data, pos)
        (check,) = _U32.unpack_from(data, pos + _REC_HEAD.size)
        body_at = pos + RECORD_HEADER_SIZE
        if zlib.crc32(data[pos : pos + _REC_HEAD.size]) != check:
            # The length cannot be trusted: the record is the tail only if it
            # would end exactly at the end of the file, or only zeros are left.
            at_end = body_at + length == size or _only_zeros(data, pos)
            return torn_or_corrupt(at_end, "bad record header checksum")
        if length == 0 or length > MAX_RECORD_SIZE:
            raise corrupt(pos, f"impossible record length {length}")
        end = body_at + length
        if end > size:
            return torn_or_corrupt(True, "record cut short")
        body = data[body_at:end]
        if zlib.crc32(body, crc) != body_crc:
            return torn_or_corrupt(end == size or _only_zeros(data, end), "bad record checksum")
        try:
            record = _decode_body(body)
        except _PayloadError as exc:
            raise corrupt(pos, f"unreadable record: {exc}") from None
        if isinstance(record, EntriesRecord):
            max_index = max(max_index, record.entries[-1].index)
        records.append((pos, record))
        crc = body_crc
        pos = end
    return DecodedSegment(seq, tuple(records), pos, crc, None, max_index)
