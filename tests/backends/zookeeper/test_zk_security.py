"""TLS and digest authentication against a real ZooKeeper (Netty TLS port, client
certificates required), on asyncio and trio.

The server (``zookeeper_secure_server``) serves a ``secureClientPort`` with PEM
files made at test time (tests/support/certs.py). With ``user``/``password``
the backend authenticates with the ``digest`` scheme and gives each node it
creates an ACL for that user alone, so another user, a wrong password or no
user at all cannot use its chroot: one :class:`CannotConnectError` says so.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import pytest
from certs import TestPKI
from kazoo.client import KazooClient
from kazoo.security import make_digest_acl_credential
from recipe_support import create_watch_and_lock
from zookeeper_servers import SecureZooKeeper

import coordkit
from coordkit import CannotConnectError
from coordkit.testing import CreateRules, SessionRules, TxnRules, WatchRules

pytestmark = [pytest.mark.anyio, pytest.mark.zookeeper]


def chroot() -> str:
    return f"/secure-{uuid.uuid4().hex}"


async def test_tls_and_digest_auth_from_url_options(
    zookeeper_secure_server: SecureZooKeeper,
) -> None:
    """create/get/watch/lock over TLS with a client certificate, as a digest user."""
    secure = zookeeper_secure_server
    root = chroot()
    url = secure.url(root)
    with anyio.fail_after(60):
        await create_watch_and_lock(url)
    # What the backend created carries an ACL for its user alone.
    acls = await anyio.to_thread.run_sync(_acls_of, secure, f"{root}/a")
    digest = make_digest_acl_credential(secure.user, secure.password)
    assert [(acl.id.scheme, acl.id.id, acl.perms) for acl in acls] == [("digest", digest, 31)]


def _acls_of(secure: SecureZooKeeper, path: str) -> list[object]:
    zk = KazooClient(
        hosts=f"127.0.0.1:{secure.secure_port}",
        use_ssl=True,
        ca=str(secure.pki.ca_file),
        certfile=str(secure.client.cert),
        keyfile=str(secure.client.key),
        auth_data=[("digest", f"{secure.user}:{secure.password}")],
    )
    zk.start(20)
    try:
        acls, _ = zk.get_acls(path)
        return list(acls)
    finally:
        zk.stop()
        zk.close()


async def test_tls_and_auth_from_connect_arguments(
    zookeeper_secure_server: SecureZooKeeper,
) -> None:
    secure = zookeeper_secure_server
    with anyio.fail_after(60):
        async with coordkit.connect(
            f"zookeeper://127.0.0.1:{secure.secure_port}{chroot()}",
            tls_ca=secure.pki.ca_file,
            tls_cert=secure.client.cert,
            tls_key=Path(secure.client.key),
            user=secure.user,
            password=secure.password,
        ) as client:
            await client.create("/b", b"2")
            assert (await client.get("/b")) is not None


@pytest.mark.parametrize(
    ("options", "cause"),
    [
        ({"password": "not-the-password"}, "authentication failed: 'alice' may not use"),
        ({"user": "mallory", "password": "x"}, "authentication failed: 'mallory' may not use"),
        ({"user": "", "password": ""}, "no user given"),
    ],
)
async def test_another_user_or_a_wrong_password_is_one_clear_error(
    zookeeper_secure_server: SecureZooKeeper, options: dict[str, str], cause: str
) -> None:
    secure = zookeeper_secure_server
    root = chroot()
    with anyio.fail_after(60):
        async with coordkit.connect(secure.url(root)) as owner:
            await owner.create("/private", b"")
        with pytest.raises(CannotConnectError) as caught:
            async with coordkit.connect(secure.url(root, **options)):
                pass
    assert cause in str(caught.value)
    assert f"127.0.0.1:{secure.secure_port}" in str(caught.value)
    assert "not-the-password" not in str(caught.value)


async def test_untrusted_server_certificate_is_a_tls_failure(
    zookeeper_secure_server: SecureZooKeeper, tmp_path: Path
) -> None:
    secure = zookeeper_secure_server
    stranger = TestPKI(tmp_path / "other-ca")
    url = secure.url(chroot(), tls_ca=str(stranger.ca_file))
    with anyio.fail_after(1 + 5), pytest.raises(CannotConnectError) as caught:
        async with coordkit.connect(url, connect_timeout=1):
            pass
    assert "TLS failure: certificate verify failed" in str(caught.value)


async def test_untrusted_client_certificate_is_a_tls_failure(
    zookeeper_secure_server: SecureZooKeeper, tmp_path: Path
) -> None:
    secure = zookeeper_secure_server
    intruder = TestPKI(tmp_path / "other-ca").issue("intruder")
    url = secure.url(chroot(), tls_cert=str(intruder.cert), tls_key=str(intruder.key))
    with anyio.fail_after(1 + 5), pytest.raises(CannotConnectError) as caught:
        async with coordkit.connect(url, connect_timeout=1):
            pass
    assert "TLS failure" in str(caught.value)


class TestZooKeeperConformanceOverTLSAndAuth(CreateRules, TxnRules, WatchRules, SessionRules):
    """The conformance kit's tree, transaction, watch and session rules over TLS,
    client certificates and a digest user (every node under an ACL)."""

    short_session_ttl = 1.0  # the test server's tickTime is 200 ms

    @pytest.fixture
    def backend_url(self, zookeeper_secure_url: str) -> str:
        return zookeeper_secure_url
