"""A cluster of RaftCores on a virtual clock, driven by one seeded ``random.Random``.

Each node has a "disk" (a MemoryStorage that survives crashes) and, while it
is up, a RaftCore and a KVStore rebuilt from that disk on restart. Events
(ticks, message deliveries, write completions, client actions) run in
virtual-time order; every Ready is handled exactly as the contract says, with
optional crashes between its steps, and reported to the SafetyChecker as it
happens. Nothing here reads the wall clock.

With ``RaftConfig.async_storage_writes`` a node's writes become durable after
a random virtual delay, in Ready order, several in flight at once (a slow
disk, group commit); a crash loses every write not yet durable. Only when a
write completes does the disk change, then ``persisted()`` is called and the
Ready's ``persisted_messages`` go out.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from coordkit.backends.raft.core import RaftCore
from coordkit.backends.raft.core.config import RaftConfig
from coordkit.backends.raft.core.errors import RaftError
from coordkit.backends.raft.core.messages import (
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    Ready,
    Role,
)
from coordkit.backends.raft.core.storage import MemoryStorage

from .invariants import SafetyChecker
from .kv import KVStore, encode_cas, encode_put
from .linearizability import Operation
from .network import NetConfig, Network

TICK, DELIVER, CALL, DURABLE = 0, 1, 2, 3
T = TypeVar("T")


@dataclass(eq=False)
class SimNode:
    id: str
    disk: MemoryStorage
    tick_ms: int
    core: RaftCore | None = None
    kv: KVStore | None = None
    kv_index: int = 0  # last index reflected in kv
    incarnation: int = 0
    # Everything this node ever applied, kept across crashes (like MIT's tester).
    applied: dict[int, Entry] = field(default_factory=dict)
    waiting_reads: list[tuple[int, bytes]] = field(default_factory=list)
    crashes: int = 0
    # Async writes in flight, oldest first: (Ready, term before its first entry
    # when handed out, virtual time at which it becomes durable, whether the
    # node crashes right after it is durable, before persisted() hears of it).
    writes: deque[tuple[Ready, int | None, int, bool]] = field(default_factory=deque)

    @property
    def alive(self) -> bool:
        return self.core is not None


@dataclass(eq=False)
class _Pending:
    op: Operation
    node: str
    client: int


class Cluster:
    def __init__(
        self,
        n: int = 3,
        *,
        seed: int = 0,
        rng: random.Random | None = None,
        spares: int = 0,
        config: RaftConfig | None = None,
        net: NetConfig | None = None,
        tick_ms: int | list[int] = 10,
        crash_mid_ready: float = 0.0,
        snapshot_every: int = 0,
        snapshot_retain: int = 0,
        write_delay_ms: tuple[int, int] = (1, 8),
    ) -> None:
        self.seed = seed
        # The one source of randomness: network fates, faults, clients and the
        # cores' election timeouts all draw from it, so a seed replays exactly.
        self.rng = rng if rng is not None else random.Random(seed)
        self.config = config or RaftConfig(election_tick=10, heartbeat_tick=2)
        self.net = Network(self.rng, net)
        self.checker = SafetyChecker()
        self.crash_mid_ready = crash_mid_ready
        self.snapshot_every = snapshot_every
        self.snapshot_retain = snapshot_retain
        # Async writes: each takes this long (virtual ms), and completes in order.
        self.write_delay_ms = write_delay_ms
        self.max_writes_in_flight = 0  # on one node at once (async writes)
        self.now = 0
        self._seq = 0
        self._stamp = 0
        self._events: list[tuple[int, int, int, object, object]] = []
        ids = [f"n{i}" for i in range(1, n + spares + 1)]
        voters = ConfState.of(ids[:n])
        ticks = tick_ms if isinstance(tick_ms, list) else [tick_ms] * len(ids)
        self.nodes: dict[str, SimNode] = {}
        # The live cores, by node (None while down), for the checker.
        self.cores: dict[str, RaftCore | None] = {}
        for i, nid in enumerate(ids):
            # Spares start with an empty configuration: they wait to be added.
            disk = MemoryStorage(voters if i < n else ConfState())
            self.nodes[nid] = SimNode(nid, disk, ticks[i])
            self._start(self.nodes[nid])
        self.disks = {nid: n.disk for nid, n in self.nodes.items()}
        # Client state
        self.history: list[Operation] = []
        self._pending: dict[int, _Pending] = {}
        self._next_op = 0
        self._client_target: dict[int, str] = {}
        self.client_stop_at = 0
        self.op_timeout_ms = 400
        self.keys = ("x", "y")
        self.reads_from_followers = True
        self.read_ratio = 0.3
        # Called when a node has just become leader (fault schedules use it).
        self.on_new_leader: Callable[[str], None] | None = None

    # -- event queue ---------------------------------------------------------------------

    def _push(self, at: int, kind: int, a: object, b: object = None) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, a, b))

    def call_at(self, at: int, fn: Callable[[], None]) -> None:
        self._push(at, CALL, fn)

    def stamp(self) -> int:
        """A strictly increasing logical time for history events."""
        self._stamp += 1
        return self._stamp

    def run_until(self, pred: Callable[[], bool] | None, timeout_ms: int) -> bool:
        deadline = self.now + timeout_ms
        events = self._events
        while events and events[0][0] <= deadline:
            at, _, kind, a, b = heapq.heappop(events)
            self.now = at
            if kind == TICK:
                node = self.nodes[a]  # type: ignore[index]
                if node.core is not None and node.incarnation == b:
                    node.core.tick()
                    self._process(node)
                    self._push(at + node.tick_ms, TICK, a, b)
            elif kind == DELIVER:
                m: Message = a  # type: ignore[assignment]
                node = self.nodes[m.to]
                if node.core is not None and self.net.can_reach(m.frm, m.to):
                    self.net.delivered += 1
                    node.core.step(m)
                    self._process(node)
            elif kind == DURABLE:
                node = self.nodes[a]  # type: ignore[index]
                if node.core is not None and node.incarnation == b:
                    self._complete_writes(node)
            else:
                a()  # type: ignore[operator]
            if pred is not None and pred():
                return True
        self.now = deadline
        return pred() if pred is not None else True

    def run_for(self, ms: int) -> None:
        self.run_until(None, ms)

    # -- node lifecycle ------------------------------------------------------------------

    def _start(self, node: SimNode) -> None:
        node.incarnation += 1
        node.core = RaftCore(node.id, node.disk, self.config, self.rng)
        self.cores[node.id] = node.core
        snap = node.disk.snapshot()
        node.kv = KVStore.restore(snap.data)
        node.kv_index = snap.meta.index
        node.waiting_reads = []
        self._push(self.now + self.rng.randint(1, node.tick_ms), TICK, node.id, node.incarnation)

    def crash(self, nid: str) -> None:
        """Lose everything not on the node's disk."""
        node = self.nodes[nid]
        if node.core is None:
            return
        node.core = None
        self.cores[nid] = None
        node.kv = None
        node.waiting_reads = []
        node.writes.clear()  # not yet durable: lost
        node.crashes += 1

    def restart(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.core is not None:
            return
        self.checker.on_restart(nid, node.disk)
        self._start(node)

    def set_tick_ms(self, nid: str, ms: int) -> None:
        self.nodes[nid].tick_ms = ms

    def disconnect(self, nid: str) -> None:
        self.net.disconnect(nid, self.nodes)

    def connect(self, nid: str) -> None:
        self.net.connect(nid, self.nodes)

    # -- Ready handling ----------------------------------------------------------------------

    def _process(self, node: SimNode) -> None:
        core = node.core
        if core is not None:
            self.checker.on_commit(node.id, core, self.disks, self.cores)
        # The loop stops if the node crashed meanwhile (a fault hook may crash it).
        while core is not None and node.core is core and core.has_ready():
            rd = core.ready()
            is_async = core.cfg.async_storage_writes
            crash_at = -1
            if self.crash_mid_ready and self.rng.random() < self.crash_mid_ready:
                crash_at = self.rng.randrange(4 if is_async else 3)
            prev_term = core.log.term(rd.entries[0].index - 1) if rd.entries else None
            if is_async:
                # 1. hand the writes to the disk; they become durable later, in order.
                lo, hi = self.write_delay_ms
                last = node.writes[-1][2] if node.writes else self.now
                due = max(last, self.now + self.rng.randint(lo, hi))
                node.writes.append((rd, prev_term, due, crash_at == 3))
                self.max_writes_in_flight = max(self.max_writes_in_flight, len(node.writes))
                self._push(due, DURABLE, node.id, node.incarnation)
            if crash_at == 0:
                self.crash(node.id)  # sync: before persisting; async: the write is lost
                return
            if not is_async:
                # 1. persist: snapshot, entries, hard state.
                self._write(node, core, rd, prev_term)
            if crash_at == 1:
                self.crash(node.id)
                return
            # 2. send (sync: only once what the messages depend on is durable).
            self._send(rd.messages)
            if crash_at == 2:
                self.crash(node.id)
                return
            # 3. apply
            if rd.snapshot is not None:
                self.checker.on_snapshot(node.id, rd.snapshot)
                node.kv = KVStore.restore(rd.snapshot.data)
                node.kv_index = rd.snapshot.meta.index
            for e in rd.committed_entries:
                self._apply(node, e)
            if rd.read_states:
                node.waiting_reads.extend((rs.index, rs.context) for rs in rd.read_states)
            if node.waiting_reads:
                self._serve_reads(node)
            core.advance(rd)
            self.checker.on_commit(node.id, core, self.disks, self.cores)
            if core.role is Role.LEADER:
                self.checker.on_leader(node.id, core.term, core)
                new = rd.soft_state is not None and rd.soft_state.role is Role.LEADER
                if new and self.on_new_leader is not None:
                    self.on_new_leader(node.id)
            if self.snapshot_every and node.kv is not None and node.core is core:
                applied = core.applied_index
                if applied - node.disk.snapshot().meta.index >= self.snapshot_every:
                    core.compact(applied, node.kv.snapshot(), self.snapshot_retain)

    def _write(self, node: SimNode, core: RaftCore, rd: Ready, prev_term: int | None) -> None:
        """Make ``rd``'s snapshot, entries and hard state durable on ``node``'s disk."""
        if rd.snapshot is not None:
            node.disk.apply_snapshot(rd.snapshot)
        if rd.entries:
            self.checker.on_persist(node.id, prev_term, rd.entries)
            node.disk.append(rd.entries)
        if rd.hard_state is not None:
            node.disk.set_hard_state(rd.hard_state)

    def _complete_writes(self, node: SimNode) -> None:
        """Async writes: every write due by now is durable, in order (a group commit)."""
        core = node.core
        while core is not None and node.core is core and node.writes:
            rd, prev_term, due, crash_after = node.writes[0]
            if due > self.now:
                break
            node.writes.popleft()
            self._write(node, core, rd, prev_term)
            if crash_after and self.crash_mid_ready:  # (faults may have been healed since)
                self.crash(node.id)  # durable, but persisted() never heard of it
                return
            core.persisted(rd)
            self._send(rd.persisted_messages)
            self._process(node)

    def _send(self, messages: tuple[Message, ...]) -> None:
        for m in messages:
            for delay in self.net.fates(m):
                self._push(self.now + delay, DELIVER, m)

    def _apply(self, node: SimNode, e: Entry) -> None:
        assert node.kv is not None
        if e.index != node.kv_index + 1:
            self.checker.fail(f"{node.id} applied index {e.index} after {node.kv_index}")
        self.checker.on_apply(node.id, node.core.term if node.core else 0, e, self.leaders())
        node.applied[e.index] = e
        node.kv_index = e.index
        if e.type is not EntryType.NORMAL:
            return
        outcome = node.kv.apply(e.data)
        if outcome is not None:
            op_id, result = outcome
            p = self._pending.get(op_id)
            if p is not None and p.node == node.id:
                self._complete(op_id, result)

    def _serve_reads(self, node: SimNode) -> None:
        assert node.kv is not None
        still = []
        for index, ctx in node.waiting_reads:
            if index > node.kv_index:
                still.append((index, ctx))
                continue
            op_id = int(ctx.decode()[1:])
            p = self._pending.get(op_id)
            if p is not None and p.node == node.id:
                self._complete(op_id, node.kv.get(p.op.key))
        node.waiting_reads = still

    # -- observation -----------------------------------------------------------------------

    def leaders(self) -> list[tuple[str, RaftCore]]:
        return [
            (n.id, n.core)
            for n in self.nodes.values()
            if n.core is not None and n.core.role is Role.LEADER
        ]

    def leader(self) -> str | None:
        """The live leader of the highest term, if any."""
        best: tuple[int, str] | None = None
        for nid, core in self.leaders():
            if best is None or core.term > best[0]:
                best = (core.term, nid)
        return best[1] if best else None

    def stable_leader(self) -> str | None:
        """A leader in touch with a majority of its voters, followed in its term by every
        live member it can reach both ways."""
        lid = self.leader()
        if lid is None:
            return None
        lcore = self.nodes[lid].core
        assert lcore is not None
        in_touch = 0
        for n in self.nodes.values():
            if n.core is None or n.id not in lcore.conf.members():
                continue
            if not (self.net.can_reach(lid, n.id) and self.net.can_reach(n.id, lid)):
                continue
            if n.core.term != lcore.term or n.core.leader != lid:
                return None
            in_touch += n.id in lcore.conf.voters
        return lid if in_touch > len(lcore.conf.voters) // 2 else None

    def n_committed(self, index: int) -> tuple[int, bytes | None]:
        """How many nodes applied ``index``, and its data (they must agree)."""
        count, data = 0, None
        for n in self.nodes.values():
            e = n.applied.get(index)
            if e is None:
                continue
            if count and e.data != data:
                self.checker.fail(f"n_committed: nodes disagree at index {index}")
            count, data = count + 1, e.data
        return count, data

    # -- MIT 6.5840-style helpers -------------------------------------------------------------

    def check_one_leader(self, timeout_ms: int = 5000) -> str:
        if not self.run_until(lambda: self.stable_leader() is not None, timeout_ms):
            raise AssertionError(f"no stable leader within {timeout_ms} ms (seed {self.seed})")
        lid = self.stable_leader()
        assert lid is not None
        return lid

    def one(self, data: bytes, expected: int, timeout_ms: int = 10_000) -> int:
        """Get ``data`` committed and applied by at least ``expected`` nodes; its index."""
        deadline = self.now + timeout_ms
        while self.now < deadline:
            index = None
            for nid, _ in self.leaders():
                index = self.propose_at(nid, data)
                if index is not None:
                    break
            if index is not None and self.run_until(self._agreed(index, data, expected), 2000):
                return index
            else:
                self.run_for(50)
        raise AssertionError(f"one({data!r}) failed to reach agreement (seed {self.seed})")

    def _agreed(self, index: int, data: bytes, expected: int) -> Callable[[], bool]:
        def done() -> bool:
            count, got = self.n_committed(index)
            return count >= expected and got == data

        return done

    def _call(self, nid: str | None, action: Callable[[RaftCore], T]) -> T | None:
        """Run ``action`` on a live node's core, then handle its Readies.

        None if the node is down (or ``nid`` is None) or the core refused.
        """
        node = self.nodes[nid] if nid is not None else None
        if node is None or node.core is None:
            return None
        try:
            result = action(node.core)
        except RaftError:
            return None
        self._process(node)
        return result

    def propose_at(self, nid: str, data: bytes) -> int | None:
        return self._call(nid, lambda core: core.propose(data))

    def try_conf_change(self, change: ConfChangeType, target: str) -> bool:
        index = self._call(self.leader(), lambda c: c.propose_conf_change(change, target))
        return index is not None

    def transfer(self, to: str) -> bool:
        def start(core: RaftCore) -> bool:
            core.transfer_leadership(to)
            return True

        return self._call(self.leader(), start) is not None

    # -- clients ------------------------------------------------------------------------------

    def start_clients(self, count: int, until_ms: int) -> None:
        """Clients issue one operation at a time until ``until_ms`` (virtual)."""
        self.client_stop_at = until_ms
        ids = list(self.nodes)
        for c in range(count):
            self._client_target[c] = self.rng.choice(ids)
            self.call_at(self.now + self.rng.randint(0, 10), self._client_action(c))

    def _client_action(self, client: int) -> Callable[[], None]:
        return lambda: self._client_issue(client)

    def _client_issue(self, client: int) -> None:
        if self.now >= self.client_stop_at:
            return
        rng = self.rng
        node = self.nodes[self._client_target[client]]
        key = rng.choice(self.keys)
        roll = rng.random()
        op_id = self._next_op + 1
        try:
            if node.core is None:
                raise RaftError("down")
            if roll < self.read_ratio:
                if not self.reads_from_followers and node.core.role is not Role.LEADER:
                    raise RaftError("not leader")
                op = Operation(key, "get", None, 0, client=client, op_id=op_id)
                node.core.read_index(f"r{op_id}".encode())
            elif roll < self.read_ratio + (1 - self.read_ratio) / 2:
                value = f"v{op_id}"
                op = Operation(key, "put", value, 0, client=client, op_id=op_id)
                node.core.propose(encode_put(op_id, key, value))
            else:
                expected = node.kv.get(key) if node.kv is not None and rng.random() < 0.7 else None
                new = f"v{op_id}"
                op = Operation(key, "cas", (expected, new), 0, client=client, op_id=op_id)
                node.core.propose(encode_cas(op_id, key, expected, new))
        except RaftError as exc:
            hint = getattr(exc, "leader", None)
            self._client_target[client] = hint if hint else rng.choice(list(self.nodes))
            self.call_at(self.now + rng.randint(5, 20), self._client_action(client))
            return
        self._next_op = op_id
        op.call = self.stamp()
        op.node = node.id
        self.history.append(op)
        self._pending[op_id] = _Pending(op, node.id, client)
        self._process(node)
        self.call_at(self.now + self.op_timeout_ms, lambda: self._client_timeout(op_id))

    def _complete(self, op_id: int, result: object) -> None:
        p = self._pending.pop(op_id)
        p.op.ret = self.stamp()
        p.op.result = result
        p.op.returned = True
        self.call_at(self.now + self.rng.randint(0, 5), self._client_action(p.client))

    def _client_timeout(self, op_id: int) -> None:
        p = self._pending.pop(op_id, None)
        if p is None:
            return
        # Unknown outcome: the operation stays open-ended in the history.
        self._client_target[p.client] = self.rng.choice(list(self.nodes))
        self.call_at(self.now + self.rng.randint(0, 5), self._client_action(p.client))
