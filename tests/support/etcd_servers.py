"""Real etcd servers for tests: a shared single node, a 3-node cluster, ``etcd_url``.

The servers are ``etcd`` subprocesses (Debian ``etcd-server``) on free loopback
ports with temporary data directories. One single-node server is shared by
the whole run; every test gets its own key prefix (the URL path), so tests
never see each other's keys. The 3-node cluster starts only when a test asks
for it (the failover tests).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from certs import TestPKI, secure_query

from coordkit.backends.raft.node.tls import TLSFiles

AsyncTest = Callable[..., Awaitable[None]]

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
MISSING_ETCD = "etcd is not installed: apt-get install etcd-server etcd-client"
MISSING_CLIENT = "the etcd client library is missing: pip install 'coordkit[etcd]'"
TRIO_SKIP = "etcd backend: grpc.aio (the transport under aetcd) runs on asyncio only"
START_TIMEOUT = 20.0
#: seconds an idle auth token of the secure etcd lives (etcd's --auth-token-ttl).
AUTH_TOKEN_TTL = 2


def bounded(seconds: float) -> Callable[[AsyncTest], AsyncTest]:
    """Decorate an async test to fail with TimeoutError after ``seconds``
    (``anyio.fail_after`` around the whole test, fixtures excluded)."""

    def decorate(test: AsyncTest) -> AsyncTest:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            with anyio.fail_after(seconds):
                await test(*args, **kwargs)

        return run

    return decorate


def data_root() -> str | None:
    """Where etcd data directories go: a tmpfs when there is one (etcd fsyncs
    every write; on tmpfs that costs nothing, on a disk a few ms each, which
    made write-heavy tests several times slower). None: the default temp dir."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return str(shm)
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class EtcdMember:
    """One etcd process; ``start``/``stop`` may be called repeatedly (data persists)."""

    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    initial_cluster: str = ""
    process: subprocess.Popen[bytes] | None = None
    started_once: bool = False
    #: serve clients over TLS with these files (the CA checks client certificates).
    tls: TLSFiles | None = None
    #: the client certificate the fixture itself (health checks, etcdctl) uses.
    client_tls: TLSFiles | None = None

    @property
    def client_url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> None:
        if self.process is not None:
            return
        args = [
            ETCD,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-state", "existing" if self.started_once else "new",
            "--initial-cluster-token", f"coordkit-{self.data_dir.parent.name}",
            # Fast elections keep the failover test short; loopback has no jitter.
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-level", "error",
        ]  # fmt: skip
        if self.tls is not None:
            assert self.tls.ca is not None
            args += [
                "--cert-file", str(self.tls.cert),
                "--key-file", str(self.tls.key),
                "--trusted-ca-file", str(self.tls.ca),
                "--client-cert-auth",
                # Tokens expire after 2 idle seconds (300 by default), so the
                # tests meet expired tokens, which the client must renew.
                "--auth-token-ttl", str(AUTH_TOKEN_TTL),
            ]  # fmt: skip
        log = (self.data_dir.parent / f"{self.name}.log").open("ab")
        with log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.started_once = True

    def stop(self, *, kill: bool = False) -> None:
        """Stop the process: SIGTERM (graceful: a leader hands its leadership
        over first) or, with ``kill``, SIGKILL (a crash: the others elect)."""
        process, self.process = self.process, None
        if process is None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def freeze(self) -> None:
        """SIGSTOP: the process stops answering, its TCP connections stay up."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def healthy(self) -> bool:
        context = None
        if self.client_tls is not None:
            assert self.client_tls.ca is not None
            context = ssl.create_default_context(cafile=str(self.client_tls.ca))
            context.load_cert_chain(str(self.client_tls.cert), str(self.client_tls.key))
        try:
            url = f"{self.client_url}/health"
            with urllib.request.urlopen(url, timeout=1, context=context) as reply:
                return bool(json.load(reply).get("health") == "true")
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not self.healthy():
            if self.process is not None and self.process.poll() is not None:
                log = (self.data_dir.parent / f"{self.name}.log").read_text(errors="replace")
                raise RuntimeError(f"etcd {self.name} exited:\n{log[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd {self.name} not healthy after {START_TIMEOUT}s")
            time.sleep(0.05)


@dataclass
class EtcdCluster:
    """A set of members started together; ``endpoints`` is the ``h:p,h:p`` host list."""

    members: list[EtcdMember] = field(default_factory=list)
    #: etcdctl's TLS and user flags (a secure server's).
    etcdctl_security: list[str] = field(default_factory=list)

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def url(self, prefix: str = "") -> str:
        return f"etcd://{self.endpoints}{prefix}"

    def etcdctl(self, *args: str, timeout: float = 10) -> str:
        """Run ``etcdctl`` (API v3) against every member; return its stdout."""
        done = subprocess.run(
            [ETCDCTL, f"--endpoints={self.endpoints}", *self.etcdctl_security, *args],
            capture_output=True,
            timeout=timeout,
            check=True,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        )
        return done.stdout.decode()

    def leader(self) -> EtcdMember:
        """The member that reports itself leader (``etcdctl endpoint status``)."""
        running = [m for m in self.members if m.process is not None]
        out = subprocess.run(
            [ETCDCTL, f"--endpoints={','.join(m.endpoint for m in running)}",
             "endpoint", "status", "-w", "json"],
            capture_output=True, timeout=10, check=True, env={"ETCDCTL_API": "3"},
        ).stdout  # fmt: skip
        for entry in json.loads(out):
            status = entry["Status"]
            if status["header"]["member_id"] == status["leader"]:
                for member in running:
                    if entry["Endpoint"].endswith(f":{member.client_port}"):
                        return member
        raise RuntimeError("the cluster has no leader")

    def member_named(self, name: str) -> EtcdMember:
        return next(m for m in self.members if m.name == name)

    def running(self) -> list[EtcdMember]:
        return [m for m in self.members if m.process is not None]

    def stop(self) -> None:
        """Stop every member at once (their data is thrown away after)."""
        for member in self.members:
            member.stop(kill=True)


def _start_cluster(size: int, root: Path) -> EtcdCluster:
    members = [EtcdMember(f"m{i}", root / f"m{i}", free_port(), free_port()) for i in range(size)]
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    cluster = EtcdCluster(members)
    try:
        for member in members:
            member.initial_cluster = initial
            member.start()
        for member in members:
            member.wait_healthy()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdCluster]:
    """One single-node etcd shared by the whole run."""
    yield from _running_cluster(1, "coordkit-etcd-")


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A 3-member etcd cluster, started on first use and shared."""
    yield from _running_cluster(3, "coordkit-etcd3-")


