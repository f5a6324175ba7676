"""``coordkit lock`` / ``coordkit elect`` with real processes and real signals.

Each ``coordkit`` is a process of its own on a shared real etcd server; each
runs a small Python command that appends ``NAME EVENT MONOTONIC-TIME`` lines
to one log file (CLOCK_MONOTONIC is one clock for every process of the
machine). Two commands holding one lock must never have overlapping spans.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from etcd_servers import EtcdCluster

from coordkit.supervise import LOST_EXIT

pytestmark = pytest.mark.timeout(240)

#: A session that a SIGKILLed coordkit leaves behind expires this fast.
SESSION_TTL = 2

#: The command each coordkit runs: ``child.py NAME LOG MODE``.
CHILD = r"""
import os, signal, sys, time

name, log, mode = sys.argv[1], sys.argv[2], sys.argv[3]

def note(event):
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{name} {event} {time.monotonic():.6f} {os.getpid()}\n".encode())
    finally:
        os.close(fd)

def graceful(signum, frame):
    note("got-term")
    time.sleep(1.5)  # cleaning up: still running, still needs the lock
    note("end")
    sys.exit(7)

def stubborn(signum, frame):
    note("got-" + signal.Signals(signum).name)

note("start")
if mode == "work":
    time.sleep(0.5)
    note("end")
elif mode == "graceful":
    signal.signal(signal.SIGTERM, graceful)
    while True:
        time.sleep(0.05)
        note("tick")
elif mode in ("stubborn", "ticker"):
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, stubborn)
        signal.signal(signal.SIGINT, stubborn)
    for _ in range(1200):  # a minute: far longer than any test waits
        time.sleep(0.05)
        note("tick")
    note("end")
elif mode == "suicide":
    os.kill(os.getpid(), signal.SIGTERM)
