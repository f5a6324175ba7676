"""Shared fixtures: every async test runs on asyncio and trio; backends by URL."""

from __future__ import annotations

import pytest

# Fixture modules live in tests/support (on pythonpath, see pyproject.toml).
pytest_plugins = ["backend_urls"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
