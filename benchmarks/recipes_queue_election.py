"""Queue items/s and Election failover time, per backend side by side in one run.

* **queue**: ``--producers`` producers and ``--consumers`` consumers (4 and 4),
  each with its own client, pass ``--items`` items through one no-ack
  :class:`~coordkit.recipes.Queue`; items/s from the first ``put`` to the last
  ``get`` (clients are connected before the clock starts).
* **failover**: a leader, a second candidate already queued behind it, and an
  observer on a third client iterating ``Election.observe()``. The leader's
  session is killed, then the time is taken until ``observe()`` reports the
  second candidate as leader. Two ways to kill it:

  - *expire*: ``client.expire_session()``, as the servers do to a client cut
    off for longer than its TTL (only on backends with
    ``Capability.EXPIRE_SESSION``); the clock starts before the call, so it
    includes what expiring costs (on ZooKeeper: a second connection with the
    session's id and password, closed again);
  - *close*: the leader's client closes (``aclose()``), which ends its
    session at once.

  A crash that leaves the session to time out is not measured: that is the
  TTL plus detection, a setting rather than a property of the backend.

Every figure is the median of ``--runs`` runs, with min and max; runs are
interleaved across backends (run 1 on each backend, then run 2, ...) so that
drifting load on a shared machine hits every backend alike. Ratios compare
with ``memory``: items/s ratio < 1 is slower, failover ratio > 1 is slower.
On etcd the Election is etcd's native one (``coordkit_native_recipe``); the
generic recipe is measured too, on its own row. A benchmark, not a test:
nothing here asserts timings.

    python benchmarks/recipes_queue_election.py              # memory, plus etcd and
                                                             # ZooKeeper started here
    python benchmarks/recipes_queue_election.py --backends memory,etcd --runs 3
    python benchmarks/recipes_queue_election.py --etcd etcd://10.0.0.5:2379/bench

etcd and ZooKeeper are started by the script (one local server each, on free
loopback ports, data in a temporary directory under ``--data-dir``, stopped at
the end) with the same helpers the test suite uses (``tests/support/etcd_servers.py``,
``tests/support/zookeeper_servers.py``: Debian's ``etcd-server``, and
``zookeeper`` with ``java``); a backend whose server is not installed is
skipped, saying why. ``--etcd``/``--zookeeper``/``--raft`` URLs (or
COORDKIT_BENCH_ETCD, COORDKIT_BENCH_ZOOKEEPER, COORDKIT_BENCH_RAFT) use an
existing server instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack, aclosing, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio

import coordkit
from coordkit import NoNodeError
from coordkit.plugins import native_recipe
from coordkit.recipes.election import Election
from coordkit.recipes.queue import Queue

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import add_backend_arguments, backend_urls

BACKENDS = ("memory", "etcd", "zookeeper", "raft")
#: bound on one measured run; a run that takes longer is reported as failed.
RUN_TIMEOUT = 120.0


class GenericElection(Election):
    """The recipe's own Election even where the backend supplies a native one."""


# -- measurements ------------------------------------------------------------------


async def queue_run(url: str, items: int, producers: int, consumers: int) -> float:
    """Items per second through one queue."""
    path = f"/bench/queue-{uuid.uuid4().hex}"
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(coordkit.connect(url))
            for _ in range(producers + consumers)
        ]
        taken = 0
        done = anyio.Event()

        async def produce(client: coordkit.Client, share: int) -> None:
            queue = Queue(client, path)
            for n in range(share):
                await queue.put(b"%d" % n)

        async def consume(client: coordkit.Client) -> None:
            nonlocal taken
            queue = Queue(client, path)
            while True:
                await queue.get()
                taken += 1
                if taken == items:
                    done.set()

        start = anyio.current_time()
        with anyio.fail_after(RUN_TIMEOUT):
            async with anyio.create_task_group() as tg:
                for client in clients[producers:]:
                    tg.start_soon(consume, client)
                for i, client in enumerate(clients[:producers]):
                    share = items // producers + (i < items % producers)
                    tg.start_soon(produce, client, share)
                await done.wait()
                tg.cancel_scope.cancel()
        elapsed = anyio.current_time() - start
        await clients[0].delete(path, recursive=True)
    return items / elapsed


async def _wait_queued(election: Election, count: int) -> None:
    """Until ``count`` candidates are in line (polling: etcd's native keys are not in the tree)."""
    # The etcd-native Election has no public contenders() (yet): its private
    # _contender_values() answers the same question.
    contenders = getattr(election, "contenders", None) or election._contender_values  # type: ignore[attr-defined]
    while len(await contenders()) < count:  # noqa: ASYNC110
        await anyio.sleep(0.005)


