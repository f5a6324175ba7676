"""What the store holds, and every read of it: the base the machine and the snapshots share.

:class:`StoreState` is the data (node records, child sets, sequence counters,
sessions with their dedup tables, the watch history, the limits) and the
read-only queries over it. :class:`~.machine.Store` adds the commands;
:mod:`.snapshot` streams a state out and builds one back, without needing
the machine.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from coordkit.errors import CompactedError, InvalidArgumentError, NoNodeError
from coordkit.model import Event, Node
from coordkit.paths import DEFAULT_MAX_VALUE_BYTES, is_ancestor

from . import records
from .records import Record

__all__ = [
    "DEFAULT_HISTORY",
    "DEFAULT_SESSION_RESULTS",
    "Capture",
    "SessionRecord",
    "SessionState",
    "StoreState",
    "check_int",
    "matches",
]

DEFAULT_HISTORY = 10_000
#: Unacknowledged results a session may have before its next request is refused.
DEFAULT_SESSION_RESULTS = 1_024


@dataclass(frozen=True, slots=True)
class SessionState:
    """A read-only view of one session: its TTL, ephemerals and dedup table."""

    session_id: int
    ttl: float
    ephemerals: tuple[str, ...]
    #: every result with a seq below this has been acknowledged and forgotten.
    lowest_unacked: int
    #: (seq, :func:`encode_result` of its result or error), ascending seq.
    results: tuple[tuple[int, bytes], ...]


class SessionRecord:
    """A live session: its TTL (never a deadline), ephemeral paths and dedup table."""

    __slots__ = ("ephemerals", "lowest_unacked", "results", "ttl")

    def __init__(self, ttl: float, lowest_unacked: int = 0) -> None:
        self.ttl = ttl
        self.ephemerals: set[str] = set()
        self.lowest_unacked = lowest_unacked
        #: seq -> encoded result (or error) of every unacknowledged request applied.
        self.results: dict[int, bytes] = {}


class Capture:
    """What a running snapshot needs kept: the pre-image of each record changed since it began.

    ``saved[path]`` is (record, next sequence number) as they were at
    ``revision``; only records that existed then are kept, each once.
    """

    __slots__ = ("revision", "saved")

    def __init__(self, revision: int) -> None:
        self.revision = revision
        self.saved: dict[str, tuple[Record, int]] = {}


class StoreState:
    """The store's data and its reads; see :class:`~.machine.Store` for the guarantees."""

    def __init__(
        self,
        *,
        max_history: int = DEFAULT_HISTORY,
        max_session_results: int = DEFAULT_SESSION_RESULTS,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        listener: Callable[[Sequence[Event]], None] | None = None,
    ) -> None:
        self.revision = 0
        #: every event with revision >= oldest_revision is in the history.
        self.oldest_revision = 1
        self._max_history = check_int("max_history", max_history, 1)
        self._max_session_results = check_int("max_session_results", max_session_results, 1)
        self._max_value_bytes = check_int("max_value_bytes", max_value_bytes, 1)
        self.listener = listener
        #: path -> record; dict order puts every parent before its children.
        self._nodes: dict[str, Record] = {"/": records.ROOT_RECORD}
        #: parent path -> its children's paths (only for nodes that have had a child).
        self._children: dict[str, set[str]] = {}
        #: parent path -> the next sequential suffix (only where one was handed out).
        self._next_seq: dict[str, int] = {}
        self._sessions: dict[int, SessionRecord] = {}
        self._next_session_id = 1
        self._history: deque[Event] = deque()
        #: running snapshots, each keeping the pre-images of records changed since it began.
        self._captures: list[Capture] = []

    @property
    def max_history(self) -> int:
        """The most watch-history events kept (changed by the Configure command)."""
        return self._max_history

    @property
    def max_session_results(self) -> int:
        """The most unacknowledged results one session may have recorded."""
        return self._max_session_results

    @property
    def max_value_bytes(self) -> int:
        return self._max_value_bytes

    def get(self, path: str) -> Node | None:
        rec = self._nodes.get(path)
        return None if rec is None else self._node(path, rec)

    def children(self, path: str) -> list[str]:
        """The sorted names of ``path``'s children."""
        if path not in self._nodes:
            raise NoNodeError(path)
        start = 1 if path == "/" else len(path) + 1
        return sorted(child[start:] for child in self._children.get(path, ()))

    def exists(self, path: str) -> bool:
        return path in self._nodes

    def paths(self) -> list[str]:
        return sorted(self._nodes)

    def __len__(self) -> int:
        """The number of nodes, the root included."""
        return len(self._nodes)

    def has_session(self, session_id: int) -> bool:
        return session_id in self._sessions

    def session_ids(self) -> list[int]:
        return sorted(self._sessions)

    def session_ttl(self, session_id: int) -> float | None:
        """The TTL the session was opened with, or None if it does not exist."""
        sess = self._sessions.get(session_id)
        return None if sess is None else sess.ttl

    def session_ttls(self) -> dict[int, float]:
        """Every live session's TTL, by ascending id (what a new Raft leader reads)."""
        return {sid: self._sessions[sid].ttl for sid in sorted(self._sessions)}

    def session_ephemerals(self, session_id: int) -> list[str]:
        sess = self._sessions.get(session_id)
        return sorted(sess.ephemerals) if sess else []

    def session(self, session_id: int) -> SessionState | None:
        sess = self._sessions.get(session_id)
        if sess is None:
            return None
        return SessionState(
            session_id,
            sess.ttl,
            tuple(sorted(sess.ephemerals)),
            sess.lowest_unacked,
            tuple(sorted(sess.results.items())),
        )

    @property
    def next_session_id(self) -> int:
        """The id the next OpenSession gets."""
        return self._next_session_id

    def next_sequence(self, path: str) -> int:
        """The suffix the next sequential child of ``path`` gets (0 if none was handed out)."""
        return self._next_seq.get(path, 0)

    def history(self) -> list[Event]:
        """Every event kept, oldest first (all with revision >= ``oldest_revision``)."""
        return list(self._history)

    def events_since(self, revision: int, path: str = "/", recursive: bool = True) -> list[Event]:
        """History events with revision >= ``revision`` matching ``path``."""
        if revision < self.oldest_revision:
            raise CompactedError(
                f"revision {revision} is compacted; oldest available is {self.oldest_revision}",
                self.oldest_revision,
            )
        return [
            ev
            for ev in self._history
            if ev.revision >= revision and matches(ev.path, path, recursive)
        ]

    def _node(self, path: str, rec: Record) -> Node:
        kids = self._children.get(path)
        return records.to_node(path, rec, len(kids) if kids else 0)


def matches(event_path: str, path: str, recursive: bool) -> bool:
    """Whether a change at ``event_path`` concerns a watch on ``path``."""
    return is_ancestor(path, event_path) if recursive else event_path == path


def check_int(name: str, value: object, minimum: int | None = None) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``, else InvalidArgumentError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name} must be an int, not {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise InvalidArgumentError(f"{name} must be >= {minimum}, not {value}")
    return value
