"""The coordkit command line: in-process against a memory store, and as a process.

Every user mistake is one line ``coordkit: error: ...`` on standard error and a
non-zero status (2: usage, 1: operation); the process tests check exactly that.
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest
from etcd_servers import EtcdCluster

import coordkit
from coordkit.cli import _process_local, main
from coordkit.supervise import LOST_EXIT, Supervisor

NOTE = "coordkit: note: "


@pytest.fixture
def url() -> str:
    return f"memory://cli-{uuid.uuid4().hex}"


def test_put_get_ls_rm_round_trip(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", url, "put", "/app/config", "hello"]) == 0
    assert main(["--url", url, "put", "/app/other", "x"]) == 0
    assert main(["--url", url, "get", "/app/config", "--stat"]) == 0
    out = capsys.readouterr().out
    assert "hello" in out and "version=0" in out
    assert main(["--url", url, "put", "/app/config", "v2", "--version", "0"]) == 0
    assert main(["--url", url, "ls", "/app"]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == ["config", "other"]
    assert main(["--url", url, "rm", "-r", "/app"]) == 0
    assert main(["--url", url, "get", "/app/config"]) == 1
    assert errors(capsys.readouterr().err) == ["coordkit: error: no node /app/config"]


def test_bad_version_is_an_error_exit(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", url, "put", "/k", "a"]) == 0
    assert main(["--url", url, "put", "/k", "b", "--version", "7"]) == 1
    [error] = errors(capsys.readouterr().err)
    assert error.startswith("coordkit: error: version does not match")


def errors(stderr: str) -> list[str]:
    """Standard error without the memory:// note."""
    return [line for line in stderr.splitlines() if not line.startswith(NOTE)]


def test_invalid_path_and_unknown_scheme_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--url", "memory://cli-bad", "get", "relative"])
    assert exit_info.value.code == 2
    assert "absolute" in capsys.readouterr().err
    assert main(["--url", "nosuch://x", "status"]) == 2
    assert "installed schemes" in capsys.readouterr().err