async def failover_run(url: str, fault: str, election_class: type[Election]) -> float:
    """Seconds from killing the leader's session to ``observe()`` reporting the next leader."""
    path = f"/bench/election-{uuid.uuid4().hex}"
    async with (
        coordkit.connect(url) as doomed,
        coordkit.connect(url) as heir_client,
        coordkit.connect(url) as watcher,
    ):
        leader = election_class(doomed, path, "leader")
        heir = election_class(heir_client, path, "heir")
        await leader.campaign()
        heir_leads = anyio.Event()
        observed = anyio.Event()
        reported: list[str | None] = []
        seen_at = 0.0

        async def succeed() -> None:
            await heir.campaign()
            heir_leads.set()

        async def observe(leaders: Any) -> None:
            nonlocal seen_at
            async for identity in leaders:
                reported.append(identity)
                if identity == "heir":
                    seen_at = anyio.current_time()
                    observed.set()
                    return

        with anyio.fail_after(RUN_TIMEOUT):
            async with (
                aclosing(election_class(watcher, path, "observer").observe()) as leaders,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(succeed)
                await _wait_queued(heir, 2)
                if await anext(leaders) != "leader":
                    raise RuntimeError("observe() did not start with the leader")
                tg.start_soon(observe, leaders)
                killed_at = anyio.current_time()
                if fault == "expire":
                    await doomed.expire_session()
                else:
                    await doomed.aclose()
                await observed.wait()
                await heir_leads.wait()  # the heir itself learns it leads, too
            if reported != ["heir"]:
                raise RuntimeError(f"observe() reported {reported} after the kill, not ['heir']")
            await heir.resign()
        with suppress(NoNodeError):  # a native election keeps its keys outside the tree
            await heir_client.delete(path, recursive=True)
    return seen_at - killed_at


# -- the table -----------------------------------------------------------------------


@dataclass
class Series:
    values: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


@dataclass
class Row:
    name: str
    queue: Series | None
    expire: Series | None
    close: Series


def measure(series: Series, run: Callable[[], float]) -> None:
    """Add one run to ``series``; a failed run is recorded, not hidden."""
    try:
        series.values.append(run())
    except Exception as exc:
        series.error = f"{type(exc).__name__}: {exc}"[:200]


def cell(series: Series | None, base: Series | None, *, scale: float, digits: int) -> str:
    if series is None:
        return f"{'n/a':>22} {'':>6}"
    if series.median is None:
        return f"{'failed':>22} {'':>6}"
    low, high = min(series.values) * scale, max(series.values) * scale
    text = f"{series.median * scale:.{digits}f} [{low:.{digits}f}-{high:.{digits}f}]"
    ratio = ""
    if base is not None and base.median:
        ratio = f"{series.median / base.median:.2f}"
    return f"{text:>22} {ratio:>6}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_backend_arguments(parser)
    parser.add_argument("--items", type=int, default=2000, help="items per queue run")
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--consumers", type=int, default=4)
    args = parser.parse_args()
    notes: list[str] = []
    load_before = os.getloadavg()

    with backend_urls(parser, args, notes) as urls:
        rows: list[Row] = []
        plan: list[tuple[Row, str, type[Election]]] = []
        for name, url in urls.items():
            client = coordkit.connect(url)
            can_expire = coordkit.Capability.EXPIRE_SESSION in client.capabilities
            native = native_recipe(client.backend, "Election") is not None
            label = f"{name} (native Election)" if native else name
            row = Row(label, Series(), Series() if can_expire else None, Series())
            rows.append(row)
            plan.append((row, url, Election))
            if native:
                generic_expire = Series() if can_expire else None
                generic = Row(f"{name} (generic Election)", None, generic_expire, Series())
                rows.append(generic)
                plan.append((generic, url, GenericElection))

        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs} ...", file=sys.stderr, flush=True)
            for row, url, election_class in plan:
                if row.queue is not None:
                    sizes = (args.items, args.producers, args.consumers)
                    measure(row.queue, partial(anyio.run, queue_run, url, *sizes))
                if row.expire is not None:
                    expire = partial(anyio.run, failover_run, url, "expire", election_class)
                    measure(row.expire, expire)
                close = partial(anyio.run, failover_run, url, "close", election_class)
                measure(row.close, close)

    load_after = os.getloadavg()
    base = rows[0]
    print(
        f"queue: {args.producers} producers, {args.consumers} consumers, {args.items} items "
        f"per run; failover: leader + 1 queued candidate + observer"
    )
    print(
        f"median [min-max] of {args.runs} interleaved runs; ratio = backend / memory; "
        f"{os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after"
    )
    print(
        f"{'backend':<32} {'queue items/s':>22} {'ratio':>6} "
        f"{'failover expire ms':>22} {'ratio':>6} {'failover close ms':>22} {'ratio':>6}"
    )
    for row in rows:
        print(
            f"{row.name:<32} {cell(row.queue, base.queue, scale=1, digits=0)} "
            f"{cell(row.expire, base.expire, scale=1000, digits=1)} "
            f"{cell(row.close, base.close, scale=1000, digits=1)}"
        )
    for row in rows:
        for what, series in (("queue", row.queue), ("expire", row.expire), ("close", row.close)):
            if series is not None and series.error:
                kept = len(series.values)
                notes.append(f"{row.name} {what}: {args.runs - kept} run(s) failed: {series.error}")
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
