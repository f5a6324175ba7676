"""``coordkit cluster up``: N ``coordkit serve`` processes on this machine, supervised.

Each node is a real process on a loopback port with its own data directory
(``DIR/n1``, ...; a temporary directory, removed at the end, unless
``--data-dir`` is given) and its log in ``DIR/n1.log``. The supervisor prints
the cluster's URL, restarts a node that dies (after a second, logged), and on
SIGINT or SIGTERM stops them all: SIGTERM, then SIGKILL after a grace period.

A data directory remembers the cluster (``cluster.json``: id, token, ports),
so ``cluster up --data-dir D`` again restarts the same cluster.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import Process

from coordkit.errors import ConfigurationError

__all__ = ["LocalCluster", "run_local_cluster"]

log = logging.getLogger(__name__)

TOKEN_ENV = "COORDKIT_CLUSTER_TOKEN"
RESTART_DELAY = 1.0
STOP_GRACE = 10.0


@dataclass
class LocalCluster:
    data_dir: Path
    host: str
    ports: dict[str, int]
    cluster_id: str
    token: str

    @property
    def url(self) -> str:
        return "raft://" + ",".join(f"{self.host}:{p}" for p in self.ports.values())

    @property
    def peers(self) -> str:
        return ",".join(f"{n}={self.host}:{p}" for n, p in self.ports.items())

    def command(self, name: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "coordkit.cli",
            "serve",
            "--name",
            name,
            "--data-dir",
            str(self.data_dir / name),
            "--listen",
            f"{self.host}:{self.ports[name]}",
            "--peers",
            self.peers,
            "--cluster-id",
            self.cluster_id,
            "--stop-with",
            str(os.getpid()),
        ]

    @classmethod
    def prepare(cls, data_dir: Path, nodes: int, host: str, base_port: int | None) -> LocalCluster:
        """A new cluster in ``data_dir``, or the one it already holds."""
        data_dir.mkdir(parents=True, exist_ok=True)
        saved = data_dir / "cluster.json"
        if saved.exists():
            try:
                raw = json.loads(saved.read_text())
                cluster = cls(data_dir, raw["host"], dict(raw["ports"]), raw["id"], raw["token"])
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigurationError(f"cannot read {saved}: {exc}") from exc
            if len(cluster.ports) != nodes:
                raise ConfigurationError(
                    f"{data_dir} holds a cluster of {len(cluster.ports)} nodes, not {nodes}"
                )
            return cluster
        names = [f"n{i}" for i in range(1, nodes + 1)]
        if base_port is not None:
            ports = {n: base_port + i for i, n in enumerate(names)}
        else:
            ports = {n: _free_port(host) for n in names}
        cluster = cls(data_dir, host, ports, f"local-{secrets.token_hex(4)}", secrets.token_hex(16))
        saved.write_text(
            json.dumps(
                {"host": host, "ports": ports, "id": cluster.cluster_id, "token": cluster.token}
            )
        )
        return cluster


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def run_local_cluster(
    *, nodes: int, data_dir: Path | None, base_port: int | None, host: str
) -> int:
    temp = None
    if data_dir is None:
        temp = tempfile.mkdtemp(prefix="coordkit-cluster-")
        data_dir = Path(temp)
    try:
        cluster = LocalCluster.prepare(data_dir.expanduser(), nodes, host, base_port)
        anyio.run(_supervise, cluster)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    return 0


async def _supervise(cluster: LocalCluster) -> None:
    env = {**os.environ, TOKEN_ENV: cluster.token}
    processes: dict[str, Process] = {}
    print(f"cluster of {len(cluster.ports)} nodes in {cluster.data_dir}", flush=True)
    print(f"url: {cluster.url}", flush=True)
    print(f"try: coordkit status --url {cluster.url}", flush=True)
    async with anyio.create_task_group() as tg:

        async def keep(name: str) -> None:
            log_path = cluster.data_dir / f"{name}.log"
            while True:
                with log_path.open("ab") as log_file:
                    process = await anyio.open_process(
                        cluster.command(name), stdout=log_file, stderr=subprocess.STDOUT, env=env
                    )
                processes[name] = process
                log.info("%s started (pid %d, log %s)", name, process.pid, log_path)
                code = await process.wait()
                log.warning(
                    "%s exited with status %s; restarting in %.0f s", name, code, RESTART_DELAY
                )
                await anyio.sleep(RESTART_DELAY)

        for name in cluster.ports:
            tg.start_soon(keep, name)
        try:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("%s: stopping the cluster", signal.Signals(signum).name)
                    break
        finally:
            tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await _stop_all(processes)


async def _stop_all(processes: dict[str, Process]) -> None:
    for process in processes.values():
        if process.returncode is None:
            process.terminate()
    with anyio.move_on_after(STOP_GRACE):
        for process in processes.values():
            await process.wait()
    for name, process in processes.items():
        if process.returncode is None:
            log.warning("%s did not stop within %.0f s: killing it", name, STOP_GRACE)
            process.kill()
            await process.wait()
