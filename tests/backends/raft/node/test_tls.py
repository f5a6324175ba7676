"""TLS on the node's port: mutual TLS between peers, clients verified when they show a
certificate, and one clear reason for every certificate that does not verify."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest
from anyio.streams.tls import TLSAttribute
from certs import TestPKI
from peer_nodes import CLUSTER, TOKEN, append, records_about, start_cluster, until_logged

from coordkit.backends.raft.node.tls import TLSFiles, client_context, server_context
from coordkit.backends.raft.wire import HandshakeError, HandshakeRefused, Hello, connect
from coordkit.errors import ConfigurationError

pytestmark = pytest.mark.anyio


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    return TestPKI(tmp_path / "ca")


@pytest.fixture
def stranger(tmp_path: Path) -> TestPKI:
    """Another CA: its certificates are not trusted by the cluster."""
    return TestPKI(tmp_path / "other-ca")


async def test_peers_exchange_messages_over_mutual_tls(
    pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    files = pki.issue("node")
    with anyio.fail_after(20):
        async with start_cluster(
            ["n1", "n2", "n3"], server_tls=files.server(), client_tls=files.client()
        ) as nodes:
            for frm in nodes:
                for to in nodes:
                    if frm != to:
                        nodes[frm].transport.send(append(frm, to, 1))
            for node in nodes.values():
                await node.inbox.until(lambda ms: len(ms) == 2)
            assert nodes["n3"].accepted == {"n1": 1, "n2": 1}
            # A client that trusts the CA gets in without a certificate of its own.
            stream, welcome = await connect(
                nodes["n1"].address,
                Hello("client", CLUSTER),
                ssl_context=client_context(pki.ca_file),
            )
            assert welcome.node == "n1"
            assert stream.stream.extra(TLSAttribute.cipher) is not None
            await stream.aclose()
    assert not records_about(caplog.records, "")


async def test_a_client_with_an_untrusted_certificate_is_refused_with_the_reason(
    pki: TestPKI, stranger: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    files = pki.issue("node")
    mallory = stranger.issue("mallory")
    context = client_context(pki.ca_file, cert=mallory.cert, key=mallory.key)
    with anyio.fail_after(20):
        async with start_cluster(
            ["n1", "n2"], server_tls=files.server(), client_tls=files.client()
        ) as nodes:
            with pytest.raises(HandshakeError, match="closed the connection during TLS"):
                await connect(nodes["n2"].address, Hello("client", CLUSTER), ssl_context=context)
            # The reason is in the node's log (TLS sends no reason the client could read).
            lines = records_about(caplog.records, "TLS handshake failed")
            assert len(lines) == 1
            assert "certificate verify failed" in lines[0].getMessage()
            # The node goes on: its peer link works and a trusted client gets in.
            nodes["n1"].transport.send(append("n1", "n2", 1))
            await nodes["n2"].inbox.until(lambda ms: len(ms) == 1)
            stream, _ = await connect(
                nodes["n2"].address, Hello("client", CLUSTER), ssl_context=files.client()
            )
            await stream.aclose()


async def test_a_peer_must_present_a_certificate(pki: TestPKI) -> None:
    files = pki.issue("node")
    with anyio.fail_after(20):
        async with start_cluster(
            ["n1", "n2"], server_tls=files.server(), client_tls=files.client()
        ) as nodes:
            nodes["n2"].transport.set_peers({"n0": nodes["n1"].address, "n1": nodes["n1"].address})
            with pytest.raises(HandshakeRefused, match="must present a TLS certificate"):
                await connect(
                    nodes["n2"].address,
                    Hello("peer", CLUSTER, "n0", TOKEN),
                    ssl_context=client_context(pki.ca_file),
                )


async def test_a_server_certificate_from_another_ca_is_not_trusted(
    pki: TestPKI, stranger: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    files = pki.issue("node")
    with anyio.fail_after(20):
        async with start_cluster(["n1"], server_tls=files.server()) as nodes:
            with pytest.raises(HandshakeError, match="certificate verify failed"):
                await connect(
                    nodes["n1"].address,
                    Hello("client", CLUSTER),
                    ssl_context=client_context(stranger.ca_file),
                )
            # The client cut the handshake short: the server cannot know why, and says
            # only that, at INFO (a warning would blame the wrong side).
            await until_logged(caplog.records, "closed before its hello")
            assert not records_about(caplog.records, "")


async def test_plain_tcp_to_a_tls_port_is_one_log_line(
    pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    files = pki.issue("node")
    with anyio.fail_after(20):
        async with start_cluster(["n1"], server_tls=files.server()) as nodes:
            with pytest.raises(HandshakeError):
                await connect(nodes["n1"].address, Hello("client", CLUSTER))
            await until_logged(caplog.records, "TLS handshake failed")
            assert len(records_about(caplog.records, "")) == 1


async def test_require_client_cert_refuses_a_client_without_one(
    pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    files = pki.issue("node")
    strict = files.server(require_client_cert=True)
    with anyio.fail_after(20):
        async with start_cluster(["n1"], server_tls=strict) as nodes:
            with pytest.raises(HandshakeError, match="closed the connection during TLS"):
                await connect(
                    nodes["n1"].address,
                    Hello("client", CLUSTER),
                    ssl_context=client_context(pki.ca_file),
                )
            await until_logged(caplog.records, "peer did not return a certificate")
            stream, _ = await connect(
                nodes["n1"].address, Hello("client", CLUSTER), ssl_context=files.client()
            )
            await stream.aclose()


def test_unusable_files_are_one_clear_configuration_error(
    pki: TestPKI, stranger: TestPKI, tmp_path: Path
) -> None:
    mine, theirs = pki.issue("node"), stranger.issue("other")
    missing = tmp_path / "missing.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigurationError, match=r"certificate file .*missing.pem does not exist"):
        server_context(missing, mine.key)
    with pytest.raises(ConfigurationError, match=f"cannot use certificate {mine.cert} with key"):
        server_context(mine.cert, theirs.key)  # a key that is not the certificate's
    with pytest.raises(ConfigurationError, match=r"cannot use CA file .*garbage.pem"):
        server_context(mine.cert, mine.key, garbage)
    with pytest.raises(ConfigurationError, match=r"CA file .*missing.pem does not exist"):
        client_context(missing)
    with pytest.raises(ConfigurationError, match="needs a CA"):
        server_context(mine.cert, mine.key, require_client_cert=True)
    with pytest.raises(ConfigurationError, match="needs its key"):
        client_context(pki.ca_file, cert=mine.cert)
    assert isinstance(
        TLSFiles(mine.cert, mine.key).server(), type(server_context(mine.cert, mine.key))
    )
