"""Transactions: compares, then a success or a failure list of operations, atomic.

A transaction is one revision when its chosen branch mutates anything (no
revision when it only reads). If any operation of the chosen branch fails
(for example a create whose node exists), the whole transaction raises that
operation's error and changes nothing.

Compares against a missing node: only ``EXISTS`` can hold (``== False``);
every other compare on a missing node is false.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import InvalidArgumentError, InvalidPathError, WrongTypeError
from .model import Node
from .paths import check_path, check_value, check_version

__all__ = [
    "Compare",
    "CompareOp",
    "CompareTarget",
    "CreateOp",
    "DeleteOp",
    "GetOp",
    "Op",
    "SetOp",
    "TxnResult",
    "check_txn",
]


class CompareTarget(enum.Enum):
    EXISTS = "exists"
    VERSION = "version"
    CREATE_REVISION = "create_revision"
    MOD_REVISION = "mod_revision"
    VALUE = "value"


class CompareOp(enum.Enum):
    EQ = "=="
    NE = "!="
    LT = "<"
    GT = ">"


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction, e.g. ``Compare.version("/a", "==", 3)``."""

    path: str
    target: CompareTarget
    op: CompareOp
    value: int | bytes | bool

    @classmethod
    def exists(cls, path: str) -> Compare:
        return cls(path, CompareTarget.EXISTS, CompareOp.EQ, True)

    @classmethod
    def missing(cls, path: str) -> Compare:
        return cls(path, CompareTarget.EXISTS, CompareOp.EQ, False)

    @classmethod
    def version(cls, path: str, op: str, value: int) -> Compare:
        return cls(path, CompareTarget.VERSION, CompareOp(op), value)

    @classmethod
    def create_revision(cls, path: str, op: str, value: int) -> Compare:
        return cls(path, CompareTarget.CREATE_REVISION, CompareOp(op), value)

    @classmethod
    def mod_revision(cls, path: str, op: str, value: int) -> Compare:
        return cls(path, CompareTarget.MOD_REVISION, CompareOp(op), value)

    @classmethod
    def value_is(cls, path: str, op: str, value: bytes) -> Compare:
        return cls(path, CompareTarget.VALUE, CompareOp(op), value)

    def holds(self, node: Node | None) -> bool:
        """Evaluate the compare against ``node`` (``None``: the node is missing)."""
        if self.target is CompareTarget.EXISTS:
            result = (node is not None) == self.value
            return result if self.op is CompareOp.EQ else not result
        if node is None:
            return False
        actual: int | bytes
        if self.target is CompareTarget.VERSION:
            actual = node.version
        elif self.target is CompareTarget.CREATE_REVISION:
            actual = node.create_revision
        elif self.target is CompareTarget.MOD_REVISION:
            actual = node.mod_revision
        else:
            actual = node.value
        expected = self.value
        if self.op is CompareOp.EQ:
            return actual == expected
        if self.op is CompareOp.NE:
            return actual != expected
        if self.op is CompareOp.LT:
            return actual < expected  # type: ignore[operator]
        return actual > expected  # type: ignore[operator]


@dataclass(frozen=True, slots=True)
class CreateOp:
    """Create a node; result: the created :class:`Node` (with its sequential name)."""

    path: str
    value: bytes = b""
    ephemeral: bool = False
    sequential: bool = False


@dataclass(frozen=True, slots=True)
class SetOp:
    """Set a node's value, optionally only at ``version``; result: the new :class:`Node`."""

    path: str
    value: bytes
    version: int | None = None


@dataclass(frozen=True, slots=True)
class DeleteOp:
    """Delete a childless node, optionally only at ``version``; result: ``None``."""

    path: str
    version: int | None = None


@dataclass(frozen=True, slots=True)
class GetOp:
    """Read a node; result: the :class:`Node` or ``None``."""

    path: str


Op = CreateOp | SetOp | DeleteOp | GetOp


@dataclass(frozen=True, slots=True)
class TxnResult:
    """``succeeded`` tells which branch ran; ``results`` has one entry per op of it."""

    succeeded: bool
    revision: int
    results: tuple[Node | None, ...]


def check_txn(
    compares: Sequence[Compare],
    success: Sequence[Op],
    failure: Sequence[Op],
    max_value_bytes: int,
) -> None:
    """Validate every compare and op of a transaction before it reaches a backend."""
    for cmp in compares:
        if not isinstance(cmp, Compare):
            raise WrongTypeError(f"compares must be Compare, not {type(cmp).__name__}")
        check_path(cmp.path)
        if cmp.target is CompareTarget.EXISTS:
            if not isinstance(cmp.value, bool) or cmp.op not in (CompareOp.EQ, CompareOp.NE):
                raise InvalidArgumentError("an EXISTS compare takes == or != and a bool")
        elif cmp.target is CompareTarget.VALUE:
            check_value(cmp.value)
        elif isinstance(cmp.value, bool) or not isinstance(cmp.value, int):
            raise WrongTypeError(f"a {cmp.target.value} compare takes an int")
    for op in (*success, *failure):
        if not isinstance(op, CreateOp | SetOp | DeleteOp | GetOp):
            raise WrongTypeError(f"txn ops must be CreateOp/SetOp/DeleteOp/GetOp, not {op!r}")
        check_path(op.path)
        if isinstance(op, CreateOp | SetOp):
            check_value(op.value, max_value_bytes)
        if isinstance(op, SetOp | DeleteOp):
            check_version(op.version)
        if isinstance(op, CreateOp | DeleteOp) and op.path == "/":
            raise InvalidPathError("the root cannot be created or deleted")
