"""coordkit transactions as one etcd transaction.

The user's compares run natively in etcd and choose the branch. Operations,
though, have preconditions etcd cannot express on its own (a create needs its
parent, a delete needs no children, ops of one branch depend on each other),
so the backend:

1. reads, at one revision R, every node the ops touch (data key, child count,
   sequence counter of the parents of sequential creates);
2. plays each branch on that state, which gives its etcd writes or its error;
3. sends ``if pins(R) then (if compares then success-writes else failure-writes)``
   where the pins say that what step 2 relied on is unchanged (mod revisions of
   the data keys, no new child under a node being deleted, counter versions).
   If a pin fails, start again; if the chosen branch had an error, its nested
   branch only re-reads the state, and the error is confirmed against that
   state (else start again), so an error is always true at the commit revision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from coordkit.errors import (
    BadVersionError,
    CoordkitError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
)
from coordkit.model import Node
from coordkit.paths import SEQUENCE_DIGITS, parent
from coordkit.retry import Conflict
from coordkit.txn import (
    Compare,
    CompareOp,
    CompareTarget,
    CreateOp,
    DeleteOp,
    GetOp,
    Op,
    SetOp,
    TxnResult,
)

from . import ops
from .access import EtcdAccess
from .keys import KeyLayout, prefix_end

__all__ = ["run_txn"]

_RESULT = {
    CompareOp.EQ: ops.EQUAL,
    CompareOp.NE: ops.NOT_EQUAL,
    CompareOp.LT: ops.LESS,
    CompareOp.GT: ops.GREATER,
}


@dataclass
class _Seen:
    """The state read at revision R for the paths the ops touch."""

    revision: int
    kv: dict[str, Any] = field(default_factory=dict)  # path -> data KeyValue | None
    count: dict[str, int] = field(default_factory=dict)
    counter: dict[str, tuple[int, int]] = field(default_factory=dict)  # parent -> (version, next)


@dataclass
class _Plan:
    """One branch played on the state: its etcd ops and how to build its results.

    etcd allows one write per key in a transaction, so several writes to one
    key in a branch merge into the last (placed where the last one was).
    """

    steps: list[tuple[str, Any]] = field(default_factory=list)  # ("write", key) | ("read", op)
    writes: dict[bytes, tuple[bytes | None, int | None]] = field(default_factory=dict)
    finals: list[Any] = field(default_factory=list)  # reads after every write
    results: list[tuple[str, Any]] = field(default_factory=list)
    error: CoordkitError | None = None
    pins: list[Any] = field(default_factory=list)
    unknown: set[str] = field(default_factory=set)  # paths to read before trusting the plan

    def put(self, key: bytes, value: bytes, lease: int | None) -> None:
        """``lease`` None keeps the key's lease (or the one this branch gave it)."""
        if lease is None and key in self.writes:
            lease = self.writes[key][1]
        self.writes[key] = (value, lease)
        self.steps.append(("write", key))

    def delete(self, key: bytes) -> None:
        self.writes[key] = (None, None)
        self.steps.append(("write", key))

    def read(self, request: Any) -> int:
        """Add a read at this point of the branch; returns its marker."""
        self.steps.append(("read", request))
        return len(self.steps) - 1

    def requests(self) -> tuple[list[Any], dict[int, int]]:
        """The etcd ops in order, and where each read marker landed."""
        last = {key: i for i, (kind, key) in enumerate(self.steps) if kind == "write"}
        out: list[Any] = []
        slots: dict[int, int] = {}
        for i, (kind, item) in enumerate(self.steps):
            if kind == "read":
                slots[i] = len(out)
                out.append(item)
            elif last[item] == i:
                value, lease = self.writes[item]
                if value is None:
                    out.append(ops.delete_op(item))
                elif lease is None:
                    out.append(ops.put_op(item, value, ignore_lease=True))
                else:
                    out.append(ops.put_op(item, value, lease=lease))
        for j, request in enumerate(self.finals):
            slots[-1 - j] = len(out)
            out.append(request)
        return out, slots


def _touched(branches: Sequence[Sequence[Op]]) -> tuple[set[str], set[str]]:
    paths: set[str] = set()
    counters: set[str] = set()
    for op in (op for branch in branches for op in branch):
        if isinstance(op, GetOp):
            continue
        paths.update((op.path, parent(op.path)))
        if isinstance(op, CreateOp) and op.sequential:
            counters.add(parent(op.path))
    return paths, counters


def _reads(layout: KeyLayout, paths: list[str], counters: list[str]) -> list[Any]:
    requests: list[Any] = []
    for path in paths:
        kids = layout.children(path)
        requests.append(ops.range_op(layout.data(path)))
        requests.append(ops.range_op(kids, prefix_end(kids), count_only=True))
    requests.extend(ops.range_op(layout.sequence(p)) for p in counters)
    return requests


def _seen(revision: int, responses: Any, paths: list[str], counters: list[str]) -> _Seen:
    seen = _Seen(revision)
    for i, path in enumerate(paths):
        found = ops.kvs(responses[2 * i])
        seen.kv[path] = found[0] if found else None
        seen.count[path] = ops.count(responses[2 * i + 1])
    for j, path in enumerate(counters):
        found = ops.kvs(responses[2 * len(paths) + j])
        seen.counter[path] = (found[0].version, int(found[0].value)) if found else (0, 0)
    return seen


