"""Lock: a fair (FIFO) distributed mutex with fencing tokens.

Layout (kazoo's, so kazoo clients on the same ZooKeeper path interoperate):
each contender creates an ephemeral sequential child of the lock's path named
``<uuid4 hex>__lock__<10-digit sequence>`` whose value is its identifier.
Contenders are ordered by that sequence; the first one holds the lock, and
each other contender watches only the node just before it, so a release wakes
exactly one waiter (no herd effect).
"""

from __future__ import annotations

from typing import Any

from coordkit import Client

from .base import Contender, SequentialLock, native_instance

__all__ = ["Lock"]

#: node markers of kazoo's Lock / ReadLock; both block a writer.
WRITE_MARKER = "__lock__"
READ_MARKER = "__rlock__"


class Lock(SequentialLock):
    """A fair mutex on ``path``: ``async with Lock(client, "/locks/job") as lock: ...``.

    Guarantees:

    * at most one holder at a time among all clients honouring the layout;
    * waiters get the lock in the order they queued (FIFO);
    * :attr:`token` strictly increases from one holder to the next (it is the
      holder node's create revision): hand it to the resource you protect so a
      holder that lost the lock without knowing can be refused;
    * a cancelled, failed or timed-out :meth:`acquire` leaves no node behind.

    Loss: the lock is held while our own node exists. If it goes for any
    reason other than :meth:`release` (the session ends after a partition
    longer than its TTL or a close; another client, an operator or a
    transaction deletes it), the next waiter gets the lock, :attr:`lost`
    turns True and :meth:`wait_lost` returns; inside ``async with`` the body
    is cancelled and :class:`~coordkit.LockLostError` is raised out of the
    block. While the connection is only suspended the lock is still held as
    far as the servers are concerned; the holder is told only once the news
    arrives (a watch event, the backend knowing the session is gone), so the
    fencing token is what protects resources across that window.

    ``reentrant=True`` lets this object acquire again while it holds the lock,
    counting levels (the count belongs to the object, not to a task); without
    it a second :meth:`acquire` raises RecipeStateError. On a backend whose plugin
    supplies a native lock (etcd's, interoperable with ``etcdctl lock``),
    ``Lock(...)`` returns that class instead, with the same interface.
    """

    marker = WRITE_MARKER
    markers = (WRITE_MARKER, READ_MARKER)

    def __new__(cls, client: Client, path: str, *args: Any, **kwargs: Any) -> Lock:
        native = native_instance(Lock, cls, client, "Lock", path, *args, **kwargs)
        if native is not None:
            return native  # type: ignore[no-any-return]
        return super().__new__(cls)

    def __init__(
        self,
        client: Client,
        path: str,
        identifier: str | None = None,
        *,
        reentrant: bool = False,
    ) -> None:
        super().__init__(client, path, identifier, reentrant=reentrant)

    def _blockers(self, ahead: list[Contender]) -> list[Contender]:
        # Only the immediate predecessor (reader or writer): when it goes we
        # are first, or we move on to watch whoever is now just before us.
        return ahead[-1:]
