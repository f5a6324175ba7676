"""Why a node will not run a client's request now (answered with a protocol status)."""

from __future__ import annotations

__all__ = ["NotLeader", "Refused"]


class Refused(Exception):
    """A request this node will not run now; ``status`` says why (a protocol Status)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class NotLeader(Refused):
    def __init__(self, leader: str | None, address: str | None) -> None:
        where = f"{leader} at {address}" if leader else "unknown (election under way)"
        super().__init__(
            "redirect" if leader else "unavailable", f"not the leader; leader: {where}"
        )
        self.leader = leader
        self.address = address
