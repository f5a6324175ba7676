"""Connecting in a fresh process, as a user's program would, to see what it prints."""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import sys, anyio, coordkit

async def main():
    try:
        async with coordkit.connect(sys.argv[1], connect_timeout=1):
            pass
    except coordkit.CannotConnectError as exc:
        print(exc)

anyio.run(main)
"""


def connect_in_subprocess(url: str) -> subprocess.CompletedProcess[str]:
    """Connect to ``url`` (1 s connect timeout) in a new interpreter; the error goes to
    its stdout, so what the client libraries write on their own shows on its stderr."""
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