def test_watch_replays_history_from_a_revision(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for value in ("a", "b", "c"):
        assert main(["--url", url, "put", "/w", value]) == 0
    capsys.readouterr()
    assert main(["--url", url, "watch", "/w", "--from-revision", "1", "--count", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1:] for line in lines] == [
        ["created", "/w", "a"],
        ["updated", "/w", "b"],
        ["updated", "/w", "c"],
    ]


def test_status_reports_the_revision(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", url, "put", "/s", "1"]) == 0
    assert main(["--url", url, "status"]) == 0
    out = capsys.readouterr().out
    assert "backend:  memory" in out and "revision: 1" in out


def test_lock_passes_the_command_exit_status_and_releases(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["--url", url, "lock", "/locks/job", "--", sys.executable, "-c", "raise SystemExit(3)"]
    )
    assert code == 3  # the command's own exit status
    capsys.readouterr()
    assert main(["--url", url, "ls", "/locks/job"]) == 0
    assert capsys.readouterr().out == ""  # no lock node left behind
    assert main(["--url", url, "lock", "/locks/job", "--timeout", "5", "--", "true"]) == 0


def test_console_script_is_installed() -> None:
    code, out, _ = coordkit_process("--help")
    assert code == 0
    for command in ("demo", "status", "get", "put", "ls", "rm", "watch", "lock"):
        assert command in out


def test_elect_runs_the_command_while_leading_then_resigns(
    url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "--url",
            url,
            "elect",
            "/election/job",
            "--identity",
            "worker-a",
            "--",
            sys.executable,
            "-c",
            "import os; print('token', os.environ['COORDKIT_FENCING_TOKEN']); raise SystemExit(4)",
        ]
    )
    assert code == 4
    out = capfd.readouterr().out
    token = re.search(r"leading /election/job as worker-a \(token (\d+)\)", out)
    assert token is not None, out
    assert f"token {token[1]}\n" in out  # what the command found in its environment
    assert main(["--url", url, "elect", "/election/job", "--listen", "--count", "1"]) == 0
    assert capfd.readouterr().out == "(no leader)\n"  # the candidacy went with the command


@pytest.mark.anyio
async def test_a_lost_lock_stops_the_command(url: str) -> None:
    from coordkit.recipes import Lock

    async with coordkit.connect(url) as client:
        lock = Lock(client, "/locks/long")
        assert await lock.acquire()
        sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
        supervisor = Supervisor(kill_after=5)
        with anyio.fail_after(20):  # far less than the command's 60 s: it was stopped
            async with anyio.create_task_group() as tg:
                outcome: list[int] = []

                async def run() -> None:
                    outcome.append(await supervisor.run(sleeper, {}, lock, "/locks/long"))

                tg.start_soon(run)
                await anyio.wait_all_tasks_blocked()
                await client.expire_session()
        assert outcome == [LOST_EXIT]
        assert lock.lost


def test_url_is_accepted_after_the_command_too(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["put", "/after", "x", "--url", url]) == 0
    assert main(["--url", url, "get", "/after"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "x"


def test_verbose_and_log_level_show_coordkit_logs_on_stderr_for_the_run_only(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    coordkit_logger = logging.getLogger("coordkit")
    handlers, level = list(coordkit_logger.handlers), coordkit_logger.level
    assert main(["--url", url, "put", "/quiet", "x"]) == 0
    assert errors(capsys.readouterr().err) == []  # WARNING by default: nothing to say
    assert main(["--url", url, "-v", "get", "/quiet"]) == 0
    err = capsys.readouterr().err
    assert f"INFO coordkit.client: connected to {url} (session " in err
    assert "DEBUG" not in err
    assert main(["get", "/quiet", "--url", url, "-vv"]) == 0  # also after the command
    assert "DEBUG coordkit.client: closed the client of " in capsys.readouterr().err
    assert main(["--url", url, "--log-level", "error", "-vv", "get", "/quiet"]) == 0
    assert errors(capsys.readouterr().err) == []  # --log-level wins over -v
    assert coordkit_logger.handlers == handlers and coordkit_logger.level == level
    with pytest.raises(SystemExit) as exit_info:
        main(["--url", url, "--log-level", "LOUD", "get", "/quiet"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'LOUD'" in capsys.readouterr().err


# -- as a process: one line per mistake ---------------------------------------------------


def coordkit_process(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    """Run the ``coordkit`` console script of this environment; (status, stdout, stderr)."""
    script = Path(sys.executable).with_name("coordkit")
    done = subprocess.run(
        [str(script), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    return done.returncode, done.stdout, done.stderr


def refused_address() -> str:
    """A loopback address nothing listens on (a port just freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


USAGE_MISTAKES = {
    "malformed URL": (["--url", "bogus", "get", "/x"], "malformed backend URL 'bogus'"),
    "unknown scheme": (["--url", "nosuch://x", "status"], "installed schemes: "),
    "relative path": (["--url", "memory://", "get", "relative"], "get: argument path: "),
    "empty path segment": (["--url", "memory://", "rm", "/a//b"], "rm: argument path: "),
    "no command after --": (["lock", "/locks/x", "--"], "lock: no command after --"),
    "no --": (["lock", "/locks/x"], "lock: give the command to run after --"),
    "demo --duration 0": (["demo", "--duration", "0"], "demo: argument --duration: "),
    "negative --timeout": (
        ["lock", "/locks/x", "--timeout", "-1", "--", "true"],
        "lock: argument --timeout: expected a number of seconds >= 0, not '-1'",
    ),
    "NaN --timeout": (["lock", "/l", "--timeout", "nan", "--", "true"], "argument --timeout"),
    "word --timeout": (["lock", "/l", "--timeout", "soon", "--", "true"], "argument --timeout"),
    "negative --kill-after": (
        ["lock", "/l", "--kill-after", "-3", "--", "true"],
        "argument --kill-after",
    ),
    "elect --timeout 0": (["elect", "/e", "--timeout", "0"], "elect: argument --timeout: "),
    "missing value": (["put", "/x"], "put: the following arguments are required: value"),
    "command after -- of get": (["get", "/x", "--", "ls"], "get: takes no command after --"),
    "unknown command": (["frobnicate"], "invalid choice: 'frobnicate'"),
    "no command": ([], "the following arguments are required: COMMAND"),
    "bad log level": (["--log-level", "LOUD", "status"], "invalid choice: 'LOUD'"),
}


@pytest.mark.parametrize(("args", "expected"), USAGE_MISTAKES.values(), ids=USAGE_MISTAKES)
def test_a_usage_mistake_is_one_error_line_and_status_2(args: list[str], expected: str) -> None:
    code, out, err = coordkit_process(*args)
    assert code == 2
    assert out == ""
    [line] = err.splitlines()  # one line, no usage block, no traceback
    assert line.startswith("coordkit: error: ") and expected in line, line


def test_an_unreachable_backend_is_one_error_line_and_status_1() -> None:
    address = refused_address()
    code, _, err = coordkit_process("--url", f"raft://{address}", "get", "/x")
    assert code == 1
    [line] = err.splitlines()
    assert line.startswith("coordkit: error: ") and address in line, line


def test_a_missing_node_is_one_error_line_and_status_1(etcd_server: EtcdCluster) -> None:
    url = etcd_server.url(f"/t-{uuid.uuid4().hex}")
    for command in ("get", "rm"):
        code, out, err = coordkit_process("--url", url, command, "/no/such")
        assert (code, out) == (1, ""), err
        assert err == "coordkit: error: no node /no/such\n"


def test_version() -> None:
    code, out, err = coordkit_process("--version")
    assert (code, out, err) == (0, f"coordkit {coordkit.__version__}\n", "")


def test_memory_commands_say_each_process_has_its_own_store() -> None:
    code, _, err = coordkit_process("--url", "memory://", "put", "/shared", "x")
    assert code == 0
    [note] = err.splitlines()
    assert note.startswith("coordkit: note: memory:// lives inside this process")
    assert "a put here is not seen by a get in another shell" in note
    code, _, err = coordkit_process("--url", "memory://", "get", "/shared")
    assert code == 1  # another process, another store: what the note warned about
    assert err.splitlines() == [note, "coordkit: error: no node /shared"]


def test_which_urls_are_private_to_a_process() -> None:
    assert _process_local("memory://")
    assert _process_local("memory://named")
    assert _process_local("raft+embedded://?nodes=3")
    assert not _process_local("raft+embedded://?nodes=3&data_dir=/var/lib/coordkit")
    assert not _process_local("etcd://127.0.0.1:2379")
    assert not _process_local("raft://127.0.0.1:7000")


@pytest.mark.parametrize("duration", [0, -1.0, float("nan"), float("inf")])
def test_the_demo_refuses_a_duration_that_is_not_a_positive_number(duration: float) -> None:
    from coordkit import demo
    from coordkit.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="duration must be a positive number"):
        demo.main("memory://", duration)
