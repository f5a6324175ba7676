"""The store: the deterministic state machine every coordkit server runs.

It is what Raft replicates (``commands`` are the log's payloads; ``machine``
applies them) and what the memory backend drives in-process. Pure: no I/O,
no clock, no randomness.
"""

from __future__ import annotations

from .commands import (
    CloseSession,
    Command,
    Compact,
    Create,
    Delete,
    ExpireSession,
    ExpireSessions,
    KeepAlive,
    OpenSession,
    Set,
    Txn,
    decode_command,
    encode_command,
)
from .machine import DEFAULT_HISTORY, Store, matches

__all__ = [
    "DEFAULT_HISTORY",
    "CloseSession",
    "Command",
    "Compact",
    "Create",
    "Delete",
    "ExpireSession",
    "ExpireSessions",
    "KeepAlive",
    "OpenSession",
    "Set",
    "Store",
    "Txn",
    "decode_command",
    "encode_command",
    "matches",
]
