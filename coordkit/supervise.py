"""Run a command as a child process only while a lock or a leadership is held.

What ``coordkit lock NAME -- CMD`` and ``coordkit elect NAME -- CMD`` rely on.
The invariant: **the command runs only while the lock is held.** So:

* a stop signal (SIGTERM, SIGINT, SIGHUP) that reaches coordkit is forwarded
  to the command; if it has not exited ``kill_after`` seconds later it is
  killed (SIGKILL); the caller releases the lock only after :meth:`run`
  returns, that is after the command has exited;
* if the lock is lost while the command runs (its ``lost`` signal: the
  session ended, the node went), the command gets SIGTERM, then SIGKILL after
  ``kill_after``, and :meth:`run` returns :data:`LOST_EXIT`;
* the command runs in a process group of its own, and what is left of that
  group when the command exits (a background job of a shell script) is killed
  before :meth:`run` returns: nothing it started keeps running unlocked;
* if coordkit itself dies without a chance to clean up (SIGKILL, a crash,
  even a SIGKILL to its whole process group), a watchdog process beside it
  (in a session of its own) kills the command's process group: the lock
  stays with the dead session until the backend expires it (its TTL), the
  command is gone well before.

The child's group is not the terminal's foreground group, so a command that
reads from the terminal is stopped (SIGTTIN); a Ctrl-C reaches coordkit, which
forwards it. POSIX only.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Protocol

import anyio
import anyio.abc

__all__ = [
    "CANNOT_EXECUTE_EXIT",
    "LOST_EXIT",
    "NOT_FOUND_EXIT",
    "STOP_SIGNALS",
    "CommandNotRunError",
    "Held",
    "Supervisor",
    "exit_status",
]

log = logging.getLogger(__name__)

#: coordkit's exit status when the lock or leadership was lost while the
#: command ran (``EX_TEMPFAIL`` of sysexits.h: try again later).
LOST_EXIT = 75
#: the shell's statuses for a command that is not found / cannot be executed.
NOT_FOUND_EXIT = 127
CANNOT_EXECUTE_EXIT = 126
#: the signals coordkit forwards to the command (and that stop a wait for the lock).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Held(Protocol):
    """What :meth:`Supervisor.run` needs of a held lock or leadership."""

    async def wait_lost(self) -> None:
        """Return once the hold is lost."""
        ...


class CommandNotRunError(Exception):
    """The command could not be started; ``status`` is the shell's (127 or 126)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def exit_status(wait_status: int) -> int:
    """A ``waitpid`` status as a shell reports it: the exit code, or 128+N for signal N."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


#: The watchdog: a tiny process beside coordkit that kills the command's
#: process group if coordkit dies without saying "done" (SIGKILL, a crash),
#: which it sees as the end of its standard input. It ignores the stop signals
#: (coordkit forwards those) and imports nothing but the standard library.
WATCHDOG = """
import os, signal, sys
for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(signum, signal.SIG_IGN)
said = b""
while True:
    chunk = os.read(0, 64)
    if not chunk:
        break
    said += chunk
lines = said.split(b"\\n")
if lines[0] and b"done" not in lines[1:]:
    try:
        os.killpg(int(lines[0]), signal.SIGKILL)
    except ProcessLookupError:
        pass
