"""Failover in a 3-server ensemble: the client keeps its session, its ephemeral nodes and its lock.

Each test stops one server of the session's ensemble (the one the client is
connected to, or the leader), checks that the client reconnects to another
server under the *same* session id, that its ephemeral node and held Lock
survive, and that the Lock still hands over to a waiter that was queued before
the failure. The stopped server is started again before the test ends, so
the next test finds a full ensemble.

No test sleeps: reconnection is awaited through a read (the backend retries
reads across a reconnection until its timeout), handovers through the
recipes' own waits, and server restarts through ``srvr`` answers.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest
from zookeeper_servers import ZooKeeperEnsemble, ZooKeeperServer, four_letter_word

import coordkit
from coordkit.backend import SessionState
from coordkit.client import Client
from coordkit.recipes import Lock
from coordkit.recipes.base import wait_until

pytest.importorskip("kazoo.client")

pytestmark = pytest.mark.anyio

#: bound on one whole failover test (election, reconnection, handover).
TEST_TIMEOUT = 60
#: session TTL: long enough to ride out an election, short enough to matter.
SESSION_TTL = 10.0


def server_of_session(ensemble: ZooKeeperEnsemble, session_id: int) -> ZooKeeperServer:
    """The server holding the connection of ``session_id``, from the ``cons`` four-letter word."""
    pattern = re.compile(rf"sid=0x0*{session_id:x}\b")
    for server in ensemble.servers:
        if server.running and pattern.search(four_letter_word(server.client_port, b"cons")):
            return server
    raise AssertionError(f"no server lists session {session_id:#x}")


@asynccontextmanager
async def stopped(ensemble: ZooKeeperEnsemble, server: ZooKeeperServer) -> AsyncIterator[None]:
    """``server`` stopped for the body; started again (and serving) afterwards."""
    await anyio.to_thread.run_sync(server.stop)
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(ensemble.start)
            await anyio.to_thread.run_sync(ensemble.leader)


async def queue_waiter(
    tg: anyio.abc.TaskGroup, holder: Client, waiting: Client
) -> tuple[Lock, anyio.Event]:
    """Start a waiter for ``/locks/job`` on ``waiting``; return once its node is queued.

    The returned event is set when the waiter has the lock.
    """
    waiter = Lock(waiting, "/locks/job", identifier="waiter")
    got_it = anyio.Event()

    async def wait_for_the_lock() -> None:
        assert await waiter.acquire(timeout=TEST_TIMEOUT)
        got_it.set()

    async def waiter_queued() -> bool:
        return len(await holder.children("/locks/job")) == 2

    tg.start_soon(wait_for_the_lock)
    await wait_until(holder, "/locks/job", waiter_queued, recursive=True)
    return waiter, got_it


async def ride_out(ensemble: ZooKeeperEnsemble, victim: str) -> None:
    """Stop the ``victim`` server while a client holds an ephemeral node and a Lock."""
    url = ensemble.url()
    await anyio.to_thread.run_sync(ensemble.leader)  # a full, serving ensemble to start from
    async with (
        coordkit.connect(url, session_ttl=SESSION_TTL) as client,
        coordkit.connect(url, session_ttl=SESSION_TTL) as other,
    ):
        session = client.session
        mine = await client.create("/members/me", b"alive", ephemeral=True, make_parents=True)
        lock = Lock(client, "/locks/job", identifier="holder")
        assert await lock.acquire(timeout=10)
        token = lock.token
        async with anyio.create_task_group() as tg:
            waiter, got_it = await queue_waiter(tg, client, other)

            connected = server_of_session(ensemble, session.id)
            if victim == "connected":
                target = connected
            else:
                target = await anyio.to_thread.run_sync(ensemble.leader)
            async with stopped(ensemble, target):
                # A read retries across the reconnection: it returns once the
                # client is served again, by one of the two remaining servers.
                node = await client.get(mine.path)
                assert client.session is session, "a new session replaced the old one"
                assert client.session.id == session.id and not session.lost
                assert node == mine, "the ephemeral node did not survive the failover"
                assert await other.get(mine.path) == mine
                assert server_of_session(ensemble, session.id) is not target
                assert session.state is SessionState.CONNECTED
                assert not got_it.is_set(), "the waiter got the lock while it was held"
                await lock.release()  # the lock still hands over, to the queued waiter
                with anyio.fail_after(20):
                    await got_it.wait()
                handed = waiter.token
                assert handed is not None and token is not None and handed > token
                await waiter.release()
                async with Lock(client, "/locks/job") as again:  # and can be taken again
                    assert again.token is not None and again.token > handed


async def test_client_keeps_its_session_when_its_server_stops(
    zookeeper_ensemble: ZooKeeperEnsemble,
) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        await ride_out(zookeeper_ensemble, "connected")


async def test_client_keeps_its_session_when_the_leader_stops(
    zookeeper_ensemble: ZooKeeperEnsemble,
) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        await ride_out(zookeeper_ensemble, "leader")


async def test_a_waiter_cut_off_while_the_lock_is_released_gets_it_on_reconnection(
    zookeeper_ensemble: ZooKeeperEnsemble,
) -> None:
    """The release happens while the waiter has no server: its watch catches up on reconnection.

    The waiter's URL names one server only, so it cannot reconnect until that
    server is back; the holder talks to the other two and releases meanwhile.
    """
    ensemble = zookeeper_ensemble
    with anyio.fail_after(TEST_TIMEOUT):
        await anyio.to_thread.run_sync(ensemble.leader)
        isolated, *others = ensemble.servers
        chroot = f"/t-{uuid.uuid4().hex}"
        waiter_url = f"zookeeper://{isolated.address}{chroot}"
        holder_url = f"zookeeper://{','.join(s.address for s in others)}{chroot}"
        async with (
            coordkit.connect(holder_url, session_ttl=SESSION_TTL) as holder_client,
            coordkit.connect(waiter_url, session_ttl=SESSION_TTL) as waiter_client,
        ):
            session = waiter_client.session
            lock = Lock(holder_client, "/locks/job", identifier="holder")
            assert await lock.acquire(timeout=10)
            async with anyio.create_task_group() as tg:
                waiter, got_it = await queue_waiter(tg, holder_client, waiter_client)
                async with stopped(ensemble, isolated):
                    await lock.release()  # the waiter cannot see this now
                    assert not got_it.is_set()
                # ``stopped`` started the server again: the waiter reconnects to it.
                with anyio.fail_after(20):
                    await got_it.wait()
                assert waiter_client.session is session and not session.lost
                await waiter.release()
