"""Raft's safety properties, checked incrementally as the simulation runs.

The cluster reports every persisted batch, every applied entry, every
snapshot install, every leader and every restart; each report is checked at
once, so a violation stops the run at the step that caused it.

- Election safety: at most one leader per term.
- Log matching: two logs with an entry of the same index and term hold the
  same entry there, and agree on the term of the entry before it (which, by
  induction, makes the whole prefixes identical).
- Leader completeness: an entry committed in term T is in the log of every
  leader of a later term. The checker knows an upper bound of T (the term of
  the first node seen applying the entry) and checks leaders of later terms.
- State machine safety: no two nodes apply different entries at one index,
  and applying them leaves every replica's store in the same state: after
  each applied entry the store's revision, size, next session id and encoded
  result agree across nodes, and wherever a whole-store digest is taken (a
  snapshot saved, installed or restored, the end of a run, or every entry
  with ``full_digests``) it agrees with every other node's at that index.
- Durability: a restarted node's disk agrees with every committed entry it
  claims committed; committed entries are never lost (a later leader lacking
  one violates leader completeness).
- Durable commitment: whenever a leader's commit index advances, every newly
  committed entry is already on the disks of a majority of the voters it
  counted (what a crash of every node at that instant would leave).
- Commit safety (the inductive step of the leader completeness proof, checked
  at every commit advance instead of waiting for a later leader to show the
  loss): no voter lacking a newly committed entry could win an election in
  its own configuration or the leader's, counting as supporters the voters
  whose durable logs are no more up to date than its log (in memory or on
  disk). A commit this check rejects is one a later leader may overwrite.
"""

from __future__ import annotations

from collections.abc import Mapping

from coordkit.backends.raft.core import RaftCore
from coordkit.backends.raft.core.messages import Entry, EntryType, Role, Snapshot
from coordkit.backends.raft.core.storage import MemoryStorage


class SafetyViolation(AssertionError):
    pass


