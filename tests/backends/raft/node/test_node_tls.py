"""A cluster of ``coordkit serve`` processes started with ``--tls-cert/--tls-key/--tls-ca``.

Its one port speaks TLS only: peers replicate over it (a write commits only
with a majority, so a committed write proves the peers talk TLS), and
``raft://...?tls_ca=CA`` clients work. A plain-TCP client, or one that trusts
another CA, fails with one clear error naming each endpoint, within its
connect timeout, and the nodes go on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from certs import TestPKI
from raft_servers import RaftProcessCluster, member_status, running_cluster, until

import coordkit
from coordkit.errors import CoordkitError

pytestmark = pytest.mark.anyio

CONNECT_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI(tmp_path_factory.mktemp("tls") / "ca")


@pytest.fixture(scope="module")
def cluster(pki: TestPKI) -> Iterator[RaftProcessCluster]:
    files = pki.issue("node")
    tls = ("--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca))
    with running_cluster(extra_args=tls, client_ssl=files.client()) as cluster:
        yield cluster


def endpoints(cluster: RaftProcessCluster) -> str:
    return cluster.url.removeprefix("raft://")


async def test_a_client_trusting_the_ca_reads_and_writes_through_tls_peers(
    cluster: RaftProcessCluster, pki: TestPKI
) -> None:
    url = f"raft://{endpoints(cluster)}?tls_ca={pki.ca_file}"
    path = f"/tls/key-{uuid.uuid4().hex[:8]}"
    async with coordkit.connect(url) as client:
        created = await client.create(path, b"secret", make_parents=True)
        node = await client.get(path)
        assert node is not None and node.value == b"secret"
    # Committed means a majority stored it: the peers replicated over TLS. Every
    # member applies it, each answering over TLS itself.
    for member in cluster.members.values():

        async def applied(address: str = member.address) -> bool:
            status = await member_status(address, cluster.client_ssl)  # may still be starting
            return "error" not in status and int(status["revision"]) >= created.create_revision

        await until(applied)


async def _connect_fails(url: str) -> str:
    started = time.monotonic()
    with pytest.raises(CoordkitError) as info:
        async with coordkit.connect(url):
            pass
    elapsed = time.monotonic() - started
    assert elapsed < CONNECT_TIMEOUT + 2.0, elapsed
    return str(info.value)


async def test_a_plain_tcp_client_gets_one_clear_error(cluster: RaftProcessCluster) -> None:
    message = await _connect_fails(f"raft://{endpoints(cluster)}?connect_timeout={CONNECT_TIMEOUT}")
    print(message)
    for member in cluster.members.values():
        assert member.address in message, message
    assert "tls_ca=" in message, "no hint that the cluster may speak TLS"
    for member in cluster.members.values():  # the nodes go on
        status = await member_status(member.address, cluster.client_ssl)
        assert status.get("role") in ("leader", "follower"), status


async def test_a_client_trusting_another_ca_gets_one_clear_error(
    cluster: RaftProcessCluster, tmp_path: Path
) -> None:
    stranger = TestPKI(tmp_path / "other-ca")
    message = await _connect_fails(
        f"raft://{endpoints(cluster)}?tls_ca={stranger.ca_file}&connect_timeout={CONNECT_TIMEOUT}"
    )
    print(message)
    for member in cluster.members.values():
        assert member.address in message, message
    assert "TLS handshake" in message and "certificate verify failed" in message, message
