"""ZooKeeper-native Lock and Election: kazoo's waits on the backend's kazoo connection.

The generic :class:`coordkit.recipes.Lock` waits through the contract's
linearizable reads (a ``sync`` before each) and a persistent watch opened and
removed per wait: 14 requests per handoff against kazoo's 6. On ZooKeeper two
cheaper steps are just as safe, because one session's requests are served by
one server, in order:

* **the queue listing needs no sync**: it follows our own create on the same
  session, so the server that answers has applied our create and every
  earlier one; every contender queued before us (a lower sequence number,
  hence an earlier zxid) is in the listing unless it is already gone;
* **waiting uses a one-shot watch set by the read itself** (``exists`` with a
  watch, as kazoo's Lock does): the check and the watch are one request, so
  no deletion can fall between them.

The node layout, naming and order are the generic recipe's (kazoo's), so this
Lock, the generic one and kazoo's ``Lock`` exclude one another. Everything
else — fencing token, FIFO order, cancellation cleanup, session loss — is the
generic recipe's code, unchanged.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import anyio
from kazoo.protocol.states import EventType

from coordkit.errors import NoNodeError
from coordkit.paths import join
from coordkit.recipes.base import Contender, parse_contender, unless_session_lost
from coordkit.recipes.election import Election
from coordkit.recipes.lock import Lock

if TYPE_CHECKING:
    from coordkit.backend import Session

    from .backend import ZooKeeperBackend

__all__ = ["NATIVE_RECIPES", "ZooKeeperElection", "ZooKeeperLock"]


class ZooKeeperLock(Lock):
    """:class:`coordkit.recipes.Lock` with kazoo's cheaper waits (see the module docstring)."""

    @property
    def _zk(self) -> ZooKeeperBackend:
        backend: ZooKeeperBackend = self.client.backend
        return backend

    async def _queue(self, *, consistent: bool) -> list[Contender]:
        # Never synced: a session's reads see its own writes, which is all the
        # queue needs (see SequentialLock._listing); so both kinds read alike.
        backend = self._zk

        async def read() -> list[str]:
            names: list[str] = await backend._call(backend._kazoo.get_children_async(self.path))
            return names

        try:
            names = await backend._retrying(read)
        except NoNodeError:
            return []  # the directory was removed: the caller queues again
        found: list[Contender] = []
        for name in names:
            contender = parse_contender(name, self.markers)
            if contender is not None:
                found.append(contender)
        found.sort(key=lambda c: c.sequence)
        return found

    async def _wait_gone(self, blockers: list[Contender], session: Session) -> Collection[str]:
        if len(blockers) != 1:
            gone: Collection[str] = await super()._wait_gone(blockers, session)
            return gone
        backend = self._zk
        path = join(self.path, blockers[0].name)

        async def run() -> None:
            while True:
                watch = _OneShotWatch(backend)

                async def exists(watch: _OneShotWatch = watch) -> Any:
                    return await backend._call(backend._kazoo.exists_async(path, watch=watch))

                stat = await backend._retrying(exists)
                if stat is None:
                    return
                await watch.fired.wait()
                if watch.types == [EventType.DELETED]:
                    return
                # Changed, or a connection event (the watch was one-shot): look again.

        await unless_session_lost(run, session)
        return (blockers[0].name,)


class _OneShotWatch:
    """A kazoo watcher that hands its event to the loop (kazoo calls it on its thread)."""

    def __init__(self, backend: ZooKeeperBackend) -> None:
        self._bridge = backend._bridge
        self.fired = anyio.Event()
        self.types: list[str] = []

    def __call__(self, event: Any) -> None:
        self._bridge.call_soon(self._fire, event.type)

    def _fire(self, type_: str) -> None:
        self.types.append(type_)
        self.fired.set()


class _ZooKeeperCandidacy(ZooKeeperLock):
    """The election's queue, waiting as :class:`ZooKeeperLock` does."""


class ZooKeeperElection(Election):
    """:class:`coordkit.recipes.Election` whose candidates wait as :class:`ZooKeeperLock`."""

    _candidacy_class = _ZooKeeperCandidacy


NATIVE_RECIPES: dict[str, type[Any]] = {"Lock": ZooKeeperLock, "Election": ZooKeeperElection}
