"""Tuning knobs of the Raft core. Times are in ticks; the application decides how long a tick is."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RaftConfig"]


@dataclass(frozen=True, slots=True)
class RaftConfig:
    # A follower that hears nothing for a random number of ticks in
    # [election_tick, 2 * election_tick) starts an election.
    election_tick: int = 10
    # The leader sends heartbeats every heartbeat_tick ticks.
    heartbeat_tick: int = 1
    # Pre-vote (§9.6): a node first asks whether it could win, so a partitioned
    # node that rejoins does not bump the term and depose a healthy leader.
    pre_vote: bool = True
    # A leader that has not heard from a majority for election_tick ticks steps
    # down; followers that heard from a leader within election_tick ignore votes.
    check_quorum: bool = True
    # Serve ReadIndex from the leader's lease instead of a heartbeat round.
    # Only safe if clocks drift by less than the election timeout: off by default.
    lease_read: bool = False
    # Target bytes of entries per append message; one entry always fits, so 0
    # means "one entry per message".
    max_size_per_msg: int = 1 << 20
    # Per-follower window of appends in flight (pipelining), by count and bytes.
    max_inflight_msgs: int = 64
    max_inflight_bytes: int = 16 << 20
    # Proposals are refused while the leader's uncommitted tail holds this many
    # payload bytes (0: no cap). The leader's own no-op is always accepted.
    max_uncommitted_size: int = 64 << 20
    # Bytes of committed entries handed out per Ready (at least one entry).
    max_committed_size_per_ready: int = 64 << 20
    # Batch proposals: the leader sends appends once per Ready, carrying every
    # entry proposed since, instead of one append per proposal.
    batch_appends: bool = True
    # Asynchronous storage writes (etcd's AsyncStorageWrites; dissertation
    # §10.2.1): ready() hands writes out without waiting for them, several may
    # be in flight, and the application reports each one durable with
    # persisted(). See Ready for the contract. Off: persist, then advance().
    async_storage_writes: bool = False

    def __post_init__(self) -> None:
        if self.heartbeat_tick <= 0:
            raise ValueError("heartbeat_tick must be positive")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election_tick must be greater than heartbeat_tick")
        if self.max_inflight_msgs <= 0 or self.max_inflight_bytes <= 0:
            raise ValueError("the in-flight window must allow at least one message")
        if self.lease_read and not self.check_quorum:
            raise ValueError("lease_read needs check_quorum (the lease is its guarantee)")
