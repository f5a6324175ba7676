"""The ``coordkit`` command line: demo, status, get/put/ls/rm/watch, lock, elect.

``--url`` (or ``COORDKIT_URL``, or the config files) picks the backend, as for
:func:`coordkit.connect`. Every failure is one line on standard error,
``coordkit: error: ...``, never a traceback. Exit status: 0 on success, 1 when
the operation failed (missing node, lock not acquired, backend unreachable,
...), 2 for bad usage or configuration; ``lock`` and ``elect`` return their
command's status (see docs/cli.md and :mod:`coordkit.supervise`).

The CLI is an application, so it (unlike the library) installs a log handler:
the ``coordkit`` logger's records go to standard error, from WARNING up
(``demo``: ERROR, since it expires a session on purpose); ``-v`` shows INFO,
``-vv`` DEBUG, ``--log-level LEVEL`` sets the level outright.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

import anyio

from . import __version__, connect
from .client import Client
from .config import resolve_url
from .errors import (
    BadVersionError,
    ConfigurationError,
    CoordkitError,
    InvalidArgumentError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
)
from .paths import check_path
from .plugins import cli_commands
from .supervise import LOST_EXIT, CommandNotRunError, Held, Supervisor

__all__ = ["main"]

log = logging.getLogger(__name__)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: grace between forwarding a stop signal to a command and killing it.
DEFAULT_KILL_AFTER = 10.0
#: what the errors of the data model mean, for their one line.
ERROR_WORDS: dict[type[CoordkitError], str] = {
    NoNodeError: "no node",
    NodeExistsError: "node exists",
    BadVersionError: "version does not match",
    NotEmptyError: "node has children (rm -r deletes them too)",
}
#: what each process has its own copy of: a put in one shell is not seen by a get in another.
PROCESS_LOCAL_NOTE = (
    "coordkit: note: {url} lives inside this process: every coordkit command has its own "
    "store, so a put here is not seen by a get in another shell (use etcd://, zookeeper:// "
    "or raft://)"
)


class UsageError(Exception):
    """A mistake in the command line: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: ``coordkit: error: COMMAND: ...``."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("coordkit").strip()
        if command:
            _usage_error(command, message)
        self.exit(2, f"coordkit: error: {message} (see coordkit --help)\n")


Command = Callable[..., argparse.ArgumentParser]


