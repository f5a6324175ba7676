"""The conformance kit against raft:// (3 ``coordkit serve`` processes) and
raft+embedded:// (3 nodes in this process), on asyncio and trio."""

from __future__ import annotations

import pytest

from coordkit import Client
from coordkit.backends.raft.client import RaftBackend
from coordkit.testing import BackendConformance


class _RaftKit(BackendConformance):
    short_session_ttl = 0.5

    async def compact(self, client: Client, revision: int) -> bool:
        backend = client.backend
        assert isinstance(backend, RaftBackend)
        await backend.compact(revision)
        return True


class TestRaftProcessesConformance(_RaftKit):
    @pytest.fixture
    def backend_url(self, raft_url: str) -> str:
        return raft_url


class TestRaftEmbeddedConformance(_RaftKit):
    @pytest.fixture
    def backend_url(self, raft_embedded_url: str) -> str:
        return raft_embedded_url
