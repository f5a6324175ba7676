"""The benchmark scripts keep working: each runs a smoke run (``--quick --runs 1``).

The three scripts run at once, as subprocesses, each against real servers it
starts itself (3 ``coordkit serve`` processes, 3 etcd members, 3 ZooKeeper
servers), with their data on a tmpfs when there is one: a smoke run checks
that every measurement produces a figure, not how fast it is. The figures'
JSON is then plotted. Nothing here asserts a timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
TIMEOUT = 240

#: script -> extra arguments of its smoke run. Every backend and every cluster kind runs in
#: one of them (3 JVMs or 3 Raft processes per script, not per backend, keep it short).
SMOKE = {
    "writes": ["--backends", "raft,etcd"],
    "service": ["--backends", "raft_embedded,zookeeper,memory"],
    "scale": ["--nodes", "4000", "--batch", "200"],
}

pytestmark = [pytest.mark.etcd, pytest.mark.zookeeper, pytest.mark.timeout(TIMEOUT + 30)]


@dataclass
class SmokeRun:
    returncode: int
    stdout: str
    stderr: str
    figures: dict[str, Any] | None


def data_dir() -> str:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else tempfile.gettempdir()


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SmokeRun]]:
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if k != "COORDKIT_URL"}
    started = {
        name: subprocess.Popen(
            [
                sys.executable,
                str(BENCHMARKS / f"{name}.py"),
                "--quick",
                "--runs",
                "1",
                "--json",
                str(out / f"{name}.json"),
                "--data-dir",
                data_dir(),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for name, extra in SMOKE.items()
    }
    runs: dict[str, SmokeRun] = {}
    try:
        for name, process in started.items():
            stdout, stderr = process.communicate(timeout=TIMEOUT)
            json_file = out / f"{name}.json"
            figures = json.loads(json_file.read_text()) if json_file.exists() else None
            runs[name] = SmokeRun(process.returncode, stdout, stderr, figures)
        yield runs
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def check_every_figure(run: SmokeRun, backends: list[str]) -> dict[str, Any]:
    """The run succeeded and every metric has a figure on every backend that was not skipped."""
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.figures is not None, "no JSON written"
    notes = run.figures["notes"]
    skipped = [b for b in backends if any(n.startswith(f"{b} skipped") for n in notes)]
    measured = [b for b in backends if b not in skipped]
    assert measured, run.figures["notes"]
    for backend in measured:
        for metric in run.figures["metrics"]:
            assert run.figures["medians"][backend][metric["key"]] is not None, (
                f"{backend} has no {metric['key']}: {notes}"
            )
        assert backend in run.stdout.splitlines()[1]  # a column of the table
    for metric in run.figures["metrics"]:
        assert metric["title"] in run.stdout
    return run.figures


def test_writes_measures_latency_throughput_and_failover(smoke_runs: dict[str, SmokeRun]) -> None:
    figures = check_every_figure(smoke_runs["writes"], ["raft", "etcd"])
    assert figures["medians"]["raft"]["failover_s"] > 0
    assert "aim for raft" in smoke_runs["writes"].stdout


def test_service_measures_every_backend(smoke_runs: dict[str, SmokeRun]) -> None:
    figures = check_every_figure(smoke_runs["service"], ["raft_embedded", "zookeeper", "memory"])
    for backend in ("raft_embedded", "memory"):
        assert figures["medians"][backend]["queue_items_per_s"] > 0
        assert figures["medians"][backend]["watch_p99_ms"] > 0


def test_scale_fills_snapshots_restarts_and_catches_up(smoke_runs: dict[str, SmokeRun]) -> None:
    figures = check_every_figure(smoke_runs["scale"], ["raft"])
    assert figures["settings"]["nodes"] == 4000
    assert figures["medians"]["raft"]["snapshot_mb"] > 0
    assert figures["medians"]["raft"]["rss_mb"] > 0


def test_plot_draws_a_png_per_script(smoke_runs: dict[str, SmokeRun], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="plots need the bench extra: pip install '.[bench]'")
    files = []
    for name, run in smoke_runs.items():
        assert run.figures is not None, f"{name}: {run.stderr[-2000:]}"
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(run.figures))
    plot = [sys.executable, str(BENCHMARKS / "plot.py"), "--out", str(tmp_path), "--markdown"]
    done = subprocess.run(
        [*plot, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for name in SMOKE:
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| metric |" in done.stdout