"""


class Run:
    """The log file and the child script of one test, and the coordkit processes."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.url = url
        self.log = tmp_path / "spans.log"
        self.child = tmp_path / "child.py"
        self.child.write_text(CHILD)
        self.processes: list[subprocess.Popen[str]] = []

    def command(self, name: str, mode: str) -> list[str]:
        return [sys.executable, "-I", "-S", str(self.child), name, str(self.log), mode]

    def coordkit(self, *args: str, process_group: int = -1) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "coordkit.cli", "--url", self.url, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            process_group=process_group,  # 0: a group of its own, to kill as a whole
        )
        self.processes.append(process)
        return process

    def lock(
        self, name: str, mode: str, *options: str, process_group: int = -1
    ) -> subprocess.Popen[str]:
        return self.coordkit(
            "lock",
            "/locks/job",
            *options,
            "--",
            *self.command(name, mode),
            process_group=process_group,
        )

    def events(self) -> list[tuple[str, str, float]]:
        return [(name, event, at) for name, event, at, _ in self._lines()]

    def _lines(self) -> list[tuple[str, str, float, int]]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            name, event, at, pid = line.split()
            out.append((name, event, float(at), int(pid)))
        return out

    def pid(self, name: str) -> int:
        return next(pid for n, _, _, pid in self._lines() if n == name)

    def has(self, name: str, event: str) -> bool:
        return any(n == name and e == event for n, e, _ in self.events())

    def spans(self) -> dict[str, tuple[float, float]]:
        """Per command: its first and its last line (it was running in between)."""
        spans: dict[str, tuple[float, float]] = {}
        for name, _, at in self.events():
            first, _last = spans.get(name, (at, at))
            spans[name] = (first, at)
        return spans

    def assert_no_overlap(self) -> None:
        ordered = sorted(self.spans().items(), key=lambda item: item[1][0])
        for (a, (_, a_last)), (b, (b_first, _)) in itertools.pairwise(ordered):
            assert a_last < b_first, f"{a} ran until {a_last}, after {b} started at {b_first}"

    def finish(self, process: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
        _, err = process.communicate(timeout=timeout)
        return process.returncode, err

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.communicate()


def wait_until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    """Return once ``check()`` is true: the state lives in other processes, polled."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def run(tmp_path: Path, etcd_server: EtcdCluster) -> Iterator[Run]:
    url = etcd_server.url(f"/t-{uuid.uuid4().hex}")
    runner = Run(tmp_path, f"{url}?session_ttl={SESSION_TTL}")
    yield runner
    runner.close()


def test_sigterm_is_forwarded_and_the_lock_released_only_after_the_command_exits(
    run: Run,
) -> None:
    first = run.lock("A", "graceful")
    wait_until(lambda: run.has("A", "start"))
    second = run.lock("B", "work")
    first.send_signal(signal.SIGTERM)  # to coordkit alone, not to its command
    code, err = run.finish(first)
    assert code == 7, err  # the command's own status, after its clean-up
    assert run.has("A", "got-term") and run.has("A", "end")
    code, err = run.finish(second)
    assert code == 0, err
    run.assert_no_overlap()  # B began only after A's clean-up ended


def test_a_command_that_ignores_sigterm_is_killed_after_kill_after(run: Run) -> None:
    first = run.lock("A", "stubborn", "--kill-after", "1")
    wait_until(lambda: run.has("A", "start"))
    second = run.lock("B", "work")
    first.send_signal(signal.SIGINT)
    code, err = run.finish(first)
    assert code == 128 + signal.SIGKILL, err  # it died of the SIGKILL: 137
    assert run.has("A", "got-SIGINT") and not run.has("A", "got-SIGTERM")  # as it came
    code, err = run.finish(second)
    assert code == 0, err
    run.assert_no_overlap()


@pytest.mark.parametrize(
    ("kill", "whole_group"),
    [(signal.SIGKILL, False), (signal.SIGKILL, True), (signal.SIGTERM, False)],
    ids=["SIGKILL", "SIGKILL-to-its-group", "SIGTERM"],
)
def test_two_lockers_and_a_killed_one_never_run_their_commands_together(
    run: Run, kill: signal.Signals, whole_group: bool
) -> None:
    victim = run.lock("victim", "ticker", process_group=0)
    wait_until(lambda: run.has("victim", "tick"))
    others = [run.lock(name, "work") for name in ("B", "C")]
    if whole_group:  # coordkit and everything in its process group at once
        os.killpg(victim.pid, kill)
    else:
        os.kill(victim.pid, kill)
    code, _ = run.finish(victim)
    # SIGKILL: coordkit dies at once; its watchdog kills the command.
    # SIGTERM: forwarded; the ticker dies of it and coordkit reports that.
    assert code == (-signal.SIGKILL if kill == signal.SIGKILL else 128 + signal.SIGTERM)
    for process in others:
        code, err = run.finish(process)
        assert code == 0, err
    assert set(run.spans()) == {"victim", "B", "C"}
    run.assert_no_overlap()


def test_a_lost_lock_stops_the_command_and_exits_75(run: Run) -> None:
    locker = run.coordkit(
        "-v", "lock", "/locks/job", "--kill-after", "1", "--", *run.command("A", "stubborn")
    )
    wait_until(lambda: run.has("A", "tick"))
    # The session's lease, as the -v log names it: revoking it is what an
    # expiry after a partition does to the lock.
    assert locker.stderr is not None
    session = None
    while session is None:
        session = re.search(r"\(session 0x([0-9a-f]+)\)", locker.stderr.readline())
    etcd = run.url.split("//")[1].split("/")[0]
    subprocess.run(
        ["etcdctl", f"--endpoints={etcd}", "lease", "revoke", session[1]],
        check=True,
        capture_output=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    code, err = run.finish(locker)
    assert code == LOST_EXIT, err
    assert "coordkit: error: lost the lock /locks/job while the command ran: stopped it" in (
        err.splitlines()
    )
    assert run.has("A", "got-SIGTERM")  # asked first, then killed after --kill-after
    assert not run.has("A", "end")
    assert not alive(run.pid("A"))  # coordkit returned only once it was gone


def test_what_the_command_leaves_in_its_process_group_is_killed_before_release(
    run: Run,
) -> None:
    # The shell starts a ticker in the background and exits at once.
    script = f"{' '.join(run.command('bg', 'ticker'))} & echo $! > {run.log}.pid"
    first = run.coordkit("lock", "/locks/job", "--", "sh", "-c", script)
    code, err = run.finish(first)
    assert code == 0, err
    ticker = int(Path(f"{run.log}.pid").read_text())
    wait_until(lambda: not alive(ticker))
    second = run.lock("B", "work")
    code, err = run.finish(second)
    assert code == 0, err
    run.assert_no_overlap()


def test_the_exit_status_follows_the_command_and_a_signal_death_is_128_plus_n(run: Run) -> None:
    code, err = run.finish(run.lock("A", "suicide"))
    assert (code, err) == (128 + signal.SIGTERM, "")
    code, err = run.finish(
        run.coordkit("lock", "/locks/job", "--", sys.executable, "-c", "raise SystemExit(42)")
    )
    assert (code, err) == (42, "")


def test_a_command_not_found_exits_127_with_one_line(run: Run) -> None:
    code, err = run.finish(run.coordkit("lock", "/locks/job", "--", "no-such-command-here"))
    assert code == 127
    assert err == "coordkit: error: command not found: no-such-command-here\n"
    code, err = run.finish(run.lock("B", "work", "--timeout", "30"))
    assert code == 0, err


def test_sigterm_to_the_leader_hands_over_only_after_its_command_exited(run: Run) -> None:
    leader = run.coordkit("elect", "/election/job", "--", *run.command("A", "graceful"))
    wait_until(lambda: run.has("A", "start"))
    follower = run.coordkit("elect", "/election/job", "--", *run.command("B", "work"))
    leader.send_signal(signal.SIGTERM)
    code, err = run.finish(leader)
    assert code == 7, err
    code, err = run.finish(follower)
    assert code == 0, err
    assert run.has("A", "got-term")
    run.assert_no_overlap()


def test_sigterm_while_waiting_for_the_lock_withdraws_and_exits_143(run: Run) -> None:
    holder = run.lock("A", "graceful")
    wait_until(lambda: run.has("A", "start"))
    waiter = run.lock("W", "work", "-v")
    assert waiter.stderr is not None
    while "connected to" not in waiter.stderr.readline():
        pass  # its handlers are in place before it connects
    waiter.send_signal(signal.SIGTERM)
    code, err = run.finish(waiter)
    assert code == 128 + signal.SIGTERM, err
    holder.send_signal(signal.SIGTERM)
    assert run.finish(holder)[0] == 7
    code, err = run.finish(run.lock("C", "work", "--timeout", "30"))
    assert code == 0, err
    assert not run.has("W", "start")


def test_a_leader_without_a_command_resigns_on_sigterm(run: Run) -> None:
    leader = run.coordkit("elect", "/election/idle", "--identity", "idle-leader")
    assert leader.stdout is not None
    assert leader.stdout.readline().startswith("leading /election/idle as idle-leader")
    leader.send_signal(signal.SIGTERM)
    code, err = run.finish(leader)
    assert (code, err) == (128 + signal.SIGTERM, "")
    listener = run.coordkit("elect", "/election/idle", "--listen", "--count", "1")
    out, err = listener.communicate(timeout=60)
    assert (listener.returncode, out) == (0, "(no leader)\n"), err
