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
    assert "connected to memory://" in out
    assert "transaction succeeded=True" in out
    assert "created  /app/member-0000000000" in out
    assert "/app/member-0000000000 after close: None" in out
