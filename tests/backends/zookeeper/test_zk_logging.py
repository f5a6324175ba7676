"""Stopping the ZooKeeper server under a connected client: one clear log line per state change.

The server is this module's own (stopping the shared one would break other
tests). Waits are for log records (a condition, see ``log_records``), never
for a fixed time. kazoo's own lines go to ``coordkit.backends.zookeeper.kazoo``
at DEBUG; the client is left reconnecting until kazoo tried several times,
so a line repeated per attempt would show.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from log_records import coordkit_lines, log_records
from zookeeper_servers import ZooKeeperEnsemble, make_standalone

import coordkit

pytest.importorskip("kazoo.client")

pytestmark = [pytest.mark.anyio, pytest.mark.zookeeper]

#: kazoo's line for each connection attempt (passed on at DEBUG).
ATTEMPT = r"^Connecting to "


@pytest.fixture(scope="module")
def zookeeper_to_stop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperEnsemble]:
    """A standalone server of this module's own, which its tests stop and start again."""
    ensemble = make_standalone(Path(tmp_path_factory.mktemp("zookeeper-stopped")))
    try:
        ensemble.start()
        yield ensemble
    finally:
        ensemble.stop()


async def test_a_short_outage_logs_the_loss_then_the_restored_connection_once_each(
    zookeeper_to_stop: ZooKeeperEnsemble, caplog: pytest.LogCaptureFixture
) -> None:
    server = zookeeper_to_stop.servers[0]
    url = zookeeper_to_stop.url(f"/t-{uuid.uuid4().hex}")
    # The session must outlive the restart: a server that boots slowly under
    # load (the JVM, then loading its data) is still within 30 s.
    with anyio.fail_after(120):
        async with coordkit.connect(url, session_ttl=30) as client:
            session = client.session
            caplog.set_level(logging.DEBUG, logger="coordkit")
            caplog.clear()
            with log_records() as records:
                await anyio.to_thread.run_sync(server.stop)
                await records.wait_for(r"^ZooKeeper connection to .* lost")
                tried = records.count(ATTEMPT)
                await records.wait_for(ATTEMPT, times=tried + 3)  # still down: kazoo retries
                await anyio.to_thread.run_sync(zookeeper_to_stop.start)
                await records.wait_for(r"^ZooKeeper connection to .* restored", timeout=60)
                assert await client.get("/") is not None  # and requests go through
            assert client.session is session and not session.lost
    lost, restored = coordkit_lines(caplog.records)
    assert lost == (
        f"WARNING ZooKeeper connection to {server.address} lost (Connection dropped: "
        f"socket connection broken); reconnecting, session {session.id:#x} suspended"
    )
    assert restored == (
        f"INFO ZooKeeper connection to {server.address} restored; session {session.id:#x} kept"
    )


async def test_an_expired_session_logs_its_loss_and_the_new_session_once_each(
    zookeeper_to_stop: ZooKeeperEnsemble, caplog: pytest.LogCaptureFixture
) -> None:
    server = zookeeper_to_stop.servers[0]
    url = zookeeper_to_stop.url(f"/t-{uuid.uuid4().hex}")
    with anyio.fail_after(90):
        async with coordkit.connect(url, session_ttl=2) as client:
            old = client.session
            caplog.set_level(logging.DEBUG, logger="coordkit")
            caplog.clear()
            with log_records() as records:
                await client.expire_session()  # the server expires it (a second connection)
                await records.wait_for(r"^ZooKeeper session .* opened at ")
                new = await client.live_session()
                assert await client.get("/") is not None
    assert old.lost and new is not old and old.successor is new
    lines = coordkit_lines(caplog.records)
    # The server closes the expired session's connection first (or kazoo sees
    # the expiry when it reconnects): a connection line may come before.
    if len(lines) == 3:
        assert lines.pop(0).startswith(f"WARNING ZooKeeper connection to {server.address} lost")
    expired, opened = lines
    assert expired == (
        f"WARNING ZooKeeper session {old.id:#x} lost (Session has expired): "
        "its ephemeral nodes are gone"
    )
    assert opened == (
        f"INFO ZooKeeper session {new.id:#x} opened at {server.address}, "
        f"replacing lost session {old.id:#x}"
    )
