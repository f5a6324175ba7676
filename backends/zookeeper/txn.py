"""Transactions on ZooKeeper's ``multi``, with compares pinned by guards.

``multi`` can only check a node's exact version, so a transaction runs as an
optimistic loop: read the compared nodes (after a ``sync``), evaluate the
compares locally, then commit the chosen branch in one ``multi`` that starts
with *guards* pinning exactly what the compares looked at:

* an existing node: ``check(path, version)``;
* a missing node: ``create`` + ``delete`` of the first missing component
  under its nearest existing ancestor (succeeds only while it is missing).

EXISTS and VERSION compares depend only on (exists, version), which the guards
pin, so the outcome is the one an atomic evaluation at the commit would give.
If a guard fails the loop starts again; if an operation of the branch fails
while the compared nodes are unchanged, its error is raised. Value and
create/mod-revision compares are not offered: a node deleted and re-created
at the same version would pass a version check with a different value or
revisions. A branch that only reads runs no ``multi``: its reads are taken
twice and accepted when nothing they depend on changed in between.

The transaction's revision is the zxid of its ``multi`` (from the reply
header); a read-only transaction reports the server's last applied zxid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from kazoo import exceptions as kx

from coordkit.model import Node
from coordkit.paths import parent
from coordkit.txn import Compare, CreateOp, DeleteOp, GetOp, Op, SetOp, TxnResult

from .bridge import LoopBridge, map_error, multi_failures
from .paths import decode_path
from .watch import ancestors, node_from_stat

__all__ = ["run_txn"]

_MAX_ATTEMPTS = 100


class _Snapshot:
    """What the compares and reads of one attempt saw."""

    def __init__(self) -> None:
        self.stats: dict[str, Any] = {}  # path -> ZnodeStat | None
        self.values: dict[str, bytes] = {}
        self.anchor: dict[str, tuple[str, Any]] = {}  # missing path -> (ancestor, its stat)
        self.zxid = 0

    def key(self) -> tuple[object, ...]:
        return tuple(
            sorted(
                (p, None if s is None else (s.czxid, s.mzxid, s.version, s.pzxid))
                for p, s in self.stats.items()
            )
        )

    def node(self, path: str) -> Node | None:
        stat = self.stats.get(path)
        if stat is None:
            return None
        return node_from_stat(path, self.values.get(path, b""), stat)


async def _read(
    client: Any, bridge: LoopBridge, compares: Sequence[Compare], gets: set[str]
) -> _Snapshot:
    snap = _Snapshot()
    await bridge.wait(client.sync_async("/"))
    paths = sorted({c.path for c in compares} | gets)
    exists = {p: client.exists_async(p) for p in paths if p not in gets}
    reads = {p: client.get_async(p) for p in gets}
    for path, result in exists.items():
        snap.stats[path] = await bridge.wait(result)
        snap.zxid = max(snap.zxid, getattr(result, "zxid", 0))
    for path, result in reads.items():
        try:
            value, stat = await bridge.wait(result)
        except kx.NoNodeError:
            snap.stats[path] = None
        else:
            snap.stats[path], snap.values[path] = stat, value
        snap.zxid = max(snap.zxid, getattr(result, "zxid", 0))
    for path in [p for p, s in snap.stats.items() if s is None]:
        for ancestor in ancestors(path):
            stat = await bridge.wait(client.exists_async(ancestor))
            if stat is not None:
                snap.anchor[path] = (ancestor, stat)
                break
    return snap


def _mutates(ops: Sequence[Op]) -> bool:
    return any(not isinstance(op, GetOp) for op in ops)


def _child_towards(ancestor: str, path: str) -> str:
    while parent(path) != ancestor:
        path = parent(path)
    return path


async def run_txn(
    client: Any,
    bridge: LoopBridge,
    session_id: int,
    compares: Sequence[Compare],
    success: Sequence[Op],
    failure: Sequence[Op],
) -> TxnResult:
    """Run a transaction as described in the module docstring."""
    gets = {op.path for op in (*success, *failure) if isinstance(op, GetOp)}
    for _ in range(_MAX_ATTEMPTS):
        snap = await _read(client, bridge, compares, gets)
        holds = all(c.holds(snap.node(c.path)) for c in compares)
        branch = success if holds else failure
        if not _mutates(branch):
            again = await _read(client, bridge, compares, gets)
            if again.key() != snap.key():
                continue
            results = tuple(snap.node(op.path) for op in branch if isinstance(op, GetOp))
            return TxnResult(holds, snap.zxid, results)
        outcome = await _commit(client, bridge, session_id, snap, branch)
        if outcome is None:
            continue  # a guard failed: the compared state moved; evaluate again
        if isinstance(outcome, BaseException):
            recheck = await _read(client, bridge, compares, gets)
            if recheck.key() == snap.key():
                raise map_error(outcome) from outcome
            continue
        return TxnResult(holds, outcome[0], outcome[1])
    raise map_error(kx.OperationTimeoutError("the transaction kept conflicting"))


async def _commit(
    client: Any, bridge: LoopBridge, session_id: int, snap: _Snapshot, branch: Sequence[Op]
) -> tuple[int, tuple[Node | None, ...]] | BaseException | None:
    """Commit ``branch`` behind guards: (zxid, results), the branch's error, or None."""
    txn = client.transaction()
    guards = 0
    for path, stat in sorted(snap.stats.items()):
        if stat is not None:
            txn.check(path, stat.version)
            guards += 1
        elif path in snap.anchor:
            ancestor, anchor_stat = snap.anchor[path]
            if anchor_stat.ephemeralOwner:
                txn.check(ancestor, anchor_stat.version)  # nothing can appear below it
                guards += 1
            else:
                probe = _child_towards(ancestor, path)
                txn.create(probe, b"")
                txn.delete(probe)
                guards += 2
    for op in branch:
        if isinstance(op, CreateOp):
            txn.create(op.path, op.value, ephemeral=op.ephemeral, sequence=op.sequential)
        elif isinstance(op, SetOp):
            txn.set_data(op.path, op.value, -1 if op.version is None else op.version)
        elif isinstance(op, DeleteOp):
            txn.delete(op.path, -1 if op.version is None else op.version)
    result = txn.commit_async()
    replies = await bridge.wait(result)
    failures = multi_failures(replies)
    if failures:
        index, error = failures[0]
        return None if index < guards else error
    zxid: int = getattr(result, "zxid", 0)
    return zxid, _results(snap, branch, replies[guards:], zxid, session_id)


def _results(
    snap: _Snapshot, branch: Sequence[Op], replies: Sequence[Any], zxid: int, session_id: int
) -> tuple[Node | None, ...]:
    """Each op's result, replaying the branch over the snapshot for GetOps."""
    state: dict[str, Node | None] = {p: snap.node(p) for p in snap.stats}
    out: list[Node | None] = []
    replies_iter = iter(replies)
    for op in branch:
        if isinstance(op, GetOp):
            out.append(state.get(op.path))
            continue
        reply = next(replies_iter)
        if isinstance(op, CreateOp):
            node = Node(
                decode_path(reply), op.value, zxid, zxid, 0, session_id if op.ephemeral else None, 0
            )
            state[node.path] = node
            _adjust_children(state, node.path, +1)
            out.append(node)
        elif isinstance(op, SetOp):
            node = node_from_stat(op.path, op.value, reply)
            state[op.path] = node
            out.append(node)
        else:
            state[op.path] = None
            _adjust_children(state, op.path, -1)
            out.append(None)
    return tuple(out)


def _adjust_children(state: dict[str, Node | None], path: str, delta: int) -> None:
    known = state.get(parent(path))
    if known is not None:
        state[parent(path)] = replace(known, num_children=known.num_children + delta)