class SafetyChecker:
    def __init__(self) -> None:
        self.leaders: dict[int, str] = {}
        # (index, term) -> (type, data, term of the previous entry or -1 if unknown)
        self.seen: dict[tuple[int, int], tuple[EntryType, bytes, int]] = {}
        self.committed: dict[int, Entry] = {}
        # index -> a term no earlier than the one in which it was committed
        self.commit_term: dict[int, int] = {}
        # Every index up to this one was checked durable on a quorum when committed.
        self.durable_checked = 0
        self.violations = 0
        # index -> (node, what a replica's store looked like right after applying it)
        self.states: dict[int, tuple[str, object]] = {}
        self.digests: dict[int, tuple[str, str]] = {}
        self.digests_compared = 0

    def fail(self, what: str) -> None:
        self.violations += 1
        raise SafetyViolation(what)

    def on_persist(self, node: str, prev_term: int | None, entries: tuple[Entry, ...]) -> None:
        """``node`` made ``entries`` durable; ``prev_term`` is the term of the entry
        before them when they were handed out (None if unknown)."""
        if not entries:
            return
        prev = -1 if prev_term is None else prev_term
        for e in entries:
            key = (e.index, e.term)
            value = (e.type, e.data, prev)
            old = self.seen.get(key)
            if old is None:
                self.seen[key] = value
            elif old[:2] != value[:2] or (old[2] != -1 and prev != -1 and old[2] != prev):
                self.fail(
                    f"log matching: {node} holds a different entry at index {e.index} "
                    f"term {e.term} (or a different predecessor)"
                )
            prev = e.term

    def on_commit(
        self,
        node: str,
        core: RaftCore,
        disks: Mapping[str, MemoryStorage],
        cores: Mapping[str, RaftCore | None],
    ) -> None:
        """Called after every step of ``node``: a leader's new commits are durable on a
        quorum, and no server lacking them could still be elected."""
        if core.role is not Role.LEADER or core.commit_index <= self.durable_checked:
            return
        voters = core.conf.voters
        lo = max(self.durable_checked + 1, core.log.first_index())
        for e in core.log.slice(lo, core.commit_index + 1):
            held = [v for v in voters if _holds(disks[v], e.index, e.term)]
            if len(held) <= len(voters) // 2:
                self.fail(
                    f"durable commitment: {node}, leader of term {core.term}, committed entry "
                    f"{e.index} (term {e.term}) but only {held} of voters {list(voters)} have "
                    "it on disk"
                )
            # Known committed from now on, whether or not anyone applies it soon.
            self._on_committed(node, core.term, e, [])
            last = e
        if core.commit_index >= lo:
            # By log matching, a server that holds the last new entry holds them all.
            self._check_none_electable_without(node, core, last, disks, cores)
        self.durable_checked = core.commit_index

    def _check_none_electable_without(
        self,
        node: str,
        core: RaftCore,
        e: Entry,
        disks: Mapping[str, MemoryStorage],
        cores: Mapping[str, RaftCore | None],
    ) -> None:
        durable_last = {nid: _last(disk) for nid, disk in disks.items()}
        for x in sorted(disks):
            xcore = cores.get(x)
            lasts = []  # (last term, last index) of each version of x's log that lacks e
            if not _holds(disks[x], e.index, e.term):
                lasts.append(durable_last[x])
            if xcore is not None and not _log_holds(xcore, e.index, e.term):
                lasts.append((xcore.log.last_term(), xcore.log.last_index()))
            if not lasts:
                continue
            confs = [core.conf] if xcore is None else [core.conf, xcore.conf]
            for conf in confs:
                if x not in conf.voters:
                    continue
                for x_last in lasts:
                    support = [v for v in conf.voters if v == x or durable_last[v] <= x_last]
                    if len(support) > len(conf.voters) // 2:
                        self.fail(
                            f"commit safety: {node}, leader of term {core.term}, committed "
                            f"entry {e.index} (term {e.term}), but {x} lacks it and could be "
                            f"elected by {support} of voters {list(conf.voters)}"
                        )

    def on_leader(self, node: str, term: int, core: RaftCore) -> None:
        holder = self.leaders.get(term)
        if holder is None:
            self.leaders[term] = node
            for index, e in self.committed.items():
                if self.commit_term[index] < term:
                    self._check_has(node, core, index, e, term)
        elif holder != node:
            self.fail(f"election safety: {holder} and {node} both lead term {term}")

    def _check_has(self, node: str, core: RaftCore, index: int, e: Entry, term: int) -> None:
        if index < core.log.first_index():
            return  # compacted into a snapshot that covers it
        if core.log.term(index) != e.term:
            self.fail(
                f"leader completeness: {node}, leader of term {term}, lacks committed entry "
                f"{index} (term {e.term}); its log has term {core.log.term(index)} there"
            )

    def on_apply(self, node: str, term: int, e: Entry, leaders: list[tuple[str, RaftCore]]) -> None:
        """``node``, now in ``term``, applies ``e``."""
        self._on_committed(node, term, e, leaders)

    def _on_committed(
        self, node: str, term: int, e: Entry, leaders: list[tuple[str, RaftCore]]
    ) -> None:
        """``node``, in ``term``, knows ``e`` is committed."""
        old = self.committed.get(e.index)
        if old is None:
            self.committed[e.index] = e
            # The entry was committed in a term no later than the applying node's
            # current term (it learned the commit from a leader of at most that
            # term). Leaders of later terms, even elected before we got to know
            # of the commit, must hold it.
            self.commit_term[e.index] = term
            for lead_id, core in leaders:
                if core.term > term:
                    self._check_has(lead_id, core, e.index, e, core.term)
        elif old.term != e.term or old.data != e.data or old.type != e.type:
            self.fail(
                f"state machine safety: {node} applied (or committed) term {e.term} at index "
                f"{e.index}, another node applied term {old.term} there"
            )

    def on_state(self, node: str, index: int, fingerprint: object) -> None:
        """``node``'s store right after applying ``index``: its fingerprint must be everyone's."""
        old = self.states.get(index)
        if old is None:
            self.states[index] = (node, fingerprint)
        elif old[1] != fingerprint:
            self.fail(
                f"state machine safety: after applying {index}, {node}'s store has "
                f"{fingerprint!r} but {old[0]}'s had {old[1]!r} (revision, nodes, next "
                "session id, sessions, result)"
            )

    def on_state_digest(self, node: str, index: int, digest: str) -> None:
        """A digest of ``node``'s whole store (its snapshot) as of ``index``."""
        old = self.digests.get(index)
        if old is None:
            self.digests[index] = (node, digest)
        elif old[1] != digest:
            self.fail(
                f"state machine safety: {node}'s store at index {index} differs from "
                f"{old[0]}'s (snapshot digests {digest} and {old[1]})"
            )
        else:
            self.digests_compared += 1

    def on_snapshot(self, node: str, snap: Snapshot) -> None:
        old = self.committed.get(snap.meta.index)
        if old is not None and old.term != snap.meta.term:
            self.fail(
                f"state machine safety: {node} installed a snapshot at {snap.meta.index} "
                f"term {snap.meta.term}, but term {old.term} was committed there"
            )

    def on_restart(self, node: str, disk: MemoryStorage) -> None:
        commit = disk.hard_state.commit
        for e in disk.all_entries():
            if e.index > commit:
                break
            old = self.committed.get(e.index)
            if old is not None and (old.term != e.term or old.data != e.data):
                self.fail(
                    f"durability: {node} restarted with entry {e.index} term {e.term} below its "
                    f"commit index {commit}, but term {old.term} was committed there"
                )
        if commit > disk.last_index() and commit > disk.snapshot().meta.index:
            self.fail(f"durability: {node}'s commit index {commit} is past its durable log")


def _holds(disk: MemoryStorage, index: int, term: int) -> bool:
    """Whether ``disk`` durably holds entry ``index`` of ``term`` (or a snapshot covering it)."""
    if index <= disk.snapshot().meta.index:
        return True
    if index < disk.first_index() or index > disk.last_index():
        return False
    return disk.term(index) == term


def _log_holds(core: RaftCore, index: int, term: int) -> bool:
    """Whether ``core``'s log (in memory) holds entry ``index`` of ``term`` or compacted it."""
    return index < core.log.first_index() or core.log.term(index) == term


def _last(disk: MemoryStorage) -> tuple[int, int]:
    """(term, index) of the last entry on ``disk``: what a vote request would compare."""
    last = disk.last_index()
    return disk.term(last), last
