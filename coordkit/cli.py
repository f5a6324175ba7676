"""The ``coordkit`` command line: ``demo``, ``status``, ``get/put/ls/rm/watch``, ``lock``.

``--url`` (or ``COORDKIT_URL``, or the config files) picks the backend, as for
:func:`coordkit.connect`. Exit status: 0 on success, 1 when the operation
failed (missing node, lock not acquired, ...), 2 for bad usage or configuration.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from . import connect
from .client import Client
from .errors import ConfigurationError, CoordkitError, InvalidArgumentError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coordkit",
        description="Coordination recipes over interchangeable backends.",
    )
    parser.add_argument("--url", help="backend URL (default: COORDKIT_URL, config, embedded)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="workers sharing a lock, a leader, a queue and a config")
    demo.add_argument("--duration", type=float, default=20.0, help="seconds (default 20)")

    sub.add_parser("status", help="what the backend reports about itself")

    get = sub.add_parser("get", help="print a node's value")
    get.add_argument("path")
    get.add_argument("--stat", action="store_true", help="print the node's fields too")

    put = sub.add_parser("put", help="create or replace a node's value")
    put.add_argument("path")
    put.add_argument("value", help="the value (UTF-8); '-' reads standard input")
    put.add_argument("--version", type=int, help="only if the node is at this version")

    ls = sub.add_parser("ls", help="list a node's children")
    ls.add_argument("path", nargs="?", default="/")

    rm = sub.add_parser("rm", help="delete a node")
    rm.add_argument("path")
    rm.add_argument("-r", "--recursive", action="store_true", help="delete its subtree too")

    watch = sub.add_parser("watch", help="print changes as they happen")
    watch.add_argument("path")
    watch.add_argument("-r", "--recursive", action="store_true")
    watch.add_argument("--from-revision", type=int, help="replay history from this revision")
    watch.add_argument("--count", type=int, help="stop after this many events")

    lock = sub.add_parser("lock", help="run a command while holding a lock")
    lock.add_argument("name", help="lock path, e.g. /locks/nightly")
    lock.add_argument("--timeout", type=float, help="give up after this many seconds")
    lock.add_argument("cmd", nargs=argparse.REMAINDER, help="-- command and arguments")
    return parser


async def _status(client: Client, args: argparse.Namespace) -> int:
    status = await client.status()
    print(f"backend:  {status.backend}")
    print(f"revision: {status.revision}")
    print(f"session:  {status.session_id}")
    if status.leader:
        print(f"leader:   {status.leader}")
    if status.members:
        print(f"members:  {', '.join(status.members)}")
    for key, value in sorted(status.details.items()):
        print(f"{key}: {value}")
    return 0


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


async def _lock(client: Client, args: argparse.Namespace) -> int:
    # The CLI sits above the recipes layer (installed as coordkit.recipes from recipes/).
    Lock = importlib.import_module("coordkit.recipes").Lock

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise InvalidArgumentError("give the command to run after --")
    lock = Lock(client, args.name)
    if not await lock.acquire(timeout=args.timeout):
        print(f"timed out waiting for {args.name}", file=sys.stderr)
        return 1
    try:
        # The command runs while we hold the lock; if the lock is lost, the
        # `async with`-free form here kills the command through cancellation.
        async with anyio.create_task_group() as tg:

            async def cancel_on_loss() -> None:
                await lock.wait_lost()
                print(f"lost {args.name}: stopping the command", file=sys.stderr)
                tg.cancel_scope.cancel()

            tg.start_soon(cancel_on_loss)
            result = await anyio.run_process(cmd, stdin=None, stdout=None, stderr=None, check=False)
            tg.cancel_scope.cancel()
        return int(result.returncode)
    finally:
        with anyio.CancelScope(shield=True):
            if lock.is_held:
                await lock.release()


_COMMANDS: dict[str, Callable[[Client, argparse.Namespace], Awaitable[int]]] = {
    "status": _status,
    "get": _get,
    "put": _put,
    "ls": _ls,
    "rm": _rm,
    "watch": _watch,
    "lock": _lock,
}


async def _run(args: argparse.Namespace) -> int:
    async with connect(args.url) as client:
        return await _COMMANDS[args.command](client, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coordkit`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from . import demo

            return demo.main(args.url, args.duration)
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
