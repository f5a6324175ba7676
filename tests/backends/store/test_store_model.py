"""Random command sequences against a simple reference model of the store.

The model is a dict of path -> node fields, written as plainly as possible;
the store must agree with it on every result, every error and every node, and
a snapshot/restore round trip at any point must give an identical store.
Mutations are sent bare or inside a ClientRequest of a live session; old
requests are retried at random and must give back the first outcome, byte
for byte, without changing anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coordkit.backends.store import (
    ClientRequest,
    CloseSession,
    Command,
    Create,
    Delete,
    ExpireSession,
    OpenSession,
    Set,
    Store,
    StoreLoader,
    Txn,
    decode_command,
    decode_result,
    encode_command,
    encode_result,
)
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
from coordkit.model import EventType
from coordkit.txn import Compare, CreateOp, DeleteOp, SetOp

EXAMPLES = int(os.environ.get("COORDKIT_STORE_EXAMPLES", "300"))

NAMES = ["a", "b", "c"]


def _paths() -> list[str]:
    out = []
    for a in NAMES:
        out.append(f"/{a}")
        for b in NAMES:
            out.append(f"/{a}/{b}")
            out.extend(f"/{a}/{b}/{c}" for c in NAMES[:2])
    return out


PATHS = _paths()
VALUES = st.binary(max_size=4)
#: None: a bare command; n: inside a ClientRequest acknowledging all but the last n results.
VIA = st.none() | st.integers(0, 5)


@dataclass
class MNode:
    value: bytes
    crev: int
    mrev: int
    version: int
    owner: int | None
    next_seq: int = 0


@dataclass
class Model:
    """The reference: obviously-correct, slow, no undo log."""

    revision: int = 0
    nodes: dict[str, MNode] = field(default_factory=lambda: {"/": MNode(b"", 0, 0, 0, None)})
    sessions: dict[int, float] = field(default_factory=dict)  # id -> ttl
    next_session: int = 1

    def parent(self, path: str) -> str:
        return path.rsplit("/", 1)[0] or "/"

    def children(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return sorted(
            p[len(prefix) :]
            for p in self.nodes
            if p != path and p.startswith(prefix) and "/" not in p[len(prefix) :]
        )

    def subtree(self, path: str) -> list[str]:
        return [p for p in self.nodes if p == path or p.startswith(path + "/")]


def model_create(
    m: Model, rev: int, path: str, value: bytes, owner: int | None, seq: bool, parents: bool
) -> str:
    par = m.parent(path)
    if par not in m.nodes:
        if not parents:
            raise NoNodeError(path)
        model_create(m, rev, par, b"", None, False, True)
    if m.nodes[par].owner is not None:
        raise NoChildrenForEphemeralsError(par)
    if seq:
        path = f"{path}{m.nodes[par].next_seq:010d}"
        m.nodes[par].next_seq += 1
    if path in m.nodes:
        raise NodeExistsError(path)
    m.nodes[path] = MNode(value, rev, rev, 0, owner)
    return path


def model_delete(m: Model, path: str, version: int | None, recursive: bool) -> list[str]:
    if path not in m.nodes:
        raise NoNodeError(path)
    if version is not None and m.nodes[path].version != version:
        raise BadVersionError(path)
    doomed = m.subtree(path)
    if len(doomed) > 1 and not recursive:
        raise NotEmptyError(path)
    for p in doomed:
        del m.nodes[p]
    return doomed


def model_set(m: Model, rev: int, path: str, value: bytes, version: int | None) -> None:
    node = m.nodes.get(path)
    if node is None:
        raise NoNodeError(path)
    if version is not None and node.version != version:
        raise BadVersionError(path)
    m.nodes[path] = replace(node, value=value, mrev=rev, version=node.version + 1)


def model_end_session(m: Model, sid: int) -> None:
    mine = [p for p, n in m.nodes.items() if n.owner == sid]
    for p in mine:
        del m.nodes[p]
    if mine:
        m.revision += 1
    del m.sessions[sid]


RESULTS_PER_SESSION = 4


@dataclass
class Sent:
    """What one session has sent: the next seq, the acknowledged floor, each outcome."""

    next_seq: int = 0
    lowest_unacked: int = 0
    outcomes: dict[int, tuple[ClientRequest, bytes]] = field(default_factory=dict)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = Store(max_history=50, max_session_results=RESULTS_PER_SESSION)
        self.model = Model()
        self.sent: dict[int, Sent] = {}
        self.events: list[tuple[EventType, str, int]] = []
        self.store.listener = lambda evs: self.events.extend(
            (e.type, e.path, e.revision) for e in evs
        )

    # Every command is also sent through encode/decode, as Raft would carry it;
    # with ``via`` (a number of results to acknowledge), inside a ClientRequest.
    def run(self, command, model_fn, via=None):  # type: ignore[no-untyped-def]
        if via is not None and self.model.sessions:
            command = self.envelope(command, via)
            if command is None:
                return None
        command = decode_command(encode_command(command))
        saved = _copy_model(self.model)
        try:
            expected = model_fn()
        except CoordkitError as exc:
            self.model = saved
            with pytest.raises(type(exc)) as raised:
                self.store.apply(command)
            self.remember(command, raised.value)
            return None
        result = self.store.apply(command)
        self.remember(command, result)
        return expected, result

    def envelope(self, command: Command, acknowledge: int) -> ClientRequest | None:
        """Wrap in a request of the first session, or None if its table is full (checked)."""
        sid = min(self.model.sessions)
        sent = self.sent[sid]
        seq = sent.next_seq
        low = max(sent.lowest_unacked, seq - acknowledge)
        request = ClientRequest(sid, seq, low, command)  # type: ignore[arg-type]
        if sum(1 for s in sent.outcomes if s >= low) >= RESULTS_PER_SESSION:
            before = self.store.revision
            with pytest.raises(InvalidArgumentError, match="unacknowledged results"):
                self.store.apply(request)
            assert self.store.revision == before
            return None
        sent.next_seq += 1
        sent.lowest_unacked = low
        for old in [s for s in sent.outcomes if s < low]:
            del sent.outcomes[old]
        return request

    def remember(self, command: Command, outcome: object) -> None:
        if isinstance(command, ClientRequest) and command.session_id in self.model.sessions:
            outcomes = self.sent[command.session_id].outcomes
            outcomes[command.seq] = (command, encode_result(outcome))

    @rule(
        path=st.sampled_from(PATHS),
        value=VALUES,
        seq=st.booleans(),
        parents=st.booleans(),
        eph=st.booleans(),
        via=VIA,
    )
    def create(
        self, path: str, value: bytes, seq: bool, parents: bool, eph: bool, via: int | None
    ) -> None:
        owner = min(self.model.sessions) if eph and self.model.sessions else None
        rev = self.model.revision + 1

        def fn() -> str:
            out = model_create(self.model, rev, path, value, owner, seq, parents)
            self.model.revision = rev
            return out

        out = self.run(Create(path, value, owner, seq, parents), fn, via)
        if out:
            expected_path, node = out
            assert node.path == expected_path
            assert node.create_revision == node.mod_revision == rev
            assert node.version == 0 and node.ephemeral_owner == owner

    @rule(
        path=st.sampled_from(PATHS),
        value=VALUES,
        version=st.none() | st.integers(0, 3),
        via=VIA,
    )
    def set(self, path: str, value: bytes, version: int | None, via: int | None) -> None:
        rev = self.model.revision + 1

        def fn() -> None:
            model_set(self.model, rev, path, value, version)
            self.model.revision = rev

        out = self.run(Set(path, value, version), fn, via)
        if out:
            assert out[1].version == self.model.nodes[path].version

    @rule(
        path=st.sampled_from(PATHS),
        version=st.none() | st.integers(0, 2),
        rec=st.booleans(),
        via=VIA,
    )
    def delete(self, path: str, version: int | None, rec: bool, via: int | None) -> None:
        def fn() -> None:
            model_delete(self.model, path, version, rec)
            self.model.revision += 1

        self.run(Delete(path, version, rec), fn, via)

    @rule(
        cpath=st.sampled_from(PATHS),
        cversion=st.integers(0, 2),
        ops=st.lists(
            st.one_of(
                st.builds(CreateOp, st.sampled_from(PATHS), VALUES),
                st.builds(SetOp, st.sampled_from(PATHS), VALUES),
                st.builds(DeleteOp, st.sampled_from(PATHS)),
            ),
            max_size=3,
        ),
        other=st.lists(st.builds(SetOp, st.sampled_from(PATHS), VALUES), max_size=2),
        via=VIA,
    )
    def txn(self, cpath: str, cversion: int, ops: list, other: list, via: int | None) -> None:  # type: ignore[type-arg]
        node = self.model.nodes.get(cpath)
        ok = node is not None and node.version == cversion
        chosen = ops if ok else other
        rev = self.model.revision + 1

        def fn() -> bool:
            for op in chosen:
                if isinstance(op, CreateOp):
                    model_create(self.model, rev, op.path, op.value, None, False, False)
                elif isinstance(op, SetOp):
                    model_set(self.model, rev, op.path, op.value, None)
                else:
                    model_delete(self.model, op.path, None, False)
            if chosen:
                self.model.revision = rev
            return ok

        txn = Txn((Compare.version(cpath, "==", cversion),), tuple(ops), tuple(other))
        out = self.run(txn, fn, via)
        if out:
            assert out[1].succeeded == ok
            assert out[1].revision == self.model.revision

    @rule(ttl=st.sampled_from([1.0, 5.0, 0.25]))
    def open_session(self, ttl: float) -> None:
        sid = self.store.apply(decode_command(encode_command(OpenSession(ttl))))
        assert sid == self.model.next_session
        self.model.next_session += 1
        self.model.sessions[sid] = ttl
        self.sent[sid] = Sent()

    @precondition(lambda self: bool(self.model.sessions))
    @rule(data=st.data(), expire=st.booleans())
    def end_session(self, data: st.DataObject, expire: bool) -> None:
        sid = data.draw(st.sampled_from(sorted(self.model.sessions)))
        gone = sorted(p for p, n in self.model.nodes.items() if n.owner == sid)
        model_end_session(self.model, sid)
        del self.sent[sid]
        command = ExpireSession(sid) if expire else CloseSession(sid)
        assert self.store.apply(command) == gone
        assert self.store.apply(command) == []  # a second end changes nothing

    @rule(ttl=st.sampled_from([0.0, -1.0, float("nan"), float("inf")]))
    def open_session_with_a_bad_ttl_fails(self, ttl: float) -> None:
        with pytest.raises(InvalidArgumentError):
            self.store.apply(OpenSession(ttl))

    @precondition(lambda self: any(s.outcomes for s in self.sent.values()))
    @rule(data=st.data())
    def retry_request(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(s for s in self.sent if self.sent[s].outcomes)))
        outcomes = self.sent[sid].outcomes
        request, outcome = outcomes[data.draw(st.sampled_from(sorted(outcomes)))]
        before = (self.store.revision, self.store.snapshot())
        assert self.store.apply_entry(encode_command(request)) == outcome
        try:
            again = self.store.apply(request)
        except CoordkitError as exc:
            again = exc
        assert encode_result(again) == outcome
        assert isinstance(again, type(decode_result(outcome)))
        assert (self.store.revision, self.store.snapshot()) == before

    @precondition(lambda self: any(s.lowest_unacked for s in self.sent.values()))
    @rule(data=st.data())
    def acknowledged_request_is_refused(self, data: st.DataObject) -> None:
        sid = data.draw(
            st.sampled_from(sorted(s for s in self.sent if self.sent[s].lowest_unacked))
        )
        seq = data.draw(st.integers(0, self.sent[sid].lowest_unacked - 1))
        before = self.store.snapshot()
        with pytest.raises(InvalidArgumentError, match="acknowledged"):
            self.store.apply(ClientRequest(sid, seq, seq, Create("/a", b"")))
        assert self.store.snapshot() == before

    @rule(sid=st.integers(100, 110))
    def request_of_unknown_session_fails(self, sid: int) -> None:
        before = self.store.snapshot()
        with pytest.raises(SessionExpiredError):
            self.store.apply(ClientRequest(sid, 0, 0, Create("/a", b"")))
        assert self.store.snapshot() == before

    @rule(chunk=st.sampled_from([1, 7, 64, 1 << 20]))
    def snapshot_round_trip(self, chunk: int) -> None:
        data = self.store.snapshot()
        loader = StoreLoader(listener=self.store.listener)
        for piece in self.store.snapshot_chunks(chunk):
            loader.feed(piece)
        restored = loader.finish()
        assert restored.snapshot() == data
        self.store = restored

    @invariant()
    def agrees_with_model(self) -> None:
        store, model = self.store, self.model
        assert store.revision == model.revision
        assert store.paths() == sorted(model.nodes)
        for path, m in model.nodes.items():
            node = store.get(path)
            assert node is not None
            assert (node.value, node.create_revision, node.mod_revision, node.version) == (
                m.value,
                m.crev,
                m.mrev,
                m.version,
            ), path
            assert node.ephemeral_owner == m.owner
            assert store.children(path) == model.children(path)
            assert node.num_children == len(model.children(path))
        assert store.session_ttls() == {sid: model.sessions[sid] for sid in sorted(model.sessions)}
        for sid, sent in self.sent.items():
            state = store.session(sid)
            assert state is not None
            assert state.lowest_unacked == sent.lowest_unacked
            assert state.results == tuple(sorted((s, o) for s, (_, o) in sent.outcomes.items()))

    @invariant()
    def history_is_ordered_and_complete(self) -> None:
        revs = [r for _, _, r in self.events]
        assert revs == sorted(revs)
        if self.events:
            assert revs[-1] == self.store.revision
        # every revision that changed the tree produced at least one event
        assert set(range(1, self.store.revision + 1)) <= set(revs)
        retained = self.store.events_since(self.store.oldest_revision)
        tail = self.events[len(self.events) - len(retained) :]
        assert [(e.type, e.path, e.revision) for e in retained] == tail


def _copy_model(m: Model) -> Model:
    return Model(
        m.revision,
        {p: replace(n) for p, n in m.nodes.items()},
        dict(m.sessions),
        m.next_session,
    )


StoreMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_store_agrees_with_reference_model = StoreMachine.TestCase
