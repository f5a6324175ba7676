"""Local servers for the benchmarks, started as the test suite starts them.

* :func:`started_servers` / :func:`backend_urls`: one etcd and one ZooKeeper
  server (the recipe benchmarks);
* :func:`started_clusters`: 3-member clusters of real processes, each behind a
  :class:`Cluster` that can SIGKILL its leader and heal again (writes.py,
  service.py, scale.py): ``coordkit serve`` processes, etcd members and
  ZooKeeper servers.

All on free loopback ports, data under ``data_dir``, stopped on exit, using
``tests/support/{etcd,zookeeper,raft}_servers.py`` (Debian's ``etcd-server``,
and ``zookeeper`` with ``java``). What is not installed is skipped with a note.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

SUPPORT = Path(__file__).resolve().parents[1] / "tests" / "support"


@contextmanager
def started_servers(wanted: list[str], notes: list[str], data_dir: str) -> Iterator[dict[str, str]]:
    """Start a local etcd / ZooKeeper for each wanted one that is installed; yield URLs.

    Both keep their data under ``data_dir``: both fsync their logs, so the
    storage under it matters as much as the engine.
    """
    urls: dict[str, str] = {}
    sys.path.insert(0, str(SUPPORT))
    with tempfile.TemporaryDirectory(prefix="coordkit-bench-", dir=data_dir) as root:
        stops: list[Callable[[], None]] = []
        try:
            if "etcd" in wanted:
                import etcd_servers

                if not Path(etcd_servers.ETCD).exists():
                    notes.append(f"etcd skipped: {etcd_servers.MISSING_ETCD}")
                elif not _importable("aetcd"):
                    notes.append(f"etcd skipped: {etcd_servers.MISSING_CLIENT}")
                else:
                    (Path(root) / "etcd").mkdir()
                    cluster = etcd_servers._start_cluster(1, Path(root) / "etcd")
                    stops.append(cluster.stop)
                    urls["etcd"] = cluster.url("/bench")
            if "zookeeper" in wanted:
                import zookeeper_servers as zk

                if shutil.which("java") is None or not zk.ZOOKEEPER_JAR.exists():
                    notes.append(f"zookeeper skipped: {zk.INSTALL_HINT}")
                elif not _importable("kazoo"):
                    notes.append("zookeeper skipped: pip install 'coordkit[zookeeper]'")
                else:
                    ensemble = zk.make_standalone(Path(root))
                    stops.append(ensemble.stop)
                    ensemble.start()
                    urls["zookeeper"] = ensemble.url("/bench")
            if urls:
                notes.append(f"servers started here keep their data in {data_dir}")
            yield urls
        finally:
            for stop in reversed(stops):
                stop()


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


BACKENDS = ("memory", "etcd", "zookeeper", "raft")


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backends``, ``--etcd/--zookeeper/--raft`` URLs, ``--runs`` and ``--data-dir``."""
    parser.add_argument(
        "--backends",
        default="memory,etcd,zookeeper",
        help="comma-separated, from memory, etcd, zookeeper, raft (raft needs --raft URL)",
    )
    parser.add_argument("--etcd", default=os.environ.get("COORDKIT_BENCH_ETCD"))
    parser.add_argument("--zookeeper", default=os.environ.get("COORDKIT_BENCH_ZOOKEEPER"))
    parser.add_argument("--raft", default=os.environ.get("COORDKIT_BENCH_RAFT"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--data-dir",
        default=tempfile.gettempdir(),
        help="where started servers keep their data (default: the temp dir, on disk as in "
        "production; a tmpfs such as /dev/shm makes their fsyncs free)",
    )


@contextmanager
def backend_urls(
    parser: argparse.ArgumentParser, args: argparse.Namespace, notes: list[str]
) -> Iterator[dict[str, str]]:
    """``{backend: URL}`` for the run, memory first, starting the servers not given by URL."""
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)  # sessions killed on purpose
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(wanted) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    given = {"etcd": args.etcd, "zookeeper": args.zookeeper, "raft": args.raft}
    if "raft" in wanted and not args.raft:
        notes.append("raft skipped: give --raft URL (the script does not start a Raft cluster)")
    to_start = [b for b in ("etcd", "zookeeper") if b in wanted and not given[b]]
    with started_servers(to_start, notes, args.data_dir) as started:
        urls = {"memory": "memory://bench"}  # always: the reference for ratios
        for name in ("raft", "etcd", "zookeeper"):
            url = given[name] or started.get(name)
            if name in wanted and url:
                urls[name] = url
        yield urls


