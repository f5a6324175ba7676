"""``coordkit demo``: a handful of workers coordinating through the recipes, live.

Five workers in this process, each with its own client (its own session, as
separate processes would have), all at once:

* contend for one :class:`~coordkit.recipes.Lock` and hold it briefly;
* campaign in one :class:`~coordkit.recipes.Election`; the leader feeds a
  :class:`~coordkit.recipes.Queue` and rewrites a config node every second;
* take items from the queue (each item reaches exactly one worker);
* hot-reload the config through a :class:`~coordkit.recipes.ConfigWatch`.

Halfway through, the server leading the cluster is killed when the backend
can do that (the embedded Raft cluster, the default): a new Raft leader is
elected and the workers carry on; elsewhere the elected worker's session is
expired instead. At the end the queue is drained and every acknowledged item
is accounted for. Every number shown comes from a recipe call
that actually happened: a lock ``async with`` entered, an item ``get``
returned, a leader reported by ``Election.observe``, a config value
delivered by ``ConfigWatch.changes``.
"""

from __future__ import annotations

import importlib
import logging
import math
import random
import sys
import time
import uuid
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field
from typing import Any, TextIO

import anyio

from .backend import Session
from .client import Client, connect
from .config import resolve_url
from .errors import CoordkitError, InvalidArgumentError, WrongTypeError
from .model import Capability

__all__ = ["DemoSummary", "main", "run_demo"]

log = logging.getLogger(__name__)

WORKERS = 5
#: the leader stops producing while this many items wait, so the queue stays short.
BACKLOG = 200
CONFIG_PERIOD = 1.0


def _recipe(module: str, name: str) -> Any:
    """A recipe class, imported when the demo runs: the core does not depend on recipes."""
    return getattr(importlib.import_module(f"coordkit.recipes.{module}"), name)


@dataclass
class DemoSummary:
    """What the demo measured; every count is of recipe operations that happened."""

    url: str
    duration: float
    workers: int
    lock_acquisitions: int = 0
    #: acquisitions by a different worker than the previous holder.
    lock_handoffs: int = 0
    #: times two workers were inside the lock at once while both still had
    #: their sessions (must stay 0).
    exclusion_violations: int = 0
    #: times a new holder entered while the previous one, whose session had
    #: ended on the servers, had not yet been told (its body was then
    #: cancelled). Inherent to any lease-based lock; the fencing token (which
    #: the new holder's is higher than) is what lets a resource refuse the old.
    stale_overlaps: int = 0
    items_put: int = 0
    items_passed: int = 0
    #: items a worker got that some worker had got before (must stay 0).
    duplicate_deliveries: int = 0
    #: leaders in the order ``Election.observe`` reported them.
    leaders: list[str] = field(default_factory=list)
    config_writes: int = 0
    config_reloads: int = 0
    config_version: int = 0
    #: seconds from expiring the leader's session to the next leader being reported.
    failover_seconds: float | None = None
    failover_note: str = ""
    #: items whose put was acknowledged but that no worker got, even after the
    #: queue was drained at the end (must stay 0).
    items_lost: int = 0
    #: items left in the queue when the workers stopped, taken by the final drain.
    items_drained: int = 0
    #: puts stopped at the end before their answer came (they may have happened).
    items_unconfirmed: int = 0
    #: the cluster's own server failover (when the backend can kill its leader):
    #: which server was killed, which took over, and how long the cluster had none.
    server_killed: str = ""
    server_new_leader: str = ""
    server_failover_seconds: float | None = None

    @property
    def leader_changes(self) -> int:
        return max(len(self.leaders) - 1, 0)

    def _unconfirmed(self) -> str:
        n = self.items_unconfirmed
        if not n:
            return ""
        return f"; {n} more put{'s' if n > 1 else ''} cut short at the stop, may have happened"

    def rate(self, count: int) -> float:
        return count / self.duration if self.duration > 0 else 0.0

    def render(self) -> str:
        failover = (
            f"{self.failover_seconds * 1000:.1f} ms"
            if self.failover_seconds is not None
            else self.failover_note or "not tried"
        )
        lines = [
            f"coordkit demo summary ({self.workers} workers on {self.url}, {self.duration:.1f} s)",
            f"  lock:     {self.lock_acquisitions} acquisitions, {self.lock_handoffs} handoffs "
            f"({self.rate(self.lock_handoffs):.1f}/s), "
            f"{self.exclusion_violations} exclusion violations"
            + (
                f" ({self.stale_overlaps} overlaps with a holder whose session had ended, "
                "fenced by its lower token)"
                if self.stale_overlaps
                else ""
            ),
            f"  queue:    {self.items_passed} items passed of {self.items_put} put "
            f"({self.rate(self.items_passed):.0f} items/s; {self.items_drained} drained at the "
            f"end{self._unconfirmed()}), {self.items_lost} lost, "
            f"{self.duplicate_deliveries} delivered twice",
            f"  election: {self.leader_changes} leader changes "
            f"({' -> '.join(self.leaders) or 'none'}); failover {failover}",
            f"  config:   {self.config_writes} writes, {self.config_reloads} reloads across "
            f"workers, final version {self.config_version}",
        ]
        if self.server_killed:
            took = (
                f"{self.server_new_leader} elected in {self.server_failover_seconds * 1000:.0f} ms"
                if self.server_failover_seconds is not None
                else "no new leader seen"
            )
            lines.append(f"  servers:  leader {self.server_killed} killed halfway; {took}")
        verdict = (
            "no two lock holders overlapped; no queue item lost or duplicated"
            if self.clean
            else "VIOLATIONS: see the counts above"
        )
        lines.append(f"  verdict:  {verdict}")
        return "\n".join(lines)

    @property
    def clean(self) -> bool:
        return (
            self.exclusion_violations == 0
            and self.duplicate_deliveries == 0
            and self.items_lost == 0
            and self.items_passed > 0
        )


