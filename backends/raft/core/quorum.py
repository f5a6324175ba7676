"""Majority arithmetic over a set of voters.

Membership changes one voter at a time (see confchange.py), so a single
majority configuration is all the core ever counts: any majority of the old
voter set intersects any majority of the new one.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

__all__ = ["VoteResult", "committed_index", "is_majority", "vote_result"]


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def committed_index(voters: Collection[str], match: Mapping[str, int]) -> int:
    """The largest index acknowledged by a majority of ``voters`` (0 if none).

    Sort the voters' acknowledged indexes in descending order; the value at
    position ``len // 2`` is held by ``len // 2 + 1`` voters, a majority.
    """
    if not voters:
        return 0
    acked = sorted((match.get(v, 0) for v in voters), reverse=True)
    return acked[len(acked) // 2]


def vote_result(voters: Collection[str], votes: Mapping[str, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority is out of reach."""
    if not voters:
        return VoteResult.WON  # a configuration with no voters never blocks
    granted = sum(1 for v in voters if votes.get(v) is True)
    missing = sum(1 for v in voters if v not in votes)
    need = len(voters) // 2 + 1
    if granted >= need:
        return VoteResult.WON
    if granted + missing >= need:
        return VoteResult.PENDING
    return VoteResult.LOST


def is_majority(voters: Collection[str], ids: Collection[str]) -> bool:
    """Whether ``ids`` include a majority of ``voters``."""
    return sum(1 for v in voters if v in ids) >= len(voters) // 2 + 1