# -- three-member clusters (writes.py, service.py, scale.py) ------------------------------


#: how long a server may take to start on a loaded machine
START_TIMEOUT = 120.0


def _wait_until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` (another process's state, no event to wait on) until true."""
    deadline = time.monotonic() + START_TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not {what} after {START_TIMEOUT:g} s")
        time.sleep(0.05)


@dataclass
class Killed:
    """A member SIGKILLed by :meth:`Cluster.kill_leader`, and when (``time.perf_counter``)."""

    name: str
    at: float


class Cluster:
    """A running 3-member cluster of real server processes, as a benchmark needs it.

    ``url(prefix)`` lists every member; ``pids()`` the server processes (for
    their CPU time); ``kill_leader()`` SIGKILLs the member leading it and
    ``heal()`` restarts it and waits until the cluster is whole again.
    Every method blocks: call it from sync code or a worker thread.
    """

    name = ""

    def url(self, prefix: str) -> str:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def kill_leader(self) -> Killed:
        raise NotImplementedError

    def heal(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class EtcdCluster(Cluster):
    name = "etcd"

    def __init__(self, root: Path) -> None:
        import etcd_servers

        members = [
            etcd_servers.EtcdMember(
                f"m{i}", root / f"m{i}", etcd_servers.free_port(), etcd_servers.free_port()
            )
            for i in range(3)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
        self._cluster = etcd_servers.EtcdCluster(members)
        self._killed: list[Any] = []
        try:
            for member in members:
                member.initial_cluster = initial
                member.start()
            for member in members:
                _wait_until(member.healthy, f"etcd {member.name} healthy")
        except BaseException:
            self._cluster.stop()
            raise

    def url(self, prefix: str) -> str:
        return str(self._cluster.url(prefix))

    def pids(self) -> list[int]:
        return [m.process.pid for m in self._cluster.members if m.process is not None]

    def kill_leader(self) -> Killed:
        leader = self._cluster.leader()
        self._killed.append(leader)
        assert leader.process is not None
        at = time.perf_counter()
        leader.process.send_signal(signal.SIGKILL)
        leader.stop(kill=True)  # reaps it
        return Killed(leader.name, at)

    def heal(self) -> None:
        while self._killed:
            member = self._killed.pop()
            member.start()
            _wait_until(member.healthy, f"etcd {member.name} healthy")
        self._cluster.leader()  # raises while there is none

    def stop(self) -> None:
        self._cluster.stop()


class ZooKeeperCluster(Cluster):
    name = "zookeeper"

    def __init__(self, root: Path) -> None:
        import zookeeper_servers as zk

        self._ensemble = zk.make_ensemble(root)
        self._killed: list[Any] = []
        try:
            for server in self._ensemble.servers:
                server.start()
            self._wait_serving()
        except BaseException:
            self._ensemble.stop()
            raise

    def _wait_serving(self) -> None:
        servers = [s for s in self._ensemble.servers if s.running]
        _wait_until(lambda: all(s.mode() for s in servers), "ZooKeeper serving")
        _wait_until(lambda: any(s.mode() == "leader" for s in servers), "a ZooKeeper leader")

    def url(self, prefix: str) -> str:
        return str(self._ensemble.url(prefix))

    def pids(self) -> list[int]:
        return [s.process.pid for s in self._ensemble.servers if s.process is not None]

    def kill_leader(self) -> Killed:
        leader = self._ensemble.leader()
        assert leader.process is not None
        self._killed.append(leader)
        at = time.perf_counter()
        leader.process.send_signal(signal.SIGKILL)
        leader.process.wait()
        leader.process = None
        return Killed(f"zk{leader.server_id}", at)

    def heal(self) -> None:
        while self._killed:
            self._killed.pop().start()
        self._wait_serving()

    def stop(self) -> None:
        self._ensemble.stop()


class RaftCluster(Cluster):
    """``coordkit serve`` processes with their data on disk (fsync on, as in production)."""

    name = "raft"

    def __init__(self, root: Path, size: int = 3, extra_args: tuple[str, ...] = ()) -> None:
        import raft_servers

        self._support = raft_servers
        cluster = raft_servers.RaftProcessCluster(
            root, cluster_id=f"bench-{uuid.uuid4().hex[:8]}", token=uuid.uuid4().hex
        )
        cluster.extra_args = extra_args
        for i in range(1, size + 1):
            name = f"n{i}"
            cluster.members[name] = raft_servers.RaftMember(
                name, raft_servers.free_port(), root / name, root / f"{name}.log"
            )
        self.processes = cluster
        self._killed: list[str] = []
        cluster.start()
        try:
            self.leader()
        except BaseException:
            logs = cluster.logs()
            cluster.close()
            raise RuntimeError(f"the raft cluster did not elect a leader:\n{logs}") from None

    def url(self, prefix: str) -> str:
        return f"{self.processes.url}{prefix}"

    def pids(self) -> list[int]:
        return [m.process.pid for m in self.processes.members.values() if m.process is not None]

    def leader(self) -> str:
        """The leader's name once the running members agree on one (a loaded machine: 120 s)."""
        return str(anyio.run(self._support.wait_for_leader, self.processes, START_TIMEOUT))

    def statuses(self) -> list[dict[str, Any]]:
        async def ask() -> list[dict[str, Any]]:
            members = [m for m in self.processes.members.values() if m.running]
            return [await self._support.member_status(m.address) for m in members]

        return anyio.run(ask)

    def kill_leader(self) -> Killed:
        leader = self.leader()
        process = self.processes.members[leader].process
        assert process is not None
        self._killed.append(leader)
        at = time.perf_counter()
        process.send_signal(signal.SIGKILL)
        self.processes.stop(leader, kill=True)  # reaps it
        return Killed(leader, at)

    def heal(self) -> None:
        while self._killed:
            self.processes.start(self._killed.pop())
        self.leader()
        self.wait_caught_up()

    def wait_caught_up(self, timeout: float = 120.0) -> None:
        """Until every running member has applied what the leader has committed."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = self.statuses()
            leaders = [s for s in statuses if s.get("role") == "leader"]
            if leaders and all("error" not in s for s in statuses):
                commit = leaders[0]["commit"]
                if all(s["applied"] >= commit for s in statuses):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"raft members did not catch up: {statuses}")
            time.sleep(0.05)  # other processes' state: polled

    def stop(self) -> None:
        self.processes.close()


CLUSTERS: dict[str, type[Cluster]] = {
    "raft": RaftCluster,
    "etcd": EtcdCluster,
    "zookeeper": ZooKeeperCluster,
}


def missing_for(name: str) -> str | None:
    """Why the cluster ``name`` cannot start here, or None."""
    sys.path.insert(0, str(SUPPORT))
    if name == "etcd":
        import etcd_servers

        if not Path(etcd_servers.ETCD).exists():
            return str(etcd_servers.MISSING_ETCD)
        if not _importable("aetcd"):
            return str(etcd_servers.MISSING_CLIENT)
    if name == "zookeeper":
        import zookeeper_servers as zk

        if shutil.which("java") is None or not zk.ZOOKEEPER_JAR.exists():
            return str(zk.INSTALL_HINT)
        if not _importable("kazoo"):
            return "pip install 'coordkit[zookeeper]'"
    return None


@contextmanager
def started_clusters(
    wanted: list[str], notes: list[str], data_dir: str, raft_args: tuple[str, ...] = ()
) -> Iterator[dict[str, Cluster]]:
    """Start a 3-member cluster of each wanted kind (raft, etcd, zookeeper) that can run here.

    Data goes under ``data_dir`` (default the temp dir, on disk: every server
    fsyncs its log, so the storage under it matters as much as the engine).
    """
    sys.path.insert(0, str(SUPPORT))
    clusters: dict[str, Cluster] = {}
    with tempfile.TemporaryDirectory(prefix="coordkit-bench-", dir=data_dir) as root:
        try:
            for name in wanted:
                why = missing_for(name)
                if why is not None:
                    notes.append(f"{name} skipped: {why}")
                    continue
                (Path(root) / name).mkdir()
                if name == "raft":
                    clusters[name] = RaftCluster(Path(root) / name, extra_args=raft_args)
                else:
                    clusters[name] = CLUSTERS[name](Path(root) / name)
            if clusters:
                notes.append(f"3-member clusters keep their data in {data_dir}")
            yield clusters
        finally:
            for cluster in reversed(list(clusters.values())):
                cluster.stop()


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (every thread), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """VmRSS of process ``pid`` in MiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")
