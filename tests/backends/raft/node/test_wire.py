"""Frames over real TCP connections: sizes checked before reading, malformed input refused."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import orjson
import pytest
from anyio.abc import SocketStream

from coordkit.backends.raft.wire import (
    HELLO_MAX_FRAME,
    Address,
    Frame,
    FrameError,
    FrameStream,
    HandshakeError,
    HandshakeRefused,
    Hello,
    Welcome,
    connect,
    encode_frame,
    read_hello,
    send_refused,
    send_welcome,
)
from coordkit.errors import ConfigurationError

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[SocketStream, SocketStream]]:
    """Two ends of one loopback TCP connection."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        send, receive = anyio.create_memory_object_stream[SocketStream](1)

        async def accept_one(stream: SocketStream) -> None:
            async with stream:
                await send.send(stream)
                await anyio.sleep_forever()

        with send, receive:
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, accept_one)
                async with await anyio.connect_tcp("127.0.0.1", port) as client:
                    yield client, await receive.receive()
                tg.cancel_scope.cancel()


def test_address_parse_and_format() -> None:
    assert Address.parse("127.0.0.1:7001") == Address("127.0.0.1", 7001)
    assert Address.parse("[::1]:7001") == Address("::1", 7001)
    assert str(Address("::1", 7001)) == "[::1]:7001"
    assert str(Address("h", 1)) == "h:1"
    for bad in ("127.0.0.1", ":7001", "h:port", "h:70000", ""):
        with pytest.raises(ConfigurationError):
            Address.parse(bad)


async def test_frames_sent_in_one_write_arrive_one_by_one() -> None:
    async with tcp_pair() as (a, b):
        frames = [({"t": "x", "n": i}, bytes([i]) * i) for i in range(50)]
        await a.send(b"".join(encode_frame(h, p) for h, p in frames))
        reader = FrameStream(b)
        for header, payload in frames:
            assert await reader.receive() == Frame(header, payload)


async def test_payload_parts_are_concatenated() -> None:
    async with tcp_pair() as (a, b):
        await FrameStream(a).send({"t": "x"}, b"ab", b"", b"cde")
        assert (await FrameStream(b).receive()).payload == b"abcde"


async def test_oversized_frame_is_refused_before_its_body_is_read() -> None:
    async with tcp_pair() as (a, b):
        # Only the prefix is ever sent: a reader that waited for the body would hang.
        await a.send(struct.pack(">II", 10, 1 << 30))
        with anyio.fail_after(5), pytest.raises(FrameError, match="exceeds the maximum of 4096"):
            await FrameStream(b, max_frame=4096).receive()


async def test_truncated_frame_is_an_error_and_clean_close_is_end_of_stream() -> None:
    async with tcp_pair() as (a, b):
        data = encode_frame({"t": "x"}, b"payload")
        await a.send(data + data[:-3])
        await a.send_eof()
        reader = FrameStream(b)
        assert (await reader.receive()).payload == b"payload"
        with pytest.raises(FrameError, match="truncated"):
            await reader.receive()
    async with tcp_pair() as (a, b):
        await a.send(encode_frame({"t": "x"}) + b"\x00\x00")
        await a.send_eof()
        reader = FrameStream(b)
        await reader.receive()
        with pytest.raises(FrameError, match="truncated"):
            await reader.receive()
    async with tcp_pair() as (a, b):
        await a.send(encode_frame({"t": "x"}))
        await a.send_eof()
        reader = FrameStream(b)
        await reader.receive()
        with pytest.raises(anyio.EndOfStream):
            await reader.receive()


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "a list, not an object"),
        (b'"text"', "a str, not an object"),
        (b"{]", "not JSON"),
        (b"1", "cannot be a JSON object"),
    ],
)
async def test_header_that_is_not_a_json_object_is_refused(header: bytes, error: str) -> None:
    async with tcp_pair() as (a, b):
        await a.send(struct.pack(">II", len(header), 0) + header)
        with pytest.raises(FrameError, match=error):
            await FrameStream(b).receive()


