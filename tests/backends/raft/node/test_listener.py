"""The node's port under bad input: each bad connection is closed with one log line
naming its address and the reason, and the node goes on serving everyone else."""

from __future__ import annotations

import logging
import struct
from collections.abc import Awaitable, Callable

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream
from peer_nodes import CLUSTER, NOWHERE, TOKEN, Node, append, records_about, start_cluster

from coordkit.backends.raft.node.codec import encode_message
from coordkit.backends.raft.wire import FrameStream, Hello, connect, encode_frame

pytestmark = pytest.mark.anyio

PEER_HELLO = Hello("peer", CLUSTER, "n0", TOKEN).header()


def hello_with(**changes: object) -> bytes:
    return encode_frame({**PEER_HELLO, **changes})


async def as_peer(stream: SocketStream) -> None:
    """Say hello as the (known) peer n0 and read the welcome."""
    await stream.send(encode_frame(PEER_HELLO))
    assert (await FrameStream(stream).receive()).header["t"] == "welcome"


def sends(*chunks: bytes, peer: bool = False) -> Callable[[SocketStream], Awaitable[None]]:
    async def behave(stream: SocketStream) -> None:
        if peer:
            await as_peer(stream)
        for chunk in chunks:
            await stream.send(chunk)
        await stream.send_eof()

    return behave


def unknown_type() -> bytes:
    return encode_frame({"t": "bogus", "f": "n0", "o": "n2"})


CASES: dict[str, tuple[Callable[[SocketStream], Awaitable[None]], str]] = {
    "garbage": (sends(b"GET / HTTP/1.1\r\nHost: n2\r\n\r\n"), "exceeds the maximum of 65536"),
    "oversized hello": (sends(struct.pack(">II", 10, 1 << 20)), "exceeds the maximum of 65536"),
    "oversized frame": (
        sends(struct.pack(">II", 10, 1 << 30), peer=True),
        "bad frame: frame of 1073741834 bytes exceeds the maximum of 16777216",
    ),
    "truncated hello": (sends(hello_with()[:-5]), "truncated frame"),
    "truncated frame": (
        sends(encode_message(append("n0", "n2", 1))[:-1], peer=True),
        "bad frame: truncated frame",
    ),
    "unknown message type": (
        sends(unknown_type(), peer=True),
        "bad frame: unknown message type 'bogus'",
    ),
    "spoofed sender": (
        sends(encode_message(append("n1", "n2", 1)), peer=True),
        "a message from n1 to n2 on the connection with n0",
    ),
    "first frame not a hello": (
        sends(encode_message(append("n0", "n2", 1))),
        "expected a hello, got a frame of type 'app'",
    ),
    "wrong token": (sends(hello_with(token="guess")), "refused peer n0: wrong cluster token"),
    "wrong cluster": (sends(hello_with(cluster="other")), "refused peer n0: wrong cluster id"),
    "unknown node": (sends(hello_with(node="n9")), "n9 is not a member of this cluster"),
    "larger id dials": (sends(hello_with(node="n5")), "n5 must not dial n2"),
    "newer protocol": (sends(hello_with(v=2)), "protocol version 2 is not supported"),
    "client of another cluster": (
        sends(encode_frame(Hello("client", "other").header())),
        "refused client: wrong cluster id 'other'",
    ),
}


@pytest.mark.parametrize("case", CASES)
async def test_a_bad_connection_is_closed_with_one_log_line_and_the_node_goes_on(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    behave, reason = CASES[case]
    with anyio.fail_after(20):
        async with start_cluster(["n1", "n2"]) as nodes:
            n1, n2 = nodes["n1"], nodes["n2"]
            n2.transport.set_peers({"n0": NOWHERE, "n1": n1.address, "n5": NOWHERE})
            await n1.transport.wait_connected()
            async with await anyio.connect_tcp("127.0.0.1", n2.address.port) as bad:
                port = bad.extra(SocketAttribute.local_port)
                await behave(bad)
                await read_until_closed(bad)
            lines = records_about(caplog.records, f"127.0.0.1:{port}")
            assert len(lines) == 1, [r.getMessage() for r in lines]
            assert reason in lines[0].getMessage()
            # ... and nothing else was said (n2 dials the member n5, which is nowhere).
            others = [
                r for r in records_about(caplog.records, "") if "peer n5 at" not in r.getMessage()
            ]
            assert len(others) == 1
            await still_serving(n1, n2)


async def read_until_closed(stream: SocketStream) -> None:
    """Read (a refusal, pings...) until the node closes the connection."""
    try:
        while await stream.receive():
            pass
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return


async def still_serving(n1: Node, n2: Node) -> None:
    """The peer link n1-n2 carries messages and a new client is welcomed."""
    n1.transport.send(append("n1", "n2", 42))
    await n2.inbox.until(lambda ms: any(m.entries[0].index == 42 for m in ms))
    stream, welcome = await connect(n2.address, Hello("client", CLUSTER))
    assert welcome.node == "n2"
    await stream.aclose()
    assert n2.accepted["n1"] == 1  # the peer link n1-n2 was never disturbed


async def test_a_hello_that_never_comes_times_out(caplog: pytest.LogCaptureFixture) -> None:
    with anyio.fail_after(20):
        async with start_cluster(["n1", "n2"], hello_timeout=0.3) as nodes:
            n1, n2 = nodes["n1"], nodes["n2"]
            await n1.transport.wait_connected()
            async with await anyio.connect_tcp("127.0.0.1", n2.address.port) as silent:
                port = silent.extra(SocketAttribute.local_port)
                # While the silent connection waits, the node serves others.
                await still_serving(n1, n2)
                started = anyio.current_time()
                await read_until_closed(silent)
                assert anyio.current_time() - started < 5  # closed by the deadline, not a hang
            lines = records_about(caplog.records, f"127.0.0.1:{port}")
            assert [r.getMessage().split(": ", 1)[1] for r in lines] == ["no hello within 0.3 s"]
            await still_serving(n1, n2)


async def test_a_connection_closed_before_its_hello_is_not_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with anyio.fail_after(20):
        async with start_cluster(["n1", "n2"]) as nodes:
            async with await anyio.connect_tcp("127.0.0.1", nodes["n2"].address.port) as probe:
                port = probe.extra(SocketAttribute.local_port)
                await probe.send_eof()
                await read_until_closed(probe)
            lines = [r for r in caplog.records if f"127.0.0.1:{port}" in r.getMessage()]
            assert [(r.levelno, r.getMessage().split(": ", 1)[1]) for r in lines] == [
                (logging.INFO, "closed before its hello")
            ]
