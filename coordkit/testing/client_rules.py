"""Reads, status, the client's lifecycle and declared capabilities."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from coordkit.client import Client
from coordkit.errors import ClientClosedError, UnsupportedError
from coordkit.model import Capability
from coordkit.txn import Compare, CreateOp, GetOp

from .harness import ConformanceBase, Kit, assert_unchanged, expect_error, revision_of, tree_state

__all__ = ["ClientRules"]

Call = Callable[[], Awaitable[object]]


def _every_call(client: Client) -> list[tuple[str, Call]]:
    """Every operation of the client, on valid arguments."""

    async def watch() -> None:
        async with client.watch("/c"):
            pass

    async def session() -> None:
        client.session  # noqa: B018 - the property itself must refuse

    return [
        ("create", lambda: client.create("/c", b"")),
        ("ensure_path", lambda: client.ensure_path("/c/d")),
        ("get", lambda: client.get("/c")),
        ("exists", lambda: client.exists("/c")),
        ("children", lambda: client.children("/")),
        ("set", lambda: client.set("/c", b"")),
        ("delete", lambda: client.delete("/c")),
        ("txn", lambda: client.txn([], [GetOp("/c")])),
        ("watch", watch),
        ("status", client.status),
        ("session", session),
    ]


#: capabilities that gate a call (the others describe guarantees, tested where they apply).
_GATED_CALLS = (
    Capability.TXN_ELSE,
    Capability.TXN_VALUE_COMPARE,
    Capability.TXN_REVISION_COMPARE,
    Capability.WATCH_FROM_REVISION,
    Capability.ABORT,
    Capability.EXPIRE_SESSION,
)


def _unsupported_call(client: Client, capability: Capability) -> Call:
    """A call that needs ``capability`` (and would create ``/u/x`` if it ran)."""

    async def watch_from_revision() -> None:
        async with client.watch("/u", start_revision=1):
            pass

    calls: dict[Capability, Call] = {
        Capability.TXN_ELSE: lambda: client.txn([Compare.missing("/u")], [], [CreateOp("/u/x")]),
        Capability.TXN_VALUE_COMPARE: lambda: client.txn(
            [Compare.value_is("/u", "==", b"")], [CreateOp("/u/x")]
        ),
        Capability.TXN_REVISION_COMPARE: lambda: client.txn(
            [Compare.mod_revision("/u", ">", 0)], [CreateOp("/u/x")]
        ),
        Capability.WATCH_FROM_REVISION: watch_from_revision,
        Capability.ABORT: client.abort,
        Capability.EXPIRE_SESSION: client.expire_session,
    }
    return calls[capability]


class ClientRules(ConformanceBase):
    async def test_read_after_write_is_linearizable_across_clients(self, kit: Kit) -> None:
        async with kit.clients(3) as clients:
            await clients[0].create("/lin", b"0")
            for i in range(1, 16):
                writer, reader = clients[i % 3], clients[(i + 1) % 3]
                node = await writer.set("/lin", str(i).encode())
                assert await reader.get("/lin") == node, "a read missed the write before it"
                child = await writer.create(f"/lin/c{i:02}", b"")
                assert await reader.exists(child.path)
                assert (await reader.children("/lin"))[-1] == child.name
                assert (await reader.status()).revision >= child.create_revision
                await writer.delete(child.path)
                assert await reader.get(child.path) is None, "a read missed a delete"

    async def test_stale_reads_are_allowed_with_consistent_false(self, kit: Kit) -> None:
        async with kit.clients(2) as (writer, reader):
            created = await writer.create("/stale", b"0")
            names: list[str] = []
            for i in range(1, 6):
                await writer.set("/stale", str(i).encode())
                names.append((await writer.create(f"/stale/c{i}", b"")).name)
                seen = await reader.get("/stale", consistent=False)
                if seen is not None:  # possibly an older state, never an invented one
                    assert seen.create_revision == created.create_revision
                    assert seen.value == str(seen.version).encode() and seen.version <= i
                children = await reader.children("/stale", consistent=False)
                assert children == sorted(children) and set(children) <= set(names)
            latest = await reader.get("/stale")
            assert latest is not None and latest.version == 5

    async def test_status_revision_is_at_least_the_last_writes_revision(self, kit: Kit) -> None:
        async with kit.clients(2) as (writer, other):
            for i in range(5):
                node = await writer.create(f"/st{i}", b"")
                for client in (writer, other):
                    status = await client.status()
                    assert status.revision >= node.create_revision, "status() is behind a write"
            assert isinstance(status.backend, str) and status.backend

    async def test_client_raises_client_closed_outside_async_with(self, kit: Kit) -> None:
        client = kit.connect()
        assert client.closed
        for label, call in _every_call(client):
            await expect_error(f"{label} before open", ClientClosedError, call)
        async with client:
            assert not client.closed
            await client.create("/c", b"")
        assert client.closed
        for label, call in _every_call(client):
            await expect_error(f"{label} after close", ClientClosedError, call)
        await client.aclose()  # closing again is harmless

    async def test_missing_capability_raises_unsupported_and_changes_nothing(
        self, kit: Kit
    ) -> None:
        async with kit.connect() as client:
            assert all(isinstance(c, Capability) for c in client.capabilities)
            gated = _GATED_CALLS
            missing = [c for c in gated if c not in client.capabilities]
            if not missing:
                pytest.skip(f"{type(client.backend).__name__} declares every call capability")
            await client.create("/u", b"")
            before = await tree_state(client, ["/u", "/u/x"])
            for capability in missing:
                await expect_error(
                    f"without {capability.value!r}",
                    UnsupportedError,
                    _unsupported_call(client, capability),
                )
                await assert_unchanged(client, before, f"without {capability.value!r}")
            if Capability.DENSE_REVISIONS in client.capabilities:
                assert await revision_of(client) == before.revision
