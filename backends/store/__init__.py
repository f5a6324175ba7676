"""The store: the deterministic state machine every coordkit server runs.

It is what Raft replicates (``commands`` are the log's payloads, ``codec``
their stable binary encoding, ``results`` the encoding of what they return;
``machine`` applies them, exactly once for a :class:`ClientRequest`;
``snapshot`` streams the whole state out and back) and what the memory
backend drives in-process. Pure: no I/O, no clock, no randomness.
docs/store.md describes the commands, the formats and the guarantees.
"""

from __future__ import annotations

from .codec import COMMAND_FORMAT, decode_command, encode_command
from .commands import (
    COMMAND_TAGS,
    ClientRequest,
    CloseSession,
    Command,
    Compact,
    Configure,
    Create,
    Delete,
    ExpireSession,
    OpenSession,
    RequestCommand,
    Set,
    Txn,
)
from .machine import Store, StoreLoader
from .results import ERROR_TAGS, RESULT_FORMAT, decode_result, encode_result, unwrap_result
from .snapshot import DEFAULT_CHUNK_BYTES, SNAPSHOT_FORMAT
from .state import DEFAULT_HISTORY, DEFAULT_SESSION_RESULTS, SessionState, matches

__all__ = [
    "COMMAND_FORMAT",
    "COMMAND_TAGS",
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_HISTORY",
    "DEFAULT_SESSION_RESULTS",
    "ERROR_TAGS",
    "RESULT_FORMAT",
    "SNAPSHOT_FORMAT",
    "ClientRequest",
    "CloseSession",
    "Command",
    "Compact",
    "Configure",
    "Create",
    "Delete",
    "ExpireSession",
    "OpenSession",
    "RequestCommand",
    "SessionState",
    "Set",
    "Store",
    "StoreLoader",
    "Txn",
    "decode_command",
    "decode_result",
    "encode_command",
    "encode_result",
    "matches",
    "unwrap_result",
]
