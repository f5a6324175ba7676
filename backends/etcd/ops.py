"""Building etcd v3 requests and reading their answers (thin, pure helpers).

Only the etcd message shapes live here; which keys to touch is
:mod:`~coordkit.backends.etcd.keys`' business.
"""

from __future__ import annotations

from typing import Any

from aetcd import rpc

from coordkit.model import Node

__all__ = [
    "compare",
    "delete_op",
    "kvs",
    "node_of",
    "put_op",
    "range_op",
    "txn_op",
]

EQUAL, GREATER, LESS, NOT_EQUAL = (
    rpc.Compare.EQUAL,
    rpc.Compare.GREATER,
    rpc.Compare.LESS,
    rpc.Compare.NOT_EQUAL,
)
VERSION, CREATE, MOD, VALUE, LEASE = (
    rpc.Compare.VERSION,
    rpc.Compare.CREATE,
    rpc.Compare.MOD,
    rpc.Compare.VALUE,
    rpc.Compare.LEASE,
)
_FIELD = {VERSION: "version", CREATE: "create_revision", MOD: "mod_revision", VALUE: "value"}
_FIELD[LEASE] = "lease"


def compare(
    key: bytes, target: int, result: int, value: int | bytes, range_end: bytes | None = None
) -> Any:
    """An etcd compare; with ``range_end`` it must hold for every key of the range
    (and holds for an empty range, compared as an absent key with zero fields)."""
    message = rpc.Compare(key=key, target=target, result=result, **{_FIELD[target]: value})
    if range_end is not None:
        message.range_end = range_end
    return message


def range_op(
    key: bytes,
    range_end: bytes | None = None,
    *,
    count_only: bool = False,
    keys_only: bool = False,
    serializable: bool = False,
    limit: int = 0,
    sort_create: int = 0,
    max_create_revision: int = 0,
) -> Any:
    request = rpc.RangeRequest(
        key=key,
        count_only=count_only,
        keys_only=keys_only,
        serializable=serializable,
        limit=limit,
        max_create_revision=max_create_revision,
    )
    if range_end is not None:
        request.range_end = range_end
    if sort_create:
        request.sort_target = rpc.RangeRequest.CREATE
        request.sort_order = sort_create
    return rpc.RequestOp(request_range=request)


def put_op(
    key: bytes, value: bytes, *, lease: int = 0, ignore_lease: bool = False, prev_kv: bool = False
) -> Any:
    request = rpc.PutRequest(key=key, value=value, prev_kv=prev_kv)
    if ignore_lease:
        request.ignore_lease = True
    else:
        request.lease = lease
    return rpc.RequestOp(request_put=request)


def delete_op(key: bytes, range_end: bytes | None = None) -> Any:
    request = rpc.DeleteRangeRequest(key=key)
    if range_end is not None:
        request.range_end = range_end
    return rpc.RequestOp(request_delete_range=request)


def txn_op(compares: list[Any], success: list[Any], failure: list[Any]) -> Any:
    return rpc.RequestOp(
        request_txn=rpc.TxnRequest(compare=compares, success=success, failure=failure)
    )


def txn_request(compares: list[Any], success: list[Any], failure: list[Any]) -> Any:
    return rpc.TxnRequest(compare=compares, success=success, failure=failure)


def kvs(response: Any) -> list[Any]:
    """The key-values of a range ``ResponseOp``."""
    return list(response.response_range.kvs)


def count(response: Any) -> int:
    return int(response.response_range.count)


def node_of(path: str, kv: Any, num_children: int) -> Node:
    """A :class:`Node` from its data key (etcd's version counts from 1; ours from 0)."""
    if path == "/":
        return Node("/", kv.value, 0, kv.mod_revision, kv.version, None, num_children)
    return Node(
        path,
        kv.value,
        kv.create_revision,
        kv.mod_revision,
        kv.version - 1,
        kv.lease or None,
        num_children,
    )


def root_node(kv: Any | None, num_children: int) -> Node:
    """The root always exists; its data key appears only once it is set."""
    if kv is None:
        return Node("/", b"", 0, 0, 0, None, num_children)
    return node_of("/", kv, num_children)
