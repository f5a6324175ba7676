"""Real ZooKeeper servers for tests: a standalone server and a 3-server ensemble.

The servers are the Debian ``zookeeper`` package's jars run by ``java`` as
subprocesses on free loopback ports, each with a temporary data directory and
a generated ``zoo.cfg``. ``tickTime`` is short (200 ms) so that sessions with
a TTL of a second or two are accepted and expire quickly. Every test gets its
own chroot (``zookeeper://127.0.0.1:PORT/t-<uuid>``), so one server serves
the whole session without tests seeing each other's nodes.

If ``java`` or the jars are missing the fixtures skip, naming the package.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from certs import TestPKI, secure_query
from cryptography.hazmat.primitives import serialization

from coordkit.backends.raft.node.tls import TLSFiles

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
# The jar's manifest names its dependencies; slf4j-nop keeps the log quiet.
SLF4J_NOP_JAR = Path("/usr/share/java/slf4j-nop.jar")
# The Netty server (the TLS port) also needs Netty's codecs, which the manifest omits.
NETTY_CODEC_JAR = Path("/usr/share/java/netty-codec.jar")
TICK_MS = 200
START_TIMEOUT = 30.0
INSTALL_HINT = "install the Debian packages 'zookeeper' and 'default-jre-headless'"


def _java() -> str:
    java = shutil.which("java")
    if java is None or not ZOOKEEPER_JAR.exists():
        pytest.skip(f"ZooKeeper tests need java and {ZOOKEEPER_JAR}: {INSTALL_HINT}")
    return java


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held open together while chosen)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def four_letter_word(port: int, word: bytes, timeout: float = 1.0) -> str:
    """Send a four-letter word to the server on ``port``; "" if it does not answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(word)
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")
    except OSError:
        return ""


@dataclass
class ZooKeeperServer:
    """One ZooKeeper server process (standalone or a member of an ensemble)."""

    server_id: int
    client_port: int
    data_dir: Path
    config: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> None:
        java = _java()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "myid").write_text(f"{self.server_id}\n")
        cfg = self.data_dir / "zoo.cfg"
        cfg.write_text(self.config)
        log = (self.data_dir / "server.log").open("ab")
        classpath = os.pathsep.join(
            str(p) for p in (ZOOKEEPER_JAR, SLF4J_NOP_JAR, NETTY_CODEC_JAR) if p.exists()
        )
        self.process = subprocess.Popen(
            [
                java,
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Dzookeeper.admin.enableServer=false",
                "-cp",
                classpath,
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                str(cfg),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def mode(self) -> str | None:
        """``standalone``, ``leader`` or ``follower``; None while not serving."""
        for line in four_letter_word(self.client_port, b"srvr").splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.data_dir / "server.log").read_text(errors="replace")[-4000:]
        return ""


def wait_serving(servers: list[ZooKeeperServer], timeout: float = START_TIMEOUT) -> None:
    """Wait until every running server answers ``srvr`` with a serving mode."""
    deadline = time.monotonic() + timeout
    pending = [s for s in servers if s.running]
    while pending:
        pending = [s for s in pending if s.mode() is None]
        for server in pending:
            if not server.running:
                raise RuntimeError(f"ZooKeeper server exited:\n{server.log_tail()}")
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"ZooKeeper did not start:\n{pending[0].log_tail()}")
        time.sleep(0.05)


def _base_config(data_dir: Path, client_port: int) -> str:
    return (
        f"tickTime={TICK_MS}\n"
        f"dataDir={data_dir}\n"
        f"clientPort={client_port}\n"
        "clientPortAddress=127.0.0.1\n"
        # 2 ticks: sessions of 0.4 s and up are accepted as asked.
        f"minSessionTimeout={2 * TICK_MS}\n"
        "maxSessionTimeout=60000\n"
        "maxClientCnxns=0\n"
        "4lw.commands.whitelist=*\n"
        "admin.enableServer=false\n"
        "initLimit=10\n"
        "syncLimit=5\n"
        # Persistent recursive watches need no extra setting on 3.6+.
    )


