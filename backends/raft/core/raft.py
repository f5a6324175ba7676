"""RaftCore: the Raft state machine of one node, with no I/O, clock or threads.

The application drives it: ``tick()`` on a timer, ``step(msg)`` for every
message received, ``propose``/``read_index``/... for client requests, then
``ready()`` -> persist, send, apply -> ``advance()`` (see :class:`Ready`;
with asynchronous storage writes, also ``persisted()``: see ready.py).

Invariants the core maintains (the simulator checks them):

- Entries and the hard state are handed out for persistence in the same
  Ready as, or before, any message that depends on them; the application
  persists before it sends such a message.
- A leader counts itself towards a commit only for entries it has persisted
  (its own acknowledgement happens in ``advance``, or ``persisted``), and a
  candidate (with asynchronous writes) its own vote only once it is durable.
- Replica counting commits only entries of the current term (Figure 8);
  earlier entries commit with them.
- Randomness comes only from the injected ``random.Random``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .confchange import Membership, apply_change
from .config import RaftConfig
from .errors import ConfChangeError, NotLeaderError, ProposalDroppedError
from .log import RaftLog
from .messages import (
    CAMPAIGN_TRANSFER,
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SoftState,
)
from .progress import Progress
from .quorum import VoteResult, vote_result
from .readonly import ReadOnly
from .ready import ReadyCycle
from .storage import Storage

if TYPE_CHECKING:
    import random  # only the type: the generator itself is injected

__all__ = ["RaftCore"]

MT = MessageType


class RaftCore(ReadyCycle):
    """One Raft node. Not thread-safe; every call is synchronous and does no I/O."""

    def __init__(
        self, node_id: str, storage: Storage, config: RaftConfig, rng: random.Random
    ) -> None:
        self.id = node_id
        self.cfg = config
        self._rng = rng
        self.storage = storage
        self.log = RaftLog(storage)
        hs, conf = storage.initial_state()
        snap_index = storage.snapshot().meta.index
        self.membership = Membership(snap_index, conf)
        if storage.last_index() > snap_index:
            self.membership.observe(storage.entries(snap_index + 1, storage.last_index() + 1))
        self.term = hs.term
        self.vote: str | None = hs.vote
        self.lead: str | None = None
        self.role = Role.FOLLOWER
        self.prs: dict[str, Progress] = {}
        self.votes: dict[str, bool] = {}
        self.msgs: list[Message] = []
        self.msgs_after_persist: list[Message] = []
        self.read_states: list[ReadState] = []
        self.read_only = ReadOnly()
        # Reads that arrived before this leader committed an entry of its term.
        self.pending_reads: list[tuple[bytes, str]] = []
        self.lead_transferee: str | None = None
        self.uncommitted_size = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_tick
        self._bcast_pending = False
        self._prev_soft = SoftState(None, Role.FOLLOWER)
        self._prev_hard = hs
        self._in_ready: Ready | None = None
        self._unpersisted = deque()
        self._durable_hard = hs
        self._become_follower(self.term, None)

    # -- status ------------------------------------------------------------------

    @property
    def leader(self) -> str | None:
        return self.lead

    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def applied_index(self) -> int:
        return self.log.applied

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    def _promotable(self) -> bool:
        """Whether this node may start elections."""
        if self.id in self.conf.voters:
            return True
        # Removed (or demoted) by a change not known to be committed: this node
        # may hold the only up-to-date copy of that change, and the others (still
        # on the old configuration) may need it to lead long enough to commit it.
        # It counts votes in its latest configuration, as any candidate does.
        m = self.membership
        return (
            m.latest_index > self.log.committed and self.id in m.conf_at(m.latest_index - 1).voters
        )

    # -- application API -----------------------------------------------------------

    def tick(self) -> None:
        """Advance the logical clock by one tick."""
        if self.role is Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def campaign(self) -> None:
        """Start an election now (as if the election timeout had elapsed)."""
        self._hup(transfer=False)

    def propose(self, data: bytes | Sequence[bytes]) -> int:
        """Append a command, or a batch of commands, to the leader's log.

        Returns the index of the (first) entry; a batch occupies consecutive
        indexes from there, appended in one go: all of it or, when the
        uncommitted-log cap would be exceeded, none (ProposalDroppedError).
        The entries are not committed yet: they may still be lost if
        leadership changes. The application learns the outcome when (and if)
        the entry at each index with this node's current term is applied.
        Raises NotLeaderError or ProposalDroppedError, and TypeError /
        ValueError for a batch that is not a non-empty sequence of bytes;
        nothing is appended then.
        """
        batch = [data] if isinstance(data, bytes) else list(data)
        if not batch:
            raise ValueError("propose() needs at least one command")
        for item in batch:
            if not isinstance(item, bytes):
                raise TypeError(f"a command must be bytes, not {type(item).__name__}")
        self._check_can_propose()
        first = self.log.last_index() + 1
        ents = [Entry(self.term, first + i, EntryType.NORMAL, d) for i, d in enumerate(batch)]
        if not self._append_entries(ents):
            raise ProposalDroppedError("the uncommitted log is full")
        self._after_append()
        return first

    def propose_conf_change(
        self, change_type: ConfChangeType, node: str, context: bytes = b""
    ) -> int:
        """Propose one membership step (add/promote a voter, add/demote a learner, remove).

        Refused (ConfChangeError) until this leader has committed an entry of
        its own term and the previous change is committed.
        """
        self._check_can_propose()
        if not self._committed_entry_in_current_term():
            raise ConfChangeError("the leader has not committed an entry of its term yet")
        if self.membership.latest_index > self.log.committed:
            raise ConfChangeError("the previous configuration change is not committed yet")
        result = apply_change(self.conf, change_type, node)
        data = ConfChange(change_type, node, result, context).encode()
        index = self.log.last_index() + 1
        if not self._append_entries([Entry(self.term, index, EntryType.CONF_CHANGE, data)]):
            raise ProposalDroppedError("the uncommitted log is full")
        self._after_append()
        return index

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read; a ReadState with ``context`` appears in a later Ready.

        ``context`` must be unique per request. On a follower the request is
        forwarded to the leader. No answer comes if leadership changes
        meanwhile: the caller retries with a fresh context after a timeout.
        """
        if self.role is Role.LEADER:
            self._leader_read_index(context, self.id)
        elif self.lead is not None:
            self._send(Message(MT.READ_INDEX, self.id, self.lead, self.term, context=context))
        else:
            raise NotLeaderError(None)

    def transfer_leadership(self, to: str) -> None:
        """Hand leadership to voter ``to`` once its log is up to date (TimeoutNow).

        Proposals are refused while the transfer is pending; it is abandoned
        after an election timeout.
        """
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.lead)
        if to == self.id or to == self.lead_transferee:
            return
        if to not in self.conf.voters:
            raise ConfChangeError(f"{to} is not a voter")
        self.lead_transferee = to
        self.election_elapsed = 0
        if self.prs[to].match == self.log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, self.id, to, self.term))
        else:
            self._send_append(to)

    def compact(self, index: int, data: bytes, retain: int = 0) -> Snapshot:
        """Record ``data`` (the state machine after applying ``index``) as a snapshot.

        The stored log is then compacted up to ``index - retain``: keeping a
        tail lets slightly lagging followers catch up without a snapshot.
        """
        if index > self.log.applied:
            raise ValueError(f"cannot snapshot index {index} beyond applied {self.log.applied}")
        snap = self.storage.create_snapshot(index, self.membership.conf_at(index), data)
        upto = max(index - retain, self.storage.first_index() - 1)
        self.storage.compact(upto)
        self.membership.compact(snap.meta.index)
        return snap

    def step(self, m: Message) -> None:
        """Handle a message from a peer."""
        if m.to != self.id:
            return
        if m.term > self.term:
            if m.type is MT.VOTE or m.type is MT.PRE_VOTE:
                in_lease = (
                    self.cfg.check_quorum
                    and self.lead is not None
                    and self.election_elapsed < self.cfg.election_tick
                )
                if in_lease and m.context != CAMPAIGN_TRANSFER:
                    # We heard from a live leader within the minimum election
                    # timeout: a disruptive (e.g. removed) node cannot depose it.
                    return
            if m.type is MT.PRE_VOTE or (m.type is MT.PRE_VOTE_RESP and not m.reject):
                pass  # pre-votes never change our term
            elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
                self._become_follower(m.term, m.frm)
            elif m.type is MT.VOTE:
                # Adopt the term but keep our election timer running unless we
                # grant the vote (Figure 3.1): otherwise a candidate with a stale
                # log and a fast clock could hold off, forever, every election
                # by the nodes that are able to win.
                elapsed = self.election_elapsed
                self._become_follower(m.term, None)
                self.election_elapsed = elapsed
            else:
                self._become_follower(m.term, None)
        elif m.term < self.term:
            if m.type in (MT.APP, MT.HEARTBEAT):
                # A stale leader: tell it our term so it steps down (Figure 3.1:
                # reply false). Always, not only with pre-vote or check-quorum as
                # in etcd: a node that was removed, then re-added while its term
                # moved on, never campaigns again (it believes itself removed),
                # so nothing else would ever tell the stale leader, and without
                # check-quorum it would lead a configuration it cannot commit in.
                self._send(Message(MT.APP_RESP, self.id, m.frm, self.term))
            elif m.type is MT.PRE_VOTE or m.type is MT.VOTE:
                # Reject with our term so the candidate catches up (Figure 3.1).
                # A candidate whose configuration needs us, while our stale
                # configuration has us campaigning among nodes that will never
                # elect us, would otherwise trail our term for ever.
                resp = MT.PRE_VOTE_RESP if m.type is MT.PRE_VOTE else MT.VOTE_RESP
                self._send(Message(resp, self.id, m.frm, self.term, reject=True))
            return
        if m.type is MT.VOTE or m.type is MT.PRE_VOTE:
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    # -- roles -------------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.lead = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        e = self.cfg.election_tick
        self.randomized_election_timeout = e + self._rng.randrange(e)
        self.lead_transferee = None
        self.votes = {}
        self.prs = {}
        self.read_only.reset()
        self.pending_reads = []
        self.uncommitted_size = 0
        self._bcast_pending = False

    def _become_follower(self, term: int, lead: str | None) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        # Term and vote stay; forgetting the leader matters: a pre-candidate that
        # still honoured a leader's lease would refuse everyone else's pre-votes,
        # and two such nodes could block every election (PreVote+CheckQuorum).
        self.role = Role.PRE_CANDIDATE
        self.votes = {}
        self.lead = None

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        last = self.log.last_index()
        for nid in self.conf.members():
            self.prs[nid] = self._new_progress(nid, last + 1)
        own = self.prs.get(self.id)
        if own is None:  # leading while being removed: track our own log anyway
            own = self.prs[self.id] = self._new_progress(self.id, last + 1)
        own.match = self.log.stable_last_index()
        own.become_replicate()
        # The no-op lets this leader commit an entry of its own term, and with
        # it every earlier entry (reads and membership changes wait for this).
        self._append_entries([Entry(self.term, last + 1, EntryType.NOOP)])
        self._bcast_append()

    # -- elections -----------------------------------------------------------------------

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self._promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self._hup(transfer=False)

    def _hup(self, transfer: bool) -> None:
        if self.role is Role.LEADER or not self._promotable():
            return
        if self.cfg.pre_vote and not transfer:
            self._campaign(MT.PRE_VOTE, transfer)
        else:
            self._campaign(MT.VOTE, transfer)

    def _campaign(self, kind: MessageType, transfer: bool) -> None:
        if kind is MT.PRE_VOTE:
            self._become_pre_candidate()
            term = self.term + 1  # the term we would campaign in; not adopted yet
        else:
            self._become_candidate()
            term = self.term
        if kind is MT.VOTE and self.cfg.async_storage_writes:
            # Our own vote counts once it is durable (persisted()): a restart
            # that lost it could vote for another candidate in this term.
            result = vote_result(self.conf.voters, self.votes)
        else:
            result = self._poll(self.id, True)
        if result is VoteResult.WON:
            self._on_election_won()
            return
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        last, last_term = self.log.last_index(), self.log.last_term()
        for v in self.conf.voters:
            if v != self.id:
                self._send(Message(kind, self.id, v, term, last_term, last, context=ctx))

    def _on_own_vote_durable(self) -> None:
        hs = self._durable_hard
        if hs.term != self.term or hs.vote != self.id or self.id in self.votes:
            return
        result = self._poll(self.id, True)
        if result is VoteResult.WON:
            self._on_election_won()
        elif result is VoteResult.LOST:
            self._become_follower(self.term, None)

    def _poll(self, nid: str, granted: bool) -> VoteResult:
        self.votes.setdefault(nid, granted)  # only the first answer of each voter counts
        return vote_result(self.conf.voters, self.votes)

    def _on_election_won(self) -> None:
        if self.role is Role.PRE_CANDIDATE:
            self._campaign(MT.VOTE, transfer=False)
        else:
            self._become_leader()

    def _handle_vote_request(self, m: Message) -> None:
        resp = MT.VOTE_RESP if m.type is MT.VOTE else MT.PRE_VOTE_RESP
        can_vote = (
            self.vote == m.frm
            or (self.vote is None and self.lead is None)
            or (m.type is MT.PRE_VOTE and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # The vote is part of the hard state: it is persisted (Ready) before
            # this answer is sent, so a restart cannot vote twice in a term.
            self._send(Message(resp, self.id, m.frm, m.term))
            if m.type is MT.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(resp, self.id, m.frm, self.term, reject=True))

    def _step_candidate(self, m: Message) -> None:
        mine = MT.PRE_VOTE_RESP if self.role is Role.PRE_CANDIDATE else MT.VOTE_RESP
        if m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
            self._become_follower(m.term, m.frm)  # someone won this term
            self._step_follower(m)
        elif m.type is mine:
            result = self._poll(m.frm, not m.reject)
            if result is VoteResult.WON:
                self._on_election_won()
            elif result is VoteResult.LOST:
                self._become_follower(self.term, None)

    # -- follower ------------------------------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        if m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
            self.election_elapsed = 0
            self.lead = m.frm
            if m.type is MT.APP:
                self._handle_append(m)
            elif m.type is MT.HEARTBEAT:
                self.log.commit_to(m.commit)
                self._send(Message(MT.HEARTBEAT_RESP, self.id, m.frm, self.term, context=m.context))
            else:
                self._handle_snapshot(m)
        elif m.type is MT.TIMEOUT_NOW:
            self._hup(transfer=True)
        elif m.type is MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(Message(MT.APP_RESP, self.id, m.frm, self.term, index=self.log.committed))
            return
        result = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if result is not None:
            last_new, written = result
            self.membership.observe(written)
            self._send(Message(MT.APP_RESP, self.id, m.frm, self.term, index=last_new))
            return
        # Fast backtracking: point the leader at the last index that can still
        # match, skipping every entry of a term newer than the leader's there.
        hint, hint_term = self.log.find_conflict_by_term(
            min(m.index, self.log.last_index()), m.log_term
        )
        self._send(
            Message(
                MT.APP_RESP,
                self.id,
                m.frm,
                self.term,
                log_term=hint_term,
                index=m.index,
                reject=True,
                reject_hint=hint,
            )
        )

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        assert snap is not None
        meta = snap.meta
        if meta.index <= self.log.committed:
            pass  # nothing new in it
        elif self.log.match_term(meta.index, meta.term):
            self.log.commit_to(meta.index)  # our log already has it: just fast-forward
        else:
            self.log.restore(snap)
            self.membership.restore(meta.index, meta.conf)
        # Acknowledge only the commit index: it is the one point we know matches
        # the leader's log (entries after it may still be replaced).
        self._send(Message(MT.APP_RESP, self.id, m.frm, self.term, index=self.log.committed))
