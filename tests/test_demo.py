"""``coordkit demo`` end to end: it runs, shows progress, and its numbers add up."""

from __future__ import annotations

import io

import pytest

import coordkit
from coordkit.demo import run_demo

pytestmark = pytest.mark.anyio


async def test_demo_runs_and_prints_an_honest_summary(backend_url: str) -> None:
    out = io.StringIO()
    summary = await run_demo(backend_url, 3.0, out)
    text = out.getvalue()
    assert "coordkit demo summary" in text
    assert "[  1.0s] lock=" in text  # plain progress lines when not on a terminal
    assert 2.5 < summary.duration < 4.0
    assert summary.lock_acquisitions > 1
    # Two holders at once only while the older one's session had already ended
    # on the servers (it is told a moment later): never with both sessions alive.
    assert summary.exclusion_violations == 0, summary.render()
    assert 0 < summary.items_passed <= summary.items_put
    assert summary.duplicate_deliveries == 0
    assert summary.leaders and summary.config_writes >= 1 and summary.config_reloads >= 1
    async with coordkit.connect(backend_url) as client:
        if coordkit.Capability.EXPIRE_SESSION in client.capabilities:
            assert summary.leader_changes >= 1  # the leader was killed halfway
            assert summary.failover_seconds is not None
        assert await client.children("/coordkit-demo") == []  # cleaned up
