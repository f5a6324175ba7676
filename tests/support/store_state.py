"""A store's state compared as a state, not as the order it was built in."""

from __future__ import annotations

from coordkit.backends.store import Store


def state_of(store: Store) -> bytes:
    """``store``'s snapshot with its nodes in sorted order.

    A snapshot lists nodes in the order of the store's node table, and a
    refused transaction's undo can change that order without changing the
    state: a node it had removed is put back at the end. Every replica applies
    the same undo, so replicas stay byte-identical; but "nothing changed" is a
    statement about the state, so tests compare this. Sorting keeps every
    parent before its children (a parent's path is a prefix of theirs).
    """
    copy = Store.restore(store.snapshot())
    copy._nodes = dict(sorted(copy._nodes.items()))
    return copy.snapshot()
