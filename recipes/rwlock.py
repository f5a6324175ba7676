"""ReadWriteLock: shared readers, one exclusive writer, writers not starved.

kazoo's layout, so kazoo's ``ReadLock``/``WriteLock`` interoperate: readers
queue as ``<uuid4 hex>__rlock__<seq>``, writers as ``<uuid4 hex>__lock__<seq>``,
in one directory and one sequence. A reader waits only for the nearest writer
queued before it; a writer waits for its immediate predecessor of either kind.
So a writer waiting behind readers holds back every reader that queues after
it: readers cannot starve a writer.
"""

from __future__ import annotations

from coordkit import Client

from .base import Contender, SequentialLock
from .lock import READ_MARKER, WRITE_MARKER

__all__ = ["ReadLock", "ReadWriteLock", "WriteLock"]


class ReadLock(SequentialLock):
    """The shared side of a :class:`ReadWriteLock`; the Lock interface.

    Held together with other readers, never with a writer. On session loss it
    behaves as :class:`~coordkit.recipes.Lock` does (``lost``, ``wait_lost()``,
    the ``async with`` body cancelled and :class:`~coordkit.LockLostError`).
    :attr:`token` is the node's create revision: increasing across writers,
    shared readers' tokens are only ordered among themselves.
    """

    marker = READ_MARKER
    markers = (WRITE_MARKER, READ_MARKER)

    def _blockers(self, ahead: list[Contender]) -> list[Contender]:
        writers = [c for c in ahead if c.marker == WRITE_MARKER]
        return writers[-1:]


class WriteLock(SequentialLock):
    """The exclusive side of a :class:`ReadWriteLock`; the Lock interface.

    Excludes readers and other writers; interoperates with a plain
    :class:`~coordkit.recipes.Lock` on the same path (same node marker).
    """

    marker = WRITE_MARKER
    markers = (WRITE_MARKER, READ_MARKER)

    def _blockers(self, ahead: list[Contender]) -> list[Contender]:
        return ahead[-1:]


class ReadWriteLock:
    """A read/write lock on ``path``: ``async with rw.read_lock: ...`` / ``rw.write_lock``.

    Guarantees: any number of readers or exactly one writer at a time; FIFO
    between writers and the readers around them, so a waiting writer is not
    starved by readers arriving after it. Each side is a separate lock object
    of this client (a task holding ``read_lock`` that asks for ``write_lock``
    deadlocks against itself, as with kazoo). Session loss and cancellation
    follow :class:`~coordkit.recipes.Lock`.
    """

    def __init__(self, client: Client, path: str, identifier: str | None = None) -> None:
        self.client = client
        self.path = path
        self.read_lock = ReadLock(client, path, identifier)
        self.write_lock = WriteLock(client, path, identifier)

    async def contenders(self) -> list[str]:
        """Identifiers of every queued reader and writer, holders first."""
        return await self.read_lock.contenders()

    def __repr__(self) -> str:
        return f"ReadWriteLock({self.path!r})"
