"""Failover in a 3-member cluster: the session, its ephemerals, a watch and a Lock survive.

Four cases, each taking one member out:

- ``connected``: kill (SIGKILL, a crash) the member the client talks to, a
  follower: the client must move to another member (pick_first over the
  URL's addresses);
- ``leader``: kill the leader, while the client talks to a follower: the
  others elect a new leader and the client's member follows it;
- ``connected-leader``: both at once;
- ``frozen``: freeze (SIGSTOP) the member the client talks to: its TCP
  connections stay up and nothing answers; HTTP/2 keepalive pings must find
  out (within ~9 s) and the client move on.

The test checks which member the client really uses (``status().details``),
waits on conditions only, and is bounded by ``anyio.fail_after``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import anyio
import pytest
from aetcd import rpc
from etcd_servers import EtcdCluster, EtcdMember, bounded

import coordkit
from coordkit import Client, Event, EventType
from coordkit.backends.etcd.backend import EtcdBackend
from coordkit.recipes.lock import Lock

pytestmark = [pytest.mark.anyio, pytest.mark.etcd]

# Short, so the lease would soon be gone if the keepalive did not reach the
# cluster again (checked: a keepalive answered after the kill, TTL left > 0).
TTL = 2


def url_for(cluster: EtcdCluster, first: EtcdMember, prefix: str) -> str:
    """A URL listing ``first`` first: pick_first connects to it."""
    order = [first, *(m for m in cluster.members if m is not first)]
    return f"etcd://{','.join(m.endpoint for m in order)}{prefix}"


def backend_of(client: Client) -> EtcdBackend:
    backend = client.backend
    assert isinstance(backend, EtcdBackend)
    return backend


async def member_in_use(client: Client) -> str:
    details = (await client.status()).details
    return str(details["member"])


async def wait_for_a_leader_other_than(client: Client, victim: EtcdMember) -> None:
    """Until the member the client talks to follows a leader other than ``victim``.

    A write sent to a member that still believes in a killed leader is
    forwarded to it and lost: etcd answers "request timed out, possibly due to
    previous leader failure" after its request timeout, without saying whether
    it was applied (ConnectionLostError); so writes wait for the new leader.
    """
    while True:
        status = await client.status()
        if status.leader is not None and status.leader != victim.name:
            return
        await anyio.sleep(0.05)


@asynccontextmanager
async def failed(cluster: EtcdCluster, victim: EtcdMember, case: str) -> AsyncIterator[None]:
    """``victim`` killed (or, ``frozen``, stopped with SIGSTOP) for the body;
    the whole cluster healthy again afterwards, even if the test failed."""
    if case == "frozen":
        victim.freeze()
    else:
        await anyio.to_thread.run_sync(lambda: victim.stop(kill=True))
    try:
        yield
    finally:
        # shielded: the next tests need the whole cluster back
        with anyio.CancelScope(shield=True), anyio.fail_after(30):
            if case == "frozen":
                victim.thaw()
            await anyio.to_thread.run_sync(victim.start)  # (no-op if running)
            for member in cluster.members:
                await anyio.to_thread.run_sync(member.wait_healthy)


async def assert_writes_go_on_and_the_watch_resumes(
    client: Client, rival: Client, events: AsyncIterator[Event]
) -> None:
    """Both clients write; the client's watch resumed losing and repeating nothing."""
    during = await rival.create("/jobs/during", b"")
    after = await client.set("/jobs", b"after failover")
    node = await client.create("/jobs/n-", b"", sequential=True)
    assert node.path.endswith("0000000000")
    got = [await events.__anext__() for _ in range(3)]
    assert [(e.type, e.path, e.revision) for e in got] == [
        (EventType.CREATED, "/jobs/during", during.create_revision),
        (EventType.UPDATED, "/jobs", after.mod_revision),
        (EventType.CREATED, node.path, node.create_revision),
    ]


async def assert_lease_alive(other: Client, lease_id: int) -> None:
    channel = backend_of(other).channel
    reply = await channel.call(
        channel.lease.LeaseTimeToLive, rpc.LeaseTimeToLiveRequest(ID=lease_id), idempotent=True
    )
    assert reply.TTL > 0, "the session's lease is gone"


async def assert_lock_kept_and_handed_over(
    client: Client, rival: Client, lock: Lock, token: int | None
) -> None:
    """The Lock is still held, excludes others, and hands over in token order."""
    assert lock.is_held and lock.token == token
    assert await Lock(rival, "/locks/failover").acquire(blocking=False) is False
    await lock.release()
    theirs = Lock(rival, "/locks/failover", "rival")
    assert await theirs.acquire()
    their_token = theirs.token
    assert their_token is not None and token is not None and their_token > token
    await theirs.release()
    async with Lock(client, "/locks/failover") as again:
        assert again.token is not None and again.token > their_token


@pytest.mark.parametrize("case", ["connected", "leader", "connected-leader", "frozen"])
@bounded(120)
async def test_client_keeps_its_session_watch_and_lock_when_a_member_dies(
    etcd_cluster_url: str, etcd_cluster: EtcdCluster, case: str
) -> None:
    cluster = etcd_cluster
    leader = await anyio.to_thread.run_sync(cluster.leader)
    follower = next(m for m in cluster.members if m is not leader)
    connected = leader if case == "connected-leader" else follower
    victim = follower if case in ("connected", "frozen") else leader
    # A frozen member is noticed by keepalive pings (6 s + 3 s): the session
    # and each call must outlast that.
    ttl, timeout = (15, 30) if case == "frozen" else (TTL, 10)
    survivor = next(m for m in cluster.members if m is not victim)
    prefix = urlsplit(etcd_cluster_url).path
    async with (
        coordkit.connect(
            url_for(cluster, connected, prefix), session_ttl=ttl, timeout=timeout
        ) as client,
        coordkit.connect(url_for(cluster, survivor, prefix), session_ttl=ttl) as rival,
    ):
        assert await member_in_use(client) == connected.name
        assert await member_in_use(rival) != victim.name
        session = client.session
        lease_id = session.id
        await client.create("/jobs", b"")
        eph = await client.create("/jobs/worker", b"", ephemeral=True)
        lock = Lock(client, "/locks/failover", "client")
        assert await lock.acquire()
        token = lock.token

        async with client.watch("/jobs", recursive=True) as events, failed(cluster, victim, case):
            killed_at = time.monotonic()
            with anyio.fail_after(40):
                # reads fail over at once; writes wait for a live leader
                await wait_for_a_leader_other_than(client, victim)
                await wait_for_a_leader_other_than(rival, victim)
                if victim is connected:
                    assert await member_in_use(client) != victim.name
                await assert_writes_go_on_and_the_watch_resumes(client, rival, events)
                # the keepalive reaches the cluster again: same lease, renewed
                await backend_of(client).wait_renewed(killed_at)
                await assert_lease_alive(rival, lease_id)
                assert client.session is session and session.id == lease_id
                assert not session.lost
                assert await rival.get("/jobs/worker") == eph
                await assert_lock_kept_and_handed_over(client, rival, lock, token)