def _seconds(text: str) -> float:
    """A number of seconds >= 0 (not NaN, not infinite)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, not {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, not {text!r}")
    return value


def _whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, not {text!r}")
        return value

    return parse


_count = _whole_number(1)
_revision = _whole_number(0)


def _path(text: str) -> str:
    """A node path, checked before connecting (so a typo costs no connection)."""
    try:
        return check_path(text)
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="coordkit",
        description="Coordination recipes over interchangeable backends.",
    )
    parser.add_argument("--version", action="version", version=f"coordkit {__version__}")
    _add_global_options(parser, after_command=False)
    # --url, -v and --log-level are accepted after the command too
    # (coordkit demo --url etcd://... -v).
    common = _Parser(add_help=False)
    _add_global_options(common, after_command=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **options: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **options)

    demo = command("demo", help="workers sharing a lock, a leader, a queue and a config")
    demo.add_argument(
        "--duration", type=_positive_seconds, default=20.0, help="seconds (default 20)"
    )
    command("status", help="what the backend reports about itself")
    _add_node_commands(command)
    _add_holding_commands(command)
    for name, plugin_command in cli_commands().items():
        if name not in sub.choices:  # a plugin cannot replace a built-in command
            plugin_command.configure(command(name, help=plugin_command.help))
    return parser


def _add_global_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """--url, -v/--verbose, --log-level (after the command: only if given)."""
    unset: Any = {"default": argparse.SUPPRESS} if after_command else {}
    parser.add_argument(
        "--url", help="backend URL (default: COORDKIT_URL, config, embedded)", **unset
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        help="log more to standard error: -v INFO, -vv DEBUG (default: WARNING)",
        **(unset or {"default": 0}),
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="log level of the coordkit logger (overrides -v)",
        **unset,
    )


def _add_node_commands(command: Command) -> None:
    get = command("get", help="print a node's value")
    get.add_argument("path", type=_path)
    get.add_argument("--stat", action="store_true", help="print the node's fields too")

    put = command("put", help="create or replace a node's value")
    put.add_argument("path", type=_path)
    put.add_argument("value", help="the value (UTF-8); '-' reads standard input")
    put.add_argument("--version", type=_revision, help="only if the node is at this version")

    ls = command("ls", help="list a node's children")
    ls.add_argument("path", type=_path, nargs="?", default="/")

    rm = command("rm", help="delete a node")
    rm.add_argument("path", type=_path)
    rm.add_argument("-r", "--recursive", action="store_true", help="delete its subtree too")

    watch = command("watch", help="print changes as they happen")
    watch.add_argument("path", type=_path)
    watch.add_argument("-r", "--recursive", action="store_true")
    watch.add_argument("--from-revision", type=_revision, help="replay history from this revision")
    watch.add_argument("--count", type=_count, help="stop after this many events")


def _add_holding_commands(command: Command) -> None:
    kill_after: dict[str, Any] = {
        "type": _seconds,
        "default": DEFAULT_KILL_AFTER,
        "metavar": "S",
        "help": "after a stop signal or a lost lock, kill the command if it still runs "
        f"after this many seconds (default {DEFAULT_KILL_AFTER:g})",
    }
    lock = command(
        "lock",
        help="run a command while holding a lock",
        usage="coordkit lock NAME [--timeout S] [--kill-after S] -- CMD [ARG ...]",
    )
    lock.add_argument("name", type=_path, help="lock path, e.g. /locks/nightly")
    lock.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="give up after this many seconds (0: try once)",
    )
    lock.add_argument("--kill-after", **kill_after)

    elect = command(
        "elect",
        help="campaign, then run a command (or wait) while leading; or --listen",
        usage="coordkit elect NAME [--identity ID] [--timeout S] [--kill-after S] "
        "[-- CMD [ARG ...]]\n"
        "       coordkit elect NAME --listen [--count N]",
    )
    elect.add_argument("name", type=_path, help="election path, e.g. /election/scheduler")
    elect.add_argument(
        "--identity",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="what others see as the leader (default: host-pid)",
    )
    elect.add_argument("--listen", action="store_true", help="print each leader, do not campaign")
    elect.add_argument("--count", type=_count, help="with --listen: stop after this many leaders")
    elect.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="S",
        help="give up campaigning after this many seconds",
    )
    elect.add_argument("--kill-after", **kill_after)


async def _status(client: Client, args: argparse.Namespace) -> int:
    status = await client.status()
    print(f"backend:  {status.backend}")
    print(f"revision: {status.revision}")
    print(f"session:  {status.session_id}")
    if status.leader:
        print(f"leader:   {status.leader}")
    if status.members:
        print(f"members:  {', '.join(status.members)}")
    details = dict(status.details)
    nodes = details.pop("nodes", None)
    for key, value in sorted(details.items()):
        print(f"{key}: {value}")
    if isinstance(nodes, list) and nodes:
        print(_node_table(nodes))
    return 0


def _node_table(nodes: list[dict[str, Any]]) -> str:
    """One row per member: role, term, commit, applied, lag behind the leader, last contact."""
    leader_commit = max((int(n.get("commit", 0)) for n in nodes if "error" not in n), default=0)
    header = ("node", "address", "role", "term", "commit", "applied", "lag", "last contact")
    rows = [header]
    for node in nodes:
        if "error" in node:
            rows.append(
                (
                    str(node.get("node")),
                    str(node.get("address", "")),
                    "unreachable",
                    "",
                    "",
                    "",
                    "",
                    str(node["error"]),
                )
            )
            continue
        lag = leader_commit - int(node.get("applied", 0))
        contact = (
            "-"
            if node.get("role") == "leader"
            else f"{float(node.get('last_contact', 0)):.2f} s ago"
        )
        rows.append(
            (
                str(node.get("node")),
                str(node.get("address", "")),
                str(node.get("role")),
                str(node.get("term")),
                str(node.get("commit")),
                str(node.get("applied")),
                str(lag),
                contact,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


async def _get(client: Client, args: argparse.Namespace) -> int:
    node = await client.get(args.path)
    if node is None:
        print(f"coordkit: error: no node {args.path}", file=sys.stderr)
        return 1
    sys.stdout.write(node.value.decode("utf-8", "replace") + "\n")
    if args.stat:
        print(
            f"version={node.version} create_revision={node.create_revision} "
            f"mod_revision={node.mod_revision} children={node.num_children} "
            f"ephemeral_owner={node.ephemeral_owner}"
        )
    return 0


async def _put(client: Client, args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.value == "-" else args.value
    value = text.encode("utf-8")
    if args.version is not None or await client.exists(args.path):
        node = await client.set(args.path, value, version=args.version)
    else:
        node = await client.create(args.path, value, make_parents=True)
    print(f"revision {node.mod_revision}")
    return 0


async def _ls(client: Client, args: argparse.Namespace) -> int:
    for name in await client.children(args.path):
        print(name)
    return 0


async def _rm(client: Client, args: argparse.Namespace) -> int:
    await client.delete(args.path, recursive=args.recursive)
    return 0


async def _watch(client: Client, args: argparse.Namespace) -> int:
    seen = 0
    async with client.watch(
        args.path, recursive=args.recursive, start_revision=args.from_revision
    ) as events:
        async for event in events:
            value = "" if event.node is None else event.node.value.decode("utf-8", "replace")
            print(f"{event.revision} {event.type.value} {event.path} {value}", flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    return 0


def _recipe(name: str) -> Any:
    # The CLI sits above the recipes layer (installed as coordkit.recipes from recipes/).
    return getattr(importlib.import_module("coordkit.recipes"), name)


def _stopped_by(supervisor: Supervisor) -> int:
    """The exit status of a run a stop signal ended before any command ran: 128+N."""
    assert supervisor.signal is not None
    return 128 + supervisor.signal


async def _while_held(
    supervisor: Supervisor, held: Held, token: int | None, what: str, cmd: list[str]
) -> int:
    """Run ``cmd`` (or, without one, wait for a stop signal) while ``held`` is held.

    Returns the command's shell status; LOST_EXIT, after one line on standard
    error, when the hold was lost first (another holder may be running by
    then); 128+N when signal N ended a run without a command.
    """
    if not cmd:
        with supervisor.interruptible():
            await held.wait_lost()
            print(f"coordkit: error: lost {what}", file=sys.stderr)
            return LOST_EXIT
        return _stopped_by(supervisor)
    env = {**os.environ, "COORDKIT_FENCING_TOKEN": str(token)}
    status = await supervisor.run(cmd, env, held, what)
    if status == LOST_EXIT:
        print(f"coordkit: error: lost {what} while the command ran: stopped it", file=sys.stderr)
    return status


async def _lock(client: Client, args: argparse.Namespace, supervisor: Supervisor) -> int:
    lock = _recipe("Lock")(client, args.name)
    acquired = False
    with supervisor.interruptible():
        acquired = await lock.acquire(timeout=args.timeout)
        if not acquired:
            waited = "tried once" if args.timeout == 0 else f"waited {args.timeout:g} s"
            print(f"coordkit: error: did not get the lock {args.name} ({waited})", file=sys.stderr)
            return 1
    if not acquired:
        return _stopped_by(supervisor)
    try:
        if supervisor.signal is not None:  # came while the lock was granted
            return _stopped_by(supervisor)
        return await _while_held(supervisor, lock, lock.token, f"the lock {args.name}", args.cmd)
    finally:
        with anyio.CancelScope(shield=True):
            await lock.release()


async def _elect(client: Client, args: argparse.Namespace, supervisor: Supervisor) -> int:
    election = _recipe("Election")(client, args.name, args.identity)
    if args.listen:
        seen = 0
        with supervisor.interruptible():
            async with aclosing(election.observe()) as leaders:
                async for leader in leaders:
                    print("(no leader)" if leader is None else leader, flush=True)
                    seen += 1
                    if args.count is not None and seen >= args.count:
                        return 0
        return 0 if supervisor.signal is None else _stopped_by(supervisor)
    with supervisor.interruptible():
        with anyio.move_on_after(args.timeout):
            await election.campaign()
        if not election.is_leader:
            print(
                f"coordkit: error: did not win {args.name} (campaigned {args.timeout:g} s)",
                file=sys.stderr,
            )
            return 1
    try:
        if supervisor.signal is not None:  # came while leadership was granted
            return _stopped_by(supervisor)
        if not election.is_leader:  # lost as soon as won
            print(f"coordkit: error: lost the leadership of {args.name}", file=sys.stderr)
            return LOST_EXIT
        print(f"leading {args.name} as {args.identity} (token {election.token})", flush=True)
        what = f"the leadership of {args.name}"
        return await _while_held(supervisor, election, election.token, what, args.cmd)
    finally:
        with anyio.CancelScope(shield=True):
            await election.resign()


Run = Callable[[Client, argparse.Namespace], Awaitable[int]]
Holding = Callable[[Client, argparse.Namespace, Supervisor], Awaitable[int]]

_COMMANDS: dict[str, Run] = {
    "status": _status,
    "get": _get,
    "put": _put,
    "ls": _ls,
    "rm": _rm,
    "watch": _watch,
}
#: the commands that hold something while running a command, under a Supervisor.
_HOLDING_COMMANDS: dict[str, Holding] = {"lock": _lock, "elect": _elect}
_BUILT_IN = {"demo", *_COMMANDS, *_HOLDING_COMMANDS}


def _log_level(args: argparse.Namespace) -> int:
    if args.log_level is not None:
        level: int = getattr(logging, args.log_level)
        return level
    if args.verbose >= 2:
        return logging.DEBUG
    if args.verbose == 1:
        return logging.INFO
    # The demo expires a session on purpose: its warnings would only clutter the view.
    if args.command == "demo":
        return logging.ERROR
    plugin_command = cli_commands().get(args.command)
    if plugin_command is not None and args.command not in _BUILT_IN:
        return plugin_command.default_log_level
    return logging.WARNING


@contextmanager
def _logging_to_stderr(level: int) -> Iterator[None]:
    """The ``coordkit`` logger writes to standard error at ``level`` while the command runs."""
    logger = logging.getLogger("coordkit")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def _process_local(url: str) -> bool:
    """Whether every process reaching ``url`` has a store of its own."""
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return True
    return parts.scheme == "raft+embedded" and "data_dir" not in parse_qs(parts.query)


async def _run(args: argparse.Namespace) -> int:
    url = resolve_url(args.url)
    if _process_local(url):
        print(PROCESS_LOCAL_NOTE.format(url=url.split("?")[0]), file=sys.stderr)
    holding = _HOLDING_COMMANDS.get(args.command)
    if holding is None:
        async with connect(url) as client:
            return await _COMMANDS[args.command](client, args)
    supervisor = Supervisor(kill_after=args.kill_after)
    # Stop signals are ours from before connecting until the lock is released:
    # one that comes while connecting or releasing ends the run once that is done.
    async with supervisor.handling_signals(), connect(url) as client:
        if supervisor.signal is not None:
            return _stopped_by(supervisor)
        return await holding(client, args, supervisor)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coordkit`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is the command of `lock` / `elect`, untouched.
    cmd: list[str] = []
    dashes = "--" in argv
    if dashes:
        at = argv.index("--")
        argv, cmd = argv[:at], argv[at + 1 :]
    parser = _parser()
    args = parser.parse_args(argv)
    if cmd and args.command not in _HOLDING_COMMANDS:
        _usage_error(args.command, "takes no command after --")
    if args.command == "lock" and not cmd:
        _usage_error(
            "lock",
            "give the command to run after --" if not dashes else "no command after --",
        )
    if args.command == "elect" and dashes and not cmd:
        _usage_error("elect", "no command after --")
    args.cmd = cmd
    with _logging_to_stderr(_log_level(args)):
        return _execute(args)


def _usage_error(command: str, message: str) -> NoReturn:
    print(f"coordkit: error: {command}: {message} (see coordkit {command} --help)", file=sys.stderr)
    raise SystemExit(2)


def _one_error(exc: BaseException) -> BaseException:
    """The exception inside task groups' exception groups, if it is alone there."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: CoordkitError) -> str:
    for error_type, words in ERROR_WORDS.items():
        if isinstance(exc, error_type):
            message = str(exc)
            return f"{words} {message}" if message.startswith("/") else f"{words}: {message}"
    return str(exc) or type(exc).__name__


def _execute(args: argparse.Namespace) -> int:
    """Run the command; turn every failure into one line and an exit status."""
    try:
        try:
            return _dispatch(args)
        except BaseExceptionGroup as group:
            raise _one_error(group) from None
    except (ConfigurationError, InvalidArgumentError) as exc:
        print(f"coordkit: error: {_describe(exc)}", file=sys.stderr)
        return 2
    except CoordkitError as exc:
        print(f"coordkit: error: {_describe(exc)}", file=sys.stderr)
        return 1
    except CommandNotRunError as exc:
        print(f"coordkit: error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"coordkit: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line; the traceback is one -vv away
        log.debug("unexpected error", exc_info=True)
        print(
            f"coordkit: error: unexpected {type(exc).__name__}: {exc} (-vv shows the traceback)",
            file=sys.stderr,
        )
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from . import demo

        return demo.main(args.url, args.duration)
    plugin_command = cli_commands().get(args.command)
    if plugin_command is not None and args.command not in _BUILT_IN:
        return plugin_command.run(args)
    code: Any = anyio.run(_run, args)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
