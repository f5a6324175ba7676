"""The leader's half of RaftCore: replication, commitment, heartbeats and ReadIndex.

A mixin so that core.py stays readable; it holds no state of its own. The
attributes it uses are declared here and owned by RaftCore.

Invariants:

- A follower's ``match`` only grows within a term, and only from its own
  acknowledgements (the leader's own, from what it has persisted).
- Commitment counts replicas of entries of the current term only (Figure 8).
- Appends to a follower are paced by its Progress: one probe at a time,
  or a window bounded by count and bytes; heartbeats unstick both.
"""

from __future__ import annotations

from .confchange import Membership
from .config import RaftConfig
from .errors import CompactedError, NotLeaderError, ProposalDroppedError
from .log import RaftLog
from .messages import ConfState, Entry, Message, MessageType, ReadState, Role
from .progress import Inflights, Progress, ProgressState
from .quorum import committed_index, is_majority
from .readonly import ReadOnly

__all__ = ["LeaderRole"]

MT = MessageType

# With asynchronous storage writes, replies that the receiver counts on our
# disk for wait until the Ready they follow is durable (Ready.persisted_messages
# says why each one).
AFTER_PERSIST = frozenset({MT.APP_RESP, MT.VOTE_RESP, MT.PRE_VOTE_RESP})


