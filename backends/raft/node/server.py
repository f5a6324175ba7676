"""A Raft node: the consensus core, its durable storage, its peers and the store, wired.

One event loop runs everything of a node:

* the **tick loop** advances the core's logical clock every ``tick`` seconds
  and, on the leader, proposes the expiry of sessions past their deadline;
* the **ready loop** drains the core's Ready: it sends what may go at once
  (the leader's appends go out while its own disk write runs, dissertation
  §10.2.1), hands entries and hard state to the write-ahead log, applies
  committed entries to the store and answers the requests waiting on them;
* the **WAL writer** makes each Ready durable (one fsync for every Ready that
  arrived meanwhile: group commit) and then tells the core, which may commit
  (the leader counts itself only for durable entries), and sends the
  messages that had to wait for the disk (votes, append acknowledgements);
* the **transport** carries peer messages, and the one listening port also
  serves clients (:mod:`.service`).

``apply`` reads no clock: session expiry is decided by the leader
(:mod:`.sessions`) and replicated as a command.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from coordkit.errors import CoordkitError
from coordkit.model import Event

from ...store import (
    ClientRequest,
    CloseSession,
    Command,
    ExpireSession,
    OpenSession,
    Store,
    StoreLoader,
    decode_command,
    encode_command,
    encode_result,
)
from ..core import (
    ConfChange,
    ConfChangeError,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    NotLeaderError,
    ProposalDroppedError,
    RaftConfig,
    RaftCore,
    RaftError,
    Ready,
    Role,
    SnapshotMeta,
    SoftState,
)
from ..wire import Address
from .config import NodeConfig, parse_address
from .datadir import DataDir
from .files import OS_FILES, FileSystem
from .members import AddressBook
from .refusals import NotLeader, Refused
from .requests import AppliedIndex, Outcome, Proposals, ReadRounds
from .service import ClientService
from .sessions import SessionTracker
from .snapshot_stream import SnapshotReceiver
from .snapshots import SnapshotStore
from .tls import client_context, server_context
from .transport import ClusterIdentity, PeerTransport, serve
from .wal import WriteAheadLog, WriteRequest
from .watches import WatchHub

__all__ = ["RaftNode"]

#: a learner this close to the commit index is caught up and promoted to voter.
PROMOTE_LAG = 64

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Snapshotting:
    index: int
    term: int


class RaftNode:
    """One member of a coordkit Raft cluster (``coordkit serve``, or embedded)."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        fs: FileSystem = OS_FILES,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._fs = fs
        self._clock = clock
        self._rng = rng or random.Random()
        self.store = Store(max_history=config.max_history, listener=self._on_events)
        self.watches = WatchHub()
        self.applied = AppliedIndex()
        self.sessions = SessionTracker(
            clock, grace=config.election_timeout, retry_after=config.election_timeout
        )
        self._proposals = Proposals(config.max_pending)
        self._reads = ReadRounds(config.name.encode() + b"/" + os.urandom(8) + b"/")
        self.members = AddressBook(config.peers)
        self._wake = anyio.Event()
        self._members_lock = anyio.Lock()
        self._tg: TaskGroup | None = None
        self._snapshotting: _Snapshotting | None = None
        self._last_snapshot_index = 0
        self._last_leader_contact = clock()
        self.core: RaftCore
        self.wal: WriteAheadLog
        self.snapshots: SnapshotStore
        self.transport: PeerTransport
        self.started = anyio.Event()
        self.port: int = config.listen.port

    # -- lifecycle --------

    async def run(self, *, task_status: TaskStatus[RaftNode] = anyio.TASK_STATUS_IGNORED) -> None:
        """Recover from the data directory, then serve until cancelled."""
        datadir = await DataDir.open(
            self.config.data_dir,
            cluster_id=self.config.cluster_id,
            node_id=self.name,
            fs=self._fs,
        )
        try:
            await self._recover(datadir)
            self.transport = self._make_transport()
            async with self.wal.writer(), self.transport, anyio.create_task_group() as tg:
                self._tg = tg
                bound: Address = await tg.start(self._serve)
                self.port = bound.port
                tg.start_soon(self._ready_loop)
                tg.start_soon(self._tick_loop)
                log.info(
                    "%s serving on %s (cluster %s, members %s)",
                    self.name,
                    self.config.advertised,
                    self.config.cluster_id,
                    ", ".join(self.core.conf.members()) or "none yet: joining",
                )
                self.started.set()
                task_status.started(self)
        finally:
            with anyio.CancelScope(shield=True):
                self._proposals.fail_all("the node is shutting down")
                self._reads.fail_all("the node is shutting down")
                if hasattr(self, "wal"):
                    await self.wal.close()
                await datadir.close()
                log.info("%s stopped", self.name)

    async def _recover(self, datadir: DataDir) -> None:
        initial = None if self.config.join else ConfState.of(self.config.peers)
        self.snapshots = await SnapshotStore.open(datadir.snap_dir, fs=self._fs)
        self.wal = await WriteAheadLog.open(
            datadir.wal_dir, snapshots=self.snapshots, fs=self._fs, initial_conf=initial
        )
        snapshot = self.wal.snapshot()
        if snapshot.meta.index > 0:
            started = self._clock()
            await self._load_snapshot(snapshot.meta)
            log.info(
                "%s restored snapshot at index %d (revision %d) in %.2f s",
                self.name,
                snapshot.meta.index,
                self.store.revision,
                self._clock() - started,
            )
        self._last_snapshot_index = snapshot.meta.index
        self.applied = AppliedIndex(snapshot.meta.index)
        self.core = RaftCore(self.name, self.wal, self._raft_config(), self._rng)
        self.members.load(datadir.path)
        log.info(
            "%s recovered: term %d, commit %d, log %d..%d",
            self.name,
            self.core.term,
            self.core.commit_index,
            self.wal.first_index(),
            self.wal.last_index(),
        )

    def _raft_config(self) -> RaftConfig:
        return RaftConfig(
            election_tick=self.config.election_ticks,
            heartbeat_tick=self.config.heartbeat_ticks,
            async_storage_writes=True,
        )

    @property
    def identity(self) -> ClusterIdentity:
        return ClusterIdentity(self.config.cluster_id, self.name, self.config.cluster_token)

    def _make_transport(self) -> PeerTransport:
        return PeerTransport(
            self.identity,
            self.members.all(),
            self._deliver,
            ssl_context=self._peer_ssl(),
            snapshot_source=self.snapshots.read,
            snapshot_sink=self._receive_snapshot,
        )

    async def _receive_snapshot(self, meta: SnapshotMeta, /) -> SnapshotReceiver:
        return self.snapshots.begin_receive(meta)

    def _peer_ssl(self) -> ssl.SSLContext | None:
        config = self.config
        if config.tls_cert is None:
            return None
        return client_context(config.tls_ca, cert=config.tls_cert, key=config.tls_key)

    async def _serve(self, *, task_status: TaskStatus[Address]) -> None:
        config = self.config
        context = None
        if config.tls_cert is not None and config.tls_key is not None:
            context = server_context(config.tls_cert, config.tls_key, config.tls_ca)
        await serve(
            config.listen,
            self.identity,
            check_peer=self.transport.check_peer,
            on_peer=self.transport.accept,
            on_client=ClientService(self).handle,
            ssl_context=context,
            task_status=task_status,
        )

    # -- the loops --------

    def wake(self) -> None:
        self._wake.set()

    async def _tick_loop(self) -> None:
        period = self.config.tick
        next_tick = self._clock() + period
        while True:
            await anyio.sleep(max(next_tick - self._clock(), 0.0))
            next_tick += period
            if next_tick < self._clock():  # fell behind (a pause): do not tick in a burst
                next_tick = self._clock() + period
            self.core.tick()
            resend = self._reads.tick(give_up_after=self.config.election_ticks)
            if resend is not None:
                self._send_read_round(resend.context)
            if self.sessions.active:
                for session_id in self.sessions.due():
                    self._propose_internal(ExpireSession(session_id), "expire a session")
                self._promote_caught_up_learners()
            self.wake()

    async def _ready_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self.core.has_ready():
                await self.wal.wait_writable()  # never meet a full WAL queue
                rd = self.core.ready()
                await self._handle_ready(rd)

    async def _handle_ready(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state)
        for message in rd.messages:
            self.transport.send(message)
        self.wal.submit(WriteRequest.from_ready(rd), partial(self._on_durable, rd))
        if rd.snapshot is not None:
            await self._install_snapshot(rd.snapshot.meta)
        for entry in rd.committed_entries:
            self._apply(entry)
        for read_state in rd.read_states:
            nxt = self._reads.resolved(read_state.context, read_state.index)
            if nxt is not None:
                self._send_read_round(nxt.context)
        self.core.advance(rd)
        if self._snapshot_due():
            self._start_snapshot()

    def _on_durable(self, rd: Ready) -> None:
        """The WAL made ``rd`` durable (called in Ready order, on this event loop)."""
        self.core.persisted(rd)
        for message in rd.persisted_messages:
            self.transport.send(message)
        self.wake()

    def _deliver(self, message: Message) -> None:
        """A message from a peer (called by the transport, in arrival order)."""
        if message.frm == self.core.leader:
            self._last_leader_contact = self._clock()
        try:
            self.core.step(message)
        except RaftError as exc:
            log.warning("%s: dropped a message from %s: %s", self.name, message.frm, exc)
        self.wake()

    # -- leadership --------

    def _on_soft_state(self, soft: SoftState) -> None:
        was_leader = self.sessions.active
        if soft.role is Role.LEADER and not was_leader:
            log.info("%s became leader (term %d)", self.name, self.core.term)
            self.sessions.take_office(self.store.session_ttls().items())
        elif soft.role is not Role.LEADER and was_leader:
            log.info(
                "%s is no longer leader (term %d, now %s; leader %s)",
                self.name,
                self.core.term,
                soft.role.value,
                soft.leader or "unknown",
            )
            self.sessions.leave_office()
            self._proposals.fail_all("leadership lost")
            self._reads.fail_all("leadership lost")
        elif soft.role is not Role.LEADER:
            if soft.leader is not None:
                log.info("%s follows %s (term %d)", self.name, soft.leader, self.core.term)
                self._last_leader_contact = self._clock()
            else:
                log.info("%s: no leader (term %d, %s)", self.name, self.core.term, soft.role.value)

    def leader(self) -> tuple[str | None, str | None]:
        """The leader's name and client address, as far as this node knows."""
        lead = self.core.leader
        if lead is None:
            return None, None
        address = self.members.get(lead)
        return lead, None if address is None else str(address)

    def _require_leader(self) -> None:
        if self.core.role is not Role.LEADER:
            raise NotLeader(*self.leader())

    # -- applying --------

    def _apply(self, entry: Entry) -> None:
        result: bytes | None = None
        if entry.type is EntryType.NORMAL and entry.data:
            result = self._apply_command(entry.data)
        elif entry.type is EntryType.CONF_CHANGE:
            self._apply_conf_change(entry)
        self._proposals.applied(entry.index, entry.term, result)
        self.applied.advance(entry.index)

    def _apply_command(self, data: bytes) -> bytes:
        try:
            command = decode_command(data)
            value = self.store.apply(command)
        except CoordkitError as exc:
            return encode_result(exc)
        self._track_sessions(command, value)
        return encode_result(value)

    def _track_sessions(self, command: Command, value: Any) -> None:
        if not self.sessions.active:
            return
        if isinstance(command, OpenSession):
            self.sessions.opened(int(value), command.ttl)
        elif isinstance(command, CloseSession | ExpireSession):
            self.sessions.ended(command.session_id)
        elif isinstance(command, ClientRequest):
            self.sessions.keepalive(command.session_id)
            inner = command.command
            if isinstance(inner, CloseSession | ExpireSession):
                self.sessions.ended(inner.session_id)

    def _on_events(self, events: list[Event] | Any) -> None:
        self.watches.publish(events)

    def _apply_conf_change(self, entry: Entry) -> None:
        change = ConfChange.decode(entry.data)
        if change.context:
            try:
                address = parse_address(change.context.decode())
            except (UnicodeDecodeError, CoordkitError):
                address = None
            if address is not None:
                self.members.set(change.node, address)
        if change.type is ConfChangeType.REMOVE_NODE:
            self.members.remove(change.node)
        assert self._tg is not None
        self._tg.start_soon(self._save_members)
        self.transport.set_peers(self.members.all())
        log.info(
            "%s: membership %s %s -> voters %s, learners %s",
            self.name,
            change.type.value,
            change.node,
            ", ".join(change.result.voters),
            ", ".join(change.result.learners) or "none",
        )

    async def _save_members(self) -> None:
        async with self._members_lock:  # one write at a time, the latest book last
            await anyio.to_thread.run_sync(self.members.save, self.config.data_dir)

    # -- proposing --------

    def propose(self, command: Command, done: Outcome) -> None:
        """Propose ``command``; ``done(result, "")`` once applied, ``done(None, why)`` to retry.

        Raises NotLeader, or Refused("busy") when too many proposals wait.
        """
        self._require_leader()
        if self._proposals.full:
            raise Refused("busy", f"{len(self._proposals)} writes already waiting: retry later")
        self.propose_encoded(encode_command(command), done)

    def propose_encoded(self, data: bytes, done: Outcome) -> None:
        self._require_leader()
        try:
            index = self.core.propose(data)
        except NotLeaderError:
            raise NotLeader(*self.leader()) from None
        except ProposalDroppedError as exc:
            raise Refused("busy", f"cannot take writes now ({exc}): retry later") from None
        self._proposals.add(index, self.core.term, done)
        self.wake()

    def _propose_internal(self, command: Command, what: str) -> None:
        def done(result: bytes | None, why: str) -> None:
            if result is None:
                log.debug("%s: %s did not apply (%s); will retry", self.name, what, why)

        try:
            self.propose(command, done)
        except Refused as exc:
            log.debug("%s: could not %s: %s", self.name, what, exc)

    # -- reads --------

    def read_barrier(self, then: Callable[[str], None]) -> None:
        """Call ``then("")`` once a linearizable read may be served here, or ``then(why)``.

        ReadIndex (dissertation §6.4): the leader confirms its leadership with a
        heartbeat round, then the read waits until that commit index is applied.
        """
        self._require_leader()

        def reader(index: int | None, why: str) -> None:
            if index is None:
                then(why or "read barrier failed")
            else:
                self.applied.when(index, lambda: then(""))

        round_ = self._reads.join(reader)
        if round_ is not None:
            self._send_read_round(round_.context)

    def _send_read_round(self, context: bytes) -> None:
        try:
            self.core.read_index(context)
        except NotLeaderError:
            self._reads.fail_all("not the leader")
        self.wake()

    # -- sessions --------

    def keepalive(self, session_id: int, then: Callable[[bool, str], None]) -> None:
        """Refresh a session's deadline; ``then(alive, why)``."""
        self._require_leader()
        if self.sessions.keepalive(session_id):
            then(True, "")
            return

        # Unknown to the tracker: this leader may not have applied its creation yet.
        def check(why: str) -> None:
            if why:
                then(False, why)
            elif self.store.has_session(session_id):
                self.sessions.opened(session_id, self.store.session_ttl(session_id) or 0.0)
                then(True, "")
            else:
                then(False, "")

        self.read_barrier(check)

    # -- snapshots --------

    def _snapshot_due(self) -> bool:
        return (
            self._snapshotting is None
            and self.applied.index - self._last_snapshot_index >= self.config.snapshot_entries
        )

    def _start_snapshot(self) -> None:
        index = self.applied.index
        term = self.wal.term(index)
        self._snapshotting = _Snapshotting(index, term)
        assert self._tg is not None
        self._tg.start_soon(self._write_snapshot, index, term)

    async def _write_snapshot(self, index: int, term: int) -> None:
        """Stream the store into a snapshot file, between applies (copy-on-write), then compact."""
        started = self._clock()
        chunks = self.store.snapshot_chunks()
        conf = self.core.membership.conf_at(index)
        meta = SnapshotMeta(index, term, conf)

        async def stream() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk
                await anyio.lowlevel.checkpoint()  # let the ready loop apply meanwhile

        try:
            await self.snapshots.write(meta, stream())
            self.core.compact(index, b"", retain=self.config.snapshot_retain)
            self._last_snapshot_index = index
            await self.snapshots.prune(keep=2, in_use=self.wal.snapshot().meta)
            log.info(
                "%s: snapshot at index %d written in %.2f s",
                self.name,
                index,
                self._clock() - started,
            )
        except (OSError, CoordkitError, RaftError):
            log.exception("%s: snapshot at index %d failed", self.name, index)
        finally:
            self._snapshotting = None

    async def _install_snapshot(self, meta: SnapshotMeta) -> None:
        """The leader sent a snapshot (already in our snapshot directory): load it."""
        started = self._clock()
        await self._load_snapshot(meta)
        self._last_snapshot_index = meta.index
        self.applied = _advanced(self.applied, meta.index)
        log.info(
            "%s installed the leader's snapshot at index %d (revision %d) in %.2f s",
            self.name,
            meta.index,
            self.store.revision,
            self._clock() - started,
        )

    async def _load_snapshot(self, meta: SnapshotMeta) -> None:
        loader = StoreLoader(listener=self._on_events)
        async for chunk in self.snapshots.read(meta):
            loader.feed(chunk)
        self.store = loader.finish()

    # -- status --------

    def status(self) -> dict[str, Any]:
        lead, lead_addr = self.leader()
        conf = self.core.conf
        since_leader = (
            0.0 if self.core.role is Role.LEADER else self._clock() - self._last_leader_contact
        )
        return {
            "node": self.name,
            "role": self.core.role.value,
            "term": self.core.term,
            "leader": lead,
            "leader_addr": lead_addr,
            "commit": self.core.commit_index,
            "applied": self.applied.index,
            "revision": self.store.revision,
            "members": list(conf.members()),
            "voters": list(conf.voters),
            "learners": list(conf.learners),
            "last_contact": round(since_leader, 3),
            "snapshot_index": self._last_snapshot_index,
            "sessions": len(self.store.session_ids()),
            "address": str(self.config.advertised),
            "addresses": {n: str(a) for n, a in self.members.all().items() if n in conf.members()},
        }

    # -- membership (operator requests, leader only) --------

    def add_member(self, name: str, address: Address) -> int:
        self._require_leader()
        return self.core.propose_conf_change(
            ConfChangeType.ADD_LEARNER, name, str(address).encode()
        )

    def _promote_caught_up_learners(self) -> None:
        """A learner within ``PROMOTE_LAG`` entries of the commit index becomes a voter."""
        core = self.core
        if not core.conf.learners or core.membership.latest_index > core.commit_index:
            return
        for learner in core.conf.learners:
            progress = core.prs.get(learner)
            if progress is None or progress.match + PROMOTE_LAG < core.commit_index:
                continue
            try:
                core.propose_conf_change(ConfChangeType.ADD_VOTER, learner)
            except (ConfChangeError, NotLeaderError, ProposalDroppedError) as exc:
                log.debug("%s: cannot promote %s yet: %s", self.name, learner, exc)
                return
            log.info(
                "%s: %s caught up (match %d): promoting it to voter",
                self.name,
                learner,
                progress.match,
            )
            self.wake()
            return  # one change at a time

    def remove_member(self, name: str) -> int:
        self._require_leader()
        return self.core.propose_conf_change(ConfChangeType.REMOVE_NODE, name)


def _advanced(applied: AppliedIndex, index: int) -> AppliedIndex:
    applied.advance(index)
    return applied