class _Model:
    """The touched part of the tree, changed op by op as a branch plays."""

    def __init__(self, seen: _Seen) -> None:
        self.exists = {p: kv is not None or p == "/" for p, kv in seen.kv.items()}
        self.lease = {p: (kv.lease if kv is not None else 0) for p, kv in seen.kv.items()}
        self.version = {p: (kv.version if kv is not None else 0) for p, kv in seen.kv.items()}
        self.count = dict(seen.count)
        self.counter = {p: n for p, (_, n) in seen.counter.items()}
        self.created: set[str] = set()


def _play(layout: KeyLayout, seen: _Seen, branch: Sequence[Op], lease: int) -> _Plan:
    plan, model = _Plan(), _Model(seen)
    for op in branch:
        if isinstance(op, GetOp):
            kids = layout.children(op.path)
            first = plan.read(ops.range_op(layout.data(op.path)))
            plan.read(ops.range_op(kids, prefix_end(kids), count_only=True))
            plan.results.append(("get", (op.path, first)))
            continue
        error = _apply(layout, seen, model, plan, op, lease)
        if error is not None:
            plan.error = error
            return plan
    for path, value in model.counter.items():
        if value != seen.counter[path][1]:
            plan.put(layout.sequence(path), str(value).encode(), 0)
    return plan


def _apply(
    layout: KeyLayout,
    seen: _Seen,
    model: _Model,
    plan: _Plan,
    op: CreateOp | SetOp | DeleteOp,
    lease: int,
) -> CoordkitError | None:
    """Play ``op`` on ``model``, adding its writes to ``plan``; its error, if any."""
    if isinstance(op, CreateOp):
        return _apply_create(layout, seen, model, plan, op, lease)
    path = op.path
    if not model.exists.get(path, False):
        return NoNodeError(path)
    expected = None if op.version is None else (op.version if path == "/" else op.version + 1)
    if expected is not None and model.version[path] != expected:
        return BadVersionError(f"{path}: version is not {op.version}")
    if isinstance(op, DeleteOp):
        return _apply_delete(layout, seen, model, plan, path)
    model.version[path] += 1
    kids = layout.children(path)
    plan.put(layout.data(path), op.value, None if path != "/" else 0)
    # A set's result is the node after the whole branch (equal to it unless the
    # branch writes the node again).
    plan.results.append(("get", (path, -1 - len(plan.finals))))
    plan.finals.append(ops.range_op(layout.data(path)))
    plan.finals.append(ops.range_op(kids, prefix_end(kids), count_only=True))
    return None


def _apply_create(
    layout: KeyLayout, seen: _Seen, model: _Model, plan: _Plan, op: CreateOp, lease: int
) -> CoordkitError | None:
    path, up = op.path, parent(op.path)
    if not model.exists.get(up, False):
        return NoNodeError(f"parent of {path!r} does not exist")
    if model.lease.get(up, 0):
        return NoChildrenForEphemeralsError(f"{up!r} is ephemeral")
    if op.sequential:
        number = model.counter[up]
        model.counter[up] = number + 1
        path = f"{path}{number:0{SEQUENCE_DIGITS}d}"
        if path not in seen.kv:
            plan.unknown.add(path)
            return None
    if model.exists.get(path, False):
        return NodeExistsError(path)
    owner = lease if op.ephemeral else 0
    model.exists[path], model.lease[path], model.version[path] = True, owner, 1
    model.count[path] = 0
    model.count[up] = model.count.get(up, 0) + 1
    model.created.add(path)
    plan.put(layout.data(path), op.value, owner)
    plan.put(layout.index(path), b"", owner)
    plan.results.append(("created", (path, op.value, owner)))
    return None


def _apply_delete(
    layout: KeyLayout, seen: _Seen, model: _Model, plan: _Plan, path: str
) -> CoordkitError | None:
    if model.count.get(path, 0):
        return NotEmptyError(path)
    if path not in model.created:
        kids = layout.children(path)
        plan.pins.append(
            ops.compare(kids, ops.CREATE, ops.LESS, seen.revision + 1, prefix_end(kids))
        )
    model.exists[path] = False
    model.count[parent(path)] -= 1
    plan.delete(layout.data(path))
    plan.delete(layout.index(path))
    plan.delete(layout.sequence(path))
    plan.results.append(("none", None))
    return None


