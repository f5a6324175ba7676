"""Figures of a benchmark run: medians of several runs, one side-by-side table, JSON.

A :class:`Report` holds, for every metric and backend, the value of each run.
``table()`` prints one row per metric and one column per backend: the median,
and its ratio to the reference backend's median (``x1.00`` is the reference
itself; ``-`` where a backend has no figure). ``write_json()`` saves
everything (every run's value too) for ``benchmarks/plot.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    unit: str
    better: str  # "higher" or "lower"
    digits: int = 1
    aim: float | None = None  # the aim for the aimed backend (Report.aimed)

    def met(self, value: float) -> bool:
        assert self.aim is not None
        return value >= self.aim if self.better == "higher" else value <= self.aim

    def aim_text(self) -> str:
        assert self.aim is not None
        return f"{'>=' if self.better == 'higher' else '<='} {self.aim:g}"


@dataclass
class Report:
    script: str
    runs: int
    quick: bool
    reference: str  # ratios to this backend's medians ("": no ratios)
    metrics: list[Metric]
    aimed: str = "raft"  # the backend the metrics' aims are for
    backends: list[str] = field(default_factory=list)
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def add(self, backend: str, key: str, value: float | None) -> None:
        if backend not in self.backends:
            self.backends.append(backend)
        if value is not None:
            self.values.setdefault(backend, {}).setdefault(key, []).append(value)

    def median(self, backend: str, key: str) -> float | None:
        found = self.values.get(backend, {}).get(key)
        return statistics.median(found) if found else None

    def table(self) -> str:
        width = max(12, *(len(b) for b in self.backends)) + 9
        aims = any(m.aim is not None for m in self.metrics)
        head = f"{'metric':<36}" + "".join(f"{b:>{width}}" for b in self.backends)
        if aims:
            head += f"  aim for {self.aimed}"
        ratios = f"; (xR) = ratio to {self.reference}" if self.reference else ""
        lines = [f"{self.script}: median of {self.runs} run(s){ratios}", head]
        for metric in self.metrics:
            cells = []
            base = self.median(self.reference, metric.key) if self.reference else None
            for backend in self.backends:
                value = self.median(backend, metric.key)
                if value is None:
                    cells.append(f"{'-':>{width}}")
                    continue
                ratio = f" (x{value / base:.2f})" if base else ""
                cells.append(f"{value:.{metric.digits}f}{ratio}".rjust(width))
            line = f"{metric.title + ' [' + metric.unit + ']':<36}" + "".join(cells)
            if metric.aim is not None:
                aimed = self.median(self.aimed, metric.key)
                verdict = "-" if aimed is None else "met" if metric.met(aimed) else "not met"
                line += f"  {metric.aim_text()}: {verdict}"
            lines.append(line)
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "script": self.script,
            "runs": self.runs,
            "quick": self.quick,
            "reference": self.reference,
            "aimed": self.aimed,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
                "python": platform.python_version(),
                "system": platform.platform(),
            },
            "settings": self.settings,
            "metrics": [vars(m) for m in self.metrics],
            "backends": self.backends,
            "values": self.values,
            "medians": {
                b: {m.key: self.median(b, m.key) for m in self.metrics} for b in self.backends
            },
            "notes": self.notes,
        }

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_json(), indent=1) + "\n")


def percentile(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples``, nearest rank."""
    ordered = sorted(samples)
    rank = min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))
    return ordered[rank]


def add_run_arguments(
    parser: argparse.ArgumentParser, *, quick: str, verbose: str | None = None
) -> None:
    """The options every side-by-side script takes: ``--quick`` (what it shrinks to),
    ``--verbose`` (when the script logs its steps), ``--json`` and ``--data-dir``."""
    parser.add_argument("--quick", action="store_true", help=quick)
    if verbose is not None:
        parser.add_argument("--verbose", action="store_true", help=verbose)
    parser.add_argument("--json", type=Path, help="write every figure here (for plot.py)")
    parser.add_argument(
        "--data-dir",
        default=tempfile.gettempdir(),
        help="where the servers keep their data (default the temp dir, on disk: fsyncs cost "
        "what they cost in production; a tmpfs such as /dev/shm makes them free)",
    )
