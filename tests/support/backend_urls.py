"""``backend_url``: a fresh, isolated URL for every backend present in the run.

Each backend's fixture module (``<name>_servers.py`` beside this file) supplies
a ``<name>_url`` fixture that returns a URL isolated from other tests (a
separate memory store, a separate chroot on a real server). Tests that should
run on every backend take ``backend_url``.

Every test that needs a real etcd or ZooKeeper server (through ``backend_url``
or a server fixture) is marked ``etcd`` or ``zookeeper``, so
``pytest -m "not zookeeper"`` runs without one.
"""

from __future__ import annotations

import importlib.util
import uuid

import pytest

BACKENDS = ["memory"]
pytest_plugins: list[str] = []
for _name in ("etcd", "zookeeper", "raft"):
    if importlib.util.find_spec(f"{_name}_servers") is not None:
        BACKENDS.append(_name)
        pytest_plugins.append(f"{_name}_servers")
if "raft" in BACKENDS:
    BACKENDS.append("raft_embedded")  # raft_servers.py supplies raft_embedded_url too


@pytest.fixture
def memory_url() -> str:
    return f"memory://test-{uuid.uuid4().hex}"


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, anyio_backend: str) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


#: The fixtures that start (or use) a real server, by the marker of the tests using them.
SERVER_FIXTURES = {
    "etcd": {
        "etcd_server",
        "etcd_cluster",
        "etcd_private_server",
        "etcd_url",
        "etcd_cluster_url",
        "etcd_secure_server",
        "etcd_secure_url",
    },
    "zookeeper": {
        "zookeeper_server",
        "zookeeper_ensemble",
        "zookeeper_url",
        "zookeeper_secure_server",
        "zookeeper_secure_url",
    },
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend_url") if callspec is not None else None
        for marker, server_fixtures in SERVER_FIXTURES.items():
            if backend == marker or fixtures & server_fixtures:
                item.add_marker(marker)
