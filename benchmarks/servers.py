"""Local etcd and ZooKeeper servers for the benchmarks, started as the test suite starts them.

One server each, on free loopback ports, data under ``data_dir``, stopped on
exit, using ``tests/support/etcd_servers.py`` and
``tests/support/zookeeper_servers.py`` (Debian's ``etcd-server``, and
``zookeeper`` with ``java``). What is not installed is skipped with a note.
"""

from __future__ import annotations

import importlib.util
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
            yield urls
        finally:
            for stop in reversed(stops):
                stop()


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
