"""The checkers themselves: they must reject what is wrong, not only accept what is right."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim.invariants import SafetyChecker, SafetyViolation
from sim.linearizability import Operation, check_history, check_key
from sim.schedule import run_schedule

from coordkit.backends.raft.core.messages import ConfState, Entry, Role
from coordkit.backends.raft.core.storage import MemoryStorage
from coordkit.backends.store import Command, Delete, Store, Txn, decode_result, encode_command
from coordkit.backends.store import Create as StoreCreate
from coordkit.backends.store import Set as StoreSet
from coordkit.errors import NodeExistsError, NoNodeError
from coordkit.paths import SEQUENCE_DIGITS
from coordkit.txn import Compare, SetOp, TxnResult

INF = float("inf")


def put(value: str, call: float, ret: float = INF) -> Operation:
    return Operation("k", "put", value, call, ret, "ok" if ret != INF else None, ret != INF)


def get(result: str | None, call: float, ret: float) -> Operation:
    return Operation("k", "get", None, call, ret, result, True)


def cas(
    expected: str | None, new: str, result: str | None, call: float, ret: float = INF
) -> Operation:
    return Operation("k", "cas", (expected, new), call, ret, result, ret != INF)


def on(kind: str, arg: object, result: object, call: float, ret: float = INF) -> Operation:
    return Operation("k", kind, arg, call, ret, result, ret != INF)


def check_register(ops: list[Operation]) -> bool:
    """A register that exists (empty) when the history starts."""
    return check_key(ops, initial="")


# -- linearizability: known histories -------------------------------------------------------


def test_accepts_a_sequential_history() -> None:
    assert check_register(
        [put("a", 1, 2), get("a", 3, 4), cas("a", "b", "ok", 5, 6), get("b", 7, 8)]
    )


def test_accepts_overlapping_operations_in_either_order() -> None:
    # The read overlaps the write: it may see the old or the new value.
    assert check_register([put("a", 1, 2), put("b", 3, 6), get("a", 4, 5)])
    assert check_register([put("a", 1, 2), put("b", 3, 6), get("b", 4, 5)])


def test_rejects_a_stale_read() -> None:
    # The write of "b" finished before the read started: reading "a" is stale.
    assert not check_register([put("a", 1, 2), put("b", 3, 4), get("a", 5, 6)])


def test_rejects_a_read_of_a_value_never_written() -> None:
    assert not check_register([put("a", 1, 2), get("z", 3, 4)])


def test_rejects_a_lost_acknowledged_write() -> None:
    assert not check_register([put("a", 1, 2), get(None, 3, 4)])


def test_rejects_a_cas_that_succeeded_against_the_wrong_value() -> None:
    assert not check_register([put("a", 1, 2), cas("x", "b", "ok", 3, 4)])
    assert not check_register([put("a", 1, 2), cas("a", "b", "fail", 3, 4)])


def test_rejects_values_flipping_back() -> None:
    # Two reads after both writes completed disagree about the final value.
    ops = [put("a", 1, 4), put("b", 2, 3), get("a", 5, 6), get("b", 7, 8)]
    assert not check_register(ops)


def test_an_operation_with_unknown_outcome_may_or_may_not_take_effect() -> None:
    assert check_register([put("a", 1, 2), put("b", 3), get("a", 4, 5)])
    assert check_register([put("a", 1, 2), put("b", 3), get("b", 4, 5)])
    # ...but it cannot take effect before it was invoked.
    assert not check_register([put("a", 1, 2), get("b", 3, 4), put("b", 5)])
    # An unknown CAS may also have failed.
    assert check_register([put("a", 1, 2), cas("z", "b", None, 3), get("a", 4, 5)])


def test_a_missing_node_has_no_value_to_set_or_compare() -> None:
    # The store's Set needs the node; a compare of a missing node's value fails.
    assert check_key([on("put", "a", "nonode", 1, 2), get(None, 3, 4)])
    assert not check_key([on("put", "a", "ok", 1, 2)])
    assert check_key([cas("", "b", "fail", 1, 2)])
    assert not check_key([cas("", "b", "ok", 1, 2)])


def test_create_and_delete_change_existence() -> None:
    ops = [
        on("create", "a", "ok", 1, 2),
        on("create", "b", "exists", 3, 4),
        get("a", 5, 6),
        on("delete", None, "ok", 7, 8),
        on("delete", None, "nonode", 9, 10),
        get(None, 11, 12),
    ]
    assert check_key(ops)
    ops[1].result = "ok"  # two creates of one node cannot both succeed
    assert not check_key(ops)


def test_a_refused_command_has_no_effect() -> None:
    # "refused": answered without being applied (its session had expired).
    assert check_key([on("create", "a", "refused", 1, 2), get(None, 3, 4)])
    assert not check_key([on("create", "a", "refused", 1, 2), get("a", 3, 4)])


def seq(result: int | None, call: float, ret: float = INF) -> Operation:
    return Operation("/q", "seq", None, call, ret, result, ret != INF)


def test_sequential_creates_take_each_number_once_in_order() -> None:
    assert check_key([seq(0, 1, 2), seq(1, 3, 4), seq(2, 5, 6)])
    # Overlapping creates may get their numbers in either order.
    assert check_key([seq(1, 1, 4), seq(0, 2, 3)])
    # A number given twice, or skipped, or out of real-time order: not linearizable.
    assert not check_key([seq(0, 1, 2), seq(0, 3, 4)])
    assert not check_key([seq(0, 1, 2), seq(2, 3, 4)])
    assert not check_key([seq(1, 1, 2), seq(0, 3, 4)])
    # A create with an unknown outcome may have taken a number.
    assert check_key([seq(0, 1, 2), seq(None, 3), seq(2, 5, 6)])
    assert check_key([seq(0, 1, 2), seq(None, 3), seq(1, 5, 6)])


def test_keys_are_checked_independently() -> None:
    ops = [put("a", 1, 2), Operation("j", "get", None, 3, 4, "a", True)]
    assert check_history(ops, initial={"k": ""}) == ["j"]
    assert check_history([*ops, seq(0, 5, 6)], initial={"k": ""}) == ["j"]


def test_the_search_is_bounded_per_key() -> None:
    # Many concurrent unknown writes and reads of values nobody wrote: a search
    # that would explore a huge space stops at its budget instead.
    ops = [put(f"w{i}", i) for i in range(30)] + [get("nobody", 100, 101)]
    with pytest.raises(RuntimeError, match="exceeded"):
        check_key(ops, initial="", budget=1000)


_KINDS = ["put", "get", "cas", "create", "delete"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_KINDS), st.integers(0, 3)), max_size=30))
def test_any_sequential_run_of_the_real_store_is_accepted(steps: list[tuple[str, int]]) -> None:
    """The model agrees with the store: run the operations on a real Store, one
    after the other, record what it answers, and the checker must accept it."""
    store = Store()
    ops: list[Operation] = []
    for t, (kind, v) in enumerate(steps):
        value = f"v{v}"
        call, ret = 2 * t, 2 * t + 1
        if kind == "get":
            node = store.get("/k")
            ops.append(get(None if node is None else node.value.decode(), call, ret))
            continue
        command: Command
        if kind == "put":
            command, arg = StoreSet("/k", value.encode()), value
        elif kind == "cas":
            expected, arg = f"v{(v + 1) % 4}", (f"v{(v + 1) % 4}", value)
            command = Txn(
                compares=(Compare.value_is("/k", "==", expected.encode()),),
                success=(SetOp("/k", value.encode()),),
            )
        elif kind == "create":
            command, arg = StoreCreate("/k", value.encode()), value
        else:
            command, arg = Delete("/k"), None
        answer = decode_result(store.apply_entry(encode_command(command)))
        if isinstance(answer, NoNodeError):
            result: object = "nonode"
        elif isinstance(answer, NodeExistsError):
            result = "exists"
        elif isinstance(answer, TxnResult):
            result = "ok" if answer.succeeded else "fail"
        else:
            result = "ok"
        ops.append(Operation("/k", kind, arg, call, ret, result, True))
    assert check_key(ops)
    # Corrupt the last read to a value nobody wrote: no longer linearizable.
    reads = [op for op in ops if op.kind == "get"]
    if reads:
        reads[-1].result = "never-written"
        assert not check_key(ops)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12))
def test_the_real_store_numbers_sequential_creates_as_the_model_does(count: int) -> None:
    store = Store()
    ops = []
    for t in range(count):
        command = StoreCreate("/q/s-", sequential=True, make_parents=True)
        node = decode_result(store.apply_entry(encode_command(command)))
        ops.append(seq(int(node.path[-SEQUENCE_DIGITS:]), 2 * t, 2 * t + 1))
    assert check_key(ops)
    ops[-1].result = count  # one past the number the store gave
    assert not check_key(ops)


# -- safety checker -------------------------------------------------------------------------


def test_safety_checker_rejects_two_leaders_in_one_term() -> None:
    checker = SafetyChecker()
    checker.leaders[3] = "n1"
    with pytest.raises(SafetyViolation, match="election safety"):
        checker.on_leader("n2", 3, core=None)  # type: ignore[arg-type]


def test_safety_checker_rejects_different_entries_applied_at_one_index() -> None:
    checker = SafetyChecker()
    checker.on_apply("n1", 1, Entry(1, 5, data=b"a"), [])
    checker.on_apply("n2", 1, Entry(1, 5, data=b"a"), [])
    with pytest.raises(SafetyViolation, match="state machine safety"):
        checker.on_apply("n3", 2, Entry(2, 5, data=b"b"), [])


class _StubLog:
    def __init__(self, terms: dict[int, int]) -> None:
        self.terms = terms

    def first_index(self) -> int:
        return 1

    def term(self, index: int) -> int | None:
        return self.terms.get(index)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        return [Entry(self.terms[i], i) for i in range(lo, hi)]


class _StubCore:
    def __init__(self, term: int, terms: dict[int, int]) -> None:
        self.term = term
        self.log = _StubLog(terms)


def test_leader_completeness_applies_to_later_terms_only() -> None:
    checker = SafetyChecker()
    stale = _StubCore(4, {1: 1})  # a leader of term 4, cut off, elected long ago
    later = _StubCore(7, {1: 1})  # a leader of term 7 that lacks the entry
    # n3, in term 5, applies entry 1 of term 2: committed in term 5 at the latest.
    checker.on_apply("n3", 5, Entry(2, 1), [("n5", stale)])  # type: ignore[list-item]
    with pytest.raises(SafetyViolation, match="leader completeness"):
        checker.on_leader("n1", 7, later)  # type: ignore[arg-type]


# -- determinism ------------------------------------------------------------------------------


def test_a_seed_replays_exactly_in_process() -> None:
    assert run_schedule(11).fingerprint == run_schedule(11).fingerprint
    assert run_schedule(11).fingerprint != run_schedule(12).fingerprint


def test_a_seed_replays_exactly_across_processes_and_hash_seeds() -> None:
    """String hashing differs per process: nothing may depend on set iteration order."""
    here = Path(__file__).resolve().parent
    code = (
        f"import sys; sys.path.insert(0, {str(here)!r}); "
        "from sim.schedule import run_schedule; print(run_schedule(7).fingerprint)"
    )
    outs = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outs.add(proc.stdout.strip())
    assert outs == {run_schedule(7).fingerprint}


class _StubLeader:
    role = Role.LEADER
    term = 2
    commit_index = 1
    conf = ConfState.of(["a", "b", "c"])
    log = _StubLog({1: 2})


def test_safety_checker_rejects_a_commit_not_durable_on_a_quorum() -> None:
    disks = {n: MemoryStorage(ConfState.of(["a", "b", "c"])) for n in "abc"}
    disks["a"].append([Entry(2, 1)])
    checker = SafetyChecker()
    with pytest.raises(SafetyViolation, match="durable commitment"):
        checker.on_commit("a", _StubLeader(), disks, {})  # type: ignore[arg-type]
    disks["c"].append([Entry(2, 1)])
    checker = SafetyChecker()
    checker.on_commit("a", _StubLeader(), disks, {})  # type: ignore[arg-type]
    assert checker.durable_checked == 1


class _StubFigure8Leader:
    """s1 leading term 4 of Figure 8: it holds entry 2 of term 2, maybe its no-op at 3."""

    role = Role.LEADER
    term = 4
    conf = ConfState.of(["a", "b", "c"])

    def __init__(self, terms: dict[int, int]) -> None:
        self.log = _StubLog(terms)
        self.commit_index = max(terms)


def test_safety_checker_rejects_a_commit_that_a_later_leader_could_overwrite() -> None:
    disks = {n: MemoryStorage(ConfState.of(["a", "b", "c"])) for n in "abc"}
    for n in "ab":
        disks[n].append([Entry(1, 1), Entry(2, 2)])
    disks["c"].append([Entry(1, 1), Entry(3, 2)])  # c's entry 2 is of a later term
    # Entry 2 (term 2) is on a majority, but c (last term 3) could still win
    # a's and b's votes and overwrite it: committing it by counting is unsafe.
    with pytest.raises(SafetyViolation, match=r"commit safety: a.*c lacks it"):
        SafetyChecker().on_commit("a", _StubFigure8Leader({1: 1, 2: 2}), disks, {})  # type: ignore[arg-type]
    # Once a's no-op of term 4 is on a majority, c can no longer win: safe.
    for n in "ab":
        disks[n].append([Entry(4, 3)])
    checker = SafetyChecker()
    checker.on_commit("a", _StubFigure8Leader({1: 1, 2: 2, 3: 4}), disks, {})  # type: ignore[arg-type]
    assert checker.durable_checked == 3
