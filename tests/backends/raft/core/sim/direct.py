"""Synchronous delivery for scripted scenarios (like etcd-io/raft's test network).

Messages are delivered at once, in order, until the cluster is quiet; an
``allow`` predicate decides which ones get through, so a test can cut links
or drop one particular message and reproduce an exact interleaving.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from coordkit.backends.raft.core import RaftCore
from coordkit.backends.raft.core.config import RaftConfig
from coordkit.backends.raft.core.messages import ConfState, Entry, Message, ReadState, Role
from coordkit.backends.raft.core.storage import MemoryStorage

from .invariants import SafetyChecker

Allow = Callable[[Message], bool]


def everything(_: Message) -> bool:
    return True


def within(*groups: set[str]) -> Allow:
    """Only messages between members of one group get through."""
    return lambda m: any(m.frm in g and m.to in g for g in groups)


class DirectCluster:
    def __init__(self, n: int, config: RaftConfig | None = None, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.config = config or RaftConfig(pre_vote=False, check_quorum=False)
        self.ids = [f"s{i}" for i in range(1, n + 1)]
        conf = ConfState.of(self.ids)
        self.disks = {i: MemoryStorage(conf) for i in self.ids}
        self.cores: dict[str, RaftCore | None] = {}
        self.applied: dict[str, dict[int, Entry]] = {i: {} for i in self.ids}
        self.checker = SafetyChecker()
        self.sent: list[Message] = []
        self.read_states: dict[str, list[ReadState]] = {i: [] for i in self.ids}
        for i in self.ids:
            self.restart(i)

    def core(self, nid: str) -> RaftCore:
        c = self.cores[nid]
        assert c is not None, f"{nid} is down"
        return c

    def crash(self, nid: str) -> None:
        self.cores[nid] = None

    def restart(self, nid: str) -> None:
        self.checker.on_restart(nid, self.disks[nid])
        self.cores[nid] = RaftCore(nid, self.disks[nid], self.config, self.rng)

    def handle(self, nid: str) -> list[Message]:
        """Process every Ready of ``nid``; returns the messages to send."""
        core = self.cores[nid]
        out: list[Message] = []
        if core is not None:
            self.checker.on_commit(nid, core, self.disks, self.cores)
        while core is not None and core.has_ready():
            rd = core.ready()
            disk = self.disks[nid]
            if rd.snapshot is not None:
                disk.apply_snapshot(rd.snapshot)
            if rd.entries:
                prev_term = core.log.term(rd.entries[0].index - 1)
                self.checker.on_persist(nid, prev_term, rd.entries)
                disk.append(rd.entries)
            if rd.hard_state is not None:
                disk.set_hard_state(rd.hard_state)
            out.extend(rd.messages)
            self.read_states[nid].extend(rd.read_states)
            leaders = [(i, c) for i, c in self.cores.items() if c and c.role is Role.LEADER]
            for e in rd.committed_entries:
                self.checker.on_apply(nid, core.term, e, leaders)
                self.applied[nid][e.index] = e
            core.advance(rd)
            self.checker.on_commit(nid, core, self.disks, self.cores)
            if core.role is Role.LEADER:
                self.checker.on_leader(nid, core.term, core)
        return out

    def deliver(self, msgs: list[Message], allow: Allow = everything) -> None:
        queue = list(msgs)
        while queue:
            m = queue.pop(0)
            self.sent.append(m)
            target = self.cores.get(m.to)
            if target is None or not allow(m):
                continue
            target.step(m)
            queue.extend(self.handle(m.to))

    def campaign(self, nid: str, allow: Allow = everything) -> None:
        self.core(nid).campaign()
        self.deliver(self.handle(nid), allow)

    def propose(self, nid: str, data: bytes, allow: Allow = everything) -> int:
        index = self.core(nid).propose(data)
        self.deliver(self.handle(nid), allow)
        return index

    def tick(self, nid: str, times: int = 1, allow: Allow = everything) -> None:
        for _ in range(times):
            self.core(nid).tick()
            self.deliver(self.handle(nid), allow)
