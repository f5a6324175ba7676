"""Linearizability of a history of store operations (Wing & Gong, with Lowe's cache).

What each operation may return and how it changes its key is the sequential
model in ``model.py`` (registers and sequential-create counters). Operations
on different keys are independent, so each key's sub-history is
checked on its own (P-compositionality, Herlihy & Wing). For one key, the
search keeps the history as a linked list of call/return events in time
order and tries to linearize, at each point, any operation whose call comes
before the first pending return; a (linearized set, state) pair already seen
is never explored twice (Lowe). An operation whose outcome is unknown (the
client timed out) never returns: it may take effect at any point after its
call, or not at all (as in Porcupine). The search is bounded per key: past
``budget`` steps it raises instead of running on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .model import SEQ, State, initial_state, step

__all__ = ["Operation", "check_history", "check_key"]

INFINITY = float("inf")


@dataclass(slots=True)
class Operation:
    """One client operation on one key (a node path).

    ``kind`` and the results it may have are those of ``model.py``: "get"
    (result: the value read, None if absent), "put" (arg: value), "cas" (arg:
    (expected, new)), "create" (arg: value), "delete", "seq" (result: the
    sequence number of the created node). ``result`` is None with
    ``returned=False`` for an unknown outcome.
    """

    key: str
    kind: str
    arg: object
    call: float
    ret: float = INFINITY
    result: object = None
    returned: bool = False
    client: int = 0
    op_id: int = 0
    node: str = ""  # the node the client talked to


class _Event:
    __slots__ = ("is_call", "match", "next", "op", "prev", "slot")

    def __init__(self, op: Operation, slot: int, is_call: bool) -> None:
        self.op = op
        self.slot = slot
        self.is_call = is_call
        self.match: _Event | None = None
        self.prev: _Event | None = None
        self.next: _Event | None = None


_UNSET: object = object()


def check_key(ops: list[Operation], initial: object = _UNSET, budget: int = 2_000_000) -> bool:
    """Whether one key's history is linearizable, from ``initial`` (by default the
    model's: a missing node, or sequence 0). Raises RuntimeError past ``budget`` steps."""
    # Reads that never returned have no effect and no result: drop them.
    ops = [op for op in ops if op.returned or op.kind != "get"]
    if not ops:
        return True
    kinds = {op.kind == SEQ for op in ops}
    if len(kinds) > 1:
        raise ValueError(f"key {ops[0].key!r} mixes sequential creates with register operations")
    start: State = initial_state(ops[0].kind) if initial is _UNSET else initial  # type: ignore[assignment]
    timed: list[tuple[float, int, _Event]] = []
    for slot, op in enumerate(ops):
        call, ret = _Event(op, slot, True), _Event(op, slot, False)
        call.match = ret
        # At equal times a return sorts before a call: the two did not overlap.
        timed.append((op.call, 1, call))
        timed.append((op.ret, 0, ret))
    timed.sort(key=lambda t: (t[0], t[1], t[2].slot))
    head = _Event(ops[0], -1, False)
    prev = head
    for _, _, ev in timed:
        prev.next, ev.prev = ev, prev
        prev = ev

    def lift(call: _Event) -> None:
        for ev in (call, call.match):
            assert ev is not None and ev.prev is not None
            ev.prev.next = ev.next
            if ev.next is not None:
                ev.next.prev = ev.prev

    def unlift(call: _Event) -> None:
        for ev in (call.match, call):
            assert ev is not None and ev.prev is not None
            ev.prev.next = ev
            if ev.next is not None:
                ev.next.prev = ev

    state = start
    linearized = 0
    seen: set[tuple[int, State]] = set()
    stack: list[tuple[_Event, State]] = []
    entry = head.next
    steps = 0
    while head.next is not None:
        steps += 1
        if steps > budget:
            raise RuntimeError(f"linearizability search exceeded {budget} steps")
        assert entry is not None
        if entry.is_call:
            op = entry.op
            ok, new_state = step(state, op.kind, op.arg, op.result, op.returned)
            if ok:
                key = (linearized | (1 << entry.slot), new_state)
                if key not in seen:
                    seen.add(key)
                    stack.append((entry, state))
                    state, linearized = new_state, key[0]
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            # A return with its call not linearized yet: undo the last choice.
            if not stack:
                return False
            entry, state = stack.pop()
            linearized &= ~(1 << entry.slot)
            unlift(entry)
            entry = entry.next
    return True


def check_history(
    ops: list[Operation], initial: Mapping[str, State] | None = None, budget: int = 2_000_000
) -> list[str]:
    """Check every key (from ``initial[key]`` if given, else the model's initial
    state); returns the keys whose history is not linearizable."""
    by_key: dict[str, list[Operation]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    start = initial or {}
    return [
        key for key in sorted(by_key) if not check_key(by_key[key], start.get(key, _UNSET), budget)
    ]
