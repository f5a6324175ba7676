"""TLS and authentication against a real etcd (TLS only, client certificates, auth on).

The server (``etcd_secure_server``) is started with ``--cert-file``,
``--key-file``, ``--trusted-ca-file`` and ``--client-cert-auth``, and its
``root`` user enabled with ``etcdctl auth enable``; the certificates are made
at test time (tests/support/certs.py). A wrong password, an untrusted server
or client certificate, a missing user each fail the connect with one
:class:`CannotConnectError` saying why.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import pytest
from certs import TestPKI
from connect_report import connect_in_subprocess
from etcd_servers import AUTH_TOKEN_TTL, SecureEtcd, bounded, require_asyncio_and_client
from recipe_support import create_watch_and_lock

import coordkit
from coordkit import CannotConnectError, Client
from coordkit.testing import CreateRules, SessionRules, TxnRules, WatchRules

pytestmark = [pytest.mark.anyio, pytest.mark.etcd]


@pytest.fixture
def secure(anyio_backend: str, etcd_secure_server: SecureEtcd) -> SecureEtcd:
    require_asyncio_and_client(anyio_backend)
    return etcd_secure_server


def prefix() -> str:
    return f"/t-{uuid.uuid4().hex}"


@bounded(60)
async def test_tls_and_auth_from_url_options(secure: SecureEtcd) -> None:
    """create/get/watch/lock over TLS with a client certificate, as the root user."""
    url = secure.url(prefix())
    await create_watch_and_lock(url)
    # What etcd stored is behind auth: etcdctl as root sees the key.
    assert secure.cluster.etcdctl("get", "--prefix", "", "--keys-only").strip()


@bounded(60)
async def test_tls_and_auth_from_connect_arguments(secure: SecureEtcd) -> None:
    async with coordkit.connect(
        secure.cluster.url(prefix()),
        tls_ca=secure.pki.ca_file,
        tls_cert=secure.client.cert,
        tls_key=Path(secure.client.key),
        user=secure.user,
        password=secure.password,
    ) as client:
        await client.create("/b", b"2")
        assert (await client.get("/b")) is not None


@bounded(60)
async def test_wrong_password_is_one_clear_error(secure: SecureEtcd) -> None:
    url = secure.url(prefix(), password="not-the-password")
    with pytest.raises(CannotConnectError) as caught:
        async with coordkit.connect(url, connect_timeout=5):
            pass
    assert f"127.0.0.1:{secure.cluster.members[0].client_port}" in str(caught.value)
    assert "authentication failed: wrong user or password" in str(caught.value)
    assert "not-the-password" not in str(caught.value)


@bounded(60)
async def test_no_user_on_an_auth_server_says_so(secure: SecureEtcd) -> None:
    url = secure.url(prefix(), user="", password="")
    with pytest.raises(CannotConnectError, match="give user and password"):
        async with coordkit.connect(url, connect_timeout=5):
            pass


@bounded(60)
async def test_untrusted_server_certificate_is_a_tls_failure(
    secure: SecureEtcd, tmp_path: Path
) -> None:
    """A CA that did not sign the server's certificate: the client refuses the server."""
    stranger = TestPKI(tmp_path / "other-ca")
    url = secure.url(prefix(), tls_ca=str(stranger.ca_file))
    with anyio.fail_after(1 + 5):
        with pytest.raises(CannotConnectError) as caught:
            async with coordkit.connect(url, connect_timeout=1):
                pass
    assert "TLS failure: certificate verify failed" in str(caught.value)


@bounded(60)
async def test_untrusted_client_certificate_is_a_tls_failure(
    secure: SecureEtcd, tmp_path: Path
) -> None:
    """A client certificate from another CA: the server refuses the client."""
    stranger = TestPKI(tmp_path / "other-ca").issue("intruder")
    url = secure.url(prefix(), tls_cert=str(stranger.cert), tls_key=str(stranger.key))
    with pytest.raises(CannotConnectError) as caught:
        async with coordkit.connect(url, connect_timeout=1):
            pass
    assert "TLS failure" in str(caught.value)


@bounded(60)
async def test_plain_connection_to_a_tls_server_fails_within_the_timeout(
    secure: SecureEtcd,
) -> None:
    url = secure.cluster.url(prefix())
    with pytest.raises(CannotConnectError, match="reached, but etcd did not answer"):
        async with coordkit.connect(url, connect_timeout=1):
            pass


def test_grpc_says_nothing_on_stderr(
    anyio_backend: str, etcd_secure_server: SecureEtcd, tmp_path: Path
) -> None:
    """grpc's own log lines about the refused handshake never reach stderr raw."""
    require_asyncio_and_client(anyio_backend)
    stranger = TestPKI(tmp_path / "other-ca")
    url = etcd_secure_server.url(prefix(), tls_ca=str(stranger.ca_file))
    done = connect_in_subprocess(url)
    assert "TLS failure: certificate verify failed" in done.stdout
    assert done.stderr == ""


class TestEtcdConformanceOverTLSAndAuth(CreateRules, TxnRules, WatchRules, SessionRules):
    """The conformance kit's tree, transaction, watch and session rules over TLS,
    client certificates and a user (the whole kit passes too, in 8 minutes on
    a loaded 2-core machine: too long to run twice in every CI run)."""

    @pytest.fixture
    def backend_url(self, etcd_secure_url: str) -> str:
        return etcd_secure_url

    async def compact(self, client: Client, revision: int) -> bool:
        from aetcd import rpc

        channel = client.backend.channel  # type: ignore[attr-defined]
        request = rpc.CompactionRequest(revision=revision, physical=True)
        await channel.call(channel.kv.Compact, request, idempotent=True)
        return True


@bounded(60)
async def test_several_endpoints_over_tls(secure: SecureEtcd) -> None:
    """An address list (the one member twice): certificates still checked, by the first."""
    endpoint = secure.cluster.members[0].endpoint
    url = secure.url(prefix()).replace(endpoint, f"{endpoint},{endpoint}", 1)
    async with coordkit.connect(url) as client:
        await client.create("/c", b"3")


@bounded(60)
async def test_an_expired_token_is_renewed(secure: SecureEtcd) -> None:
    """etcd forgets a token idle for --auth-token-ttl seconds: calls and a new
    watch after that still work (the client authenticates again and retries)."""
    async with coordkit.connect(secure.url(prefix())) as client:
        await client.create("/t", b"1")
        # No event to wait on: the token expires on the server's clock.
        await anyio.sleep(AUTH_TOKEN_TTL + 1.5)
        await client.set("/t", b"2")  # a write: refused for the token, so retried
        await anyio.sleep(AUTH_TOKEN_TTL + 1.5)
        async with client.watch("/t") as events:
            await client.set("/t", b"3")
            event = await anext(events)
            assert event.node is not None and event.node.value == b"3"
