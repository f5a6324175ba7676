"""``coordkit demo`` end to end: it runs, shows progress, and its numbers add up.

What is checked is what happened (the summary's counts and events, and the
progress lines agreeing with them), never how long anything took.
"""

from __future__ import annotations

import io
import re

import pytest

import coordkit
from coordkit.demo import run_demo

pytestmark = pytest.mark.anyio

#: a plain progress line (not on a terminal): ``[  1.0s] lock=w2 leader=w1 ... items 40 ...``
PROGRESS = re.compile(r"^\[\s*\d+\.\ds\] lock=(w\d|-) leader=(w\d|-) .*\bitems (\d+) ")


async def test_demo_runs_and_prints_an_honest_summary(backend_url: str) -> None:
    out = io.StringIO()
    summary = await run_demo(backend_url, 3.0, out)
    text = out.getvalue()
    assert text.endswith("\n" + summary.render() + "\n")  # the summary printed is the one returned
    progress = [m for m in map(PROGRESS.match, text.splitlines()) if m is not None]
    assert progress, text
    items_shown = [int(m[3]) for m in progress]
    assert items_shown == sorted(items_shown) and items_shown[-1] <= summary.items_passed
    assert summary.lock_acquisitions > 1
    # Two holders at once only while the older one's session had already ended
    # on the servers (it is told a moment later): never with both sessions alive.
    assert summary.exclusion_violations == 0, summary.render()
    assert 0 < summary.items_passed <= summary.items_put + summary.items_unconfirmed
    assert summary.duplicate_deliveries == 0
    assert summary.leaders and set(summary.leaders) <= {f"w{i}" for i in range(1, 6)}
    assert 1 <= summary.config_version <= summary.config_writes
    assert summary.config_reloads >= 1
    assert summary.items_lost == 0, summary.render()  # every acknowledged put was taken
    assert summary.clean
    async with coordkit.connect(backend_url) as client:
        if coordkit.Capability.KILL_LEADER in client.capabilities:
            # the cluster's leading server was killed halfway and another took over
            assert summary.server_killed and summary.server_new_leader not in ("", None)
            assert summary.server_new_leader != summary.server_killed
            assert summary.server_failover_seconds is not None
        elif coordkit.Capability.EXPIRE_SESSION in client.capabilities:
            assert summary.leader_changes >= 1  # the leader was killed halfway
            assert summary.failover_seconds is not None
        assert await client.children("/coordkit-demo") == []  # cleaned up
