"""Benchmark of the Raft peer transport: appends and bytes per second on loopback.

Two PeerTransports (n1 dials n2) behind the node's real port (``serve``).
n1 keeps 64 APP messages in flight, each carrying one 256-byte entry; n2
answers each with an APP_RESP, and every answer lets n1 send the next append,
as a leader replicating to a follower does. Reported per run: appends
acknowledged per second, messages per second (both directions), MB/s of entry
payload, and messages per socket write on n1 (the batching: several queued
frames go out in one write).

Modes: ``one process`` runs both transports on one event loop (so the figure
is the transport's whole CPU cost per append); ``two processes`` runs n2 in a
child process, as nodes of a cluster run. Each on asyncio, on asyncio with
uvloop when it is installed (``pip install uvloop``; the node enables it
through ``asyncio_backend_options()``), and on trio; with ``--tls``, also over
mutual TLS (certificates from trustme, a dev dependency).

Run: .venv/bin/python benchmarks/raft_transport.py [--appends N] [--runs R] [--tls]
Prints the median of R runs (default 5). A benchmark, not a test: nothing here
asserts speed.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio

from coordkit.backends.raft.core.messages import Entry, Message, MessageType
from coordkit.backends.raft.node.tls import TLSFiles
from coordkit.backends.raft.node.transport import (
    ClusterIdentity,
    PeerTransport,
    asyncio_backend_options,
    serve,
)
from coordkit.backends.raft.wire import Address, FrameStream, Hello

IN_FLIGHT = 64
ENTRY = b"e" * 256
CLUSTER, TOKEN = "bench", "bench-token"
NOWHERE = Address("127.0.0.1", 9)


@dataclass(frozen=True)
class Result:
    appends_per_s: float
    messages_per_s: float
    mb_per_s: float
    per_write: float


def append(index: int) -> Message:
    return Message(
        MessageType.APP, "n1", "n2", 1, 1, index - 1, (Entry(1, index, data=ENTRY),), index - 1
    )


async def no_clients(stream: FrameStream, hello: Hello) -> None:
    pass


async def follower(
    port: int, tls: TLSFiles | None, *, task_status: anyio.abc.TaskStatus[Address]
) -> None:
    """n2: answers every append with an acknowledgement, until cancelled."""
    transport: PeerTransport

    def deliver(m: Message) -> None:
        transport.send(Message(MessageType.APP_RESP, "n2", "n1", 1, index=m.entries[-1].index))

    identity = ClusterIdentity(CLUSTER, "n2", TOKEN)
    transport = PeerTransport(
        identity, {"n1": NOWHERE}, deliver, ssl_context=tls.client() if tls else None
    )
    async with transport, anyio.create_task_group() as tg:
        address = await tg.start(
            partial(
                serve,
                Address("127.0.0.1", port),
                identity,
                check_peer=transport.check_peer,
                on_peer=transport.accept,
                on_client=no_clients,
                ssl_context=tls.server() if tls else None,
            )
        )
        task_status.started(address)


async def leader(address: Address, appends: int, tls: TLSFiles | None) -> Result:
    """n1: keeps IN_FLIGHT appends outstanding until ``appends`` are acknowledged."""
    done = anyio.Event()
    state = {"sent": 0, "acked": 0}
    transport: PeerTransport

    def send_next() -> None:
        state["sent"] += 1
        transport.send(append(state["sent"]))

    def deliver(m: Message) -> None:
        state["acked"] += 1
        if state["acked"] == appends:
            done.set()
        elif state["sent"] < appends:
            send_next()

    identity = ClusterIdentity(CLUSTER, "n1", TOKEN)
    transport = PeerTransport(
        identity, {"n2": address}, deliver, ssl_context=tls.client() if tls else None
    )
    async with transport:
        await transport.wait_connected()
        started = time.perf_counter()
        for _ in range(IN_FLIGHT):
            send_next()
        await done.wait()
        elapsed = time.perf_counter() - started
        stats = transport.stats()["n2"]
    return Result(
        appends / elapsed,
        2 * appends / elapsed,
        appends * len(ENTRY) / elapsed / 1e6,
        stats.sent / max(stats.writes, 1),
    )


async def one_process(appends: int, tls: TLSFiles | None) -> Result:
    async with anyio.create_task_group() as tg:
        address = await tg.start(follower, 0, tls)
        result = await leader(address, appends, tls)
        tg.cancel_scope.cancel()
    return result


def child(port: int, tls: TLSFiles | None, backend: str, ready: object) -> None:
    logging.getLogger("coordkit").setLevel(logging.ERROR)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(follower, port, tls)
            ready.set()  # type: ignore[attr-defined]

    anyio.run(main, backend=backend, backend_options=options(backend))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def two_processes(appends: int, tls: TLSFiles | None, backend: str, uvloop: bool) -> Result:
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    process = ctx.Process(target=child, args=(port, tls, backend, ready), daemon=True)
    process.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the follower process did not start")
        return anyio.run(
            leader,
            Address("127.0.0.1", port),
            appends,
            tls,
            backend=backend,
            backend_options={"use_uvloop": True} if uvloop else {},
        )
    finally:
        process.terminate()
        process.join()


def options(backend: str) -> dict[str, object]:
    return asyncio_backend_options() if backend == "asyncio" else {}


def median_of(runs: int, run: Callable[[], Result]) -> Result:
    results = [run() for _ in range(runs)]
    return Result(
        *(statistics.median(getattr(r, f) for r in results) for f in Result.__dataclass_fields__)
    )


def make_tls(directory: Path) -> TLSFiles:
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = directory / "node.crt", directory / "node.key", directory / "ca.pem"
    for blob in leaf.cert_chain_pems:
        blob.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return TLSFiles(cert, key, ca_file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=30_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tls", action="store_true", help="also measure over mutual TLS")
    args = parser.parse_args()
    # The follower's "closed by the peer" at the end of each run is expected.
    logging.getLogger("coordkit").setLevel(logging.ERROR)

    loops = [("asyncio", False), ("trio", False)]
    if asyncio_backend_options():
        loops.insert(1, ("asyncio", True))
    with tempfile.TemporaryDirectory() as tmp:
        security: list[tuple[str, TLSFiles | None]] = [("tcp", None)]
        if args.tls:
            security.append(("tls", make_tls(Path(tmp))))
        print(
            f"{IN_FLIGHT} appends of {len(ENTRY)}-byte entries in flight, {args.appends} "
            f"appends per run, median of {args.runs} runs; {sys.version.split()[0]}, "
            f"ssl {ssl.OPENSSL_VERSION}"
        )
        header = f"{'mode':14} {'loop':14} {'wire':4} {'appends/s':>10} {'msgs/s':>10} "
        print(header + f"{'MB/s':>7} {'msgs/write':>10}")
        for mode in ("one process", "two processes"):
            for backend, uvloop in loops:
                for wire, tls in security:
                    run = partial(measure, mode, args.appends, tls, backend, uvloop)
                    r = median_of(args.runs, run)
                    name = backend + ("+uvloop" if uvloop else "")
                    print(
                        f"{mode:14} {name:14} {wire:4} {r.appends_per_s:10.0f} "
                        f"{r.messages_per_s:10.0f} {r.mb_per_s:7.2f} {r.per_write:10.1f}",
                        flush=True,
                    )


def measure(mode: str, appends: int, tls: TLSFiles | None, backend: str, uvloop: bool) -> Result:
    if mode == "one process":
        return anyio.run(
            one_process,
            appends,
            tls,
            backend=backend,
            backend_options={"use_uvloop": True} if uvloop else {},
        )
    return two_processes(appends, tls, backend, uvloop)


if __name__ == "__main__":
    main()