def _native(layout: KeyLayout, cmp: Compare) -> list[Any]:
    """etcd compares equivalent to ``cmp`` (a missing node fails all but EXISTS)."""
    key = layout.data(cmp.path)
    never = layout.base + b"never"  # no key is ever written there
    result = _RESULT[cmp.op]
    if cmp.target is CompareTarget.EXISTS:
        wanted = bool(cmp.value) == (cmp.op is CompareOp.EQ)
        if cmp.path == "/":
            return [ops.compare(never, ops.CREATE, ops.EQUAL if wanted else ops.GREATER, 0)]
        return [ops.compare(key, ops.CREATE, ops.GREATER if wanted else ops.EQUAL, 0)]
    if cmp.path == "/":
        if cmp.target is CompareTarget.CREATE_REVISION:
            holds = cmp.holds(Node("/", b"", 0, 0, 0))
            return [ops.compare(never, ops.CREATE, ops.EQUAL if holds else ops.GREATER, 0)]
        target = {
            CompareTarget.VERSION: ops.VERSION,
            CompareTarget.MOD_REVISION: ops.MOD,
            CompareTarget.VALUE: ops.VALUE,
        }[cmp.target]
        return [ops.compare(key, target, result, cmp.value)]
    exists = ops.compare(key, ops.CREATE, ops.GREATER, 0)
    if cmp.target is CompareTarget.VERSION:
        assert isinstance(cmp.value, int)
        return [exists, ops.compare(key, ops.VERSION, result, cmp.value + 1)]
    target = {
        CompareTarget.CREATE_REVISION: ops.CREATE,
        CompareTarget.MOD_REVISION: ops.MOD,
        CompareTarget.VALUE: ops.VALUE,
    }[cmp.target]
    return [exists, ops.compare(key, target, result, cmp.value)]


def _results(plan: _Plan, revision: int, responses: Any) -> tuple[Node | None, ...]:
    _, slots = plan.requests()
    out: list[Node | None] = []
    for kind, data in plan.results:
        if kind == "none":
            out.append(None)
        elif kind == "created":
            path, value, owner = data
            out.append(Node(path, value, revision, revision, 0, owner or None, 0))
        else:
            path, marker = data
            slot = slots[marker]
            found, count = ops.kvs(responses[slot]), ops.count(responses[slot + 1])
            if path == "/":
                out.append(ops.root_node(found[0] if found else None, count))
            else:
                out.append(ops.node_of(path, found[0], count) if found else None)
    return tuple(out)


@dataclass
class _Planned:
    """Both branches played on the state read at one revision."""

    seen: _Seen
    plans: list[_Plan]
    reads: list[Any]
    paths: list[str]
    counters: list[str]
    lease: int


async def _plan(backend: EtcdAccess, success: Sequence[Op], failure: Sequence[Op]) -> _Planned:
    """Read what the ops touch and play both branches on it; read again, wider,
    until no op touches a path that was not read (a sequential create's name)."""
    layout = backend.layout
    paths_set, counters_set = _touched((success, failure))
    ephemeral = any(isinstance(o, CreateOp) and o.ephemeral for o in (*success, *failure))
    while True:
        lease = backend.lease_for(ephemeral)
        paths, counters = sorted(paths_set), sorted(counters_set)
        reads = _reads(layout, paths, counters)
        seen = _Seen(0)
        if reads:
            reply = await backend.read(*reads)
            seen = _seen(int(reply.header.revision), reply.responses, paths, counters)
        plans = [_play(layout, seen, branch, lease) for branch in (success, failure)]
        unknown = plans[0].unknown | plans[1].unknown
        if not unknown - paths_set:
            return _Planned(seen, plans, reads, paths, counters, lease)
        paths_set |= unknown


def _pins(layout: KeyLayout, planned: _Planned) -> list[Any]:
    """Compares that hold only while what the plans relied on is unchanged."""
    pins = [
        ops.compare(layout.data(p), ops.MOD, ops.EQUAL, kv.mod_revision if kv else 0)
        for p, kv in planned.seen.kv.items()
    ]
    pins += [
        ops.compare(layout.sequence(p), ops.VERSION, ops.EQUAL, version)
        for p, (version, _) in planned.seen.counter.items()
    ]
    for plan in planned.plans:
        pins += plan.pins
    return pins


async def run_txn(
    backend: EtcdAccess, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]
) -> TxnResult:
    """One attempt of the transaction (see the module docstring).

    Raises :class:`~coordkit.retry.Conflict` if a concurrent change beat it
    (nothing was applied; the caller retries), the chosen branch's error if
    it holds at the commit revision, or returns the result.
    """
    layout = backend.layout
    natives = [c for cmp in compares for c in _native(layout, cmp)]
    planned = await _plan(backend, success, failure)
    plans = planned.plans
    branches = [planned.reads if plan.error else plan.requests()[0] for plan in plans]
    inner = ops.txn_op(natives, branches[0], branches[1])
    reply = await backend.kv_txn(ops.txn_request(_pins(layout, planned), [inner], []))
    if not reply.succeeded:
        raise Conflict("a node the transaction relies on changed meanwhile")
    nested = reply.responses[0].response_txn
    chosen = plans[0] if nested.succeeded else plans[1]
    revision = int(reply.header.revision)
    if chosen.error is None:
        return TxnResult(nested.succeeded, revision, _results(chosen, revision, nested.responses))
    # Confirm the error at the commit revision (the branch only read).
    now = _seen(revision, nested.responses, planned.paths, planned.counters)
    branch = success if nested.succeeded else failure
    error = _play(layout, now, branch, planned.lease).error
    if error is not None:
        raise error
    raise Conflict("the branch's error no longer held at the commit revision")
