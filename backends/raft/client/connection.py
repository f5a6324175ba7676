"""One client connection to a Raft node: many requests in flight, watch events routed.

A reader task (run by the backend in its background group) reads every
frame: a response wakes the request that carries its number, an event frame
goes to the watch that carries its id. When the connection breaks, every
request still waiting fails with :class:`ConnectionBroken`, and the backend
retries them on the next connection (writes keep their sequence numbers, so
the cluster applies each once).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ..wire import FrameError, FrameStream, encode_frame, frame_size

__all__ = ["Connection", "ConnectionBroken", "Reply"]

log = logging.getLogger(__name__)


class ConnectionBroken(Exception):
    """The connection closed before the answer came: the outcome is unknown."""


@dataclass(slots=True)
class Reply:
    header: dict[str, Any]
    payload: bytes


class _Waiter:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.reply: Reply | None = None


class Connection:
    """A connected, greeted frame stream to node ``node`` at ``address``."""

    def __init__(
        self,
        stream: FrameStream,
        *,
        node: str,
        address: str,
        on_event: Callable[[int, dict[str, Any], bytes], None],
    ) -> None:
        self.node = node
        self.address = address
        self._stream = stream
        self._on_event = on_event
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Waiter] = {}
        self._streams: dict[int, MemoryObjectSendStream[bytes]] = {}
        self._outbox: list[bytes] = []
        self._writing = False
        self.closed = anyio.Event()
        self.cause: str = ""

    @property
    def alive(self) -> bool:
        return not self.closed.is_set()

    async def read_loop(self) -> None:
        """Read frames until the connection breaks; then fail every waiting request."""
        try:
            while True:
                frame = await self._stream.receive()
                header, payload = frame.header, frame.payload
                kind = header.get("t")
                if kind == "r":
                    number = header.get("i", -1)
                    waiter = self._waiting.pop(number, None)
                    if waiter is not None:  # else: a request we stopped waiting for
                        waiter.reply = Reply(header, payload)
                        waiter.event.set()
                    sink = self._streams.pop(number, None)
                    if sink is not None:
                        sink.close()  # every chunk came before this answer
                elif kind in ("e", "we"):
                    self._on_event(int(header.get("w", -1)), header, payload)
                elif kind == "s":
                    sink = self._streams.get(header.get("i", -1))
                    if sink is not None:
                        sink.send_nowait(payload)
                else:
                    raise FrameError(f"unexpected frame type {kind!r} from {self.node}")
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.cause = self.cause or "the node closed the connection"
        except (OSError, FrameError) as exc:  # FrameError: a malformed frame
            self.cause = self.cause or f"{type(exc).__name__}: {exc}"
        finally:
            self._break()

    def _break(self) -> None:
        self.closed.set()
        self._outbox.clear()
        waiting, self._waiting = self._waiting, {}
        for waiter in waiting.values():
            waiter.event.set()  # reply stays None: broken
        streams, self._streams = self._streams, {}
        for sink in streams.values():
            sink.close()

    async def request(self, header: dict[str, Any], payload: bytes = b"") -> Reply:
        """Send one request and wait for its answer (raises ConnectionBroken)."""
        if self.closed.is_set():
            raise ConnectionBroken(self.cause or "the connection is closed")
        number = next(self._ids)
        header["t"] = "q"
        header["i"] = number
        waiter = _Waiter()
        self._waiting[number] = waiter
        try:
            await self.send(header, payload)
            await waiter.event.wait()
        finally:
            self._waiting.pop(number, None)
        if waiter.reply is None:
            raise ConnectionBroken(self.cause or "the connection closed")
        return waiter.reply

    async def stream(self, header: dict[str, Any]) -> AsyncIterator[bytes]:
        """Send a request answered by chunk frames, then one final answer; yield the chunks."""
        if self.closed.is_set():
            raise ConnectionBroken(self.cause or "the connection is closed")
        number = next(self._ids)
        header["t"] = "q"
        header["i"] = number
        send, receive = anyio.create_memory_object_stream[bytes](math.inf)
        self._streams[number] = send
        waiter = _Waiter()
        self._waiting[number] = waiter
        try:
            await self.send(header)
            with receive:
                async for chunk in receive:  # ends when the final answer (or a break) comes
                    yield chunk
        finally:
            self._streams.pop(number, None)
            self._waiting.pop(number, None)
        if waiter.reply is None:
            raise ConnectionBroken(self.cause or "the connection closed mid-stream")
        if waiter.reply.header.get("s") != "ok":
            raise ConnectionBroken(str(waiter.reply.header.get("m", "the stream failed")))

    async def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        """Send a frame that expects no answer (or the first half of :meth:`request`).

        Frames sent while another task is writing join the next write of that
        task (one system call for many concurrent requests); a failed write
        breaks the connection, which fails every waiting request.
        """
        if self.closed.is_set():
            raise ConnectionBroken(self.cause or "the connection is closed")
        data = encode_frame(header, payload)
        if frame_size(data) > self._stream.max_frame:
            raise FrameError(
                f"frame of {frame_size(data)} bytes exceeds the maximum of {self._stream.max_frame}"
            )
        self._outbox.append(data)
        if self._writing:
            return  # the writing task sends it with its next batch
        self._writing = True
        try:
            # Shielded: a frame cut in the middle by a cancellation would corrupt
            # the stream for every other request on it.
            with anyio.CancelScope(shield=True):
                while self._outbox:
                    batch = b"".join(self._outbox)
                    self._outbox.clear()
                    await self._stream.send_encoded(batch)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self.cause = self.cause or f"send failed: {exc}"
            self._break()
            raise ConnectionBroken(self.cause) from exc
        finally:
            self._writing = False

    async def aclose(self, cause: str = "closed by the client") -> None:
        self.cause = self.cause or cause
        self._break()
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()
