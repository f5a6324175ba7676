"""The simulated network: per-message fate (drop, delay, duplicate, long reorder) and partitions.

Fates come from the cluster's single ``random.Random``; partitions are sets of
blocked directed links, checked when a message is sent and again when it
arrives (a message in flight when a link is cut is lost, as with TCP resets).
Default figures follow MIT 6.5840's labrpc unreliable mode.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from coordkit.backends.raft.core.messages import Message, MessageType


@dataclass(slots=True)
class NetConfig:
    min_delay_ms: int = 1
    max_delay_ms: int = 5
    drop: float = 0.0  # probability a message is lost
    duplicate: float = 0.0  # probability a message is delivered twice
    long_delay: float = 0.0  # probability a message is held back (reordering)
    long_delay_ms: tuple[int, int] = (200, 2200)

    @staticmethod
    def reliable() -> NetConfig:
        return NetConfig()

    @staticmethod
    def unreliable() -> NetConfig:
        # labrpc: 0-26 ms delay, ~10% of requests and ~10% of replies dropped.
        return NetConfig(min_delay_ms=0, max_delay_ms=26, drop=0.1, duplicate=0.02)

    @staticmethod
    def long_reordering() -> NetConfig:
        cfg = NetConfig.unreliable()
        cfg.long_delay = 0.3
        return cfg


class Network:
    def __init__(self, rng: random.Random, config: NetConfig | None = None) -> None:
        self.rng = rng
        self.config = config or NetConfig.reliable()
        self.blocked: set[tuple[str, str]] = set()
        self.sent: Counter[str] = Counter()  # by message type, every send attempt
        self.bytes_sent = 0
        self.delivered = 0
        self.rejected_appends = 0  # APP_RESP with reject set: backtracking steps

    # -- partitions ------------------------------------------------------------------

    def can_reach(self, frm: str, to: str) -> bool:
        return (frm, to) not in self.blocked

    def heal(self) -> None:
        self.blocked.clear()

    def disconnect(self, node: str, others: Iterable[str]) -> None:
        for o in others:
            if o != node:
                self.blocked.add((node, o))
                self.blocked.add((o, node))

    def connect(self, node: str, others: Iterable[str]) -> None:
        for o in others:
            self.blocked.discard((node, o))
            self.blocked.discard((o, node))

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Only nodes in the same group can talk (symmetric split)."""
        self.blocked.clear()
        gs = [sorted(g) for g in groups]
        for i, a in enumerate(gs):
            for b in gs[i + 1 :]:
                for x in a:
                    for y in b:
                        self.blocked.add((x, y))
                        self.blocked.add((y, x))

    def block_one_way(self, frm: str, to: str) -> None:
        """Asymmetric fault: ``frm`` can no longer reach ``to`` (the reverse still works)."""
        self.blocked.add((frm, to))

    # -- fates ------------------------------------------------------------------------

    def fates(self, m: Message) -> list[int]:
        """Delivery delays (ms) for one message: empty if lost, two if duplicated."""
        self.sent[m.type.value] += 1
        self.bytes_sent += m.size
        if m.reject and m.type is MessageType.APP_RESP:
            self.rejected_appends += 1
        if (m.frm, m.to) in self.blocked:
            return []
        c = self.config
        rng = self.rng
        if c.drop and rng.random() < c.drop:
            return []
        delays = [rng.randint(c.min_delay_ms, c.max_delay_ms)]
        if c.long_delay and rng.random() < c.long_delay:
            delays[0] = rng.randint(*c.long_delay_ms)
        if c.duplicate and rng.random() < c.duplicate:
            delays.append(rng.randint(c.min_delay_ms, c.max_delay_ms * 4 + 1))
        return delays

    def total_sent(self) -> int:
        return sum(self.sent.values())