async def test_sending_an_oversized_frame_fails_and_sends_nothing() -> None:
    async with tcp_pair() as (a, b):
        with pytest.raises(FrameError, match="exceeds"):
            await FrameStream(a, max_frame=100).send({"t": "x"}, b"y" * 100)
        await FrameStream(a).send({"t": "after"})
        assert (await FrameStream(b).receive()).header == {"t": "after"}


@pytest.mark.parametrize(
    ("header", "error"),
    [
        ({"t": "app"}, "expected a hello"),
        ({"t": "hello", "role": "peer", "cluster": "c"}, "integer version"),
        ({"t": "hello", "v": True, "role": "peer"}, "integer version"),
        ({"t": "hello", "v": 1, "role": "admin", "cluster": "c"}, "unknown role"),
        ({"t": "hello", "v": 1, "role": "peer", "cluster": "c", "token": "t"}, "node id"),
        ({"t": "hello", "v": 1, "role": "peer", "cluster": "c", "node": "n1"}, "token"),
        ({"t": "hello", "v": 1, "role": "client", "cluster": 5}, "cluster id"),
    ],
)
def test_malformed_hello_names_its_fault(header: dict[str, object], error: str) -> None:
    with pytest.raises(FrameError, match=error):
        Hello.from_frame(Frame(dict(header)))


def test_hello_round_trip() -> None:
    for hello in (
        Hello("peer", "c1", "n1", "secret"),
        Hello("client", "c1"),
        Hello("client", None),
    ):
        data = encode_frame(hello.header())
        header = orjson.loads(data[8:])
        assert Hello.from_frame(Frame(header)) == hello
    assert "token" not in Hello("client", "c1", "n1", "secret").header()


async def test_hello_is_read_with_a_small_frame_limit() -> None:
    async with tcp_pair() as (a, b):
        await a.send(struct.pack(">II", 2, HELLO_MAX_FRAME))
        reader = FrameStream(b)
        with pytest.raises(FrameError, match="exceeds"):
            await read_hello(reader)
        assert reader.max_frame > HELLO_MAX_FRAME  # its own limit is back


@pytest.mark.parametrize("reply", ["welcome", "refused", "garbage", "close"])
async def test_connect_reports_each_kind_of_answer(reply: str) -> None:
    hello = Hello("peer", "c1", "n1", "secret")

    async def listener_side(raw: SocketStream) -> None:
        async with raw:
            stream = FrameStream(raw)
            assert await read_hello(stream) == hello
            if reply == "welcome":
                await send_welcome(stream, Welcome("n2", "c1"))
            elif reply == "refused":
                await send_refused(stream, "wrong cluster token")
            elif reply == "garbage":
                await raw.send(b"\xff" * 16)

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, listener_side)
            address = Address("127.0.0.1", port)
            if reply == "welcome":
                stream, welcome = await connect(address, hello)
                assert welcome == Welcome("n2", "c1")
                await stream.aclose()
            elif reply == "refused":
                with pytest.raises(HandshakeRefused) as refused:
                    await connect(address, hello)
                assert refused.value.reason == "wrong cluster token"
            else:
                with pytest.raises(HandshakeError, match="no valid answer"):
                    await connect(address, hello)
            tg.cancel_scope.cancel()


async def test_connect_to_a_closed_port_is_an_os_error() -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
    with pytest.raises(OSError):
        await connect(Address("127.0.0.1", port), Hello("client", None))


async def test_connect_gives_up_at_its_deadline_when_no_answer_comes() -> None:
    async def silent(raw: SocketStream) -> None:
        async with raw:
            await anyio.sleep_forever()

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, silent)
            with pytest.raises(TimeoutError):
                await connect(Address("127.0.0.1", port), Hello("client", None), timeout=0.2)
            tg.cancel_scope.cancel()
