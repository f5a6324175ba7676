"""The commands of the store: plain, immutable data, each with a stable type tag.

A command is what a Raft log entry carries; :meth:`Store.apply` is a pure
function of the store and the command. No command carries a time: the Raft
leader (or the memory backend) keeps session deadlines on its own clock and
proposes :class:`ExpireSession` when one runs out.

:data:`COMMAND_TAGS` gives every command its number on the wire. A number is
never reused or renumbered, so an old log entry always decodes to what it
meant; a removed command's number stays retired.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordkit.txn import Compare, Op

__all__ = [
    "COMMAND_TAGS",
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
    "Set",
    "Txn",
]


@dataclass(frozen=True, slots=True)
class Create:
    """Create a node; result: the created :class:`~coordkit.Node`."""

    path: str
    value: bytes = b""
    session_id: int | None = None  # set: the node is ephemeral, owned by this session
    sequential: bool = False
    make_parents: bool = False


@dataclass(frozen=True, slots=True)
class Set:
    """Set a node's value (only at ``version`` if given); result: the new Node."""

    path: str
    value: bytes
    version: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete a node (its subtree too if ``recursive``); result: None."""

    path: str
    version: int | None = None
    recursive: bool = False


@dataclass(frozen=True, slots=True)
class Txn:
    """Compares, then the success or the failure ops, atomically; result: a TxnResult."""

    compares: tuple[Compare, ...] = ()
    success: tuple[Op, ...] = ()
    failure: tuple[Op, ...] = ()
    session_id: int | None = None  # owner of ephemeral creates in the txn


@dataclass(frozen=True, slots=True)
class OpenSession:
    """Open a session with this TTL (seconds, finite, > 0); result: its id.

    The store only records the TTL; whoever proposes commands keeps the
    deadline (the Raft leader reads every session's TTL from the store when
    it takes office). A retried OpenSession opens a second session, which
    nobody keeps alive and which therefore expires after its TTL.
    """

    ttl: float


@dataclass(frozen=True, slots=True)
class CloseSession:
    """End a session at the client's request: its ephemeral nodes go in one revision.

    Result: the removed paths (sorted). Closing an unknown session changes nothing.
    """

    session_id: int


@dataclass(frozen=True, slots=True)
class ExpireSession:
    """End a session whose TTL ran out (decided by the leader); same effect as Close."""

    session_id: int


@dataclass(frozen=True, slots=True)
class Compact:
    """Forget watch history below ``revision``; result: the oldest revision kept."""

    revision: int


@dataclass(frozen=True, slots=True)
class Configure:
    """Change the store's limits (None: leave as is); result: None.

    ``max_history`` bounds the watch history by event count (lowering it
    forgets the oldest events at once); ``max_session_results`` bounds each
    session's table of unacknowledged results (see :class:`ClientRequest`);
    ``max_value_bytes`` bounds the values of later writes. Replicated, so
    every replica uses the same limits.
    """

    max_history: int | None = None
    max_session_results: int | None = None
    max_value_bytes: int | None = None


RequestCommand = Create | Set | Delete | Txn | CloseSession


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """A client's command, applied at most once (Raft dissertation §6.3).

    ``seq`` numbers the session's requests; ``lowest_unacked`` is the lowest
    ``seq`` whose reply the client has not yet received: every result below
    it can be forgotten. :meth:`Store.apply` returns the recorded result (or
    raises the recorded error) of a ``seq`` it has seen, without applying the
    command again. ``command`` is one of :data:`RequestCommand`; its
    ephemeral owner, if any, must be ``session_id``.
    """

    session_id: int
    seq: int
    lowest_unacked: int
    command: RequestCommand


Command = (
    Create
    | Set
    | Delete
    | Txn
    | OpenSession
    | CloseSession
    | ExpireSession
    | Compact
    | Configure
    | ClientRequest
)

#: Stable wire numbers. Never reuse or renumber; retired numbers: none yet.
COMMAND_TAGS: dict[type[Command], int] = {
    Create: 1,
    Set: 2,
    Delete: 3,
    Txn: 4,
    OpenSession: 5,
    CloseSession: 6,
    ExpireSession: 7,
    Compact: 8,
    Configure: 9,
    ClientRequest: 10,
}
