"""Connection state, observable the same way on every backend.

``client.add_session_listener(cb)`` and ``async with client.watch_session()``
report SUSPENDED (connection down), RESTORED (back, same session), LOST
(expired or closed) and CONNECTED (a new session replacing a lost one).
Expiry is checked on every backend; real outages stop and restart real
servers (a private ZooKeeper, a private etcd, a private Raft cluster of
``coordkit serve`` processes) and wait for the reported changes, never for a
fixed time.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

import coordkit
from coordkit import Capability, SessionChange, SessionState

pytestmark = pytest.mark.anyio

S = SessionState


async def _until_connected(changes: AsyncIterator[SessionChange]) -> list[SessionChange]:
    """The changes up to the next CONNECTED, leaving out SUSPENDED/RESTORED.

    A server that expires a session may drop its connection first, so a
    SUSPENDED can come before the LOST; nothing else may.
    """
    out = []
    async for change in changes:
        if change.state not in (S.SUSPENDED, S.RESTORED):
            out.append(change)
        if change.state is S.CONNECTED:
            break
    return out


def _without_connection_blips(changes: list[SessionChange]) -> list[SessionChange]:
    return [c for c in changes if c.state not in (S.SUSPENDED, S.RESTORED)]


async def test_expiry_reports_lost_then_a_new_connected_session(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as client:
        if Capability.EXPIRE_SESSION not in client.capabilities:
            pytest.skip(f"{type(client.backend).__name__} cannot expire a session on demand")
        old = client.session
        assert client.session_state is S.CONNECTED
        heard: list[SessionChange] = []
        kept: list[SessionChange] = []
        remove = client.add_session_listener(heard.append)
        client.add_session_listener(kept.append)
        with anyio.fail_after(60):
            async with client.watch_session() as changes:
                await client.expire_session()
                lost, connected = await _until_connected(changes)
                new = await client.live_session()
        assert (lost.state, lost.session) == (S.LOST, old)
        assert (connected.state, connected.session) == (S.CONNECTED, new)
        assert new is not old and new.id != old.id and client.session_state is S.CONNECTED
        assert _without_connection_blips(heard) == [lost, connected], "listener and stream differ"

        # Listeners follow the client across the loss; a removed one hears no more.
        also: list[SessionChange] = []
        client.add_session_listener(also.append)
        remove()
        with anyio.fail_after(60):
            async with client.watch_session() as changes:
                await client.expire_session()
                await _until_connected(changes)
        assert _without_connection_blips(heard) == [lost, connected], "removed, still called"
        assert [c.state for c in _without_connection_blips(also)] == [S.LOST, S.CONNECTED]
        assert also[-1].session is client.session and client.session is not new
        states = [c.state for c in _without_connection_blips(kept)]
        assert states == [S.LOST, S.CONNECTED] * 2, "a listener did not follow the new session"


async def test_closing_the_client_reports_lost_and_ends_the_stream(backend_url: str) -> None:
    seen: list[SessionChange] = []
    client = coordkit.connect(backend_url)
    async with client:
        session = client.session

        async def follow() -> None:
            async with client.watch_session() as changes:
                started.set()
                async for change in changes:
                    seen.append(change)

        started = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await started.wait()
            with anyio.fail_after(30):
                await client.aclose()  # the stream ends: the task group can exit
    assert [(c.state, c.session) for c in seen] == [(S.LOST, session)]


async def test_a_failing_listener_is_logged_and_the_others_still_hear(
    memory_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with coordkit.connect(memory_url) as client:
        heard: list[SessionState] = []

        def broken(change: SessionChange) -> None:
            raise RuntimeError("listener bug")

        client.add_session_listener(broken)
        client.add_session_listener(lambda change: heard.append(change.state))
        await client.expire_session()
        assert heard == [S.LOST, S.CONNECTED]
        assert any("a session listener failed" in r.getMessage() for r in caplog.records)
    with pytest.raises(TypeError, match="listener must be callable"):
        async with coordkit.connect(memory_url) as client:
            client.add_session_listener("not callable")  # type: ignore[arg-type]


# -- real outages: stop a real server, see SUSPENDED, start it, see RESTORED ----------


async def _outage(url: str, stop: object, start: object, session_ttl: float) -> None:
    """Connect, stop the server(s), expect SUSPENDED, start them, expect RESTORED."""
    async with coordkit.connect(url, session_ttl=session_ttl, timeout=5) as client:
        session = client.session
        with anyio.fail_after(120):
            async with client.watch_session() as changes:
                await anyio.to_thread.run_sync(stop)  # type: ignore[arg-type]
                suspended = await anext(changes)
                assert (suspended.state, suspended.session) == (S.SUSPENDED, session)
                assert client.session_state is S.SUSPENDED
                await anyio.to_thread.run_sync(start)  # type: ignore[arg-type]
                restored = await anext(changes)
                assert (restored.state, restored.session) == (S.RESTORED, session)
        assert client.session is session and client.session_state is S.CONNECTED
        assert await client.get("/") is not None


@pytest.fixture(scope="module")
def zookeeper_to_stop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    pytest.importorskip("kazoo.client")
    from zookeeper_servers import make_standalone

    ensemble = make_standalone(Path(tmp_path_factory.mktemp("zookeeper-session-state")))
    try:
        ensemble.start()
        yield ensemble
    finally:
        ensemble.stop()


@pytest.mark.zookeeper
async def test_zookeeper_outage_reports_suspended_then_restored(zookeeper_to_stop: object) -> None:
    ensemble = zookeeper_to_stop
    url = ensemble.url(f"/t-{uuid.uuid4().hex}")  # type: ignore[attr-defined]
    await _outage(url, ensemble.stop, ensemble.start, session_ttl=10)  # type: ignore[attr-defined]


@pytest.mark.etcd
async def test_etcd_outage_reports_suspended_then_restored(
    anyio_backend: str, request: pytest.FixtureRequest
) -> None:
    from etcd_servers import require_asyncio_and_client

    require_asyncio_and_client(anyio_backend)
    cluster = request.getfixturevalue("etcd_private_server")
    member = cluster.members[0]

    def start() -> None:
        member.start()
        member.wait_healthy()

    url = cluster.url(f"/t-{uuid.uuid4().hex}")
    await _outage(url, member.stop, start, session_ttl=10)


@pytest.fixture
def raft_to_stop(anyio_backend: str) -> Iterator[object]:
    """A private cluster of three ``coordkit serve`` processes, which the test stops."""
    raft_servers = pytest.importorskip("raft_servers")
    if anyio_backend != "asyncio":
        pytest.skip("one event loop is enough: the servers are processes")
    cluster = raft_servers.started_cluster()
    try:
        yield cluster
    finally:
        cluster.close()


async def test_raft_outage_reports_suspended_then_restored(raft_to_stop: object) -> None:
    cluster = raft_to_stop
    names = list(cluster.members)  # type: ignore[attr-defined]

    def stop() -> None:
        for name in names:
            cluster.stop(name)  # type: ignore[attr-defined]

    # The leader extends every session by an election timeout on taking office,
    # so a session outlives a restart well inside its TTL.
    await _outage(cluster.url, stop, cluster.start, session_ttl=20)  # type: ignore[attr-defined]
