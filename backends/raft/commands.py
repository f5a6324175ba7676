"""The Raft backend's ``coordkit`` subcommands: serve, cluster, member, snapshot.

Registered through the ``coordkit_commands`` hook (the core never imports a
backend). Each command checks its arguments first and reports a mistake as
one :class:`~coordkit.ConfigurationError` line, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path
from typing import Any

import anyio

from coordkit.commands import CliCommand
from coordkit.errors import ConfigurationError

__all__ = ["COMMANDS"]

log = logging.getLogger(__name__)

TOKEN_ENV = "COORDKIT_CLUSTER_TOKEN"


# -- serve -----------------------------------------------------------------------------


def _configure_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="this node's name, e.g. n1")
    parser.add_argument("--data-dir", required=True, type=Path, help="where its log lives")
    parser.add_argument(
        "--listen",
        default="127.0.0.1:7001",
        help="host:port for peers and clients (default 127.0.0.1:7001: loopback only)",
    )
    parser.add_argument(
        "--peers",
        required=True,
        help="every member: n1=host:port,n2=host:port,... (this node included)",
    )
    parser.add_argument(
        "--join",
        action="store_true",
        help="join a running cluster (after `coordkit member add`) instead of bootstrapping one",
    )
    parser.add_argument("--cluster-id", default="coordkit", help="refuse peers of another cluster")
    parser.add_argument(
        "--advertise", help="host:port others reach this node at (default --listen)"
    )
    parser.add_argument("--tls-cert", type=Path, help="certificate (PEM) for peers and clients")
    parser.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    parser.add_argument(
        "--tls-ca", type=Path, help="CA (PEM) that peers' certificates must chain to"
    )
    parser.add_argument("--tick", type=float, default=0.02, help="seconds per Raft tick (0.02)")
    parser.add_argument("--election-ticks", type=int, default=10, help="election timeout in ticks")
    parser.add_argument(
        "--snapshot-entries",
        type=int,
        default=20_000,
        help="snapshot after this many applied entries",
    )
    parser.add_argument(
        "--snapshot-retain",
        type=int,
        default=5_000,
        help="entries kept behind a snapshot for slow followers (5000)",
    )
    parser.add_argument(
        "--stop-with",
        type=int,
        metavar="PID",
        help="stop, as on SIGTERM, when process PID exits (cluster up sets it)",
    )
    parser.add_argument("--allow-faults", action="store_true", help=argparse.SUPPRESS)


def _serve(args: argparse.Namespace) -> int:
    from .node.config import NodeConfig, parse_address, parse_peers
    from .node.server import RaftNode
    from .node.transport import asyncio_backend_options

    if args.snapshot_entries < 1 or args.snapshot_retain < 0:
        raise ConfigurationError(
            "--snapshot-entries must be >= 1 and --snapshot-retain >= 0, not "
            f"{args.snapshot_entries} and {args.snapshot_retain}"
        )
    config = NodeConfig(
        name=args.name,
        data_dir=args.data_dir.expanduser(),
        listen=parse_address(args.listen, what="--listen"),
        peers=parse_peers(args.peers),
        join=args.join,
        cluster_id=args.cluster_id,
        cluster_token=os.environ.get(TOKEN_ENV, ""),
        advertise=parse_address(args.advertise, what="--advertise") if args.advertise else None,
        tick=args.tick,
        election_ticks=args.election_ticks,
        snapshot_entries=args.snapshot_entries,
        snapshot_retain=args.snapshot_retain,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        allow_faults=args.allow_faults,
    )

    async def main() -> None:
        node = RaftNode(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, tg.cancel_scope)
            if args.stop_with is not None:
                tg.start_soon(_stop_with, args.stop_with, tg.cancel_scope)
            await node.run()
            tg.cancel_scope.cancel()

    anyio.run(main, backend="asyncio", backend_options=asyncio_backend_options())
    return 0


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s: shutting down", signal.Signals(signum).name)
            scope.cancel()
            return


async def _stop_with(pid: int, scope: anyio.CancelScope) -> None:
    """Stop the node once process ``pid`` is gone: the nodes of ``cluster up`` never
    outlive their supervisor, even one killed with SIGKILL."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        pass  # gone already
    except (AttributeError, OSError) as exc:  # no pidfd (not Linux >= 5.3)
        log.warning("--stop-with %d: cannot watch that process here (%s)", pid, exc)
        return
    else:
        try:
            await anyio.wait_readable(fd)  # readable once the process has exited
        finally:
            os.close(fd)
    log.warning("process %d (the supervisor) is gone: shutting down", pid)
    scope.cancel()


# -- cluster up ---------------------------------------------------------------------------


def _configure_cluster(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="cluster_action", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start N nodes on loopback and supervise them")
    up.add_argument("-n", "--nodes", type=int, default=3, help="how many (default 3)")
    up.add_argument("--data-dir", type=Path, help="keep their data here (default: a temp dir)")
    up.add_argument("--base-port", type=int, help="first port (default: free ports)")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")


def _cluster(args: argparse.Namespace) -> int:
    from .node.supervisor import run_local_cluster

    if not 1 <= args.nodes <= 9:
        raise ConfigurationError(f"-n must be from 1 to 9, not {args.nodes}")
    return run_local_cluster(
        nodes=args.nodes, data_dir=args.data_dir, base_port=args.base_port, host=args.host
    )


# -- member add/remove, snapshot save ------------------------------------------------------------


def _url_option(parser: argparse.ArgumentParser) -> None:
    """``--url`` after the action too (``coordkit member add n4 H:P --url raft://...``).

    Unset unless given, so it never overwrites a ``--url`` given before the command.
    """
    parser.add_argument(
        "--url", default=argparse.SUPPRESS, help="the cluster: raft://host:port,host:port,..."
    )


def _configure_member(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="member_action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add a node (as a learner, promoted once caught up)")
    add.add_argument("member_name", metavar="NAME")
    add.add_argument("address", metavar="HOST:PORT")
    _url_option(add)
    remove = actions.add_parser("remove", help="remove a node (the leader included)")
    remove.add_argument("member_name", metavar="NAME")
    _url_option(remove)


def _member(args: argparse.Namespace) -> int:
    from .admin import member_add, member_remove

    if args.member_action == "add":
        return _run_admin(member_add, args.url, args.member_name, args.address)
    return _run_admin(member_remove, args.url, args.member_name)


def _configure_snapshot(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="snapshot_action", required=True, metavar="ACTION")
    save = actions.add_parser("save", help="write a consistent snapshot of the store to FILE")
    save.add_argument("file", type=Path)
    _url_option(save)


def _snapshot(args: argparse.Namespace) -> int:
    from .admin import snapshot_save

    return _run_admin(snapshot_save, args.url, args.file)


def _run_admin(func: Any, url: str | None, *args: Any) -> int:
    code: int = anyio.run(func, url, *args)
    return code


COMMANDS = [
    CliCommand("serve", "run one node of a Raft cluster", _configure_serve, _serve, logging.INFO),
    CliCommand(
        "cluster",
        "start and supervise a local Raft cluster",
        _configure_cluster,
        _cluster,
        logging.INFO,
    ),
    CliCommand("member", "add or remove a member of a Raft cluster", _configure_member, _member),
    CliCommand("snapshot", "save a snapshot of a Raft cluster", _configure_snapshot, _snapshot),
]
