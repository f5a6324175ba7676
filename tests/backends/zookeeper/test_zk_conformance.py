"""The conformance kit against a real ZooKeeper server, on asyncio and trio."""

from __future__ import annotations

import pytest

from coordkit.testing import BackendConformance


class TestZooKeeperConformance(BackendConformance):
    # The test server runs with tickTime=200 ms, so sessions this short are accepted.
    short_session_ttl = 1.0

    @pytest.fixture
    def backend_url(self, zookeeper_url: str) -> str:
        return zookeeper_url