@dataclass
class _Worker:
    name: str
    client: Client
    holds_lock: bool = False
    #: another worker entered the lock while this one held it (see ``lock_loop``).
    overlapped: bool = False
    leading: bool = False
    items: int = 0
    config_version: int = 0
    reloads: int = 0


class _Demo:
    def __init__(self, summary: DemoSummary, base: str) -> None:
        self.summary = summary
        self.base = base
        self.workers: list[_Worker] = []
        self.last_holder: str | None = None
        self.holders = 0
        self.current_leader: str | None = None
        self.backlog_low = anyio.Event()
        self.started = time.monotonic()
        self.killed_at: float | None = None
        self.next_item = 0
        self.delivered: set[bytes] = set()
        self.put_ok: set[bytes] = set()
        self.put_started: set[bytes] = set()
        #: set at the end: consumers finish the item they are taking, then stop.
        self.stopping = anyio.Event()
        self.server_leader: str | None = None

    # -- the workers' loops ---------------------------------------------------

    async def lock_loop(self, worker: _Worker) -> None:
        lock = _recipe("lock", "Lock")(worker.client, f"{self.base}/lock", worker.name)
        backoff = worker.client.options.retry.backoff(what=f"{worker.name}'s lock", logger=log)
        while True:
            held_under = worker.client.session
            try:
                async with lock:
                    held_under = worker.client.session  # the session it is held under
                    self.holders += 1
                    worker.holds_lock = True
                    self.summary.lock_acquisitions += 1
                    for other in self.workers:
                        if other is not worker and other.holds_lock:
                            other.overlapped = True  # judged when it leaves (below)
                    if self.last_holder not in (None, worker.name):
                        self.summary.lock_handoffs += 1
                    self.last_holder = worker.name
                    try:
                        await anyio.sleep(random.uniform(0.02, 0.12))  # the "work" under the lock
                    finally:
                        self.holders -= 1
                        worker.holds_lock = False
                backoff.reset()
            except CoordkitError as exc:
                await backoff.wait(exc)  # lost with the session: queue again shortly
            await self._judge_overlap(worker, held_under)
            await anyio.sleep(random.uniform(0.0, 0.03))  # let someone else in

    async def _judge_overlap(self, worker: _Worker, held_under: Session) -> None:
        """Someone entered while ``worker`` held the lock: fine only if its session had ended.

        Then the servers had already given the lock on and ``worker`` held a
        lower fencing token; it learns of the loss a moment later (its body is
        cancelled), so wait for that news, up to the session's TTL. A holder
        whose session stays alive overlapping another is a real violation.
        """
        if not worker.overlapped:
            return
        worker.overlapped = False
        try:
            with anyio.move_on_after(held_under.ttl):
                await held_under.wait_lost()
        finally:  # also when the demo ends meanwhile: undecided counts as a violation
            if held_under.lost:
                self.summary.stale_overlaps += 1
            else:
                self.summary.exclusion_violations += 1

    async def election_loop(self, worker: _Worker) -> None:
        election_class = _recipe("election", "Election")
        election = election_class(worker.client, f"{self.base}/leader", worker.name)
        backoff = worker.client.options.retry.backoff(what=f"{worker.name}'s candidacy", logger=log)
        while True:
            try:
                async with election:
                    worker.leading = True
                    backoff.reset()
                    try:
                        await self.lead(worker)
                    finally:
                        worker.leading = False
            except* CoordkitError as group:
                # Leadership lost with the session (LockLostError), or the
                # leader's own calls failed as it went (grouped by its task
                # group): campaign again.
                await backoff.wait(group.exceptions[0])

    async def lead(self, worker: _Worker) -> None:
        """As leader: feed the queue and rewrite the config every second."""
        queue = _recipe("queue", "Queue")(worker.client, f"{self.base}/queue")
        config = _recipe("config_watch", "ConfigWatch")(worker.client, f"{self.base}/config")
        async with anyio.create_task_group() as tg:

            async def write_config() -> None:
                while True:
                    await config.update(
                        lambda old: {
                            "version": (old or {}).get("version", 0) + 1,
                            "written_by": worker.name,
                        }
                    )
                    self.summary.config_writes += 1
                    await anyio.sleep(CONFIG_PERIOD)

            tg.start_soon(write_config)
            while True:
                if self.summary.items_put - self.summary.items_passed >= BACKLOG:
                    self.backlog_low = anyio.Event()
                    await self.backlog_low.wait()
                item, self.next_item = self.next_item, self.next_item + 1
                payload = b"item-%d" % item
                self.put_started.add(payload)
                await queue.put(payload)
                self.put_ok.add(payload)  # acknowledged: it must reach a worker
                self.summary.items_put += 1

    async def consume_loop(self, worker: _Worker) -> None:
        queue = _recipe("queue", "Queue")(worker.client, f"{self.base}/queue")
        backoff = worker.client.options.retry.backoff(what=f"{worker.name}'s queue", logger=log)
        while not self.stopping.is_set():
            try:
                item = await queue.get(timeout=0.25)  # stop only between items, never mid-get
            except TimeoutError:
                continue
            except CoordkitError as exc:
                # e.g. SessionExpiredError from calls made while the backend
                # replaces an expired session: the queue itself is unharmed.
                await backoff.wait(exc)
                continue
            backoff.reset()
            if item in self.delivered:
                self.summary.duplicate_deliveries += 1
            self.delivered.add(item)
            worker.items += 1
            self.summary.items_passed += 1
            if self.summary.items_put - self.summary.items_passed < BACKLOG // 2:
                self.backlog_low.set()

    async def config_loop(self, worker: _Worker) -> None:
        config_watch = _recipe("config_watch", "ConfigWatch")
        async with config_watch(worker.client, f"{self.base}/config").changes() as values:
            async for value in values:
                if value is None:
                    continue
                worker.reloads += 1
                worker.config_version = int(value["version"])
                self.summary.config_reloads += 1
                self.summary.config_version = max(
                    self.summary.config_version, worker.config_version
                )

    # -- the supervisor ----------------------------------------------------------

    async def observe_leaders(self, client: Client) -> None:
        observer = _recipe("election", "Election")(client, f"{self.base}/leader", "observer")
        async with aclosing(observer.observe()) as leaders:
            async for leader in leaders:
                self.current_leader = leader
                if leader is None:
                    continue
                self.summary.leaders.append(leader)
                if self.killed_at is not None and self.summary.failover_seconds is None:
                    self.summary.failover_seconds = time.monotonic() - self.killed_at

    async def fail_over(self, after: float, supervisor: Client) -> None:
        """Halfway: kill the cluster's leading server if the backend can (the embedded
        Raft cluster), else expire the elected worker's session."""
        await anyio.sleep(after)
        if Capability.KILL_LEADER in supervisor.capabilities:
            await self._kill_server_leader(supervisor)
            return
        leader = next((w for w in self.workers if w.name == self.current_leader), None)
        if leader is None:
            self.summary.failover_note = "no leader to kill"
            return
        if Capability.EXPIRE_SESSION not in leader.client.capabilities:
            self.summary.failover_note = "the backend cannot expire a session on demand"
            return
        self.killed_at = time.monotonic()
        await leader.client.expire_session()

    async def _kill_server_leader(self, supervisor: Client) -> None:
        """Kill the Raft leader; time until the survivors report a new one. The
        workers carry on through it (their clients reconnect to the new leader)."""
        summary = self.summary
        try:
            killed = await supervisor.kill_leader(restart_after=3.0)
        except CoordkitError as exc:
            summary.failover_note = f"could not kill the leader: {exc}"
            return
        summary.server_killed = killed
        killed_at = time.monotonic()
        while True:
            try:
                with anyio.fail_after(5):
                    leader = (await supervisor.status()).leader
            except (CoordkitError, TimeoutError):
                leader = None
            if leader is not None and leader != killed:
                summary.server_new_leader = leader
                summary.server_failover_seconds = time.monotonic() - killed_at
                return
            await anyio.sleep(0.01)

    async def follow_servers(self, client: Client) -> None:
        """Which server leads the cluster, for the live view (backends that say)."""
        while True:
            try:
                with anyio.move_on_after(2):
                    self.server_leader = (await client.status()).leader
            except CoordkitError:
                self.server_leader = None
            await anyio.sleep(0.25)

    async def drain(self, client: Client) -> None:
        """After the workers stop: take what is left in the queue, then count losses."""
        queue = _recipe("queue", "Queue")(client, f"{self.base}/queue")
        while await queue.size() > 0:
            try:
                item = await queue.get(timeout=2.0)
            except TimeoutError:
                break
            if item in self.delivered:
                self.summary.duplicate_deliveries += 1
            self.delivered.add(item)
            self.summary.items_drained += 1
        self.summary.items_lost = len(self.put_ok - self.delivered)
        # A put cut short at the end may still have happened: it may be delivered.
        self.summary.items_unconfirmed = len(self.put_started - self.put_ok)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


