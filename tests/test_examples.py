"""Every runnable example runs (as a user would run it) and says what it claims."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "COORDKIT_URL"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_quickstart_runs_on_the_default_backend() -> None:
    out = run_example("quickstart.py")
    assert "connected to raft+embedded://" in out
    assert "transaction succeeded=True" in out
    assert "created  /app/member-0000000000" in out
    assert "/app/member-0000000000 after close: None" in out
    assert "session states seen: ['LOST']" in out


def test_recipes_tour_runs_on_the_default_backend() -> None:
    out = run_example("recipes_tour.py")
    assert "connected to raft+embedded://" in out
    assert "got: resize logo.png\ngot: resize a.png\ngot: resize b.png" in out
    assert "redelivered to another consumer: mail #1" in out
    assert "late ack raised LockLostError (lost=True)" in out
    # None may come first if node-b was not yet in line: the next leader is node-b.
    failover = [ln for ln in out.splitlines() if ln.startswith("observe after node-a's session")]
    assert len(failover) == 1 and failover[0].endswith("node-b")
    assert "node-a's body: started -> cancelled, LockLostError raised" in out
    assert "node-b leads with a larger token: True" in out
    assert "in order: True, last: 14" in out
    assert "after update(key='db/port'): {'db/host': 'db1', 'db/port': 5433}" in out
    assert "after web-2's session expired: ['web-1']" in out
    assert "after web-1 left: ['web-2']" in out
    assert out.endswith("done\n")
