"""Shared fixtures: every async test runs on asyncio and trio; backends by URL."""

from __future__ import annotations

import pytest
from hypothesis import settings

# No per-example deadline: on a loaded 2-core machine a slow example is noise,
# not a finding (a hang is caught by pytest-timeout instead).
settings.register_profile("coordkit", deadline=None)
settings.load_profile("coordkit")

# Fixture modules live in tests/support (on pythonpath, see pyproject.toml).
pytest_plugins = ["backend_urls"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