@dataclass
class ZooKeeperEnsemble:
    """A group of servers: one for standalone, three for the failover tests."""

    servers: list[ZooKeeperServer]

    @property
    def hosts(self) -> str:
        return ",".join(s.address for s in self.servers)

    def url(self, chroot: str | None = None) -> str:
        path = chroot if chroot is not None else f"/t-{uuid.uuid4().hex}"
        return f"zookeeper://{self.hosts}{path}"

    def leader(self) -> ZooKeeperServer:
        """The current leader (or the standalone server), waiting for an election."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for server in self.servers:
                if server.running and server.mode() in ("leader", "standalone"):
                    return server
            time.sleep(0.05)
        raise RuntimeError("no ZooKeeper leader elected")

    def start(self) -> None:
        for server in self.servers:
            if not server.running:
                server.start()
        wait_serving(self.servers)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def make_standalone(root: Path) -> ZooKeeperEnsemble:
    (port,) = free_ports(1)
    data_dir = root / "zk1"
    return ZooKeeperEnsemble([ZooKeeperServer(1, port, data_dir, _base_config(data_dir, port))])


def make_ensemble(root: Path, size: int = 3) -> ZooKeeperEnsemble:
    ports = free_ports(3 * size)
    client_ports, peer_ports = ports[:size], ports[size:]
    members = "".join(
        f"server.{i + 1}=127.0.0.1:{peer_ports[2 * i]}:{peer_ports[2 * i + 1]}\n"
        for i in range(size)
    )
    servers = []
    for i in range(size):
        data_dir = root / f"zk{i + 1}"
        config = _base_config(data_dir, client_ports[i]) + "standaloneEnabled=false\n" + members
        servers.append(ZooKeeperServer(i + 1, client_ports[i], data_dir, config))
    return ZooKeeperEnsemble(servers)


@pytest.fixture(scope="session")
def zookeeper_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperEnsemble]:
    """A standalone ZooKeeper server for the whole test session."""
    _java()
    ensemble = make_standalone(tmp_path_factory.mktemp("zookeeper"))
    try:
        ensemble.start()
        yield ensemble
    finally:
        ensemble.stop()


@pytest.fixture(scope="session")
def zookeeper_ensemble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperEnsemble]:
    """A 3-server ZooKeeper ensemble for the whole session (failover tests restart members)."""
    _java()
    ensemble = make_ensemble(tmp_path_factory.mktemp("zookeeper-ensemble"))
    try:
        ensemble.start()
        ensemble.leader()
        yield ensemble
    finally:
        ensemble.stop()


@pytest.fixture
def zookeeper_url(zookeeper_server: ZooKeeperEnsemble) -> str:
    """An isolated URL: a fresh chroot on the session's standalone server."""
    return zookeeper_server.url()


@dataclass
class SecureZooKeeper:
    """A standalone server with a TLS client port (Netty, client certificates
    required) besides its plain one, which only the fixture's health checks use.

    ``pki`` made the certificates; :attr:`user`/:attr:`password` is the digest
    user that the secure URLs authenticate as (ZooKeeper accepts any digest
    credentials: the ACLs the backend sets on what it creates are what keep
    another user, or a wrong password, out).
    """

    ensemble: ZooKeeperEnsemble
    secure_port: int
    pki: TestPKI
    client: TLSFiles
    user: str = "alice"
    password: str = "s3cret-alice"

    def url(self, chroot: str | None = None, **extra: str) -> str:
        """A ``zookeeper://`` URL of the TLS port with the TLS files, user and password
        (``extra`` options replace or, with a value of "", drop them)."""
        path = chroot if chroot is not None else f"/t-{uuid.uuid4().hex}"
        query = secure_query(self.pki, self.client, self.user, self.password, extra)
        return f"zookeeper://127.0.0.1:{self.secure_port}{path}?{query}"


def _tls_config(server: TLSFiles, secure_port: int, directory: Path) -> str:
    """zoo.cfg lines for a TLS client port with PEM files (ZooKeeper 3.5+)."""
    assert server.ca is not None
    # ZooKeeper wants the key (PKCS#8) and the chain in one file.
    key = serialization.load_pem_private_key(server.key.read_bytes(), password=None)
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_store = directory / "server-keystore.pem"
    key_store.write_bytes(pkcs8 + server.cert.read_bytes())
    return (
        "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n"
        f"secureClientPort={secure_port}\n"
        "secureClientPortAddress=127.0.0.1\n"
        f"ssl.keyStore.location={key_store}\n"
        "ssl.keyStore.type=PEM\n"
        f"ssl.trustStore.location={server.ca}\n"
        "ssl.trustStore.type=PEM\n"
        "ssl.clientAuth=need\n"
    )


@pytest.fixture(scope="session")
def zookeeper_secure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureZooKeeper]:
    """A standalone ZooKeeper with a TLS client port, for the whole test session."""
    _java()
    root = tmp_path_factory.mktemp("zookeeper-tls")
    pki = TestPKI(root / "pki")
    server_files, client_files = pki.issue("zookeeper-server"), pki.issue("coordkit-client")
    port, secure_port = free_ports(2)
    data_dir = root / "zk1"
    data_dir.mkdir(parents=True)
    config = _base_config(data_dir, port) + _tls_config(server_files, secure_port, data_dir)
    ensemble = ZooKeeperEnsemble([ZooKeeperServer(1, port, data_dir, config)])
    try:
        ensemble.start()
        yield SecureZooKeeper(ensemble, secure_port, pki, client_files)
    finally:
        ensemble.stop()


@pytest.fixture
def zookeeper_secure_url(zookeeper_secure_server: SecureZooKeeper) -> str:
    """A fresh chroot on the TLS port, with every TLS and digest-auth option in the URL."""
    return zookeeper_secure_server.url()
