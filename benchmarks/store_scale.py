"""The store at scale: memory, apply rate, snapshot and restore with a million nodes.

Builds N nodes of V bytes (default 1,000,000 x 100 bytes) under 1,000 parents
(``/data/<i // 1000>/<i>``, every value distinct), as the Raft server would:
each create is an encoded log entry passed to ``Store.apply_entry`` (decode,
apply, encode the result). Then it measures:

- RSS (VmRSS of /proc/self/status) before and after the build, and per node;
- the build rate (``apply_entry`` per second; the entries are encoded
  beforehand, in batches, outside the timing) and the rate of plain
  ``apply(Set)`` on the full tree;
- a snapshot streamed in 1 MiB chunks to a file: total time, size, and the
  median and longest time to produce one chunk (how long a server's event
  loop would be held per chunk);
- the same snapshot while 10 sets run between chunks: the pre-images kept;
- the restore from that file in a fresh process: time and RSS.

Each run builds in its own process so that RSS figures are not polluted by
an earlier run. Prints medians of R runs.

Run: .venv/bin/python benchmarks/store_scale.py [--nodes N] [--value-bytes V] [--runs R]
A benchmark, not a test: nothing here asserts speed or size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from coordkit.backends.store import Create, Set, Store, StoreLoader, encode_command

PARENTS = 1000
BATCH = 10_000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def value_of(i: int, size: int) -> bytes:
    return (i.to_bytes(8, "little") * (size // 8 + 1))[:size]


def build(nodes: int, value_bytes: int, snapshot_file: Path) -> dict[str, float]:
    store = Store()
    store.apply(Create("/data", b""))
    for p in range(PARENTS):
        store.apply(Create(f"/data/{p}", b""))
    rss_before = rss_mb()
    applying = 0.0
    for start in range(0, nodes, BATCH):
        entries = [
            encode_command(Create(f"/data/{i // 1000}/{i}", value_of(i, value_bytes)))
            for i in range(start, min(start + BATCH, nodes))
        ]
        began = time.perf_counter()
        for entry in entries:
            store.apply_entry(entry)
        applying += time.perf_counter() - began
    rss_after = rss_mb()

    sets = min(nodes, 100_000)
    began = time.perf_counter()
    for i in range(sets):
        store.apply(Set(f"/data/{i // 1000}/{i}", value_of(i + 1, value_bytes)))
    set_seconds = time.perf_counter() - began

    chunk_times: list[float] = []
    size = 0
    began = time.perf_counter()
    with snapshot_file.open("wb") as out:
        stream = store.snapshot_chunks()
        while True:
            started = time.perf_counter()
            chunk = next(stream, None)
            chunk_times.append(time.perf_counter() - started)
            if chunk is None:
                break
            size += len(chunk)
            out.write(chunk)
    snapshot_seconds = time.perf_counter() - began

    # The same while commands run between chunks: what copy-on-write keeps aside.
    stream = store.snapshot_chunks()
    kept = 0
    for n, _ in enumerate(stream):
        for k in range(10):
            i = (n * 7919 + k * 104729) % nodes
            store.apply(Set(f"/data/{i // 1000}/{i}", b"changed"))
        kept = max(kept, sum(len(c.saved) for c in store._captures))
    return {
        "nodes": nodes,
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "store_mb": rss_after - rss_before,
        "bytes_per_node": (rss_after - rss_before) * 1024 * 1024 / nodes,
        "apply_entry_per_s": nodes / applying,
        "set_per_s": sets / set_seconds,
        "snapshot_s": snapshot_seconds,
        "snapshot_mb": size / 1024 / 1024,
        "chunk_ms_p50": statistics.median(chunk_times) * 1000,
        "chunk_ms_max": max(chunk_times) * 1000,
        "preimages_kept": kept,
    }


def restore(snapshot_file: Path) -> dict[str, float]:
    rss_before = rss_mb()
    began = time.perf_counter()
    loader = StoreLoader()
    with snapshot_file.open("rb") as source:
        while chunk := source.read(1 << 20):
            loader.feed(chunk)
    store = loader.finish()
    seconds = time.perf_counter() - began
    return {"restore_s": seconds, "restored_mb": rss_mb() - rss_before, "restored": len(store)}


def one_run(nodes: int, value_bytes: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        snapshot_file = Path(tmp) / "store.snap"
        figures = child(["build", str(nodes), str(value_bytes), str(snapshot_file)])
        figures.update(child(["restore", str(snapshot_file)]))
    return figures


def child(args: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    )
    figures: dict[str, float] = json.loads(out.stdout)
    return figures


ROWS = [
    ("store RSS (MB)", "store_mb", "{:.0f}"),
    ("RSS per node (bytes)", "bytes_per_node", "{:.0f}"),
    ("process RSS after build (MB)", "rss_after_mb", "{:.0f}"),
    ("apply_entry creates/s", "apply_entry_per_s", "{:,.0f}"),
    ("apply Set/s (full tree)", "set_per_s", "{:,.0f}"),
    ("snapshot time (s)", "snapshot_s", "{:.2f}"),
    ("snapshot size (MB)", "snapshot_mb", "{:.1f}"),
    ("per 1 MiB chunk p50 (ms)", "chunk_ms_p50", "{:.1f}"),
    ("per 1 MiB chunk max (ms)", "chunk_ms_max", "{:.1f}"),
    ("pre-images kept, 10 sets/chunk", "preimages_kept", "{:.0f}"),
    ("restore time (s)", "restore_s", "{:.2f}"),
    ("restored store RSS (MB)", "restored_mb", "{:.0f}"),
]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        if sys.argv[2] == "build":
            result = build(int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
        else:
            result = restore(Path(sys.argv[3]))
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1_000_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [one_run(args.nodes, args.value_bytes) for _ in range(args.runs)]
    print(
        f"store scale: {args.nodes:,} nodes of {args.value_bytes} bytes, "
        f"median of {args.runs} runs (each in fresh processes)"
    )
    for label, key, fmt in ROWS:
        values = [r[key] for r in runs]
        print(f"  {label:<32} {fmt.format(statistics.median(values)):>12}")


if __name__ == "__main__":
    main()
