"""The values of the data model: nodes, watch events, sessions, status."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["Capability", "Event", "EventType", "Node", "Status"]


@dataclass(frozen=True, slots=True)
class Node:
    """A node of the hierarchy as seen at one revision.

    ``version`` is 0 at create and grows by one per ``set``; ``create_revision``
    and ``mod_revision`` are cluster-wide revisions; ``ephemeral_owner`` is the
    owning session id for ephemeral nodes.
    """

    path: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    ephemeral_owner: int | None = None
    num_children: int = 0

    @property
    def name(self) -> str:
        """The last segment of the path ("" for the root)."""
        return self.path.rsplit("/", 1)[-1]


class EventType(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch.

    ``node`` is the node after the change; for ``DELETED`` it is the node as it
    was just before deletion when the backend knows it, else ``None``.
    ``revision`` is the revision of the change; events of one watch arrive in
    strictly increasing revision order (several events may share the revision
    of one transaction).
    """

    type: EventType
    path: str
    node: Node | None
    revision: int


class Capability(enum.Enum):
    """What a backend can do beyond the always-required core of the contract."""

    #: ``watch(start_revision=R)`` replays history from a past revision.
    WATCH_FROM_REVISION = "watch_from_revision"
    #: transactions run a failure branch atomically when compares fail.
    TXN_ELSE = "txn_else"
    #: transactions can compare a node's value (not only versions/revisions).
    TXN_VALUE_COMPARE = "txn_value_compare"
    #: transactions can compare create/mod revisions.
    TXN_REVISION_COMPARE = "txn_revision_compare"
    #: the client can be made to vanish without ending its session (``abort``).
    ABORT = "abort"
    #: a client can force its own session to expire (fault tests).
    EXPIRE_SESSION = "expire_session"
    #: the revision moves only when the tree changes: a failed operation, a
    #: session opening or a keepalive never consumes one. (Revisions always
    #: strictly increase; without this capability they may skip numbers, as
    #: ZooKeeper's zxid does for failed writes and session events.)
    DENSE_REVISIONS = "dense_revisions"
    #: a watch delivers every change: each intermediate value, each delete at
    #: its own revision. Without it (ZooKeeper, whose notifications carry no
    #: data), states overwritten before the watcher reads them are folded into
    #: the later one; order, real states and the final state still hold.
    WATCH_EVERY_CHANGE = "watch_every_change"
    #: the backend can crash the server leading its cluster on demand
    #: (``Client.kill_leader``; the embedded Raft cluster): failover demos and tests.
    KILL_LEADER = "kill_leader"


@dataclass(frozen=True, slots=True)
class Status:
    """A snapshot of what the backend reports about itself."""

    backend: str
    revision: int
    session_id: int | None
    leader: str | None = None
    members: tuple[str, ...] = ()
    details: dict[str, object] = field(default_factory=dict)
