"""Seeded random fault schedules: safety after every step, linearizability at the end.

``COORDKIT_RAFT_SEEDS=N`` runs seeds 0..N-1 (default 400: the soak runs the real store and
stays short in the test command; the docs give the longer runs);
``COORDKIT_RAFT_SEED=S`` replays exactly seed S. A failure names its seed and
the one-line command that replays it.
"""

from __future__ import annotations

import os

from sim.schedule import REPLAY, run_schedule

DEFAULT_SEEDS = 400


def _seeds() -> range:
    one = os.environ.get("COORDKIT_RAFT_SEED")
    if one is not None:
        return range(int(one), int(one) + 1)
    return range(int(os.environ.get("COORDKIT_RAFT_SEEDS", DEFAULT_SEEDS)))


def test_random_fault_schedules_keep_raft_safe_and_linearizable() -> None:
    seeds = _seeds()
    ops = completed = 0
    for seed in seeds:
        try:
            result = run_schedule(seed)
        except Exception as exc:
            raise AssertionError(
                f"seed {seed} failed: {type(exc).__name__}: {exc}\n"
                f"replay with: {REPLAY.format(seed=seed)}"
            ) from exc
        ops += result.ops
        completed += result.completed
    # The schedules must exercise something: clients got real work done.
    assert completed > len(seeds) * 5, (ops, completed)
