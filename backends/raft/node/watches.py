"""Watches served by a node from its applied state.

A watch registers at the node's applied revision (or replays history from a
past revision first, with no await in between, so no event falls in a gap);
then every event the store emits while applying is matched against the
watches and handed to their connections, in revision order. All events of
one revision reach a watch in one call, so a client never sees half a
transaction before a reconnection.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from coordkit.model import Event

from ...store import matches

__all__ = ["WatchHub", "Watcher"]


@dataclass(eq=False, slots=True)
class Watcher:
    path: str
    recursive: bool
    #: receives the matching events of one revision (never empty).
    deliver: Callable[[list[Event]], None]


class WatchHub:
    """Every watch of this node, indexed so that a change visits only its watchers."""

    def __init__(self) -> None:
        self._exact: dict[str, set[Watcher]] = defaultdict(set)
        self._subtree: dict[str, set[Watcher]] = defaultdict(set)

    def add(self, watcher: Watcher) -> None:
        index = self._subtree if watcher.recursive else self._exact
        index[watcher.path].add(watcher)

    def remove(self, watcher: Watcher) -> None:
        index = self._subtree if watcher.recursive else self._exact
        group = index.get(watcher.path)
        if group is not None:
            group.discard(watcher)
            if not group:
                del index[watcher.path]

    def __len__(self) -> int:
        return sum(map(len, self._exact.values())) + sum(map(len, self._subtree.values()))

    def publish(self, events: Sequence[Event]) -> None:
        """The events of one applied command (one revision): hand each watcher its share."""
        if not (self._exact or self._subtree):
            return
        shares: dict[Watcher, list[Event]] = {}
        for event in events:
            for watcher in self._watchers_of(event.path):
                shares.setdefault(watcher, []).append(event)
        for watcher, share in shares.items():
            watcher.deliver(share)

    def _watchers_of(self, path: str) -> list[Watcher]:
        found = list(self._exact.get(path, ()))
        if self._subtree:
            # Every ancestor of the path (and the path itself) may hold a subtree watch.
            prefix = path
            while True:
                found.extend(self._subtree.get(prefix, ()))
                if prefix == "/":
                    break
                prefix = prefix.rsplit("/", 1)[0] or "/"
        return found


def replay(history: Sequence[Event], path: str, recursive: bool) -> list[list[Event]]:
    """Past events for one watch, grouped by revision."""
    groups: list[list[Event]] = []
    for event in history:
        if not matches(event.path, path, recursive):
            continue
        if groups and groups[-1][-1].revision == event.revision:
            groups[-1].append(event)
        else:
            groups.append([event])
    return groups
