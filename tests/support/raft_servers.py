"""Real Raft clusters for tests: ``coordkit serve`` processes, and the embedded cluster.

``raft_url`` is a fresh chroot on a shared 3-node cluster of real processes
(on free loopback ports, data on tmpfs when there is one), started once per
run; ``raft_embedded_url`` a fresh chroot on the process's embedded cluster.
:class:`RaftProcessCluster` is what fault tests use to kill, pause, restart
and wipe members.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

import coordkit

TOKEN_ENV = "COORDKIT_CLUSTER_TOKEN"
START_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child between fork and exec: SIGKILL it when the test process dies.

    Linux delivers the signal when the *thread* that forked the child ends, so
    servers are forked from one long-lived thread (:data:`_SPAWNER`).
    If the parent is already gone (it died before ``prctl`` ran), exit at once.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(126)
    if os.getppid() == 1:
        os._exit(126)


#: Every server is forked from this one thread, alive until the test process
#: exits: PR_SET_PDEATHSIG fires when the forking *thread* ends, so a server
#: started from a short-lived worker thread (``anyio.to_thread``) would die
#: with it.
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="spawner")


def popen_dying_with_parent(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen`` of a server that dies with this process (:func:`die_with_parent`).

    Callable from any thread: the fork happens on the long-lived spawner thread.
    """
    return _SPAWNER.submit(subprocess.Popen, args, preexec_fn=die_with_parent, **kwargs).result()


