"""A client-side watch: events in revision order, resumable on another node.

The client picks the watch's id, so events that arrive before the answer to
the watch request are routed already. It remembers the last revision it
delivered; on a new connection the watch asks again from that revision + 1,
and anything at or below it that arrives anyway is dropped, so nothing is
repeated. All events of one revision come in one frame, so a transaction's
events are never split by a reconnection.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from coordkit.errors import ClientClosedError, CoordkitError
from coordkit.model import Event

from ...store import unwrap_result
from ..protocol import Op as RequestOp
from ..protocol import decode_events
from .chroot import Chroot

__all__ = ["ClientWatch"]


class ClientWatch:
    """One watch of the raft client; also its own async iterator of events."""

    def __init__(
        self, watch_id: int, path: str, recursive: bool, start: int | None, chroot: Chroot
    ) -> None:
        self.id = watch_id
        self._chroot = chroot
        self.path = path
        self.recursive = recursive
        self._start = start
        #: the last revision delivered (or, before any, the one the watch starts after).
        self._last: int | None = None if start is None else start - 1
        self.open = True
        self._send: MemoryObjectSendStream[Event | CoordkitError]
        self._receive: MemoryObjectReceiveStream[Event | CoordkitError]
        self._send, self._receive = anyio.create_memory_object_stream[Event | CoordkitError](
            math.inf
        )

    def request(self) -> dict[str, Any]:
        """The watch request for (re-)establishing this watch on a connection."""
        return {
            "op": RequestOp.WATCH,
            "w": self.id,
            "p": self.path,
            "rec": self.recursive,
            "from": self.resume_from(),
        }

    def resume_from(self) -> int | None:
        return None if self._last is None else self._last + 1

    def established(self, revision: int) -> None:
        """The node registered the watch when its applied revision was ``revision``."""
        if self._last is None:
            self._last = revision

    def deliver(self, header: dict[str, Any], payload: bytes) -> None:
        if not self.open:
            return
        if header.get("t") == "we":
            self.fail_payload(payload)
            return
        try:
            events = decode_events(payload)
        except CoordkitError as exc:
            self.fail(exc)
            return
        for event in events:
            if self._last is not None and event.revision <= self._last:
                continue  # already delivered before a reconnection
            self._send.send_nowait(self._chroot.event(event))
        if events:
            self._last = max(self._last or 0, events[-1].revision)

    def fail_payload(self, payload: bytes) -> None:
        try:
            unwrap_result(payload)
        except CoordkitError as exc:
            self.fail(exc)
            return
        self.fail(CoordkitError(f"watch on {self.path} ended by the server"))

    def fail_from_reply(self, reply: Any) -> None:
        if reply.payload:
            self.fail_payload(reply.payload)
        else:
            self.fail(CoordkitError(str(reply.header.get("m", "watch refused"))))

    def fail(self, error: CoordkitError) -> None:
        if self.open:
            self.open = False
            self._send.send_nowait(error)
            self._send.close()

    def close(self) -> None:
        self.open = False
        self._send.close()
        self._receive.close()

    def __aiter__(self) -> ClientWatch:
        return self

    async def __anext__(self) -> Event:
        try:
            item = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise ClientClosedError("the watch is closed") from None
        if isinstance(item, CoordkitError):
            raise item
        return item
