"""The test servers die with the test process (``PR_SET_PDEATHSIG``): an interrupted
run -- a SIGKILLed pytest, a CI job cancelled -- leaves no orphan ``coordkit serve``."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from raft_servers import until

SUPPORT = Path(__file__).resolve().parents[2] / "support"

#: a stand-in for a test run: starts a 1-node cluster, says the server's pid, waits.
RUN = """
import sys, time
from raft_servers import started_cluster
cluster = started_cluster(1)
print(cluster.members["n1"].process.pid, flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    """Exited (reaped, or a zombie waiting for its new parent to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_servers_die_when_the_test_process_is_killed() -> None:
    path = os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")]))
    run = subprocess.Popen(
        [sys.executable, "-c", RUN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert run.stdout is not None and run.stderr is not None
    try:
        line = run.stdout.readline()
        assert line.strip().isdigit(), run.stderr.read() if run.poll() is not None else line
        server = int(line)
        assert not gone(server)
        os.kill(run.pid, signal.SIGKILL)  # no cleanup code of the test run gets to run
        run.wait()

        async def server_gone() -> bool:
            return gone(server)

        anyio.run(functools.partial(until, server_gone, timeout=10))
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        run.stdout.close()
        run.stderr.close()
