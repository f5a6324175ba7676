"""ReadIndex: linearizable reads without writing to the log (dissertation §6.4).

The leader records its commit index for each read request, then confirms that
it is still the leader by a round of heartbeats carrying the request's
context. Once a majority has answered a heartbeat carrying context ``c``,
every request queued up to and including ``c`` is safe to serve at its
recorded index: no other leader could have committed anything newer before
the request arrived.

Contexts must be unique per request (a retry needs a fresh one): a reused
context could be confirmed by an acknowledgement of an older heartbeat.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["ReadIndexStatus", "ReadOnly"]


@dataclass(slots=True)
class ReadIndexStatus:
    index: int
    context: bytes
    requester: str
    acks: set[str] = field(default_factory=set)


class ReadOnly:
    def __init__(self) -> None:
        # In arrival order; the order is what lets one ack release earlier requests.
        self._pending: OrderedDict[bytes, ReadIndexStatus] = OrderedDict()

    def add_request(self, index: int, context: bytes, requester: str) -> bool:
        """Queue a request; False if its context is already pending."""
        if context in self._pending:
            return False
        self._pending[context] = ReadIndexStatus(index, context, requester)
        return True

    def recv_ack(self, frm: str, context: bytes) -> set[str] | None:
        """Record ``frm``'s answer to the heartbeat carrying ``context``."""
        status = self._pending.get(context)
        if status is None:
            return None
        status.acks.add(frm)
        return status.acks

    def advance(self, context: bytes) -> list[ReadIndexStatus]:
        """Remove and return every request up to and including ``context``."""
        if context not in self._pending:
            return []
        released = []
        while self._pending:
            ctx, status = self._pending.popitem(last=False)
            released.append(status)
            if ctx == context:
                break
        return released

    def last_pending_context(self) -> bytes | None:
        return next(reversed(self._pending)) if self._pending else None

    def reset(self) -> None:
        self._pending.clear()

    def __len__(self) -> int:
        return len(self._pending)
