"""Errors raised by the Raft core.

These stay inside the Raft backend: the server maps them to coordkit's public
errors at its boundary (a dropped proposal becomes a retry, and so on).
"""

from __future__ import annotations

__all__ = [
    "CompactedError",
    "ConfChangeError",
    "NotLeaderError",
    "ProposalDroppedError",
    "RaftError",
    "UnavailableError",
]


class RaftError(Exception):
    """Base of every error raised by the Raft core."""


class NotLeaderError(RaftError):
    """The call needs the leader; ``leader`` is this node's best guess (or None)."""

    def __init__(self, leader: str | None) -> None:
        super().__init__(f"not the leader (leader is {leader!r})")
        self.leader = leader


class ProposalDroppedError(RaftError):
    """The leader refused the proposal (transfer in progress, log cap reached, ...).

    Nothing was appended; retrying later is safe.
    """


class ConfChangeError(RaftError):
    """A membership change is not allowed now or would break an invariant."""


class CompactedError(RaftError):
    """The requested log index was compacted into a snapshot."""


class UnavailableError(RaftError):
    """The requested log index is past the end of the log."""
