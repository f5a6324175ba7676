"""Connecting fails fast and says why, on every backend that connects to servers.

For etcd, ZooKeeper and raft: an endpoint with nothing listening (a free
port), a name that does not resolve (``nosuchhost.invalid``) and an endpoint
that accepts TCP connections but never answers (a listening socket nobody
accepts on) each make entering the client fail within ``connect_timeout``
plus a small margin, with one :class:`CannotConnectError` naming every
endpoint tried and its cause. Every backend refuses an unknown URL option,
naming it and the valid ones.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import anyio
import pytest
from connect_report import connect_in_subprocess
from etcd_servers import TRIO_SKIP, free_port

import coordkit
from coordkit import CannotConnectError, ConfigurationError

pytestmark = pytest.mark.anyio

#: what each backend needs of the event loop: etcd's grpc.aio runs on asyncio only.
SCHEMES = ["etcd", "zookeeper", "raft"]
CONNECT_TIMEOUT = 1.0
#: past the connect timeout: probing the endpoints (<= 1 s) and stopping the
#: client library, on a loaded 2-core machine.
MARGIN = 3.0


def needs_loop(scheme: str, anyio_backend: str) -> None:
    if scheme == "etcd" and anyio_backend != "asyncio":
        pytest.skip(TRIO_SKIP)


@pytest.fixture
def silent_endpoint() -> Iterator[int]:
    """A port whose socket listens but never accepts: TCP connects, nothing answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


async def fails_fast(url: str, **options: object) -> CannotConnectError:
    """Enter a client of ``url``; the CannotConnectError it raises, within the bound."""
    client = coordkit.connect(url, **options)  # imports the client library: not timed
    started = time.monotonic()
    with pytest.raises(CannotConnectError) as caught:
        async with client:
            pass
    elapsed = time.monotonic() - started
    timeout = float(str(options.get("connect_timeout", CONNECT_TIMEOUT)))
    assert elapsed < timeout + MARGIN, f"took {elapsed:.1f} s: {caught.value}"
    return caught.value


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_nothing_listening(scheme: str, anyio_backend: str) -> None:
    needs_loop(scheme, anyio_backend)
    port = free_port()
    error = await fails_fast(f"{scheme}://127.0.0.1:{port}", connect_timeout=CONNECT_TIMEOUT)
    assert error.causes == {f"127.0.0.1:{port}": "connection refused"}
    assert f"127.0.0.1:{port} (connection refused)" in str(error)
    assert f"within {CONNECT_TIMEOUT:g} s" in str(error)


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_name_not_resolved_and_each_endpoint_named(scheme: str, anyio_backend: str) -> None:
    """Two endpoints (etcd takes one name only), each with its own cause."""
    needs_loop(scheme, anyio_backend)
    port = free_port()
    hosts = (
        "nosuchhost.invalid:2379"
        if scheme == "etcd"
        else f"nosuchhost.invalid:2181,127.0.0.1:{port}"
    )
    error = await fails_fast(f"{scheme}://{hosts}?connect_timeout={CONNECT_TIMEOUT}")
    assert error.causes[hosts.split(",")[0]] == "name not resolved"
    if scheme != "etcd":
        assert error.causes[f"127.0.0.1:{port}"] == "connection refused"


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_silent_endpoint_times_out(
    scheme: str, anyio_backend: str, silent_endpoint: int
) -> None:
    needs_loop(scheme, anyio_backend)
    error = await fails_fast(f"{scheme}://127.0.0.1:{silent_endpoint}", connect_timeout=1.5)
    (cause,) = error.causes.values()
    assert cause in ("timed out", f"reached, but {_server(scheme)} did not answer within 1.5 s")
    assert f"127.0.0.1:{silent_endpoint}" in str(error)


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_connect_timeout_from_url_and_argument(scheme: str, anyio_backend: str) -> None:
    """The keyword argument wins over the URL's option."""
    needs_loop(scheme, anyio_backend)
    url = f"{scheme}://127.0.0.1:{free_port()}?connect_timeout=30"
    error = await fails_fast(url, connect_timeout=0.5)
    assert "within 0.5 s" in str(error)


def _server(scheme: str) -> str:
    return {"etcd": "etcd", "zookeeper": "ZooKeeper", "raft": "raft"}[scheme]


@pytest.mark.parametrize(
    ("url", "valid"),
    [
        ("memory://?conect_timeout=1", "connect_timeout, retry_initial_delay"),
        ("memory://?tls_ca=/ca.pem", "session_ttl, timeout"),
        ("etcd://127.0.0.1:2379?conect_timeout=1", "tls_cert, tls_key, user"),
        ("zookeeper://127.0.0.1:2181?conect_timeout=1", "tls_cert, tls_key, user"),
        ("raft://127.0.0.1:7001?conect_timeout=1", "timeout, tls_ca, tls_cert, tls_key"),
        ("raft+embedded://?conect_timeout=1", "connect_timeout, data_dir, nodes"),
    ],
)
def test_unknown_option_is_named_with_the_valid_ones(url: str, valid: str) -> None:
    option = url.split("?")[1].split("=")[0]
    with pytest.raises(ConfigurationError) as caught:
        coordkit.connect(url)
    message = str(caught.value)
    assert f"unknown option {option!r}" in message
    assert valid in message


def test_a_password_is_never_shown() -> None:
    with pytest.raises(ConfigurationError) as caught:
        coordkit.connect("memory://?user=u&password=hunter2")
    assert "hunter2" not in str(caught.value)
    assert "password=%2A%2A%2A" in str(caught.value) or "password=***" in str(caught.value)


@pytest.mark.parametrize("url", ["?tls_cert=/c.pem", "?user=u"])
def test_options_that_go_together(url: str) -> None:
    with pytest.raises(ConfigurationError, match="go together"):
        coordkit.connect(f"zookeeper://127.0.0.1:2181{url}")


@pytest.mark.parametrize("scheme", ["etcd", "zookeeper"])
def test_client_libraries_say_nothing_on_stderr(scheme: str) -> None:
    """grpc's and kazoo's own messages about the failed attempts never reach
    stderr raw: the one error says it all (a process without logging set up)."""
    port = free_port()
    hosts = f"127.0.0.1:{port}" if scheme == "etcd" else f"nosuchhost.invalid:1,127.0.0.1:{port}"
    done = connect_in_subprocess(f"{scheme}://{hosts}")
    assert "connection refused" in done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_cancelled_connect_ends_at_once_and_leaves_nothing_open(
    scheme: str, anyio_backend: str, silent_endpoint: int
) -> None:
    """Cancelling the open of a server that never answers ends it promptly; no
    socket or thread is left behind (an unclosed socket fails the run: warnings
    are errors)."""
    needs_loop(scheme, anyio_backend)
    client = coordkit.connect(f"{scheme}://127.0.0.1:{silent_endpoint}", connect_timeout=60)
    started = time.monotonic()
    with anyio.move_on_after(0.5) as scope:
        async with client:
            pass
    assert scope.cancelled_caught
    assert time.monotonic() - started < 0.5 + MARGIN
    assert client.closed