def data_root() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RaftMember:
    name: str
    port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class RaftProcessCluster:
    """N ``coordkit serve`` processes; every method blocks (call it from sync code or a thread).

    Each server dies with the test process (``PR_SET_PDEATHSIG``, see
    :func:`popen_dying_with_parent`), so an interrupted run leaves no orphan.
    """

    root: Path
    members: dict[str, RaftMember] = field(default_factory=dict)
    cluster_id: str = ""
    token: str = ""
    extra_args: tuple[str, ...] = ()
    #: how the test reaches the members when they speak TLS (None: plain TCP).
    client_ssl: ssl.SSLContext | None = None

    @classmethod
    def create(
        cls,
        size: int = 3,
        *,
        extra_args: tuple[str, ...] = (),
        client_ssl: ssl.SSLContext | None = None,
    ) -> RaftProcessCluster:
        root = Path(tempfile.mkdtemp(prefix="coordkit-raft-", dir=data_root()))
        cluster = cls(root, cluster_id=f"test-{uuid.uuid4().hex[:8]}", token=uuid.uuid4().hex)
        cluster.extra_args = extra_args
        cluster.client_ssl = client_ssl
        for i in range(1, size + 1):
            name = f"n{i}"
            cluster.members[name] = RaftMember(name, free_port(), root / name, root / f"{name}.log")
        return cluster

    @property
    def peers(self) -> str:
        return ",".join(f"{m.name}={m.address}" for m in self.members.values())

    @property
    def url(self) -> str:
        return "raft://" + ",".join(m.address for m in self.members.values())

    def start(self, name: str | None = None, *, join: bool = False) -> None:
        for member in [self.members[name]] if name else list(self.members.values()):
            if member.running:
                continue
            args = [
                sys.executable, "-m", "coordkit.cli", "serve",
                "--name", member.name,
                "--data-dir", str(member.data_dir),
                "--listen", member.address,
                "--peers", self.peers,
                "--cluster-id", self.cluster_id,
                "--allow-faults",
                *(["--join"] if join else []),
                *self.extra_args,
            ]  # fmt: skip
            env = {**os.environ, TOKEN_ENV: self.token}
            with member.log_path.open("ab") as log:
                member.process = popen_dying_with_parent(
                    args, stdout=log, stderr=subprocess.STDOUT, env=env
                )

    def add_member(self, name: str) -> RaftMember:
        member = RaftMember(name, free_port(), self.root / name, self.root / f"{name}.log")
        self.members[name] = member
        return member

    def stop(self, name: str, *, kill: bool = False) -> None:
        member = self.members[name]
        process, member.process = member.process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # a paused process cannot handle SIGTERM
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def pause(self, name: str) -> None:
        process = self.members[name].process
        assert process is not None
        os.kill(process.pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        process = self.members[name].process
        assert process is not None
        os.kill(process.pid, signal.SIGCONT)

    def wipe(self, name: str) -> None:
        self.stop(name, kill=True)
        shutil.rmtree(self.members[name].data_dir, ignore_errors=True)

    def close(self) -> None:
        for name in list(self.members):
            self.stop(name)
        shutil.rmtree(self.root, ignore_errors=True)

    def logs(self) -> str:
        out = []
        for member in self.members.values():
            if member.log_path.exists():
                out.append(f"--- {member.name} ---\n{member.log_path.read_text()[-4000:]}")
        return "\n".join(out)


async def member_status(address: str, ssl_context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """One member's own status (or an ``error`` entry if unreachable)."""
    from coordkit.backends.raft.client.dialer import Dialer
    from coordkit.backends.raft.wire import Address
    from coordkit.retry import RetryPolicy

    dialer = Dialer(
        [Address.parse(address)],
        ssl_context=ssl_context,
        connect_timeout=2.0,
        retry=RetryPolicy(),
    )
    try:
        return await dialer.status_of(Address.parse(address))
    except coordkit.CoordkitError as exc:
        return {"address": address, "error": str(exc)}


async def node_request(address: str, header: dict[str, Any]) -> dict[str, Any]:
    """One request to one node itself (not redirected to the leader): its answer's header,
    with the payload under ``payload``; an answer other than ``ok`` fails the test."""
    from coordkit.backends.raft.wire import Address, Hello, connect

    stream, _ = await connect(Address.parse(address), Hello("client", None), timeout=5.0)
    try:
        await stream.send({"t": "q", "i": 1, **header})
        reply = await stream.receive()
    finally:
        await stream.aclose()
    assert reply.header.get("s") == "ok", reply.header
    return dict(reply.header) | {"payload": reply.payload}


async def until(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 30.0, interval: float = 0.02
) -> None:
    """Return once ``check()`` is true. The state it checks lives in other processes,
    which offer no event to wait on: it is polled (TimeoutError after ``timeout``)."""
    with anyio.fail_after(timeout):
        while not await check():  # noqa: ASYNC110 - another process's state: polled
            await anyio.sleep(interval)


async def wait_for_leader(cluster: RaftProcessCluster, timeout: float = START_TIMEOUT) -> str:
    """The name of the leader once the running members agree on one."""
    with anyio.fail_after(timeout):
        while True:
            statuses = [
                await member_status(m.address, cluster.client_ssl)
                for m in cluster.members.values()
                if m.running
            ]
            leaders = {s.get("leader") for s in statuses if "error" not in s}
            roles = [s for s in statuses if s.get("role") == "leader"]
            if len(leaders) == 1 and None not in leaders and len(roles) == 1:
                return str(roles[0]["node"])
            await anyio.sleep(0.05)


def started_cluster(size: int = 3, **kwargs: Any) -> RaftProcessCluster:
    cluster = RaftProcessCluster.create(size, **kwargs)
    cluster.start()
    try:
        anyio.run(wait_for_leader, cluster)
    except BaseException:
        logs = cluster.logs()
        cluster.close()
        raise RuntimeError(f"the raft cluster did not elect a leader:\n{logs}") from None
    return cluster


@contextmanager
def running_cluster(size: int = 3, **kwargs: Any) -> Iterator[RaftProcessCluster]:
    """A started cluster (see :func:`started_cluster`), closed at the end; its
    servers' logs are printed then, which pytest shows when the test failed."""
    cluster = started_cluster(size, **kwargs)
    try:
        yield cluster
    finally:
        print(cluster.logs())
        cluster.close()


@pytest.fixture(scope="session")
def raft_cluster() -> Iterator[RaftProcessCluster]:
    cluster = started_cluster()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def raft_url(request: pytest.FixtureRequest) -> str:
    cluster: RaftProcessCluster = request.getfixturevalue("raft_cluster")
    return f"{cluster.url}/test-{uuid.uuid4().hex}"


@pytest.fixture
def raft_embedded_url() -> str:
    return f"raft+embedded://tests/test-{uuid.uuid4().hex}"
