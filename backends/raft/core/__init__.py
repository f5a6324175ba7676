"""The Raft consensus core: sans-I/O, driven through ``ready()``/``advance()``.

Nothing here reads a clock, opens a socket or a file, starts a thread or
draws randomness other than from the injected ``random.Random``: the node
(:mod:`coordkit.backends.raft.node`) and the simulator in the tests drive it.
"""

from __future__ import annotations

from .config import RaftConfig
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
from .raft import RaftCore
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
