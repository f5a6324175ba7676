"""The deterministic state machine every coordkit server runs: what Raft replicates.

Pure Python: no I/O, no clock, no randomness. Time enters only as the ``now``
field of the session commands, so replaying the same commands on any replica
gives the same tree, revisions, sessions and watch history.

Invariants kept after every :meth:`Store.apply`:

* ``revision`` grows by exactly one per successful mutating command (a
  transaction or a session expiry that removes nodes is one revision); a
  command that fails or changes nothing leaves it as it was;
* a command that raises leaves the state exactly as it was (transactions
  roll back through an undo log);
* every node but the root has its parent in the tree; ephemeral nodes have no
  children and belong to a live session, which lists them;
* the history ring holds every event with revision >= ``oldest_revision``.
"""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from coordkit.errors import (
    BadVersionError,
    CompactedError,
    CoordkitError,
    InvalidArgumentError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    SessionExpiredError,
)
from coordkit.model import Event, EventType, Node
from coordkit.paths import (
    DEFAULT_MAX_VALUE_BYTES,
    SEQUENCE_DIGITS,
    check_path,
    check_value,
    is_ancestor,
    join,
    parent,
)
from coordkit.txn import CreateOp, DeleteOp, GetOp, SetOp, TxnResult

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
)

__all__ = ["DEFAULT_HISTORY", "Store", "matches"]

DEFAULT_HISTORY = 10_000


# -- state -----------------------------------------------------------------------


@dataclass(slots=True)
class _Record:
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    owner: int | None
    children: set[str] = field(default_factory=set)
    next_seq: int = 0


@dataclass(slots=True)
class _Session:
    ttl: float
    deadline: float
    ephemerals: set[str] = field(default_factory=set)


