"""How the store keeps one node in memory: a single immutable ``bytes`` object.

A record is 32 bytes of metadata -- create revision, mod revision, version
and owning session (0: none; session ids start at 1), each an unsigned
little-endian 64-bit integer -- followed by the value. One object per node
instead of an object with a field each (and an int object per revision) is
what keeps a million nodes of 100 bytes near 300 MB (docs/store.md has the
figures). Being immutable, a record is its own copy-on-write pre-image: a
snapshot keeps a reference to the old record, never a copy of it.
"""

from __future__ import annotations

import struct

from coordkit.model import Node

__all__ = ["META", "META_SIZE", "Record", "create_revision", "pack", "to_node", "unpack"]

Record = bytes

#: create revision, mod revision, version, owner (0: none).
META = _META = struct.Struct("<QQQQ")
META_SIZE = _META.size

#: The root: it always exists, was never created and has no owner.
ROOT_RECORD: Record = _META.pack(0, 0, 0, 0)


def pack(
    value: bytes, create_revision: int, mod_revision: int, version: int, owner: int | None
) -> Record:
    return _META.pack(create_revision, mod_revision, version, owner or 0) + value


def unpack(record: Record) -> tuple[int, int, int, int | None]:
    """(create_revision, mod_revision, version, owner) of a record."""
    crev, mrev, version, owner = _META.unpack_from(record)
    return crev, mrev, version, owner or None


def create_revision(record: Record) -> int:
    crev: int = _META.unpack_from(record)[0]
    return crev


def to_node(path: str, record: Record, num_children: int) -> Node:
    crev, mrev, version, owner = _META.unpack_from(record)
    return Node(path, record[META_SIZE:], crev, mrev, version, owner or None, num_children)