@pytest.fixture(scope="module")
def etcd_private_server() -> Iterator[EtcdCluster]:
    """A single-node etcd for one test module alone: nothing else moves its
    revision (the shared server's revision also moves with other tests' leases)."""
    yield from _running_cluster(1, "coordkit-etcd-private-")


def _running_cluster(size: int, prefix: str) -> Iterator[EtcdCluster]:
    """Start ``size`` members in a fresh data directory; stop them when done."""
    if not Path(ETCD).exists():
        pytest.skip(MISSING_ETCD)
    with tempfile.TemporaryDirectory(prefix=prefix, dir=data_root()) as root:
        cluster = _start_cluster(size, Path(root))
        try:
            yield cluster
        finally:
            cluster.stop()


def require_asyncio_and_client(anyio_backend: str) -> None:
    if anyio_backend != "asyncio":
        pytest.skip(TRIO_SKIP)
    if importlib.util.find_spec("aetcd") is None:
        pytest.skip(MISSING_CLIENT)


@pytest.fixture
def etcd_url(anyio_backend: str, request: pytest.FixtureRequest) -> str:
    """An ``etcd://`` URL whose path is a fresh key prefix: isolated from other tests."""
    require_asyncio_and_client(anyio_backend)
    server: EtcdCluster = request.getfixturevalue("etcd_server")
    return server.url(f"/t-{uuid.uuid4().hex}")


@pytest.fixture
def etcd_cluster_url(anyio_backend: str, request: pytest.FixtureRequest) -> str:
    """Like ``etcd_url``, on the 3-member cluster (every member listed in the URL)."""
    require_asyncio_and_client(anyio_backend)
    cluster: EtcdCluster = request.getfixturevalue("etcd_cluster")
    return cluster.url(f"/t-{uuid.uuid4().hex}")


@dataclass
class SecureEtcd:
    """A single etcd serving TLS only, requiring client certificates, with auth enabled.

    ``pki`` made its certificates (``server``, ``client``); :attr:`user` /
    :attr:`password` is etcd's ``root`` user. The client certificate's common
    name is no etcd user, so it grants nothing by itself.
    """

    cluster: EtcdCluster
    pki: TestPKI
    client: TLSFiles
    user: str = "root"
    password: str = "s3cret-root"

    def url(self, prefix: str = "", **extra: str) -> str:
        """An ``etcd://`` URL under ``prefix`` with the TLS files, user and password
        (``extra`` options replace or, with a value of "", drop them)."""
        query = secure_query(self.pki, self.client, self.user, self.password, extra)
        return f"{self.cluster.url(prefix)}?{query}"


@pytest.fixture(scope="session")
def etcd_secure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEtcd]:
    """One etcd with TLS, client certificates and auth (``root`` user) for the whole run."""
    if not Path(ETCD).exists():
        pytest.skip(MISSING_ETCD)
    pki = TestPKI(tmp_path_factory.mktemp("etcd-pki"))
    server_files, client_files = pki.issue("etcd-server"), pki.issue("coordkit-client")
    with tempfile.TemporaryDirectory(prefix="coordkit-etcd-tls-", dir=data_root()) as root:
        member = EtcdMember("s0", Path(root) / "s0", free_port(), free_port())
        member.tls, member.client_tls = server_files, client_files
        cluster = EtcdCluster([member])
        cluster.etcdctl_security = [
            f"--cacert={pki.ca_file}",
            f"--cert={client_files.cert}",
            f"--key={client_files.key}",
        ]
        secure = SecureEtcd(cluster, pki, client_files)
        try:
            member.start()
            member.wait_healthy()
            cluster.etcdctl(
                "user", "add", f"{secure.user}:{secure.password}", "--interactive=false"
            )
            cluster.etcdctl("auth", "enable")
            cluster.etcdctl_security.append(f"--user={secure.user}:{secure.password}")
            yield secure
        finally:
            cluster.stop()


@pytest.fixture
def etcd_secure_url(anyio_backend: str, request: pytest.FixtureRequest) -> str:
    """A fresh key prefix on the secure etcd, with every TLS and auth option in the URL."""
    require_asyncio_and_client(anyio_backend)
    server: SecureEtcd = request.getfixturevalue("etcd_secure_server")
    return server.url(f"/t-{uuid.uuid4().hex}")
