"""The built-in Raft backend.

The consensus core is sans-I/O (:class:`RaftCore`, driven through
``ready()``/``advance()``); storage, transport and the server build on it.
"""

from __future__ import annotations

from .config import RaftConfig
from .core import RaftCore
from .errors import (
    CompactedError,
    ConfChangeError,
    NotLeaderError,
    ProposalDroppedError,
    RaftError,
    UnavailableError,
)
from .messages import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)
from .storage import MemoryStorage, Storage

__all__ = [
    "CompactedError",
    "ConfChange",
    "ConfChangeError",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryType",
    "HardState",
    "MemoryStorage",
    "Message",
    "MessageType",
    "NotLeaderError",
    "ProposalDroppedError",
    "RaftConfig",
    "RaftCore",
    "RaftError",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
    "Storage",
    "UnavailableError",
]
