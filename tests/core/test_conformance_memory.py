"""The conformance kit against ``memory://``, on asyncio and trio."""

from __future__ import annotations

import pytest

from coordkit import Client
from coordkit.backends.memory import MemoryBackend
from coordkit.testing import BackendConformance


class TestMemoryConformance(BackendConformance):
    short_session_ttl = 0.5

    @pytest.fixture
    def backend_url(self, memory_url: str) -> str:
        return memory_url

    async def compact(self, client: Client, revision: int) -> bool:
        backend = client.backend
        assert isinstance(backend, MemoryBackend)
        await backend.compact(revision)
        return True