async def _view(demo: _Demo, out: TextIO, duration: float, live: bool) -> None:
    """Redraw a small table twice a second on a terminal; a line a second otherwise."""
    drawn = 0
    while True:
        s = demo.summary
        t = demo.elapsed()
        holder = next((w.name for w in demo.workers if w.holds_lock), "-")
        if live:
            lines = [
                f"coordkit demo on {s.url}   {t:5.1f} s / {duration:.0f} s",
                f"{'worker':8}{'lock':8}{'leader':8}{'items':>8}{'config':>8}{'reloads':>9}",
            ]
            for w in demo.workers:
                lines.append(
                    f"{w.name:8}{'HOLDS' if w.holds_lock else '':8}"
                    f"{'LEADS' if w.leading else '':8}{w.items:8d}"
                    f"{'v' + str(w.config_version):>8}{w.reloads:9d}"
                )
            lines.append(_totals(s, t))
            if demo.server_leader is not None:
                lines.append(f"cluster leader: {demo.server_leader}")
            if drawn:
                out.write(f"\x1b[{drawn}F")
            out.write("".join(f"\x1b[2K{line}\n" for line in lines))
            drawn = len(lines)
        else:
            server = f" server={demo.server_leader}" if demo.server_leader else ""
            out.write(
                f"[{t:5.1f}s] lock={holder} leader={demo.current_leader or '-'}{server} "
                f"{_totals(s, t)}\n"
            )
        out.flush()
        period = 0.5 if live else 1.0
        await anyio.sleep(period - demo.elapsed() % period)  # on whole periods: 1.0 s, 2.0 s


