"""``raft+embedded://``: a Raft cluster of N nodes inside the calling process.

The nodes are the same code as ``coordkit serve`` and run on an asyncio event
loop of their own, in a background thread, so an asyncio or a trio
application embeds them alike, and an application that blocks its own loop
does not stall the nodes' timers. The application reaches them through the
ordinary ``raft://`` client over loopback TCP: what runs embedded is what
runs in production.

One cluster per data directory (or per name, without one) per process,
shared by every client of the process as ``memory://`` is, started by the
first client and stopped when the process exits. With ``data_dir`` the
cluster is durable (``DIR/n1``, ``DIR/n2``, ...) and a second process on the
same directory is refused; without it, the nodes keep their logs in a
temporary directory removed at exit: durable across node crashes within the
process, gone with the process.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import socket
import tempfile
import threading
from contextlib import AbstractContextManager
from pathlib import Path

import anyio
import anyio.abc
import anyio.from_thread
from anyio import CancelScope

from coordkit.backend import ConnectOptions
from coordkit.errors import ConfigurationError, CoordkitError
from coordkit.model import Capability
from coordkit.retry import RetryPolicy

from .client import RaftBackend
from .node.config import NodeConfig
from .node.server import RaftNode
from .wire import Address

__all__ = ["EmbeddedCluster", "EmbeddedRaftBackend", "cluster_for", "stop_all"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_clusters: dict[str, EmbeddedCluster] = {}


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedCluster:
    """N nodes on a private event loop in a daemon thread (see the module docstring)."""

    def __init__(self, key: str, nodes: int, data_dir: Path | None) -> None:
        self.key = key
        self.size = nodes
        self._temp: str | None = None
        if data_dir is None:
            self._temp = tempfile.mkdtemp(prefix="coordkit-embedded-")
            data_dir = Path(self._temp)
        self.data_dir = data_dir
        self._portal_cm: AbstractContextManager[anyio.from_thread.BlockingPortal] | None = None
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._scopes: dict[str, CancelScope] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self.nodes: dict[str, RaftNode] = {}
        self.addresses: dict[str, Address] = {}
        self._started = False
        self._start_lock = threading.Lock()

    @property
    def endpoints(self) -> list[Address]:
        return [Address(a.host, a.port) for a in self.addresses.values()]

    # -- lifecycle (called from any thread but the cluster's own) -------------------------

    def start(self) -> None:
        """Start every node; blocks until each listens. Idempotent and thread-safe."""
        with self._start_lock:
            if not self._started:
                self._start()

    def _start(self) -> None:
        self._portal_cm = anyio.from_thread.start_blocking_portal("asyncio")
        self._portal = self._portal_cm.__enter__()
        self._portal.start_task(self._host)
        names = [f"n{i}" for i in range(1, self.size + 1)]
        self.addresses = {name: Address("127.0.0.1", _free_port()) for name in names}
        try:
            for name in names:
                self._portal.call(self._start_node, name)
        except BaseException:
            self.stop()
            raise
        self._started = True

    def _config(self, name: str) -> NodeConfig:
        return NodeConfig(
            name=name,
            data_dir=self.data_dir / name,
            listen=self.addresses[name],
            peers=self.addresses,
            cluster_id=f"embedded-{self.key or 'default'}",
        )

    async def _host(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The nodes' parent task, on the cluster's own loop."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()

    async def _start_node(self, name: str) -> None:
        node = RaftNode(self._config(name))
        ended = anyio.Event()
        failure: list[BaseException] = []
        scope = anyio.CancelScope()

        async def run() -> None:
            with scope:
                try:
                    await node.run()
                except Exception as exc:  # reported to the caller below, and logged
                    failure.append(exc)
                    log.exception("embedded node %s stopped: %s", name, exc)
                finally:
                    ended.set()

        assert self._tg is not None
        self._tg.start_soon(run)
        async with anyio.create_task_group() as tg:

            async def started() -> None:
                await node.started.wait()
                tg.cancel_scope.cancel()

            async def stopped() -> None:
                await ended.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(started)
            tg.start_soon(stopped)
        if failure:
            raise failure[0]
        if not node.started.is_set():
            raise CoordkitError(f"embedded node {name} stopped before it served")
        self.nodes[name] = node
        self._scopes[name] = scope

    def kill(self, name: str) -> None:
        """Stop one node at once, as a crash would (its data directory stays)."""
        scope = self._scopes.pop(name, None)
        if scope is not None and self._portal is not None:
            self._portal.call(scope.cancel)
        self.nodes.pop(name, None)

    def restart(self, name: str) -> None:
        """Start a node stopped with :meth:`kill` again (it recovers from its data)."""
        if name in self.nodes or self._portal is None:
            return
        self._portal.call(self._start_node, name)

    def restart_later(self, name: str, delay: float) -> None:
        """Restart ``name`` after ``delay`` seconds (on the cluster's own loop)."""

        async def restart() -> None:
            await anyio.sleep(delay)
            if name not in self.nodes:
                await self._start_node(name)
                log.info("restarted embedded node %s", name)

        if self._portal is not None:
            self._portal.start_task_soon(restart)  # returns at once; runs on the cluster's loop

    def leader(self) -> str | None:
        for name, node in list(self.nodes.items()):
            if node.started.is_set() and node.core.role.value == "leader":
                return name
        return None

    def stop(self) -> None:
        for name in list(self._scopes):
            self.kill(name)
        if self._portal is not None and self._tg is not None:
            self._portal.call(self._tg.cancel_scope.cancel)
        if self._portal_cm is not None:
            self._portal_cm.__exit__(None, None, None)
            self._portal_cm = self._portal = None
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
        self._started = False


def cluster_for(name: str, nodes: int, data_dir: Path | None) -> EmbeddedCluster:
    """The process's cluster for this name or data directory (created, not started)."""
    key = str(data_dir.resolve()) if data_dir is not None else f"temp:{name}"
    with _lock:
        cluster = _clusters.get(key)
        if cluster is None:
            cluster = _clusters[key] = EmbeddedCluster(name or key, nodes, data_dir)
        elif cluster.size != nodes:
            raise ConfigurationError(
                f"the embedded cluster {name or data_dir or 'default'} already runs "
                f"{cluster.size} nodes in this process, not {nodes}"
            )
    return cluster


def stop_all() -> None:
    """Stop every embedded cluster of this process (also run at exit)."""
    with _lock:
        clusters = list(_clusters.values())
        _clusters.clear()
    for cluster in clusters:
        cluster.stop()


atexit.register(stop_all)


class EmbeddedRaftBackend(RaftBackend):
    """The raft:// client, connected to this process's embedded cluster (started on demand)."""

    def __init__(
        self,
        *,
        name: str,
        nodes: int,
        data_dir: Path | None,
        options: ConnectOptions,
        retry: RetryPolicy,
        root: str = "",
    ) -> None:
        self.cluster = cluster_for(name, nodes, data_dir)
        placeholder = [Address("127.0.0.1", 0)]
        super().__init__(placeholder, options, retry=retry, label="raft+embedded", root=root)

    async def open(self) -> None:
        cluster = self.cluster
        await anyio.to_thread.run_sync(cluster.start)
        self._dialer.endpoints = cluster.endpoints
        await super().open()

    capabilities = RaftBackend.capabilities | {Capability.KILL_LEADER}

    async def kill_leader(self, restart_after: float | None = None) -> str:
        cluster = self.cluster
        leader = cluster.leader()
        if leader is None:
            raise CoordkitError("the embedded cluster has no leader to kill right now")
        await anyio.to_thread.run_sync(cluster.kill, leader)
        log.warning("killed embedded node %s (the leader)", leader)
        if restart_after is not None:
            cluster.restart_later(leader, restart_after)
        return leader