"""


class _Child:
    """The command's process, leader of its own process group (pgid == pid), and its watchdog."""

    def __init__(self, cmd: Sequence[str], env: dict[str, str]) -> None:
        # In a session of its own, so that a signal to coordkit's whole process
        # group (the terminal's, a job control `kill -9 -PGID`) spares it.
        self.watchdog = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", WATCHDOG],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            # No preexec_fn: Popen can then use vfork, so no fork handlers of a
            # threaded client library (grpc's) run or print anything.
            self.process = subprocess.Popen(list(cmd), env=env, process_group=0)
        except OSError as exc:
            self._dismiss_watchdog()
            if isinstance(exc, FileNotFoundError):
                raise CommandNotRunError(f"command not found: {cmd[0]}", NOT_FOUND_EXIT) from None
            reason = "permission denied" if isinstance(exc, PermissionError) else exc.strerror
            raise CommandNotRunError(
                f"cannot run {cmd[0]}: {reason or exc}", CANNOT_EXECUTE_EXIT
            ) from None
        self.pid = self.process.pid
        self._tell_watchdog(f"{self.pid}\n".encode())
        self.exited = False  # a zombie now: its status is waiting, its group id reserved

    def _tell_watchdog(self, message: bytes) -> None:
        assert self.watchdog.stdin is not None
        try:
            self.watchdog.stdin.write(message)
            self.watchdog.stdin.flush()
        except BrokenPipeError:  # someone killed it: the command runs on without one
            log.warning("the watchdog of the command (pid %d) is gone", self.pid)

    def _dismiss_watchdog(self) -> None:
        """Tell the watchdog the command is gone, and wait for it to exit (at once)."""
        assert self.watchdog.stdin is not None
        with suppress(BrokenPipeError):
            self.watchdog.stdin.close()
        self.watchdog.wait()

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the command's process group (nothing if it is all gone)."""
        with suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    async def wait_exited(self) -> None:
        """Return once the command has exited, without reaping it.

        Not reaped, the command stays a zombie that keeps its process group id
        reserved, so :meth:`reap` can kill the rest of the group without the
        id having been reused by an unrelated group meanwhile.
        """
        if hasattr(os, "pidfd_open"):
            fd = os.pidfd_open(self.pid)
            try:
                await anyio.wait_readable(fd)
            finally:
                os.close(fd)
        else:
            await anyio.to_thread.run_sync(
                lambda: os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT),
                abandon_on_cancel=True,
            )
        self.exited = True

    def reap(self) -> int:
        """Kill what is left of the group, reap the command, return its shell status.

        If the command is still running (the caller was cancelled), it is killed
        too; SIGKILL ends it at once, so the wait below is short.
        """
        self.signal_group(signal.SIGKILL)
        self._tell_watchdog(b"done\n")
        self._dismiss_watchdog()
        _, wait_status = os.waitpid(self.pid, 0)
        self.process.returncode = os.waitstatus_to_exitcode(wait_status)  # Popen is done too
        return exit_status(wait_status)


class Supervisor:
    """The stop signals of one ``coordkit lock``/``elect`` run, and its command.

    Inside :meth:`handling_signals`, a stop signal cancels the wait in progress
    (see :meth:`interruptible`) or, while the command runs, is forwarded to it.
    :attr:`signal` is the first one received.
    """

    def __init__(self, kill_after: float) -> None:
        self.kill_after = kill_after
        self.signal: int | None = None
        self._scope: anyio.CancelScope | None = None
        self._child: _Child | None = None
        self._stopping = anyio.Event()

    @asynccontextmanager
    async def handling_signals(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            await tg.start(self._receive_signals)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    async def _receive_signals(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
            task_status.started()
            async for signum in signals:
                self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.signal is None:
            self.signal = signum
        if self._child is not None and not self._child.exited:
            log.info("%s received: forwarding it to the command (pid %d)", name, self._child.pid)
            self._child.signal_group(signum)
            self._stopping.set()
        elif self._scope is not None:
            log.info("%s received: stopping", name)
            self._scope.cancel()
        else:
            log.info("%s received: stopping once the lock is released", name)

    @contextmanager
    def interruptible(self) -> Iterator[anyio.CancelScope]:
        """A cancel scope that a stop signal cancels (already cancelled if one came)."""
        with anyio.CancelScope() as scope:
            if self.signal is not None:
                scope.cancel()
            self._scope = scope
            try:
                yield scope
            finally:
                self._scope = None

    async def run(self, cmd: Sequence[str], env: dict[str, str], held: Held, what: str) -> int:
        """Run ``cmd`` while ``held`` is held; return its shell status, or LOST_EXIT.

        Returns only once the command has exited and the rest of its process
        group was killed, whatever happened: a stop signal, the loss of
        ``held``, even the cancellation of the caller.
        Raises :class:`CommandNotRunError` if it cannot be started.
        """
        child = _Child(cmd, env)
        self._child = child
        lost = False
        try:
            if self.signal is not None:  # came between acquiring and starting the command
                child.signal_group(self.signal)
                self._stopping.set()
            async with anyio.create_task_group() as tg:

                async def stop_on_loss() -> None:
                    nonlocal lost
                    await held.wait_lost()
                    lost = True
                    log.warning("lost %s: stopping the command (pid %d)", what, child.pid)
                    child.signal_group(signal.SIGTERM)
                    self._stopping.set()

                async def kill_after_grace() -> None:
                    await self._stopping.wait()
                    await anyio.sleep(self.kill_after)
                    log.warning(
                        "the command (pid %d) still runs %s s after it was asked to stop: "
                        "killing it",
                        child.pid,
                        self.kill_after,
                    )
                    child.signal_group(signal.SIGKILL)

                tg.start_soon(stop_on_loss)
                tg.start_soon(kill_after_grace)
                await child.wait_exited()
                tg.cancel_scope.cancel()
        finally:
            self._child = None
            status = child.reap()
        return LOST_EXIT if lost else status
