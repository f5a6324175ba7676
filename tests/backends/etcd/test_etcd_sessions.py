"""Sessions as leases: expiry on demand, a vanished client, keepalives (failover:
test_etcd_failover.py)."""

from __future__ import annotations

import anyio
import pytest
from etcd_servers import bounded

import coordkit
from coordkit import EventType, UnsupportedError
from coordkit.backends.etcd.backend import EtcdBackend

pytestmark = [pytest.mark.anyio, pytest.mark.etcd]


@bounded(30)
async def test_expire_session_removes_ephemerals_and_opens_a_new_lease(etcd_url: str) -> None:
    async with coordkit.connect(etcd_url) as client, coordkit.connect(etcd_url) as other:
        old = client.session
        node = await client.create("/eph", b"", ephemeral=True)
        assert node.ephemeral_owner == old.id
        await client.expire_session()
        assert old.lost
        assert await other.get("/eph") is None
        fresh = client.session
        assert fresh.id != old.id and not fresh.lost
        again = await client.create("/eph", b"", ephemeral=True)
        assert again.ephemeral_owner == fresh.id


@bounded(30)
async def test_aborted_client_ephemerals_go_after_the_ttl(etcd_url: str) -> None:
    async with coordkit.connect(etcd_url) as observer:
        async with coordkit.connect(etcd_url, session_ttl=1) as doomed:
            await doomed.create("/gone", b"", ephemeral=True)
            async with observer.watch("/gone") as events:
                await doomed.abort()
                assert await observer.exists("/gone"), "abort must not end the session"
                with anyio.fail_after(15):
                    event = await events.__anext__()
        assert event.type is EventType.DELETED and event.path == "/gone"


@bounded(30)
async def test_keepalive_holds_a_short_session_beyond_its_ttl(etcd_url: str) -> None:
    async with coordkit.connect(etcd_url, session_ttl=1) as client:
        backend = client.backend
        assert isinstance(backend, EtcdBackend)
        session = client.session
        await client.create("/kept", b"", ephemeral=True)
        granted = backend.last_renewed
        async with client.watch("/kept") as events, anyio.create_task_group() as tg:
            got = []

            async def collect() -> None:
                got.append(await events.__anext__())

            tg.start_soon(collect)
            with anyio.fail_after(10):
                # keepalives carry the lease past 1.5 TTLs (etcd would have
                # dropped it by then without them)
                while backend.last_renewed < granted + 1.5 * session.ttl:
                    await backend.wait_renewed(backend.last_renewed)
            tg.cancel_scope.cancel()
        assert got == [] and not session.lost and await client.exists("/kept")


@bounded(10)
async def test_connecting_under_trio_says_the_backend_needs_asyncio(anyio_backend: str) -> None:
    if anyio_backend != "trio":
        pytest.skip("checks the refusal under trio; the other etcd tests run on asyncio")
    # Refused before any connection is made, so no server is needed.
    with pytest.raises(UnsupportedError, match="asyncio only"):
        async with coordkit.connect("etcd://127.0.0.1:1/x"):
            pass
