"""The example backend proves itself with coordkit's conformance kit, as any backend does.

This is what a plugin author writes (see docs/conformance.md): a subclass of
``BackendConformance`` and two fixtures. The test command collects it from
the repository root, so the example stays a working plugin.
"""

from __future__ import annotations

import uuid

import pytest

pytest.importorskip(
    "coordkit_example_backend",
    reason="the example plugin is not installed: pip install -e examples/backend-plugin",
)

from coordkit_example_backend import ExampleBackend

from coordkit import Client
from coordkit.testing import BackendConformance


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestExampleBackendConformance(BackendConformance):
    # The example keeps sessions in-process (as memory:// does): short TTLs are fine.
    short_session_ttl = 0.5

    @pytest.fixture
    def backend_url(self) -> str:
        return f"example://t-{uuid.uuid4().hex}"

    async def compact(self, client: Client, revision: int) -> bool:
        """Optional: lets the kit test watches from a compacted revision."""
        backend = client.backend
        assert isinstance(backend, ExampleBackend)
        await backend.compact(revision)
        return True
