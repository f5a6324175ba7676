"""Sessions as leases: expiry on demand, a vanished client, and leader failover."""

from __future__ import annotations

from urllib.parse import urlsplit

import anyio
import pytest
from etcd_servers import EtcdCluster

import coordkit
from coordkit import EventType
from coordkit.recipes.lock import Lock

pytestmark = [pytest.mark.anyio, pytest.mark.etcd]


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


async def test_aborted_client_ephemerals_go_after_the_ttl(etcd_url: str) -> None:
    async with coordkit.connect(etcd_url) as observer:
        async with coordkit.connect(etcd_url, session_ttl=2) as doomed:
            await doomed.create("/gone", b"", ephemeral=True)
            async with observer.watch("/gone") as events:
                await doomed.abort()
                assert await observer.exists("/gone"), "abort must not end the session"
                with anyio.fail_after(15):
                    event = await events.__anext__()
        assert event.type is EventType.DELETED and event.path == "/gone"


async def test_keepalive_holds_a_short_session_beyond_its_ttl(etcd_url: str) -> None:
    async with coordkit.connect(etcd_url, session_ttl=1) as client:
        session = client.session
        await client.create("/kept", b"", ephemeral=True)
        async with client.watch("/kept") as events, anyio.create_task_group() as tg:
            got = []

            async def collect() -> None:
                got.append(await events.__anext__())

            tg.start_soon(collect)
            await anyio.sleep(3)  # three TTLs: only keepalives can keep it
            tg.cancel_scope.cancel()
        assert got == [] and not session.lost and await client.exists("/kept")


async def test_client_keeps_its_session_and_lock_when_the_leader_stops(
    etcd_cluster_url: str, etcd_cluster: EtcdCluster
) -> None:
    # List the leader first: the client (pick_first) talks to the member we stop.
    leader = await anyio.to_thread.run_sync(etcd_cluster.leader)
    others = [m.endpoint for m in etcd_cluster.members if m is not leader]
    prefix = urlsplit(etcd_cluster_url).path
    url = f"etcd://{','.join([leader.endpoint, *others])}{prefix}"
    async with (
        coordkit.connect(url, session_ttl=5) as client,
        coordkit.connect(etcd_cluster_url, session_ttl=5) as rival,
    ):
        session = client.session
        await client.create("/jobs", b"")
        eph = await client.create("/jobs/worker", b"", ephemeral=True)
        lock = Lock(client, "/locks/failover", "client")
        assert await lock.acquire()
        token = lock.token
        await anyio.to_thread.run_sync(leader.stop)
        try:
            with anyio.fail_after(30):
                await client.set("/jobs", b"after failover")
                node = await client.create("/jobs/n-", b"", sequential=True)
                assert node.path.endswith("0000000000")
                assert (await rival.get("/jobs/worker")) == eph
                assert await Lock(rival, "/locks/failover").acquire(blocking=False) is False
                status = await client.status()
                assert status.leader is not None and status.leader != leader.name
            assert client.session is session and not session.lost
            assert lock.is_held and lock.token == token
            await lock.release()
            with anyio.fail_after(10):
                assert await Lock(rival, "/locks/failover").acquire()
        finally:
            await anyio.to_thread.run_sync(leader.start)
            await anyio.to_thread.run_sync(leader.wait_healthy)
