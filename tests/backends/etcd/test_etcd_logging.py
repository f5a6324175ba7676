"""Stopping the etcd server under a connected client: one clear log line per state change.

The server is this module's own (stopping the shared one would break other
tests). Waits are for log records (a condition, see ``log_records``), never
for a fixed time: the client is left retrying until reconnection attempts
failed (logged at DEBUG), so a line repeated per attempt would show.
"""

from __future__ import annotations

import logging
import time
import uuid

import anyio
import pytest
from etcd_servers import EtcdCluster, bounded, require_asyncio_and_client
from log_records import coordkit_lines, log_records

import coordkit
from coordkit.backends.etcd.backend import EtcdBackend

pytestmark = [pytest.mark.anyio, pytest.mark.etcd]

#: The keepalive's DEBUG line for each failed reconnection attempt.
ATTEMPT = r"^etcd session keepalive failed \(attempt \d+"


@pytest.fixture
def etcd_to_stop(anyio_backend: str, request: pytest.FixtureRequest) -> EtcdCluster:
    """This module's own single-node etcd, which its tests stop and start again."""
    require_asyncio_and_client(anyio_backend)
    server: EtcdCluster = request.getfixturevalue("etcd_private_server")
    return server


async def restart(cluster: EtcdCluster) -> None:
    member = cluster.members[0]
    await anyio.to_thread.run_sync(member.start)
    await anyio.to_thread.run_sync(member.wait_healthy)


@bounded(90)
async def test_a_short_outage_logs_the_loss_then_the_restored_connection_once_each(
    etcd_to_stop: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    member = etcd_to_stop.members[0]
    url = etcd_to_stop.url(f"/t-{uuid.uuid4().hex}")
    # The default TTL (10 s): a keepalive attempt waits a third of it for etcd,
    # so one failed attempt and the restart fit well inside it.
    async with coordkit.connect(url) as client:
        backend = client.backend
        assert isinstance(backend, EtcdBackend)
        session = client.session
        caplog.set_level(logging.DEBUG, logger="coordkit")
        caplog.clear()
        with log_records() as records:
            await anyio.to_thread.run_sync(member.stop)
            await records.wait_for(r"^etcd connection to .* lost")
            await records.wait_for(ATTEMPT)  # still down: retrying, at DEBUG only
            await restart(etcd_to_stop)
            await records.wait_for(r"^etcd connection to .* restored")
            await backend.wait_renewed(time.monotonic())  # and the keepalive goes on
        assert client.session is session and not session.lost
    endpoint = f"127.0.0.1:{member.client_port}"
    lost, restored = coordkit_lines(caplog.records)
    assert lost.startswith(f"WARNING etcd connection to {endpoint} (member ")
    assert ") lost (ConnectionLostError: " in lost
    assert lost.endswith(f"; reconnecting, session {session.id:#x} suspended")
    assert restored.startswith(f"INFO etcd connection to {endpoint} (member ")
    assert restored.endswith(f") restored; session {session.id:#x} kept")


@bounded(90)
async def test_an_outage_beyond_the_ttl_logs_the_lost_connection_and_session_and_the_new_one(
    etcd_to_stop: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    member = etcd_to_stop.members[0]
    url = etcd_to_stop.url(f"/t-{uuid.uuid4().hex}")
    # A short operation timeout: each grant tried while etcd is down waits for it.
    async with coordkit.connect(url, session_ttl=1, timeout=2) as client:
        old = client.session
        caplog.set_level(logging.DEBUG, logger="coordkit")
        caplog.clear()
        with log_records() as records:
            await anyio.to_thread.run_sync(member.stop)
            await records.wait_for(rf"^etcd session {old.id:#x} lost")
            await records.wait_for(ATTEMPT, times=records.count(ATTEMPT) + 2)
            await restart(etcd_to_stop)
            await records.wait_for(r"^etcd session .* opened at ")
            new = await client.live_session()
        assert old.lost and not new.lost and new is not old and old.successor is new
        assert await client.get("/") is not None  # working again, under the new session
    lost, expired, opened = coordkit_lines(caplog.records)
    assert lost.startswith("WARNING etcd connection to ")
    assert lost.endswith(f"session {old.id:#x} suspended")
    assert expired.startswith(f"WARNING etcd session {old.id:#x} lost: its lease was not renewed")
    assert opened.startswith(f"INFO etcd session {new.id:#x} opened at 127.0.0.1:")
    assert opened.endswith(f"replacing lost session {old.id:#x}")
