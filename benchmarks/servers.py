"""Local etcd and ZooKeeper servers for the benchmarks, started as the test suite starts them.

One server each, on free loopback ports, data under ``data_dir``, stopped on
exit, using ``tests/support/etcd_servers.py`` and
``tests/support/zookeeper_servers.py`` (Debian's ``etcd-server``, and
``zookeeper`` with ``java``). What is not installed is skipped with a note.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

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
