"""Plot the JSON of writes.py, service.py and scale.py into PNGs (for docs/benchmarks.md).

One PNG per JSON file, named after the script (``writes.png``, ...), with one
panel per metric: a bar per backend at the median of its runs, a whisker from
the fastest to the slowest run, and the issue's aim as a dashed line where
there is one (the aim is for the Raft backend). ``--markdown`` also prints
each script's medians as a Markdown table, as docs/benchmarks.md shows them.
Several files of one script are merged (every run's values together).

    pip install -e '.[bench]'          # matplotlib
    python benchmarks/writes.py --json out/writes.json
    python benchmarks/plot.py out/*.json --out docs/benchmarks --markdown
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

COLORS = {
    "raft": "#1f77b4",
    "raft_embedded": "#6baed6",
    "etcd": "#2ca02c",
    "zookeeper": "#ff7f0e",
    "memory": "#7f7f7f",
}


def plot(figures: dict[str, Any], out: Path) -> Path:
    metrics = figures["metrics"]
    backends = [b for b in figures["backends"] if figures["values"].get(b)]
    columns = min(3, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        medians, lows, highs, names = [], [], [], []
        for backend in backends:
            runs = figures["values"][backend].get(metric["key"])
            if not runs:
                continue
            median = statistics.median(runs)
            names.append(backend)
            medians.append(median)
            lows.append(median - min(runs))
            highs.append(max(runs) - median)
        bars = ax.bar(
            names,
            medians,
            yerr=[lows, highs],
            capsize=3,
            color=[COLORS.get(n, "#9467bd") for n in names],
        )
        ax.bar_label(bars, fmt=f"%.{metric['digits']}f", fontsize=7)
        if metric.get("aim") is not None:
            ax.axhline(metric["aim"], linestyle="--", color="red", linewidth=1)
            ax.annotate(
                f"aim ({figures.get('aimed', 'raft')})",
                (0, metric["aim"]),
                fontsize=7,
                color="red",
                va="bottom",
            )
        positive = [m for m in medians if m > 0]
        if positive and max(positive) > 50 * min(positive):
            ax.set_yscale("log")  # memory:// beside servers: orders of magnitude apart
        ax.set_title(f"{metric['title']} [{metric['unit']}]", fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.tick_params(axis="y", labelsize=8)
        better = "higher" if metric["better"] == "higher" else "lower"
        ax.set_ylabel(f"{better} is better", fontsize=7)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    caption = (
        f"{figures['script']}: median of {figures['runs']} run(s), whiskers min..max; "
        f"{figures['when']}, {figures['machine']['cpus']} CPUs, load average "
        f"{figures['machine']['load_average'][0]:.1f} at the end"
    )
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{figures['script']}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(figures: dict[str, Any]) -> str:
    """The medians as a Markdown table: a row per metric, a column per backend."""
    backends = figures["backends"]
    reference = figures.get("reference") or ""
    aims = any(m.get("aim") is not None for m in figures["metrics"])
    head = ["metric", *backends] + ([f"aim ({figures.get('aimed', 'raft')})"] if aims else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for metric in figures["metrics"]:
        base = figures["medians"].get(reference, {}).get(metric["key"]) if reference else None
        cells = [f"{metric['title']} [{metric['unit']}]"]
        for backend in backends:
            value = figures["medians"].get(backend, {}).get(metric["key"])
            if value is None:
                cells.append("-")
                continue
            ratio = f" (x{value / base:.2f})" if base and backend != reference else ""
            cells.append(f"{value:.{metric['digits']}f}{ratio}")
        if aims:
            cells.append(verdict(figures, metric))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(figures: dict[str, Any], metric: dict[str, Any]) -> str:
    aim = metric.get("aim")
    if aim is None:
        return ""
    value = figures["medians"].get(figures.get("aimed", "raft"), {}).get(metric["key"])
    sign = "≥" if metric["better"] == "higher" else "≤"
    if value is None:
        return f"{sign} {aim:g}: not measured"
    met = value >= aim if metric["better"] == "higher" else value <= aim
    return f"{sign} {aim:g}: {'met' if met else '**not met**'}"


def merged(files: list[dict[str, Any]]) -> dict[str, Any]:
    """Several JSON files of one script as one: every run's values together, medians anew
    (e.g. a second run for one backend or one step after the first)."""
    figures = json.loads(json.dumps(files[0]))
    for extra in files[1:]:
        for backend in extra["backends"]:
            if backend not in figures["backends"]:
                figures["backends"].append(backend)
        for backend, by_key in extra["values"].items():
            for key, runs in by_key.items():
                figures["values"].setdefault(backend, {}).setdefault(key, []).extend(runs)
        figures["notes"] += [f"{extra['when']}: {note}" for note in extra["notes"]]
        figures["when"] = max(figures["when"], extra["when"])
    figures["medians"] = {
        b: {
            m["key"]: statistics.median(figures["values"][b][m["key"]])
            if figures["values"].get(b, {}).get(m["key"])
            else None
            for m in figures["metrics"]
        }
        for b in figures["backends"]
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="JSON written with --json")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"), help="PNG folder")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables too")
    args = parser.parse_args()
    by_script: dict[str, list[dict[str, Any]]] = {}
    for file in args.files:
        figures = json.loads(file.read_text())
        by_script.setdefault(figures["script"], []).append(figures)
    for script, files in by_script.items():
        figures = merged(files)
        print(f"{script} ({len(files)} file(s)) -> {plot(figures, args.out)}")
        if args.markdown:
            print(f"\n{markdown(figures)}\n")
            print("\n".join(f"- {note}" for note in figures["notes"]) + "\n")


if __name__ == "__main__":
    main()
