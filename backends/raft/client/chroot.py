"""A client's view rooted at a path of the cluster's tree (``raft://hosts/chroot``).

As with ZooKeeper's chroot and the etcd backend's key prefix, every path the
application gives is taken below the root, and every path the cluster
returns (nodes, events, transaction results, removed ephemerals) is given
back relative to it, so several applications (or tests) share one cluster
without seeing each other.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from coordkit.errors import ConfigurationError
from coordkit.model import Event, Node
from coordkit.paths import MAX_CHROOT_BYTES, check_path
from coordkit.txn import Compare, CreateOp, DeleteOp, GetOp, Op, SetOp, TxnResult

__all__ = ["Chroot"]


class Chroot:
    """Path translation for one root ("" for none: every call is then the identity)."""

    def __init__(self, root: str) -> None:
        root = root.rstrip("/")
        if root:
            try:
                check_path(root, MAX_CHROOT_BYTES)
            except ValueError as exc:
                raise ConfigurationError(f"bad chroot {root!r}: {exc}") from None
        self.root = root

    def __bool__(self) -> bool:
        return bool(self.root)

    def inner(self, path: str) -> str:
        """An application path -> the cluster's path."""
        if not self.root:
            return path
        return self.root if path == "/" else self.root + path

    def outer(self, path: str) -> str:
        """A cluster path (below the root) -> the application's path."""
        if not self.root:
            return path
        if path == self.root:
            return "/"
        return path[len(self.root) :]

    def node(self, node: Node | None) -> Node | None:
        if node is None or not self.root:
            return node
        return replace(node, path=self.outer(node.path))

    def event(self, event: Event) -> Event:
        if not self.root:
            return event
        return Event(event.type, self.outer(event.path), self.node(event.node), event.revision)

    def op(self, op: Op) -> Op:
        if not self.root:
            return op
        assert isinstance(op, CreateOp | SetOp | DeleteOp | GetOp)
        return replace(op, path=self.inner(op.path))

    def compare(self, compare: Compare) -> Compare:
        return replace(compare, path=self.inner(compare.path)) if self.root else compare

    def result(self, value: Any) -> Any:
        """Map a decoded store result back (nodes, transaction results, lists of paths)."""
        if not self.root:
            return value
        if isinstance(value, Node):
            return self.node(value)
        if isinstance(value, TxnResult):
            return TxnResult(value.succeeded, value.revision, tuple(map(self.node, value.results)))
        return value