class LeaderRole:
    id: str
    cfg: RaftConfig
    log: RaftLog
    membership: Membership
    term: int
    role: Role
    prs: dict[str, Progress]
    msgs: list[Message]
    msgs_after_persist: list[Message]
    read_states: list[ReadState]
    read_only: ReadOnly
    pending_reads: list[tuple[bytes, str]]
    lead: str | None
    lead_transferee: str | None
    uncommitted_size: int
    election_elapsed: int
    heartbeat_elapsed: int
    _bcast_pending: bool

    def _become_follower(self, term: int, lead: str | None) -> None:
        raise NotImplementedError  # RaftCore's

    @property
    def conf(self) -> ConfState:
        """The configuration in force: the latest one in this node's log."""
        return self.membership.conf

    def _committed_entry_in_current_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    def _new_progress(self, nid: str, next_index: int) -> Progress:
        return Progress(
            match=0,
            next=next_index,
            inflights=Inflights(self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes),
            is_learner=nid in self.conf.learners,
        )

    # -- proposals and commitment ------------------------------------------------------

    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.lead)
        if self.lead_transferee is not None:
            raise ProposalDroppedError("a leadership transfer is in progress")
        if self.id not in self.conf.voters:
            raise ProposalDroppedError("this leader is being removed from the cluster")

    def _append_entries(self, ents: list[Entry]) -> bool:
        """Leader append; False (nothing appended) if the uncommitted cap is reached."""
        size = sum(len(e.data) for e in ents)
        cap = self.cfg.max_uncommitted_size
        if cap and size and self.uncommitted_size and self.uncommitted_size + size > cap:
            return False
        self.uncommitted_size += size
        self.log.append(ents)
        if self.membership.observe(ents):
            self._on_conf_change()
        return True

    def _after_append(self) -> None:
        if self.cfg.batch_appends:
            self._bcast_pending = True  # sent from ready(), with everything proposed meanwhile
        else:
            self._bcast_append()

    def _on_conf_change(self) -> None:
        """The leader's configuration changed (it did when the entry was appended)."""
        members = self.conf.members()
        last = self.log.last_index()
        for nid in members:
            pr = self.prs.get(nid)
            if pr is None:
                self.prs[nid] = self._new_progress(nid, last)
            else:
                pr.is_learner = nid in self.conf.learners
        for nid in [n for n in self.prs if n not in members and n != self.id]:
            del self.prs[nid]
        if self.lead_transferee is not None and self.lead_transferee not in self.conf.voters:
            self.lead_transferee = None

    def _maybe_commit(self) -> bool:
        match = {nid: pr.match for nid, pr in self.prs.items()}
        index = committed_index(self.conf.voters, match)
        # Figure 8: counting replicas only ever commits an entry of this term.
        if index > self.log.committed and self.log.term(index) == self.term:
            self.log.commit_to(index)
            return True
        return False

    def _on_commit_advanced(self) -> None:
        if self._committed_entry_in_current_term() and self.pending_reads:
            pending, self.pending_reads = self.pending_reads, []
            for ctx, requester in pending:
                self._serve_read(ctx, requester)
        if self.id not in self.conf.voters and self.log.committed >= self.membership.latest_index:
            # Our removal is committed (§4.2.2): step down; the others elect a leader.
            self._become_follower(self.term, None)
            return
        self._bcast_append()

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        for pr in self.prs.values():
            if pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_ticks += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                active = {n for n, pr in self.prs.items() if pr.recent_active or n == self.id}
                for nid, pr in self.prs.items():
                    pr.recent_active = nid == self.id
                if not is_majority(self.conf.voters, active):
                    self._become_follower(self.term, None)  # cut off from the majority
                    return
            self.lead_transferee = None  # a transfer that did not finish in time
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat(self.read_only.last_pending_context() or b"")

    def _step_leader(self, m: Message) -> None:
        if m.type is MT.READ_INDEX:
            self._leader_read_index(m.context, m.frm)
            return
        pr = self.prs.get(m.frm)
        if pr is None:
            return
        if m.type is MT.APP_RESP:
            pr.recent_active = True
            self._handle_append_response(m, pr)
        elif m.type is MT.HEARTBEAT_RESP:
            pr.recent_active = True
            self._handle_heartbeat_response(m, pr)

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.is_paused()
        probing_at_match = pr.match == m.index and pr.state is ProgressState.PROBE
        if not (pr.maybe_update(m.index) or probing_at_match):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT:
            # Any acknowledgement that lets replication resume ends the snapshot
            # state, whichever snapshot (or append) produced it.
            if pr.match + 1 >= self.log.first_index():
                pr.become_probe()
                pr.become_replicate()
        else:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._on_commit_advanced()
            if self.role is not Role.LEADER:
                return
        elif was_paused:
            self._send_append(m.frm)
        while self._maybe_send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, self.id, m.frm, self.term))

    def _handle_heartbeat_response(self, m: Message, pr: Progress) -> None:
        pr.probe_sent = False
        if pr.state is ProgressState.REPLICATE and pr.inflights.full():
            # Acks may have been lost: free one slot so the window cannot stay stuck.
            pr.inflights.free_first_one()
        elif pr.state is ProgressState.SNAPSHOT and pr.snapshot_ticks >= self.cfg.election_tick:
            pr.become_probe()  # the snapshot was probably lost; find out again
        if pr.match < self.log.last_index():
            self._send_append(m.frm)
        if not m.context:
            return
        acks = self.read_only.recv_ack(m.frm, m.context)
        if acks is not None and is_majority(self.conf.voters, acks):
            for status in self.read_only.advance(m.context):
                self._respond_read(status.index, status.context, status.requester)

    def _leader_read_index(self, context: bytes, requester: str) -> None:
        if not self._committed_entry_in_current_term():
            # A new leader's commit index may lag the cluster's until its no-op
            # commits: serving now could return stale data (etcd#7331).
            self.pending_reads.append((context, requester))
            return
        self._serve_read(context, requester)

    def _serve_read(self, context: bytes, requester: str) -> None:
        index = self.log.committed
        if self.conf.voters == (self.id,) or self.cfg.lease_read:
            self._respond_read(index, context, requester)
        elif self.read_only.add_request(index, context, requester):
            if self.id in self.conf.voters:
                self.read_only.recv_ack(self.id, context)
            self._bcast_heartbeat(context)

    def _respond_read(self, index: int, context: bytes, requester: str) -> None:
        if requester == self.id:
            self.read_states.append(ReadState(index, context))
        else:
            resp = MT.READ_INDEX_RESP
            self._send(Message(resp, self.id, requester, self.term, index=index, context=context))

    # -- sending -----------------------------------------------------------------------------

    def _send(self, m: Message) -> None:
        if self.cfg.async_storage_writes and m.type in AFTER_PERSIST:
            self.msgs_after_persist.append(m)
        else:
            self.msgs.append(m)

    def _bcast_append(self) -> None:
        for nid in self.prs:
            if nid != self.id:
                self._send_append(nid)

    def _bcast_heartbeat(self, context: bytes) -> None:
        for nid, pr in self.prs.items():
            if nid != self.id:
                # Never tell a follower to commit past what it is known to hold.
                commit = min(pr.match, self.log.committed)
                self._send(
                    Message(MT.HEARTBEAT, self.id, nid, self.term, commit=commit, context=context)
                )

    def _send_append(self, to: str) -> None:
        self._maybe_send_append(to, send_if_empty=True)

    def _maybe_send_append(self, to: str, send_if_empty: bool) -> bool:
        pr = self.prs[to]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        ents: list[Entry] | None = None
        if prev_term is not None:
            try:
                ents = self.log.entries_from(pr.next, self.cfg.max_size_per_msg)
            except CompactedError:
                ents = None
        if prev_term is None or ents is None:
            # What the follower needs is compacted: send the latest snapshot.
            snap = self.log.snapshot()
            pr.become_snapshot(snap.meta.index)
            self._send(Message(MT.SNAP, self.id, to, self.term, snapshot=snap))
            return True
        if not ents and not send_if_empty:
            return False
        self._send(
            Message(
                MT.APP,
                self.id,
                to,
                self.term,
                log_term=prev_term,
                index=prev,
                entries=tuple(ents),
                commit=self.log.committed,
            )
        )
        pr.sent_entries(ents[-1].index if ents else None, sum(e.size for e in ents))
        return True
