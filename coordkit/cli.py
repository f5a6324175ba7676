"""The ``coordkit`` command line: demo, status, get/put/ls/rm/watch, lock, elect.

``--url`` (or ``COORDKIT_URL``, or the config files) picks the backend, as for
:func:`coordkit.connect`. Exit status: 0 on success, 1 when the operation
failed (missing node, lock not acquired, ...), 2 for bad usage or configuration.

The CLI is an application, so it (unlike the library) installs a log handler:
the ``coordkit`` logger's records go to standard error, from WARNING up
(``demo``: ERROR, since it expires a session on purpose); ``-v`` shows INFO,
``-vv`` DEBUG, ``--log-level LEVEL`` sets the level outright.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from typing import Any

import anyio

from . import connect
from .client import Client
from .errors import ConfigurationError, CoordkitError, InvalidArgumentError
from .plugins import cli_commands

__all__ = ["main"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


Command = Callable[..., argparse.ArgumentParser]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coordkit",
        description="Coordination recipes over interchangeable backends.",
    )
    _add_global_options(parser, after_command=False)
    # --url, -v and --log-level are accepted after the command too
    # (coordkit demo --url etcd://... -v).
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, after_command=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **options: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **options)

    demo = command("demo", help="workers sharing a lock, a leader, a queue and a config")
    demo.add_argument("--duration", type=float, default=20.0, help="seconds (default 20)")
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
    get.add_argument("path")
    get.add_argument("--stat", action="store_true", help="print the node's fields too")

    put = command("put", help="create or replace a node's value")
    put.add_argument("path")
    put.add_argument("value", help="the value (UTF-8); '-' reads standard input")
    put.add_argument("--version", type=int, help="only if the node is at this version")

    ls = command("ls", help="list a node's children")
    ls.add_argument("path", nargs="?", default="/")

    rm = command("rm", help="delete a node")
    rm.add_argument("path")
    rm.add_argument("-r", "--recursive", action="store_true", help="delete its subtree too")

    watch = command("watch", help="print changes as they happen")
    watch.add_argument("path")
    watch.add_argument("-r", "--recursive", action="store_true")
    watch.add_argument("--from-revision", type=int, help="replay history from this revision")
    watch.add_argument("--count", type=int, help="stop after this many events")


def _add_holding_commands(command: Command) -> None:
    lock = command(
        "lock",
        help="run a command while holding a lock",
        usage="coordkit lock NAME [--timeout S] -- CMD [ARG ...]",
    )
    lock.add_argument("name", help="lock path, e.g. /locks/nightly")
    lock.add_argument("--timeout", type=float, help="give up after this many seconds")

    elect = command(
        "elect",
        help="campaign, then run a command (or wait) while leading; or --listen",
        usage="coordkit elect NAME [--identity ID] [--timeout S] [-- CMD [ARG ...]]\n"
        "       coordkit elect NAME --listen [--count N]",
    )
    elect.add_argument("name", help="election path, e.g. /election/scheduler")
    elect.add_argument(
        "--identity",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="what others see as the leader (default: host-pid)",
    )
    elect.add_argument("--listen", action="store_true", help="print each leader, do not campaign")
    elect.add_argument("--count", type=int, help="with --listen: stop after this many leaders")
    elect.add_argument("--timeout", type=float, help="give up campaigning after this many seconds")


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
        print(f"no node {args.path}", file=sys.stderr)
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


def _command(args: argparse.Namespace, *, required: bool) -> list[str]:
    cmd: list[str] = args.cmd
    if required and not cmd:
        raise InvalidArgumentError("give the command to run after --")
    return cmd


async def _while_held(held: Any, what: str, cmd: list[str]) -> int:
    """Run ``cmd`` (or, without one, wait) while ``held`` is held; stop it if that is lost.

    The exit status is the command's own, or 1 when the lock or leadership was
    lost first (another holder may be running by then).
    """
    outcome: list[int] = []
    async with anyio.create_task_group() as tg:

        async def cancel_on_loss() -> None:
            await held.wait_lost()
            print(f"lost {what}: stopping", file=sys.stderr)
            tg.cancel_scope.cancel()

        tg.start_soon(cancel_on_loss)
        if cmd:
            env = {**os.environ, "COORDKIT_FENCING_TOKEN": str(held.token)}
            done = await anyio.run_process(
                cmd, stdin=None, stdout=None, stderr=None, check=False, env=env
            )
            outcome.append(done.returncode)
        else:
            await anyio.sleep_forever()  # until interrupted, or the loss above
        tg.cancel_scope.cancel()
    return outcome[0] if outcome else 1


async def _lock(client: Client, args: argparse.Namespace) -> int:
    cmd = _command(args, required=True)
    lock = _recipe("Lock")(client, args.name)
    if not await lock.acquire(timeout=args.timeout):
        print(f"timed out waiting for {args.name}", file=sys.stderr)
        return 1
    try:
        return await _while_held(lock, args.name, cmd)
    finally:
        with anyio.CancelScope(shield=True):
            if lock.is_held:
                await lock.release()


async def _elect(client: Client, args: argparse.Namespace) -> int:
    election = _recipe("Election")(client, args.name, args.identity)
    if args.listen:
        seen = 0
        async with aclosing(election.observe()) as leaders:
            async for leader in leaders:
                print("(no leader)" if leader is None else leader, flush=True)
                seen += 1
                if args.count is not None and seen >= args.count:
                    break
        return 0
    cmd = _command(args, required=False)
    with anyio.move_on_after(args.timeout):
        await election.campaign()
    if not election.is_leader:
        print(f"timed out campaigning in {args.name}", file=sys.stderr)
        return 1
    print(f"leading {args.name} as {args.identity} (token {election.token})", flush=True)
    try:
        return await _while_held(election, f"leadership of {args.name}", cmd)
    finally:
        with anyio.CancelScope(shield=True):
            await election.resign()


_COMMANDS: dict[str, Callable[[Client, argparse.Namespace], Awaitable[int]]] = {
    "status": _status,
    "get": _get,
    "put": _put,
    "ls": _ls,
    "rm": _rm,
    "watch": _watch,
    "lock": _lock,
    "elect": _elect,
}


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
    if plugin_command is not None and args.command not in _COMMANDS:
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


async def _run(args: argparse.Namespace) -> int:
    async with connect(args.url) as client:
        return await _COMMANDS[args.command](client, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coordkit`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is the command of `lock` / `elect`, untouched.
    cmd: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, cmd = argv[:at], argv[at + 1 :]
    parser = _parser()
    args = parser.parse_args(argv)
    if cmd and args.command not in ("lock", "elect"):
        parser.error(f"'{args.command}' takes no command after --")
    args.cmd = cmd
    with _logging_to_stderr(_log_level(args)):
        return _execute(args)


def _execute(args: argparse.Namespace) -> int:
    try:
        if args.command == "demo":
            from . import demo

            return demo.main(args.url, args.duration)
        plugin_command = cli_commands().get(args.command)
        if plugin_command is not None and args.command not in _COMMANDS:
            return plugin_command.run(args)
        code: Any = anyio.run(_run, args)
        return int(code)
    except ConfigurationError as exc:
        print(f"coordkit: {exc}", file=sys.stderr)
        return 2
    except InvalidArgumentError as exc:
        print(f"coordkit: {exc}", file=sys.stderr)
        return 2
    except CoordkitError as exc:
        print(f"coordkit: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except subprocess.SubprocessError as exc:
        print(f"coordkit: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
