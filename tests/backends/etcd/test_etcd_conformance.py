"""The conformance kit against a real etcd server (asyncio only: grpc.aio)."""

from __future__ import annotations

import pytest

from coordkit import Client
from coordkit.testing import BackendConformance

pytestmark = pytest.mark.etcd


class TestEtcdConformance(BackendConformance):
    @pytest.fixture
    def backend_url(self, etcd_url: str) -> str:
        return etcd_url

    async def compact(self, client: Client, revision: int) -> bool:
        from aetcd import rpc

        backend = client.backend
        channel = backend.channel  # type: ignore[attr-defined]
        request = rpc.CompactionRequest(revision=revision, physical=True)
        await channel.call(channel.kv.Compact, request, idempotent=True)
        return True
