"""Capability.DENSE_REVISIONS on etcd: the revision moves only when the tree changes.

etcd's revision counts changes to its key space, and the backend writes keys
only in the transaction of a mutation that succeeds: failed creates, sets,
deletes and transactions (their compares fail, their else-branches only
read), lease grants (opening a session) and keepalives consume none. The
test runs on an etcd of its own, so nothing else moves the revision.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import anyio
import pytest
from etcd_servers import EtcdCluster, bounded

import coordkit
from coordkit import (
    BadVersionError,
    Capability,
    Client,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
)
from coordkit.backends.etcd.backend import EtcdBackend
from coordkit.txn import Compare, CreateOp, DeleteOp, GetOp, SetOp

pytestmark = [pytest.mark.anyio, pytest.mark.etcd]


@pytest.fixture
def private_url(etcd_url: str, etcd_private_server: EtcdCluster) -> str:
    # etcd_url first: it skips on trio and without the client library
    return etcd_private_server.url(f"/t-{uuid.uuid4().hex}")


async def revision(client: Client) -> int:
    return (await client.status()).revision


Failing = tuple[str, type[Exception], Callable[[], Awaitable[object]]]


def failing_calls(client: Client) -> list[Failing]:
    """(label, error, call): calls that fail on the tree /a, /a/b, /e (ephemeral)."""
    return [
        ("create of an existing node", NodeExistsError, lambda: client.create("/a")),
        ("create without a parent", NoNodeError, lambda: client.create("/x/y")),
        (
            "sequential create without a parent",
            NoNodeError,
            lambda: client.create("/x/s-", sequential=True),
        ),
        (
            "create under an ephemeral",
            NoChildrenForEphemeralsError,
            lambda: client.create("/e/c"),
        ),
        (
            "make_parents under an ephemeral",
            NoChildrenForEphemeralsError,
            lambda: client.create("/e/c/d", make_parents=True),
        ),
        ("set of a missing node", NoNodeError, lambda: client.set("/x", b"")),
        (
            "set at a wrong version",
            BadVersionError,
            lambda: client.set("/a", b"", version=5),
        ),
        ("delete of a missing node", NoNodeError, lambda: client.delete("/x")),
        (
            "delete at a wrong version",
            BadVersionError,
            lambda: client.delete("/a/b", version=3),
        ),
        ("delete of a parent", NotEmptyError, lambda: client.delete("/a")),
        (
            "recursive delete at a wrong version",
            BadVersionError,
            lambda: client.delete("/a", version=7, recursive=True),
        ),
        (
            "recursive delete of a missing node",
            NoNodeError,
            lambda: client.delete("/x", recursive=True),
        ),
        (
            "txn whose op fails",
            NoNodeError,
            lambda: client.txn([], [SetOp("/a", b"1"), CreateOp("/x/y")]),
        ),
        (
            "txn whose else-branch op fails",
            NodeExistsError,
            lambda: client.txn([Compare.missing("/a")], [], [CreateOp("/a")]),
        ),
        (
            "txn deleting a parent",
            NotEmptyError,
            lambda: client.txn([], [DeleteOp("/a")]),
        ),
    ]


@bounded(30)
async def test_sessions_keepalives_and_failed_calls_consume_no_revision(private_url: str) -> None:
    with anyio.fail_after(30):
        async with coordkit.connect(private_url) as observer:
            assert Capability.DENSE_REVISIONS in observer.capabilities
            start = await revision(observer)
            async with coordkit.connect(private_url, session_ttl=1) as client:
                assert await revision(observer) == start, "opening a session (lease grant)"
                backend = client.backend
                assert isinstance(backend, EtcdBackend)
                await backend.wait_renewed(backend.last_renewed)  # a keepalive answered
                assert await revision(observer) == start, "a keepalive"

                await client.create("/a", b"")
                await client.create("/a/b", b"")
                await client.create("/e", b"", ephemeral=True)
                base = await revision(observer)
                assert base == start + 3, "each successful create is one revision"

                for label, error, call in failing_calls(client):
                    with pytest.raises(error):
                        await call()
                    assert await revision(observer) == base, f"a failed {label}"

                result = await client.txn([Compare.missing("/a")], [CreateOp("/z")], [])
                assert not result.succeeded
                assert await revision(observer) == base, "a txn whose compares fail"
                await client.txn([Compare.exists("/a")], [GetOp("/a"), GetOp("/e")])
                assert await revision(observer) == base, "a read-only txn"

                async with coordkit.connect(private_url):
                    pass
                assert await revision(observer) == base, "a session without ephemerals ended"
            # closing the session deletes its ephemeral: one tree change, one revision
            assert await revision(observer) == base + 1
