"""Benchmark of the Raft peer transport: appends and bytes per second on loopback.

Two PeerTransports (n1 dials n2) behind the node's real port (``serve``).
n1 keeps 64 APP messages in flight, each carrying one 256-byte entry; n2
answers each with an APP_RESP, and every answer lets n1 send the next append,
as a leader replicating to a follower does. Reported per run: appends
acknowledged per second, messages per second (both directions), MB/s of entry
payload, messages per socket write on n1 (the batching: several queued frames
go out in one write), and the round trip of an append (p50, p99). A second
table does the same with one append in flight: the bare round trip.

Modes: ``one process`` runs both transports on one event loop (so the figure
is the transport's whole CPU cost per append); ``two processes`` runs n2 in a
child process, as nodes of a cluster run. Each on asyncio, on asyncio with
uvloop when it is installed (``pip install uvloop``; the node enables it
through ``asyncio_backend_options()``), and on trio; with ``--tls``, also over
mutual TLS (certificates from trustme, a dev dependency).

Run: .venv/bin/python benchmarks/raft_transport.py [--appends N] [--runs R] [--tls] [--quick]
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
    rtt_p50_us: float
    rtt_p99_us: float


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


async def leader(address: Address, appends: int, tls: TLSFiles | None, in_flight: int) -> Result:
    """n1: keeps ``in_flight`` appends outstanding until ``appends`` are acknowledged."""
    done = anyio.Event()
    sent_at: list[float] = []
    round_trips: list[float] = []
    transport: PeerTransport

    def send_next() -> None:
        sent_at.append(time.perf_counter())
        transport.send(append(len(sent_at)))

    def deliver(m: Message) -> None:
        round_trips.append(time.perf_counter() - sent_at[m.index - 1])
        if len(round_trips) == appends:
            done.set()
        elif len(sent_at) < appends:
            send_next()

    identity = ClusterIdentity(CLUSTER, "n1", TOKEN)
    transport = PeerTransport(
        identity, {"n2": address}, deliver, ssl_context=tls.client() if tls else None
    )
    async with transport:
        await transport.wait_connected()
        started = time.perf_counter()
        for _ in range(in_flight):
            send_next()
        await done.wait()
        elapsed = time.perf_counter() - started
        stats = transport.stats()["n2"]
    round_trips.sort()
    return Result(
        appends / elapsed,
        2 * appends / elapsed,
        appends * len(ENTRY) / elapsed / 1e6,
        stats.sent / max(stats.writes, 1),
        round_trips[len(round_trips) // 2] * 1e6,
        round_trips[int(len(round_trips) * 0.99)] * 1e6,
    )


async def one_process(appends: int, tls: TLSFiles | None, in_flight: int) -> Result:
    async with anyio.create_task_group() as tg:
        address = await tg.start(follower, 0, tls)
        result = await leader(address, appends, tls, in_flight)
        tg.cancel_scope.cancel()
    return result


def child(port: int, tls: TLSFiles | None, backend: str, uvloop: bool, ready: object) -> None:
    logging.getLogger("coordkit").setLevel(logging.ERROR)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(follower, port, tls)
            ready.set()  # type: ignore[attr-defined]

    anyio.run(main, backend=backend, backend_options={"use_uvloop": True} if uvloop else {})


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def two_processes(
    appends: int, tls: TLSFiles | None, backend: str, uvloop: bool, in_flight: int
) -> Result:
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    process = ctx.Process(target=child, args=(port, tls, backend, uvloop, ready), daemon=True)
    process.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the follower process did not start")
        return anyio.run(
            leader,
            Address("127.0.0.1", port),
            appends,
            tls,
            in_flight,
            backend=backend,
            backend_options={"use_uvloop": True} if uvloop else {},
        )
    finally:
        process.terminate()
        process.join()


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
    parser.add_argument("--quick", action="store_true", help="one process, asyncio only")
    args = parser.parse_args()
    # The follower's "closed by the peer" at the end of each run is expected.
    logging.getLogger("coordkit").setLevel(logging.ERROR)

    loops = [("asyncio", False)]
    if not args.quick:
        if asyncio_backend_options():
            loops.append(("asyncio", True))
        loops.append(("trio", False))
    modes = ["one process"] if args.quick else ["one process", "two processes"]
    print(f"{sys.version.split()[0]}, {ssl.OPENSSL_VERSION}, median of {args.runs} runs")
    with tempfile.TemporaryDirectory() as tmp:
        security: list[tuple[str, TLSFiles | None]] = [("tcp", None)]
        if args.tls:
            security.append(("tls", make_tls(Path(tmp))))
        for in_flight, appends in ((IN_FLIGHT, args.appends), (1, max(args.appends // 10, 100))):
            print(
                f"\n{in_flight} append(s) of {len(ENTRY)}-byte entries in flight, "
                f"{appends} appends per run"
            )
            print(
                f"{'mode':14} {'loop':14} {'wire':4} {'appends/s':>10} {'msgs/s':>10} "
                f"{'MB/s':>7} {'msgs/write':>10} {'rtt p50 us':>10} {'rtt p99 us':>10}"
            )
            for mode in modes:
                for backend, uvloop in loops:
                    for wire, tls in security:
                        run = partial(measure, mode, appends, tls, backend, uvloop, in_flight)
                        r = median_of(args.runs, run)
                        name = backend + ("+uvloop" if uvloop else "")
                        print(
                            f"{mode:14} {name:14} {wire:4} {r.appends_per_s:10.0f} "
                            f"{r.messages_per_s:10.0f} {r.mb_per_s:7.2f} {r.per_write:10.1f} "
                            f"{r.rtt_p50_us:10.0f} {r.rtt_p99_us:10.0f}",
                            flush=True,
                        )


def measure(
    mode: str, appends: int, tls: TLSFiles | None, backend: str, uvloop: bool, in_flight: int
) -> Result:
    if mode == "one process":
        return anyio.run(
            one_process,
            appends,
            tls,
            in_flight,
            backend=backend,
            backend_options={"use_uvloop": True} if uvloop else {},
        )
    return two_processes(appends, tls, backend, uvloop, in_flight)


if __name__ == "__main__":
    main()
