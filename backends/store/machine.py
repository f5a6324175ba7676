"""The deterministic state machine every coordkit server runs: what Raft replicates.

Pure Python: no I/O, no clock, no randomness. No command carries a time, so
replaying the same commands on any replica gives the same tree, revisions,
sessions, dedup tables, watch history -- and the same result or error for
every command.

Invariants kept after every :meth:`Store.apply`:

* ``revision`` grows by exactly one per successful command that changes the
  tree (a transaction or a session's end that removes nodes is one revision);
  a command that fails or changes no node leaves it as it was;
* a command that raises leaves the state exactly as it was (transactions
  roll back through an undo log); a :class:`ClientRequest` whose command
  fails records the error in its session's table and changes nothing else;
* every node but the root has its parent in the tree, and ``_nodes`` holds
  every parent before its children (dict order), which snapshots rely on;
  ephemeral nodes have no children and belong to a live session, which
  lists them;
* the history ring holds every event with revision >= ``oldest_revision``
  and at most ``max_history`` events.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from coordkit.errors import (
    BadVersionError,
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
    STORED_PATH_BYTES,
    check_path,
    check_value,
    parent,
)
from coordkit.txn import CreateOp, DeleteOp, GetOp, SetOp, TxnResult, check_txn

from . import records
from .codec import decode_command
from .commands import (
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
from .results import encode_result, unwrap_result
from .snapshot import DEFAULT_CHUNK_BYTES, SnapshotLoader, SnapshotStream
from .state import (
    DEFAULT_HISTORY,
    DEFAULT_SESSION_RESULTS,
    SessionRecord,
    StoreState,
    check_int,
)

__all__ = ["Store", "StoreLoader"]


class Store(StoreState):
    """The node tree, revisions, sessions with their dedup tables, and a bounded watch history.

    Mutations go through :meth:`apply` (or :meth:`apply_entry`) only; the
    reads are :class:`~.state.StoreState`'s. ``listener`` (if given)
    receives the events of each successful mutation, in order, right after it.
    """

    def __init__(
        self,
        *,
        max_history: int = DEFAULT_HISTORY,
        max_session_results: int = DEFAULT_SESSION_RESULTS,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        listener: Callable[[Sequence[Event]], None] | None = None,
    ) -> None:
        super().__init__(
            max_history=max_history,
            max_session_results=max_session_results,
            max_value_bytes=max_value_bytes,
            listener=listener,
        )
        # while applying: pending events and the undo log
        self._events: list[Event] = []
        self._undo: list[Callable[[], None]] = []

    # -- apply ----------------------------------------------------------------

    def apply(self, command: Command) -> Any:
        """Apply one command; return its result or raise (see the module invariants).

        A :class:`ClientRequest` is applied at most once per ``seq``: a repeat
        returns the recorded result or raises a copy of the recorded error.
        It raises SessionExpiredError if its session does not exist, and
        InvalidArgumentError if its ``seq`` was already acknowledged (below
        the session's ``lowest_unacked``) or the session already has
        ``max_session_results`` unacknowledged results; these record nothing
        and change nothing.
        """
        if isinstance(command, ClientRequest):
            encoded, outcome = self._apply_request(command)
            if outcome is _REPLAYED:
                return unwrap_result(encoded)
            if isinstance(outcome, CoordkitError):
                raise outcome
            return outcome
        return self._apply_one(command)

    def apply_entry(self, entry: bytes) -> bytes:
        """Decode a log entry, apply it, and return :func:`encode_result` of the outcome.

        Never raises a CoordkitError: a malformed entry, a failed command and
        a refused request all come back encoded as their error, the same on
        every replica. For a ClientRequest the bytes are the ones recorded in
        the session's table.
        """
        try:
            command = decode_command(entry)
            if isinstance(command, ClientRequest):
                return self._apply_request(command)[0]
            result = self._apply_one(command)
        except CoordkitError as exc:
            return encode_result(exc)
        return encode_result(result)

    def _apply_one(self, command: Command) -> Any:
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
            return self._open_session(cmd.ttl)
        if isinstance(cmd, CloseSession | ExpireSession):
            return self._end_session(cmd.session_id)
        if isinstance(cmd, Compact):
            check_int("revision", cmd.revision)
            self._compact(cmd.revision)
            return self.oldest_revision
        if isinstance(cmd, Configure):
            self._configure(cmd)
            return None
        raise InvalidArgumentError(f"not a store command: {cmd!r}")

    def _commit(self, mutate: Callable[[int], Any]) -> Any:
        """Run ``mutate`` at the next revision; advance only if it emitted events."""
        result = mutate(self.revision + 1)
        if self._events:
            self.revision += 1
        return result

    def _record(self, events: list[Event]) -> None:
        self._history.extend(events)
        self._trim_history()
        if self.listener is not None:
            self.listener(events)

    def _trim_history(self) -> None:
        """Drop the oldest revisions until at most ``max_history`` events remain.

        A revision goes whole: a watch from it would be refused anyway.
        """
        history = self._history
        while len(history) > self._max_history:
            dropped = history.popleft().revision
            while history and history[0].revision == dropped:
                history.popleft()
            self.oldest_revision = max(self.oldest_revision, dropped + 1)

    def _compact(self, revision: int) -> None:
        while self._history and self._history[0].revision < revision:
            self._history.popleft()
        self.oldest_revision = max(self.oldest_revision, min(revision, self.revision + 1))

    def _configure(self, cmd: Configure) -> None:
        # Check every field before changing any: a bad one changes nothing.
        limits = {
            name: check_int(name, value, 1)
            for name, value in (
                ("max_history", cmd.max_history),
                ("max_session_results", cmd.max_session_results),
                ("max_value_bytes", cmd.max_value_bytes),
            )
            if value is not None
        }
        for name, value in limits.items():
            setattr(self, f"_{name}", value)
        self._trim_history()

    # -- exactly-once ------------------------------------------------------------

    def _apply_request(self, req: ClientRequest) -> tuple[bytes, Any]:
        """(encoded outcome, outcome), the outcome being ``_REPLAYED`` for a repeat."""
        sess = self._sessions.get(req.session_id) if isinstance(req.session_id, int) else None
        if sess is None:
            raise SessionExpiredError(f"session {req.session_id!r} has expired")
        _check_request(req)
        if req.seq < sess.lowest_unacked:
            raise InvalidArgumentError(
                f"request {req.seq} of session {req.session_id:#x} was acknowledged "
                f"(the session's lowest unacknowledged request is {sess.lowest_unacked}); "
                "its result is forgotten and it is not applied again"
            )
        recorded = sess.results.get(req.seq)
        if recorded is not None:
            self._acknowledge(sess, req.lowest_unacked)
            return recorded, _REPLAYED
        kept = sum(1 for seq in sess.results if seq >= req.lowest_unacked)
        if kept >= self._max_session_results:
            raise InvalidArgumentError(
                f"session {req.session_id:#x} has {kept} unacknowledged results, the limit: "
                "raise lowest_unacked before sending more requests"
            )
        try:
            outcome = self._apply_one(req.command)
        except CoordkitError as exc:
            outcome = exc
        encoded = encode_result(outcome)
        if req.session_id in self._sessions:  # not if the command closed its own session
            self._acknowledge(sess, req.lowest_unacked)
            sess.results[req.seq] = encoded
        return encoded, outcome

    @staticmethod
    def _acknowledge(sess: SessionRecord, lowest_unacked: int) -> None:
        """Forget every result below ``lowest_unacked`` (the client has them)."""
        if lowest_unacked > sess.lowest_unacked:
            sess.lowest_unacked = lowest_unacked
            for seq in [seq for seq in sess.results if seq < lowest_unacked]:
                del sess.results[seq]

    # -- primitive mutations (each logs its undo) --------------------------------

    def _emit(self, type_: EventType, path: str, node: Node | None, revision: int) -> None:
        self._events.append(Event(type_, path, node, revision))

    def _preserve(self, path: str) -> None:
        """Before a record (or its sequence counter) changes: keep its pre-image for snapshots."""
        for capture in self._captures:
            if path not in capture.saved:
                rec = self._nodes[path]
                if records.create_revision(rec) <= capture.revision:
                    capture.saved[path] = (rec, self._next_seq.get(path, 0))

    def _check_session(self, session_id: int | None) -> None:
        if session_id is not None and session_id not in self._sessions:
            raise SessionExpiredError(f"session {session_id!r} has expired")

    def _create(
        self,
        rev: int,
        path: str,
        value: bytes,
        owner: int | None,
        sequential: bool,
        make_parents: bool,
    ) -> Node:
        check_path(path, STORED_PATH_BYTES)
        check_value(value, self._max_value_bytes)
        if path == "/":
            raise NodeExistsError("the root always exists")
        parent_path = parent(path)
        if parent_path not in self._nodes:
            if not make_parents:
                raise NoNodeError(f"parent of {path!r} does not exist")
            self._create(rev, parent_path, b"", None, False, True)
        if records.unpack(self._nodes[parent_path])[3] is not None:
            raise NoChildrenForEphemeralsError(f"{parent_path!r} is ephemeral")
        if sequential:
            path = self._next_sequential(parent_path, path)
        if path in self._nodes:
            raise NodeExistsError(path)
        rec = records.pack(value, rev, rev, 0, owner)
        self._nodes[path] = rec
        siblings = self._children.get(parent_path)
        if siblings is None:
            siblings = self._children[parent_path] = set()
        siblings.add(path)

        def undo() -> None:
            del self._nodes[path]
            siblings.discard(path)

        self._undo.append(undo)
        if owner is not None:
            ephemerals = self._sessions[owner].ephemerals
            ephemerals.add(path)
            self._undo.append(lambda: ephemerals.discard(path))
        node = records.to_node(path, rec, 0)
        self._emit(EventType.CREATED, path, node, rev)
        return node

    def _next_sequential(self, parent_path: str, path: str) -> str:
        if self._captures:
            self._preserve(parent_path)
        seq = self._next_seq.get(parent_path, 0)
        self._next_seq[parent_path] = seq + 1

        def undo() -> None:
            if seq:
                self._next_seq[parent_path] = seq
            else:
                del self._next_seq[parent_path]

        self._undo.append(undo)
        # The suffix can take a path past the length limit (a snapshot would refuse it).
        return check_path(f"{path}{seq:0{SEQUENCE_DIGITS}d}", STORED_PATH_BYTES)

    def _set(self, rev: int, path: str, value: bytes, version: int | None) -> Node:
        check_path(path, STORED_PATH_BYTES)
        check_value(value, self._max_value_bytes)
        old = self._nodes.get(path)
        if old is None:
            raise NoNodeError(path)
        crev, _, current, owner = records.unpack(old)
        if version is not None and current != version:
            raise BadVersionError(f"{path}: version is {current}, expected {version}")
        if self._captures:
            self._preserve(path)
        rec = self._nodes[path] = records.pack(value, crev, rev, current + 1, owner)
        self._undo.append(lambda: self._nodes.__setitem__(path, old))
        node = self._node(path, rec)
        self._emit(EventType.UPDATED, path, node, rev)
        return node

    def _delete(self, rev: int, path: str, version: int | None, recursive: bool) -> None:
        check_path(path, STORED_PATH_BYTES)
        if path == "/":
            raise InvalidArgumentError("the root cannot be deleted")
        rec = self._nodes.get(path)
        if rec is None:
            raise NoNodeError(path)
        current = records.unpack(rec)[2]
        if version is not None and current != version:
            raise BadVersionError(f"{path}: version is {current}, expected {version}")
        kids = self._children.get(path)
        if kids:
            if not recursive:
                raise NotEmptyError(path)
            for child in sorted(kids):
                self._delete(rev, child, None, True)
        self._remove(rev, path)

    def _remove(self, rev: int, path: str) -> None:
        """Remove a childless node."""
        if self._captures:
            self._preserve(path)
        rec = self._nodes.pop(path)
        node = records.to_node(path, rec, 0)
        siblings = self._children[parent(path)]
        siblings.discard(path)
        kids = self._children.pop(path, None)
        next_seq = self._next_seq.pop(path, None)
        owner = records.unpack(rec)[3]
        ephemerals = self._sessions[owner].ephemerals if owner is not None else None
        if ephemerals is not None:
            ephemerals.discard(path)

        def undo() -> None:
            self._nodes[path] = rec
            siblings.add(path)
            if kids is not None:
                self._children[path] = kids
            if next_seq is not None:
                self._next_seq[path] = next_seq
            if ephemerals is not None:
                ephemerals.add(path)

        self._undo.append(undo)
        self._emit(EventType.DELETED, path, node, rev)

    # -- transactions ----------------------------------------------------------

    def _txn(self, cmd: Txn) -> TxnResult:
        # The client's own checks, again: a compare of an int with bytes must be
        # refused here, not raise a TypeError in every replica's apply loop.
        check_txn(cmd.compares, cmd.success, cmd.failure, self._max_value_bytes)
        succeeded = all(c.holds(self.get(c.path)) for c in cmd.compares)
        ops = cmd.success if succeeded else cmd.failure
        if any(isinstance(op, CreateOp) and op.ephemeral for op in ops):
            if cmd.session_id is None:
                raise InvalidArgumentError("an ephemeral create in a txn needs its session_id")
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

    def _open_session(self, ttl: float) -> int:
        if (
            isinstance(ttl, bool)
            or not isinstance(ttl, int | float)
            or not math.isfinite(ttl)
            or ttl <= 0
        ):
            raise InvalidArgumentError(f"session ttl must be a finite number > 0, not {ttl!r}")
        session_id = self._next_session_id
        self._next_session_id += 1
        self._sessions[session_id] = SessionRecord(float(ttl))
        return session_id

    def _end_session(self, session_id: int) -> list[str]:
        """Remove the session, its dedup table and (in one revision) its ephemeral nodes.

        Returns the removed paths; an unknown session changes nothing.
        """
        sess = self._sessions.get(session_id)
        if sess is None:
            return []
        paths = sorted(sess.ephemerals)
        rev = self.revision + 1
        for path in paths:
            self._remove(rev, path)
        del self._sessions[session_id]
        self._undo.append(lambda: self._sessions.__setitem__(session_id, sess))
        if paths:
            self.revision = rev
        return paths

    # -- snapshots (the format lives in snapshot.py) ------------------------------

    def snapshot_chunks(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
        """The whole state as a stream of chunks, consistent as of this call.

        ``apply`` may run between chunks: the stream still describes the
        state at the moment of the call (only records changed meanwhile are
        kept aside, never a copy of the tree). Each chunk is ``chunk_bytes``
        long except the last. Exhaust or ``close()`` the iterator: until
        then the store keeps the pre-images of the records that change.
        Feed the chunks to a :class:`StoreLoader` to get the store back.
        """
        return SnapshotStream(self, chunk_bytes)

    def snapshot(self) -> bytes:
        """The whole state as one bytes object (the chunks of :meth:`snapshot_chunks`, joined)."""
        return b"".join(self.snapshot_chunks())

    @classmethod
    def restore(
        cls, data: bytes, *, listener: Callable[[Sequence[Event]], None] | None = None
    ) -> Store:
        """A store equal to the one that produced ``data`` (InvalidArgumentError if corrupt)."""
        loader = StoreLoader(listener=listener)
        loader.feed(data)
        return loader.finish()


class StoreLoader(SnapshotLoader["Store"]):
    """Builds a :class:`Store` from snapshot chunks: ``feed(chunk)``... then ``finish()``.

    Any corrupt, truncated or trailing data raises InvalidArgumentError
    ("corrupt store snapshot: ..."), from ``feed`` or ``finish``, and the
    loader then refuses to go on.
    """

    def __init__(self, *, listener: Callable[[Sequence[Event]], None] | None = None) -> None:
        super().__init__(lambda **limits: Store(listener=listener, **limits))


_REPLAYED: Any = object()


def _check_request(req: ClientRequest) -> None:
    """A well-formed request: numbers in order, a command a client may send, its own session."""
    check_int("seq", req.seq, 0)
    check_int("lowest_unacked", req.lowest_unacked, 0)
    if req.lowest_unacked > req.seq:
        raise InvalidArgumentError(
            f"lowest_unacked ({req.lowest_unacked}) cannot exceed the request's seq ({req.seq})"
        )
    cmd = req.command
    if not isinstance(cmd, RequestCommand):
        raise InvalidArgumentError(f"a ClientRequest cannot carry {type(cmd).__name__}")
    owner = cmd.session_id if isinstance(cmd, Create | Txn | CloseSession) else None
    if owner is not None and owner != req.session_id:
        raise InvalidArgumentError(
            f"a request of session {req.session_id:#x} acts for session {owner!r}"
        )