def _totals(s: DemoSummary, t: float) -> str:
    per = (lambda n: n / t) if t > 0 else (lambda n: 0.0)
    return (
        f"handoffs {s.lock_handoffs} ({per(s.lock_handoffs):.1f}/s)  "
        f"items {s.items_passed} ({per(s.items_passed):.0f}/s)  "
        f"leader changes {s.leader_changes}  config v{s.config_version} "
        f"({s.config_reloads} reloads)"
    )


async def run_demo(url: str | None, duration: float, out: TextIO) -> DemoSummary:
    """Run the demo on ``url`` (None: the default backend) for ``duration`` seconds.

    Writes the live view to ``out`` (a redrawn table on a terminal, a line a
    second otherwise) and then the summary, which it returns. Everything
    lives under a fresh path, removed at the end.
    """
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        raise WrongTypeError(f"duration must be a number of seconds, not {duration!r}")
    if not 0 < duration < math.inf:
        raise InvalidArgumentError(f"duration must be a positive number of seconds, not {duration}")
    resolved = resolve_url(url)
    summary = DemoSummary(url=resolved, duration=duration, workers=WORKERS)
    demo = _Demo(summary, f"/coordkit-demo/{uuid.uuid4().hex[:8]}")
    async with AsyncExitStack() as stack:
        supervisor = await stack.enter_async_context(connect(resolved))
        for i in range(WORKERS):
            client = await stack.enter_async_context(connect(resolved))
            demo.workers.append(_Worker(f"w{i + 1}", client))
        try:
            demo.started = time.monotonic()
            async with anyio.create_task_group() as consumers:
                for worker in demo.workers:
                    consumers.start_soon(demo.consume_loop, worker)
                with anyio.move_on_after(duration):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(demo.observe_leaders, supervisor)
                        if Capability.KILL_LEADER in supervisor.capabilities:
                            tg.start_soon(demo.follow_servers, supervisor)
                        for worker in demo.workers:
                            for loop in (demo.config_loop, demo.lock_loop, demo.election_loop):
                                tg.start_soon(loop, worker)
                        tg.start_soon(demo.fail_over, duration / 2, supervisor)
                        tg.start_soon(_view, demo, out, duration, out.isatty())
                demo.stopping.set()
            summary.duration = demo.elapsed()
            with anyio.fail_after(30):
                await demo.drain(supervisor)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await supervisor.delete(demo.base, recursive=True)
    out.write("\n" + summary.render() + "\n")
    out.flush()
    return summary


def main(url: str | None = None, duration: float = 20.0) -> int:
    """Run the demo on stdout; exit status 0 when it ran clean.

    Clean: items passed, never two lock holders with live sessions at once, no
    item delivered twice, no acknowledged item lost.
    """
    summary = anyio.run(run_demo, url, duration, sys.stdout)
    return 0 if summary.clean else 1
