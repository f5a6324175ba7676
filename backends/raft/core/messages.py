"""Values exchanged by the Raft core: log entries, persistent state, messages, Ready.

Everything here is an immutable value. Node ids are strings ("n1"). Entry and
snapshot payloads are opaque ``bytes`` owned by the application.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "CAMPAIGN_TRANSFER",
    "ENTRY_OVERHEAD",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryType",
    "HardState",
    "Message",
    "MessageType",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
]

# Bytes charged per entry on top of its payload when sizing messages, so that
# many empty entries still count against the per-message and in-flight limits.
ENTRY_OVERHEAD = 16

# Context of a vote request sent because of a leadership transfer: voters
# grant it even while they still believe in a live leader.
CAMPAIGN_TRANSFER = b"campaign-transfer"


class EntryType(enum.Enum):
    NORMAL = "normal"  # an application command
    CONF_CHANGE = "conf"  # a membership change; data is a ConfChange record
    NOOP = "noop"  # appended by every new leader to commit an entry of its term


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    @property
    def size(self) -> int:
        """Bytes charged for this entry by batching and flow control."""
        return len(self.data) + ENTRY_OVERHEAD


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class HardState:
    """State that must be durable before any message that depends on it is sent."""

    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting: who leads, and this node's role."""

    leader: str | None
    role: Role


@dataclass(frozen=True, slots=True)
class ConfState:
    """A cluster configuration: voters decide, learners only replicate.

    Ids are kept sorted so that iteration order never depends on string hashing.
    """

    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()

    @staticmethod
    def of(voters: Iterable[str] = (), learners: Iterable[str] = ()) -> ConfState:
        v = tuple(sorted(set(voters)))
        return ConfState(v, tuple(sorted(set(learners) - set(v))))

    def members(self) -> tuple[str, ...]:
        return tuple(sorted(self.voters + self.learners))


class ConfChangeType(enum.Enum):
    ADD_VOTER = "add-voter"  # also promotes an existing learner
    ADD_LEARNER = "add-learner"  # also demotes an existing voter
    REMOVE_NODE = "remove"


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One membership step, and the configuration it produces.

    The log entry carries the full resulting configuration, so the
    configuration in force at any index is simply the latest change entry at
    or before it (or the snapshot's configuration).
    """

    type: ConfChangeType
    node: str
    result: ConfState = field(default_factory=ConfState)
    context: bytes = b""

    def encode(self) -> bytes:
        return json.dumps(
            {
                "type": self.type.value,
                "node": self.node,
                "voters": list(self.result.voters),
                "learners": list(self.result.learners),
                "context": self.context.hex(),
            },
            sort_keys=True,
        ).encode()

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        raw = json.loads(data)
        return ConfChange(
            ConfChangeType(raw["type"]),
            raw["node"],
            ConfState.of(raw["voters"], raw["learners"]),
            bytes.fromhex(raw["context"]),
        )


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The application state after applying every entry up to ``meta.index``."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""


class MessageType(enum.Enum):
    APP = "app"
    APP_RESP = "app-resp"
    VOTE = "vote"
    VOTE_RESP = "vote-resp"
    PRE_VOTE = "pre-vote"
    PRE_VOTE_RESP = "pre-vote-resp"
    HEARTBEAT = "heartbeat"
    HEARTBEAT_RESP = "heartbeat-resp"
    SNAP = "snap"
    TIMEOUT_NOW = "timeout-now"
    READ_INDEX = "read-index"
    READ_INDEX_RESP = "read-index-resp"


@dataclass(frozen=True, slots=True)
class Message:
    """One message between peers; unused fields keep their defaults.

    ``index``/``log_term`` are the entry preceding ``entries`` for APP, the
    candidate's last entry for (PRE_)VOTE, and the acknowledged (or rejected)
    index for APP_RESP. A rejecting APP_RESP carries a hint: ``reject_hint``
    is the follower's best guess of the last matching index and ``log_term``
    the follower's term there, so the leader skips a whole term per round trip.
    """

    type: MessageType
    frm: str
    to: str
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""

    @property
    def size(self) -> int:
        """Approximate bytes on the wire, for accounting in tests and benchmarks."""
        body = sum(e.size for e in self.entries) + len(self.context)
        if self.snapshot is not None:
            body += len(self.snapshot.data)
        return 48 + body


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied ``index``."""

    index: int
    context: bytes


@dataclass(frozen=True, slots=True)
class Ready:
    """Work handed to the application by :meth:`RaftCore.ready`.

    **Synchronous writes** (the default): handle it in this order, then call
    :meth:`RaftCore.advance` with it; ``persisted_messages`` is always empty.

    1. persist ``snapshot`` (if any), then append ``entries`` (which may replace
       a suffix of the stored log), then store ``hard_state`` (if not None);
       all of it durably when ``must_sync``;
    2. only then send ``messages`` (they may depend on what step 1 persisted:
       a vote, an acknowledged append);
    3. install ``snapshot`` into the state machine, then apply
       ``committed_entries`` in order; serve ``read_states`` once applied.

    **Asynchronous writes** (``RaftConfig.async_storage_writes``): the writes
    of several Readies may be in flight at once.

    1. hand ``snapshot``, ``entries`` and ``hard_state`` (in that order) to a
       writer that makes them durable in Ready order; do not write them into
       the core's :class:`Storage` yet;
    2. send ``messages`` at once (nothing in them waits for this node's disk:
       the leader's appends go out while it writes the same entries itself);
    3. install ``snapshot`` (committed state only; a state machine that
       persists itself apart from the log installs it at step 4 instead: no
       entry after it is handed out before then), apply ``committed_entries``
       (they are already durable here), serve ``read_states`` once applied;
       then call :meth:`RaftCore.advance`. ``ready()`` may be called again
       right away;
    4. when the writer has made this Ready's writes durable (and every earlier
       Ready's), write them into the core's Storage (snapshot, entries, hard
       state: exactly what step 1 wrote), call :meth:`RaftCore.persisted` with
       this Ready, and only then send ``persisted_messages``. Every Ready is
       reported, in order, also one with nothing to write (it is durable as
       soon as the Readies before it are).

    ``persisted_messages`` are the replies whose content the receiver counts
    on this node's disk for: append acknowledgements (an acknowledged entry
    counts towards a commit, so it must survive a crash, §3.8) and vote
    replies (a granted vote must be durable, or a restart could vote twice
    in the term). Rejections and pre-vote replies wait too: they describe a
    term and log that may still be in flight, and like etcd we do not rely
    on their being safe to send early. Everything else goes out at once:
    appends, snapshots, heartbeats and TimeoutNow (they describe the
    leader's log, and its own copy counts only once persisted() says it is
    durable), vote requests (the candidate's own vote counts only once
    durable, and a crash loses the tally with it), heartbeat replies (they
    acknowledge a leader's term, not log contents) and ReadIndex traffic
    (its index is the commit index, made of durable acknowledgements only).
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    committed_entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    must_sync: bool = False
    persisted_messages: tuple[Message, ...] = ()