class Store:
    """The node tree, revisions, sessions and a bounded watch history.

    Mutations go through :meth:`apply` only. ``listener`` (if given) receives
    the events of each successful mutation, in order, right after it.
    """

    ROOT: ClassVar[str] = "/"

    def __init__(
        self,
        *,
        max_history: int = DEFAULT_HISTORY,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        listener: Callable[[Sequence[Event]], None] | None = None,
    ) -> None:
        self.revision = 0
        self.max_history = max_history
        self.max_value_bytes = max_value_bytes
        self.listener = listener
        self._nodes: dict[str, _Record] = {"/": _Record(b"", 0, 0, 0, None)}
        self._sessions: dict[int, _Session] = {}
        self._next_session_id = 1
        self._history: deque[Event] = deque()
        #: every event with revision >= oldest_revision is in the history.
        self.oldest_revision = 1
        # while applying: pending events and the undo log (None outside a mutation)
        self._events: list[Event] = []
        self._undo: list[Callable[[], None]] = []

    # -- reads ----------------------------------------------------------------

    def get(self, path: str) -> Node | None:
        rec = self._nodes.get(path)
        return None if rec is None else self._node(path, rec)

    def children(self, path: str) -> list[str]:
        rec = self._nodes.get(path)
        if rec is None:
            raise NoNodeError(path)
        return sorted(rec.children)

    def exists(self, path: str) -> bool:
        return path in self._nodes

    def has_session(self, session_id: int) -> bool:
        return session_id in self._sessions

    def session_ids(self) -> list[int]:
        return sorted(self._sessions)

    def session_ephemerals(self, session_id: int) -> list[str]:
        sess = self._sessions.get(session_id)
        return sorted(sess.ephemerals) if sess else []

    def next_deadline(self) -> float | None:
        """The earliest session deadline, or None without sessions."""
        return min((s.deadline for s in self._sessions.values()), default=None)

    def paths(self) -> list[str]:
        return sorted(self._nodes)

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

    def _node(self, path: str, rec: _Record) -> Node:
        return Node(
            path,
            rec.value,
            rec.create_revision,
            rec.mod_revision,
            rec.version,
            rec.owner,
            len(rec.children),
        )

    # -- apply ----------------------------------------------------------------

    def apply(self, command: Command) -> Any:
        """Apply one command; return its result or raise (state unchanged on error)."""
        self._events = []
        self._undo = []
        try:
            result = self._dispatch(command)
        except BaseException:
            for undo in reversed(self._undo):
                undo()
            self._events = []
            self._undo = []
            raise
        events, self._events, self._undo = self._events, [], []
        if events:
            self._record(events)
        return result

    def _dispatch(self, cmd: Command) -> Any:
        if isinstance(cmd, Create):
            self._check_session(cmd.session_id)
            return self._commit(
                lambda rev: self._create(
                    rev, cmd.path, cmd.value, cmd.session_id, cmd.sequential, cmd.make_parents
                )
            )
        if isinstance(cmd, Set):
            return self._commit(lambda rev: self._set(rev, cmd.path, cmd.value, cmd.version))
        if isinstance(cmd, Delete):
            return self._commit(lambda rev: self._delete(rev, cmd.path, cmd.version, cmd.recursive))
        if isinstance(cmd, Txn):
            return self._txn(cmd)
        if isinstance(cmd, OpenSession):
            return self._open_session(cmd)
        if isinstance(cmd, KeepAlive):
            sess = self._sessions.get(cmd.session_id)
            if sess is None:
                raise SessionExpiredError(f"session {cmd.session_id:#x} has expired")
            sess.deadline = max(sess.deadline, cmd.now + sess.ttl)
            return sess.deadline
        if isinstance(cmd, CloseSession | ExpireSession):
            return self._end_session(cmd.session_id)
        if isinstance(cmd, ExpireSessions):
            expired = sorted(i for i, s in self._sessions.items() if s.deadline <= cmd.now)
            for session_id in expired:
                self._end_session(session_id)
            return expired
        if isinstance(cmd, Compact):
            self._compact(cmd.revision)
            return self.oldest_revision
        raise InvalidArgumentError(f"not a store command: {cmd!r}")

    def _commit(self, mutate: Callable[[int], Any]) -> Any:
        """Run ``mutate`` at the next revision; advance only if it emitted events."""
        result = mutate(self.revision + 1)
        if self._events:
            self.revision += 1
        return result

    def _record(self, events: list[Event]) -> None:
        self._history.extend(events)
        while len(self._history) > self.max_history:
            dropped = self._history.popleft()
            self.oldest_revision = max(self.oldest_revision, dropped.revision + 1)
        if self.listener is not None:
            self.listener(events)

    def _compact(self, revision: int) -> None:
        while self._history and self._history[0].revision < revision:
            self._history.popleft()
        self.oldest_revision = max(self.oldest_revision, min(revision, self.revision + 1))

    # -- primitive mutations (each logs its undo) --------------------------------

    def _emit(self, type_: EventType, path: str, node: Node | None, revision: int) -> None:
        self._events.append(Event(type_, path, node, revision))

    def _check_session(self, session_id: int | None) -> None:
        if session_id is not None and session_id not in self._sessions:
            raise SessionExpiredError(f"session {session_id:#x} has expired")

    def _create(
        self,
        rev: int,
        path: str,
        value: bytes,
        owner: int | None,
        sequential: bool,
        make_parents: bool,
    ) -> Node:
        check_path(path)
        check_value(value, self.max_value_bytes)
        if path == "/":
            raise NodeExistsError("the root always exists")
        parent_path = parent(path)
        if parent_path not in self._nodes:
            if not make_parents:
                raise NoNodeError(f"parent of {path!r} does not exist")
            self._create(rev, parent_path, b"", None, False, True)
        prec = self._nodes[parent_path]
        if prec.owner is not None:
            raise NoChildrenForEphemeralsError(f"{parent_path!r} is ephemeral")
        if sequential:
            seq = prec.next_seq
            path = f"{path}{seq:0{SEQUENCE_DIGITS}d}"
            prec.next_seq = seq + 1
            self._undo.append(lambda: setattr(prec, "next_seq", seq))
        if path in self._nodes:
            raise NodeExistsError(path)
        rec = _Record(value, rev, rev, 0, owner)
        self._nodes[path] = rec
        name = path.rsplit("/", 1)[1]
        prec.children.add(name)

        def undo() -> None:
            del self._nodes[path]
            prec.children.discard(name)

        self._undo.append(undo)
        if owner is not None:
            ephemerals = self._sessions[owner].ephemerals
            ephemerals.add(path)
            self._undo.append(lambda: ephemerals.discard(path))
        node = self._node(path, rec)
        self._emit(EventType.CREATED, path, node, rev)
        return node

    def _set(self, rev: int, path: str, value: bytes, version: int | None) -> Node:
        check_path(path)
        check_value(value, self.max_value_bytes)
        rec = self._nodes.get(path)
        if rec is None:
            raise NoNodeError(path)
        if version is not None and rec.version != version:
            raise BadVersionError(f"{path}: version is {rec.version}, expected {version}")
        old = (rec.value, rec.mod_revision, rec.version)
        rec.value, rec.mod_revision, rec.version = value, rev, rec.version + 1

        def undo() -> None:
            rec.value, rec.mod_revision, rec.version = old

        self._undo.append(undo)
        node = self._node(path, rec)
        self._emit(EventType.UPDATED, path, node, rev)
        return node

    def _delete(self, rev: int, path: str, version: int | None, recursive: bool) -> None:
        check_path(path)
        if path == "/":
            raise InvalidArgumentError("the root cannot be deleted")
        rec = self._nodes.get(path)
        if rec is None:
            raise NoNodeError(path)
        if version is not None and rec.version != version:
            raise BadVersionError(f"{path}: version is {rec.version}, expected {version}")
        if rec.children:
            if not recursive:
                raise NotEmptyError(path)
            for name in sorted(rec.children):
                self._delete(rev, join(path, name), None, True)
        self._remove(rev, path, rec)

    def _remove(self, rev: int, path: str, rec: _Record) -> None:
        node = self._node(path, rec)
        del self._nodes[path]
        prec = self._nodes[parent(path)]
        name = path.rsplit("/", 1)[1]
        prec.children.discard(name)
        owner_set = self._sessions[rec.owner].ephemerals if rec.owner is not None else None
        if owner_set is not None:
            owner_set.discard(path)

        def undo() -> None:
            self._nodes[path] = rec
            prec.children.add(name)
            if owner_set is not None:
                owner_set.add(path)

        self._undo.append(undo)
        self._emit(EventType.DELETED, path, node, rev)

    # -- transactions ----------------------------------------------------------

    def _txn(self, cmd: Txn) -> TxnResult:
        succeeded = all(c.holds(self.get(c.path)) for c in cmd.compares)
        ops = cmd.success if succeeded else cmd.failure
        if any(isinstance(op, CreateOp) and op.ephemeral for op in ops):
            self._check_session(cmd.session_id)

        def run(rev: int) -> tuple[Node | None, ...]:
            results: list[Node | None] = []
            for op in ops:
                if isinstance(op, GetOp):
                    results.append(self.get(op.path))
                elif isinstance(op, CreateOp):
                    owner = cmd.session_id if op.ephemeral else None
                    results.append(
                        self._create(rev, op.path, op.value, owner, op.sequential, False)
                    )
                elif isinstance(op, SetOp):
                    results.append(self._set(rev, op.path, op.value, op.version))
                elif isinstance(op, DeleteOp):
                    self._delete(rev, op.path, op.version, False)
                    results.append(None)
                else:
                    raise InvalidArgumentError(f"not a txn op: {op!r}")
            return tuple(results)

        results = self._commit(run)
        return TxnResult(succeeded, self.revision, results)

    # -- sessions ----------------------------------------------------------------

    def _open_session(self, cmd: OpenSession) -> int:
        if not cmd.ttl > 0:
            raise InvalidArgumentError(f"session ttl must be > 0, not {cmd.ttl}")
        session_id = self._next_session_id
        self._next_session_id += 1
        self._sessions[session_id] = _Session(cmd.ttl, cmd.now + cmd.ttl)
        return session_id

    def _end_session(self, session_id: int) -> list[str]:
        """Remove the session and (in one revision) its ephemeral nodes; return their paths."""
        sess = self._sessions.get(session_id)
        if sess is None:
            return []
        paths = sorted(sess.ephemerals)
        rev = self.revision + 1
        for path in paths:
            self._remove(rev, path, self._nodes[path])
        del self._sessions[session_id]
        if paths:
            self.revision = rev
        return paths

    # -- snapshots -------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as bytes (tree, revision, sessions, history)."""
        b64 = _b64
        state = {
            "revision": self.revision,
            "oldest_revision": self.oldest_revision,
            "max_history": self.max_history,
            "max_value_bytes": self.max_value_bytes,
            "next_session_id": self._next_session_id,
            "nodes": [
                [p, b64(r.value), r.create_revision, r.mod_revision, r.version, r.owner, r.next_seq]
                for p, r in sorted(self._nodes.items())
            ],
            "sessions": [[i, s.ttl, s.deadline] for i, s in sorted(self._sessions.items())],
            "history": [
                [
                    ev.type.value,
                    ev.path,
                    ev.revision,
                    None if ev.node is None else _node_to_plain(ev.node),
                ]
                for ev in self._history
            ],
        }
        return orjson.dumps(state)

    @classmethod
    def restore(
        cls, data: bytes, *, listener: Callable[[Sequence[Event]], None] | None = None
    ) -> Store:
        """A store equal to the one that produced ``data`` with :meth:`snapshot`."""
        try:
            state = orjson.loads(data)
            store = cls(
                max_history=int(state["max_history"]),
                max_value_bytes=int(state["max_value_bytes"]),
                listener=listener,
            )
            store.revision = int(state["revision"])
            store.oldest_revision = int(state["oldest_revision"])
            store._next_session_id = int(state["next_session_id"])
            for sid, ttl, deadline in state["sessions"]:
                store._sessions[int(sid)] = _Session(float(ttl), float(deadline))
            store._nodes = {}
            for path, value, crev, mrev, version, owner, next_seq in state["nodes"]:
                store._nodes[path] = _Record(
                    base64.b64decode(value), crev, mrev, version, owner, set(), next_seq
                )
                if owner is not None:
                    store._sessions[owner].ephemerals.add(path)
            for path in store._nodes:
                if path != "/":
                    store._nodes[parent(path)].children.add(path.rsplit("/", 1)[1])
            store._history = deque(
                Event(
                    EventType(t),
                    p,
                    None if n is None else _node_from_plain(n),
                    int(r),
                )
                for t, p, r, n in state["history"]
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CoordkitError(f"corrupt store snapshot: {exc}") from exc
        return store


def matches(event_path: str, path: str, recursive: bool) -> bool:
    """Whether a change at ``event_path`` concerns a watch on ``path``."""
    return is_ancestor(path, event_path) if recursive else event_path == path


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _node_to_plain(node: Node) -> list[Any]:
    return [
        node.path,
        _b64(node.value),
        node.create_revision,
        node.mod_revision,
        node.version,
        node.ephemeral_owner,
        node.num_children,
    ]


def _node_from_plain(items: Iterable[Any]) -> Node:
    path, value, crev, mrev, version, owner, nchildren = items
    return Node(path, base64.b64decode(value), crev, mrev, version, owner, nchildren)
