"""Coordination recipes, built only on the Backend contract (imported as ``coordkit.recipes``).

Every recipe takes a connected :class:`coordkit.Client` and a path, and runs
unchanged on every backend. Where a backend offers its own implementation
(etcd's concurrency API, kazoo's node naming), it is picked through the
``coordkit_native_recipe`` hook; see ``docs/recipes/``.
"""

from __future__ import annotations

from .barrier import Barrier, DoubleBarrier
from .config_watch import ConfigWatch
from .counter import Counter
from .election import Election
from .group import Group
from .lock import Lock
from .queue import MAX_PRIORITY, MIN_PRIORITY, Queue, QueueItem
from .rwlock import ReadLock, ReadWriteLock, WriteLock
from .semaphore import Semaphore

__all__ = [
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "Barrier",
    "ConfigWatch",
    "Counter",
    "DoubleBarrier",
    "Election",
    "Group",
    "Lock",
    "Queue",
    "QueueItem",
    "ReadLock",
    "ReadWriteLock",
    "Semaphore",
    "WriteLock",
]
