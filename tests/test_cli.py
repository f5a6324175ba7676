"""The coordkit command line, run in-process against a memory store."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import uuid

import anyio
import pytest

from coordkit.cli import main


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
    assert "no node /app/config" in capsys.readouterr().err


def test_bad_version_is_an_error_exit(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", url, "put", "/k", "a"]) == 0
    assert main(["--url", url, "put", "/k", "b", "--version", "7"]) == 1
    assert "BadVersionError" in capsys.readouterr().err


def test_invalid_path_and_unknown_scheme_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", "memory://cli-bad", "get", "relative"]) == 2
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


def test_console_script_is_installed() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "coordkit.cli", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    for command in ("demo", "status", "get", "put", "ls", "rm", "watch", "lock"):
        assert command in done.stdout


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
    import coordkit
    from coordkit.cli import _while_held
    from coordkit.recipes import Lock

    async with coordkit.connect(url) as client:
        lock = Lock(client, "/locks/long")
        assert await lock.acquire()
        sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
        with anyio.fail_after(20):  # far less than the command's 60 s: it was stopped
            async with anyio.create_task_group() as tg:
                outcome: list[int] = []

                async def run() -> None:
                    outcome.append(await _while_held(lock, "/locks/long", sleeper))

                tg.start_soon(run)
                await anyio.wait_all_tasks_blocked()
                await client.expire_session()
        assert outcome == [1]
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
    assert capsys.readouterr().err == ""  # WARNING by default: nothing to say
    assert main(["--url", url, "-v", "get", "/quiet"]) == 0
    err = capsys.readouterr().err
    assert f"INFO coordkit.client: connected to {url} (session " in err
    assert "DEBUG" not in err
    assert main(["get", "/quiet", "--url", url, "-vv"]) == 0  # also after the command
    assert "DEBUG coordkit.client: closed the client of " in capsys.readouterr().err
    assert main(["--url", url, "--log-level", "error", "-vv", "get", "/quiet"]) == 0
    assert capsys.readouterr().err == ""  # --log-level wins over -v
    assert coordkit_logger.handlers == handlers and coordkit_logger.level == level
    with pytest.raises(SystemExit) as exit_info:
        main(["--url", url, "--log-level", "LOUD", "get", "/quiet"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'LOUD'" in capsys.readouterr().err
