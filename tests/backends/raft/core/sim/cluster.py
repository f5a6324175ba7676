"""A cluster of RaftCores on a virtual clock, driven by one seeded ``random.Random``.

Each node has a "disk" (a MemoryStorage that survives crashes) and, while it
is up, a RaftCore and the real store (``backends/store``) rebuilt from that
disk on restart: committed entries are applied with ``Store.apply_entry``
(decode, apply, encode the result), snapshots are the store's own snapshot
format, and the leader expires sessions through its ``SessionTracker`` on the
virtual clock, as the Raft server does (``workload.py`` has the clients). Events
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

import hashlib
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
from coordkit.backends.raft.node.sessions import SessionTracker
from coordkit.backends.store import (
    ClientRequest,
    CloseSession,
    ExpireSession,
    OpenSession,
    Store,
    decode_command,
    decode_result,
    encode_command,
)
from coordkit.errors import CoordkitError

from .invariants import SafetyChecker
from .linearizability import Operation
from .network import NetConfig, Network
from .workload import Clients

#: Watch history kept by the simulated stores (small: snapshots stay small).
SIM_MAX_HISTORY = 64

TICK, DELIVER, CALL, DURABLE = 0, 1, 2, 3
T = TypeVar("T")


@dataclass(eq=False)
class SimNode:
    id: str
    disk: MemoryStorage
    tick_ms: int
    core: RaftCore | None = None
    store: Store | None = None
    store_index: int = 0  # last index reflected in the store
    tracker: SessionTracker | None = None  # session deadlines, while leader
    incarnation: int = 0
    # Everything this node ever applied, kept across crashes (like MIT's tester).
    applied: dict[int, Entry] = field(default_factory=dict)
    # The store's encoded result of each applied command, by index (kept across crashes).
    results: dict[int, bytes] = field(default_factory=dict)
    waiting_reads: list[tuple[int, bytes]] = field(default_factory=list)
    crashes: int = 0
    # Async writes in flight, oldest first: (Ready, term before its first entry
    # when handed out, virtual time at which it becomes durable, whether the
    # node crashes right after it is durable, before persisted() hears of it).
    writes: deque[tuple[Ready, int | None, int, bool]] = field(default_factory=deque)

    @property
    def alive(self) -> bool:
        return self.core is not None


def digest(snapshot: bytes) -> str:
    return hashlib.blake2b(snapshot, digest_size=16).hexdigest()


def new_store() -> Store:
    return Store(max_history=SIM_MAX_HISTORY)


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
        full_digests: bool = False,
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
        # Compare a digest of the whole store (its snapshot) after every applied entry.
        self.full_digests = full_digests
        self.expiries_proposed = 0
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
        self._next_op = 0
        self.clients = Clients(self)
        self.client_stop_at = 0
        self.op_timeout_ms = 400
        self.keys = ("/x", "/y")
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
                    self._expire_sessions(node)
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
        node.store = Store.restore(snap.data) if snap.data else new_store()
        node.store_index = snap.meta.index
        if snap.data:
            self.checker.on_state_digest(node.id, snap.meta.index, digest(snap.data))
        # The grace a new leader gives every session: an election timeout.
        grace = self.config.election_tick * node.tick_ms / 1000
        node.tracker = SessionTracker(self._seconds, grace=grace, retry_after=grace)
        node.waiting_reads = []
        self._push(self.now + self.rng.randint(1, node.tick_ms), TICK, node.id, node.incarnation)

    def crash(self, nid: str) -> None:
        """Lose everything not on the node's disk."""
        node = self.nodes[nid]
        if node.core is None:
            return
        node.core = None
        self.cores[nid] = None
        node.store = None
        node.tracker = None
        node.waiting_reads = []
        node.writes.clear()  # not yet durable: lost
        node.crashes += 1
        self.clients.node_lost(nid, writes_only=False)

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

    def process(self, node: SimNode) -> None:
        """Handle every Ready ``node`` has (after a client acted on its core)."""
        self._process(node)

    def _seconds(self) -> float:
        return self.now / 1000

    def next_op_id(self) -> int:
        self._next_op += 1
        return self._next_op

    def _process(self, node: SimNode) -> None:
        core = node.core
        if core is not None:
            self.checker.on_commit(node.id, core, self.disks, self.cores)
        # The loop stops if the node crashed meanwhile (a fault hook may crash it).
        while core is not None and node.core is core and core.has_ready():
            rd = core.ready()
            if rd.soft_state is not None:
                self._on_soft_state(node, rd.soft_state.role)
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
                # The store's own format, restored as the server restores it.
                node.store = Store.restore(rd.snapshot.data)
                node.store_index = rd.snapshot.meta.index
                self.checker.on_state_digest(
                    node.id, rd.snapshot.meta.index, digest(rd.snapshot.data)
                )
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
            if self.snapshot_every and node.store is not None and node.core is core:
                applied = core.applied_index
                if applied - node.disk.snapshot().meta.index >= self.snapshot_every:
                    assert applied == node.store_index
                    data = node.store.snapshot()
                    self.checker.on_state_digest(node.id, applied, digest(data))
                    core.compact(applied, data, self.snapshot_retain)

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
        store = node.store
        assert store is not None
        if e.index != node.store_index + 1:
            self.checker.fail(f"{node.id} applied index {e.index} after {node.store_index}")
        self.checker.on_apply(node.id, node.core.term if node.core else 0, e, self.leaders())
        node.applied[e.index] = e
        node.store_index = e.index
        result = None
        if e.type is EntryType.NORMAL and e.data:
            # What the server does: never raises, the same bytes on every replica.
            result = store.apply_entry(e.data)
            node.results[e.index] = result
            if node.tracker is not None and node.tracker.active:
                self._track_sessions(node.tracker, e.data, result)
        # Same entry, same store: the same revision, size, sessions and result everywhere.
        fingerprint = (
            store.revision,
            len(store),
            store.next_session_id,
            len(store.session_ids()),
            result,
        )
        self.checker.on_state(node.id, e.index, fingerprint)
        if self.full_digests:
            self.checker.on_state_digest(node.id, e.index, digest(store.snapshot()))
        self.clients.on_applied(node, e.index, e.term, result)

    @staticmethod
    def _track_sessions(tracker: SessionTracker, data: bytes, result: bytes) -> None:
        """The leader's session deadlines follow what it applies (as the server's do)."""
        try:
            command = decode_command(data)
        except CoordkitError:
            return
        if isinstance(command, OpenSession):
            opened = decode_result(result)
            if isinstance(opened, int):
                tracker.opened(opened, command.ttl)
        elif isinstance(command, CloseSession | ExpireSession):
            tracker.ended(command.session_id)
        elif isinstance(command, ClientRequest):
            tracker.keepalive(command.session_id)
            inner = command.command
            if isinstance(inner, CloseSession):
                tracker.ended(inner.session_id)

    def _on_soft_state(self, node: SimNode, role: Role) -> None:
        tracker, store = node.tracker, node.store
        assert tracker is not None and store is not None
        if role is Role.LEADER and not tracker.active:
            tracker.take_office(store.session_ttls().items())
        elif role is not Role.LEADER and tracker.active:
            tracker.leave_office()
            self.clients.node_lost(node.id, writes_only=True)

    def _expire_sessions(self, node: SimNode) -> None:
        """On the leader's tick: propose the expiry of every session past its deadline."""
        tracker, core = node.tracker, node.core
        if tracker is None or core is None or not tracker.active:
            return
        for session_id in tracker.due():
            try:
                core.propose(encode_command(ExpireSession(session_id)))
            except RaftError:
                return  # proposed again after retry_after
            self.expiries_proposed += 1

    def _serve_reads(self, node: SimNode) -> None:
        still = []
        for index, ctx in node.waiting_reads:
            if index > node.store_index:
                still.append((index, ctx))
                continue
            self.clients.serve_read(node, ctx)
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
        self.clients.start(count)

    def converge(self, timeout_ms: int = 5000) -> int:
        """Wait until every live member of the leader's configuration has applied the
        same index, then check their stores are identical there; that index."""
        lid = self.check_one_leader(timeout_ms)

        def same() -> bool:
            lcore = self.nodes[lid].core
            if lcore is None:
                return False
            members = [self.nodes[m] for m in lcore.conf.members()]
            indexes = {n.store_index for n in members if n.core is not None}
            return len(indexes) == 1 and lcore.commit_index == lcore.applied_index

        if not self.run_until(same, timeout_ms):
            raise AssertionError(f"replicas did not converge in {timeout_ms} ms (seed {self.seed})")
        index = 0
        for n in self.nodes.values():
            if n.store is not None and n.core is not None and n.id in n.core.conf.members():
                index = n.store_index
                self.checker.on_state_digest(n.id, index, digest(n.store.snapshot()))
                _check_store(n.id, n.store, self.checker)
        return index


def _check_store(nid: str, store: Store, checker: SafetyChecker) -> None:
    """Ephemeral nodes belong to live sessions, which list them (none outlives its session)."""
    owned: dict[int, list[str]] = {}
    for path in store.paths():
        node = store.get(path)
        if node is not None and node.ephemeral_owner is not None:
            owned.setdefault(node.ephemeral_owner, []).append(path)
    for session_id, paths in sorted(owned.items()):
        if not store.has_session(session_id):
            checker.fail(f"{nid}: ephemeral nodes {paths} outlive session {session_id}")
        elif sorted(store.session_ephemerals(session_id)) != sorted(paths):
            checker.fail(f"{nid}: session {session_id} does not list its ephemerals {paths}")
