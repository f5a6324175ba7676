"""Random command sequences against a simple reference model of the store.

The model is a dict of path -> node fields, written as plainly as possible;
the store must agree with it on every result, every error and every node, and
a snapshot/restore round trip at any point must give an identical store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coordkit.backends.store import (
    CloseSession,
    Create,
    Delete,
    ExpireSessions,
    KeepAlive,
    OpenSession,
    Set,
    Store,
    Txn,
    decode_command,
    encode_command,
)
from coordkit.errors import (
    BadVersionError,
    CoordkitError,
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
    sessions: dict[int, float] = field(default_factory=dict)  # id -> deadline
    ttls: dict[int, float] = field(default_factory=dict)
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
    del m.ttls[sid]


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = Store(max_history=50)
        self.model = Model()
        self.now = 0.0
        self.events: list[tuple[EventType, str, int]] = []
        self.store.listener = lambda evs: self.events.extend(
            (e.type, e.path, e.revision) for e in evs
        )

    # Every command is also sent through encode/decode, as Raft would carry it.
    def run(self, command, model_fn):  # type: ignore[no-untyped-def]
        command = decode_command(encode_command(command))
        saved = _copy_model(self.model)
        try:
            expected = model_fn()
        except CoordkitError as exc:
            self.model = saved
            with pytest.raises(type(exc)):
                self.store.apply(command)
            return None
        return expected, self.store.apply(command)

    @rule(
        path=st.sampled_from(PATHS),
        value=VALUES,
        seq=st.booleans(),
        parents=st.booleans(),
        eph=st.booleans(),
    )
    def create(self, path: str, value: bytes, seq: bool, parents: bool, eph: bool) -> None:
        owner = min(self.model.sessions) if eph and self.model.sessions else None
        rev = self.model.revision + 1

        def fn() -> str:
            out = model_create(self.model, rev, path, value, owner, seq, parents)
            self.model.revision = rev
            return out

        out = self.run(Create(path, value, owner, seq, parents), fn)
        if out:
            expected_path, node = out
            assert node.path == expected_path
            assert node.create_revision == node.mod_revision == rev
            assert node.version == 0 and node.ephemeral_owner == owner

    @rule(path=st.sampled_from(PATHS), value=VALUES, version=st.none() | st.integers(0, 3))
    def set(self, path: str, value: bytes, version: int | None) -> None:
        rev = self.model.revision + 1

        def fn() -> None:
            model_set(self.model, rev, path, value, version)
            self.model.revision = rev

        out = self.run(Set(path, value, version), fn)
        if out:
            assert out[1].version == self.model.nodes[path].version

    @rule(path=st.sampled_from(PATHS), version=st.none() | st.integers(0, 2), rec=st.booleans())
    def delete(self, path: str, version: int | None, rec: bool) -> None:
        def fn() -> None:
            model_delete(self.model, path, version, rec)
            self.model.revision += 1

        self.run(Delete(path, version, rec), fn)

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
    )
    def txn(self, cpath: str, cversion: int, ops: list, other: list) -> None:  # type: ignore[type-arg]
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

        out = self.run(Txn((Compare.version(cpath, "==", cversion),), tuple(ops), tuple(other)), fn)
        if out:
            assert out[1].succeeded == ok
            assert out[1].revision == self.model.revision

    @rule(ttl=st.sampled_from([1.0, 5.0]))
    def open_session(self, ttl: float) -> None:
        sid = self.store.apply(OpenSession(ttl, self.now))
        assert sid == self.model.next_session
        self.model.next_session += 1
        self.model.sessions[sid] = self.now + ttl
        self.model.ttls[sid] = ttl

    @precondition(lambda self: bool(self.model.sessions))
    @rule(data=st.data())
    def close_session(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(self.model.sessions)))
        model_end_session(self.model, sid)
        self.store.apply(CloseSession(sid))

    @rule(dt=st.sampled_from([0.5, 2.0]))
    def advance_clock(self, dt: float) -> None:
        self.now += dt
        for sid in sorted(self.model.sessions):
            if self.model.sessions[sid] <= self.now:
                model_end_session(self.model, sid)
        self.store.apply(ExpireSessions(self.now))

    @precondition(lambda self: bool(self.model.sessions))
    @rule(data=st.data())
    def keep_alive(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(self.model.sessions)))
        self.model.sessions[sid] = max(self.model.sessions[sid], self.now + self.model.ttls[sid])
        self.store.apply(KeepAlive(sid, self.now))

    @rule(sid=st.integers(100, 110))
    def keep_alive_of_unknown_session_fails(self, sid: int) -> None:
        with pytest.raises(SessionExpiredError):
            self.store.apply(KeepAlive(sid, self.now))

    @rule()
    def snapshot_round_trip(self) -> None:
        data = self.store.snapshot()
        restored = Store.restore(data)
        assert restored.snapshot() == data
        restored.listener = self.store.listener
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
        assert store.session_ids() == sorted(model.sessions)

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
        dict(m.ttls),
        m.next_session,
    )


StoreMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_store_agrees_with_reference_model = StoreMachine.TestCase
