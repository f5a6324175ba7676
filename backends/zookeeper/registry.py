"""The persistent watches of one kazoo client: added, added again, removed.

ZooKeeper keeps one persistent watch per (path, mode) and connection. The
registry adds it for the first :class:`~coordkit.backends.zookeeper.watch.WatchStream`
on a key, hands every notification to the streams it concerns (on kazoo's
connection thread, in order), adds the watches again after a reconnection
with the same session (each stream then catches up), fails every stream when
the session ends, and removes a watch with its last stream.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import anyio
from kazoo import exceptions as kx

from coordkit.errors import CoordkitError, SessionExpiredError
from coordkit.retry import describe_error

from .bridge import (
    PERSISTENT,
    PERSISTENT_RECURSIVE,
    WATCHER_PERSISTENT,
    WATCHER_PERSISTENT_RECURSIVE,
    AddWatch,
    LoopBridge,
    RemoveWatches,
    map_error,
)
from .paths import encode_path
from .watch import CHANGED_EVENT, CREATED_EVENT, DELETED_EVENT, WatchStream

__all__ = ["WatchRegistry", "session_expired_error"]

log = logging.getLogger(__name__)


class WatchRegistry:
    """The persistent watches of one kazoo client, shared by every stream on it.

    The server keeps one persistent watch per (path, mode) and connection, so
    streams on the same key share it and it is removed with the last one.
    """

    def __init__(self, client: Any, bridge: LoopBridge) -> None:
        self._client = client
        self._bridge = bridge
        self._lock = threading.Lock()
        self._streams: dict[tuple[str, bool], list[WatchStream]] = {}

    def on_notification(self, kind: int, path: str, seq: int) -> None:
        """Kazoo's connection thread: hand the notification to every stream covering it."""
        if kind not in (CREATED_EVENT, DELETED_EVENT, CHANGED_EVENT):
            return
        with self._lock:
            streams = [s for group in self._streams.values() for s in group if s.covers(path)]
        for stream in streams:
            stream.notify(kind, path, seq)

    def _add_request(self, key: tuple[str, bool]) -> Any:
        result = self._client.handler.async_result()
        mode = PERSISTENT_RECURSIVE if key[1] else PERSISTENT
        self._client._call(AddWatch(self._chrooted(key[0]), mode), result)
        return result

    def _chrooted(self, path: str) -> str:
        chroot = self._client.chroot or ""
        path = encode_path(path)
        if not chroot:
            return path
        return chroot if path == "/" else chroot + path

    async def add(self, stream: WatchStream) -> None:
        key = (stream.root, stream.recursive)
        with self._lock:
            self._streams.setdefault(key, []).append(stream)
        try:
            result = self._add_request(key)
            # A node watch also reads its node (pipelined behind the add), so that a
            # catch-up after a reconnection knows whether it existed.
            baseline = None if stream.recursive else stream.client.exists_async(stream.root)
            await self._bridge.wait(result)
            stream.last_revision = getattr(result, "zxid", 0)
            if baseline is not None:
                stream.set_baseline(await self._bridge.wait(baseline), baseline)
        except BaseException as exc:
            await self.remove(stream)
            if isinstance(exc, Exception):
                raise map_error(exc) from exc
            raise

    async def remove(self, stream: WatchStream) -> None:
        key = (stream.root, stream.recursive)
        with self._lock:
            group = self._streams.get(key, [])
            if stream in group:
                group.remove(stream)
            last = not group
            if last:
                self._streams.pop(key, None)
        if last and self._client.connected:
            watcher_type = WATCHER_PERSISTENT_RECURSIVE if key[1] else WATCHER_PERSISTENT
            result = self._client.handler.async_result()
            self._client._call(RemoveWatches(self._chrooted(key[0]), watcher_type), result)
            with anyio.move_on_after(2, shield=True):
                try:
                    await self._bridge.wait(result)
                except kx.KazooException as exc:
                    # The watch may already be gone with the connection or session.
                    log.debug("removing the watch on %s: %s", key[0], describe_error(exc))
                except Exception:
                    log.exception("unexpected error removing the ZooKeeper watch on %s", key[0])

    def rearm(self, since_zxid: int) -> None:
        """Kazoo's connection thread, reconnected with the same session: add the watches again."""
        with self._lock:
            groups = [(key, list(group)) for key, group in self._streams.items()]
        for key, group in groups:
            added = self._add_request(key)
            for stream in group:
                stream.resync(added, since_zxid)

    def fail_all(self, error_factory: Callable[[], CoordkitError]) -> None:
        """The session ended: persistent watches are gone with it."""
        with self._lock:
            streams = [s for group in self._streams.values() for s in group]
        for stream in streams:
            stream.fail(error_factory())


def session_expired_error() -> CoordkitError:
    return SessionExpiredError("the ZooKeeper session expired; the watch ended with it")
