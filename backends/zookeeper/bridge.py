"""The seam between kazoo (threads) and anyio (asyncio or trio), and kazoo's missing pieces.

kazoo runs its connection on a thread and completes requests on a worker
thread; coordkit runs on an event loop. :class:`LoopBridge` carries kazoo's
completions and notifications into the loop without blocking kazoo's threads,
in the order they happened. :func:`map_error` is the one place kazoo's errors
become coordkit's. :class:`KazooLog` is the logger kazoo writes to.

kazoo 2.10/2.11 (the released versions) lack ZooKeeper 3.6's persistent
watches and do not expose the zxid of a reply. :func:`instrument_connection`
adds both by wrapping two methods of kazoo's connection handler: every
notification is handed to a callback on the connection thread (so it is
seen in order, before any later reply), and every reply's header zxid is
stored on its ``AsyncResult`` as ``zxid``. This relies on kazoo internals
that have been stable since kazoo 2.0: pyproject pins kazoo below 3, and
:func:`missing_kazoo_internals` (checked when the backend connects, and by
the tests) names any that a kazoo release no longer has.
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import anyio
from anyio.lowlevel import EventLoopToken
from kazoo import exceptions as kx
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.serialization import Watch, int_struct, write_string

from coordkit.errors import (
    BadVersionError,
    ConnectionLostError,
    CoordkitError,
    InvalidArgumentError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    OperationTimeoutError,
    SessionExpiredError,
)

from .paths import decode_path

__all__ = [
    "AddWatch",
    "KazooLog",
    "LoopBridge",
    "RemoveWatches",
    "instrument_connection",
    "map_error",
    "missing_kazoo_internals",
    "multi_failures",
    "tls_connector",
]

#: ZooKeeper's AddWatch modes (3.6+).
PERSISTENT = 0
PERSISTENT_RECURSIVE = 1
#: RemoveWatches watcher types for persistent watches (3.6+).
WATCHER_PERSISTENT = 4
WATCHER_PERSISTENT_RECURSIVE = 5


class AddWatch:
    """ZooKeeper's ``addWatch`` request (opcode 106)."""

    type: ClassVar[int] = 106
    __slots__ = ("mode", "path")

    def __init__(self, path: str, mode: int) -> None:
        self.path = path
        self.mode = mode

    def serialize(self) -> bytearray:
        buf = bytearray(write_string(self.path))
        buf.extend(int_struct.pack(self.mode))
        return buf

    @classmethod
    def deserialize(cls, data: bytes, offset: int) -> bool:
        return True


class RemoveWatches:
    """ZooKeeper's ``removeWatches`` request (opcode 18)."""

    type: ClassVar[int] = 18
    __slots__ = ("path", "watcher_type")

    def __init__(self, path: str, watcher_type: int) -> None:
        self.path = path
        self.watcher_type = watcher_type

    def serialize(self) -> bytearray:
        buf = bytearray(write_string(self.path))
        buf.extend(int_struct.pack(self.watcher_type))
        return buf

    @classmethod
    def deserialize(cls, data: bytes, offset: int) -> bool:
        return True


#: What kazoo logs when a connection or session ends: the cause the backend reports.
_ENDINGS = (
    "Connection dropped",
    "Connection time-out",
    "Session has expired",
    "AUTH_FAILED",
    "Found a RW server",
)


class KazooLog(logging.LoggerAdapter[logging.Logger]):
    """The logger a kazoo client writes to: ``coordkit.backends.zookeeper.kazoo``.

    kazoo logs every connection attempt and state change itself, at INFO and
    WARNING, several lines per change (and one per failed reconnection). The
    backend logs each change once, clearly, on its own logger; so kazoo's
    lines are passed on at DEBUG (its ERROR and worse keep their level, with
    their tracebacks), and what they tell the backend's lines is kept:
    :attr:`endpoint` (the server kazoo last connected to) and :attr:`cause`
    (why the last connection ended). Written on kazoo's connection thread.
    """

    def __init__(self, hosts: str) -> None:
        super().__init__(logging.getLogger("coordkit.backends.zookeeper.kazoo"), {})
        self.endpoint = hosts
        self.cause = "the connection dropped"

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        text = str(msg)
        if text.startswith("Connecting to ") and len(args) >= 3:
            self.endpoint = f"{args[0]}:{args[2]}"
        elif text.startswith(_ENDINGS):
            try:
                self.cause = text % args if args else text
            except (TypeError, ValueError):
                self.cause = text
        if logging.DEBUG < level < logging.ERROR:
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)

    def warn(self, msg: object, *args: Any, **kwargs: Any) -> None:  # kazoo still calls it
        self.log(logging.WARNING, msg, *args, **kwargs)


def tls_connector(context: ssl.SSLContext) -> Callable[..., socket.socket]:
    """A replacement for kazoo's ``handler.create_connection`` that speaks TLS
    with ``context`` (the backend's: TLS 1.2+, the server's name checked).

    kazoo's own leaves the socket open when the TLS handshake fails (a
    ResourceWarning per attempt) and builds its context from file names; this
    one connects, shakes hands, and closes the socket on any failure.
    """

    def create_connection(
        address: tuple[str, int],
        hostname: str | None = None,
        timeout: float | None = None,
        use_ssl: bool = False,
        **_kazoo_tls_arguments: Any,
    ) -> socket.socket:
        sock = socket.create_connection(address, timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if use_ssl:
                sock = context.wrap_socket(sock, server_hostname=hostname or address[0])
            return sock
        except BaseException:
            sock.close()
            raise

    return create_connection


def multi_failures(replies: list[Any]) -> list[tuple[int, BaseException]]:
    """The ops of a ``multi`` that failed for a reason of their own, with their indexes.

    An op ZooKeeper only rolled back because another failed is left out.
    """
    return [
        (i, r)
        for i, r in enumerate(replies)
        if isinstance(r, Exception)
        and not isinstance(r, kx.RolledBackError | kx.RuntimeInconsistency)
    ]


def map_error(exc: BaseException) -> CoordkitError:
    """The coordkit error for a kazoo (or timeout) error: the one mapping of this backend."""
    if isinstance(exc, CoordkitError):
        return exc
    mapping: list[tuple[type[BaseException], type[CoordkitError]]] = [
        (kx.NoNodeError, NoNodeError),
        (kx.NodeExistsError, NodeExistsError),
        (kx.BadVersionError, BadVersionError),
        (kx.NotEmptyError, NotEmptyError),
        (kx.NoChildrenForEphemeralsError, NoChildrenForEphemeralsError),
        (kx.SessionExpiredError, SessionExpiredError),
        (kx.SessionMovedError, SessionExpiredError),
        (kx.ConnectionClosedError, ConnectionLostError),
        (kx.ConnectionLoss, ConnectionLostError),
        (kx.ConnectionDropped, ConnectionLostError),
        (kx.OperationTimeoutError, OperationTimeoutError),
        (KazooTimeoutError, OperationTimeoutError),
        (TimeoutError, OperationTimeoutError),
        (kx.BadArgumentsError, InvalidArgumentError),
        (kx.InvalidACLError, InvalidArgumentError),
    ]
    for kazoo_type, ours in mapping:
        if isinstance(exc, kazoo_type):
            return ours(str(exc) or type(exc).__name__)
    return CoordkitError(f"ZooKeeper error: {type(exc).__name__}: {exc}")


class LoopBridge:
    """Runs callables on the event loop, in the order kazoo's threads submit them.

    ``call_soon`` never blocks the calling thread (it uses the loop's own
    thread-safe scheduling: ``call_soon_threadsafe`` on asyncio,
    ``TrioToken.run_sync_soon`` on trio, through anyio's backend interface).
    Calls are queued in a thread-safe deque and drained in FIFO order, so
    kazoo's order survives whatever order the loop runs scheduled callbacks in.
    The bridge owns no task, so it needs no task group that would have to be
    exited in the task that opened it.
    """

    def __init__(self) -> None:
        self._token: EventLoopToken | None = None
        self._loop_thread = threading.get_ident()
        self._pending: collections.deque[tuple[Callable[..., object], tuple[Any, ...]]] = (
            collections.deque()
        )

    def start(self) -> None:
        """Bind to the running event loop (call from it)."""
        self._token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()

    def stop(self) -> None:
        """Run what is queued now and drop later calls."""
        self._token = None
        self._drain()

    def call_soon(self, func: Callable[..., object], *args: Any) -> None:
        """Run ``func(*args)`` on the loop soon; from the loop thread, run it now."""
        if threading.get_ident() == self._loop_thread:
            self._drain()
            func(*args)
            return
        self._pending.append((func, args))
        token = self._token
        if token is None:
            return
        # The loop has finished (tests end their loop while kazoo still runs):
        # what is queued is dropped with it.
        with contextlib.suppress(RuntimeError):
            token.backend_class.run_sync_soon(self._drain, (), token.native_token)

    def _drain(self) -> None:
        while True:
            try:
                func, args = self._pending.popleft()
            except IndexError:
                return
            func(*args)

    async def wait(self, result: Any) -> Any:
        """Await a kazoo ``IAsyncResult``; return its value or raise kazoo's exception.

        Cancellation abandons the request (its outcome stays unknown).
        """
        if not result.ready():
            done = anyio.Event()

            def on_done(_: object) -> None:
                self.call_soon(done.set)

            result.rawlink(on_done)
            try:
                await done.wait()
            finally:
                result.unlink(on_done)
        return result.get_nowait()


#: The kazoo internals the backend uses (the methods it wraps, with their parameters).
_CLIENT_INTERNALS = (
    "_call",  # sending AddWatch / RemoveWatches (registry)
    "_connection",
    "_pending",  # the reply being read (instrument_connection)
    "_session_id",
    "_stopped",
    "chroot",
    "client_id",
    "handler",
    "last_zxid",
    "unchroot",
)
_CONNECTION_INTERNALS: dict[str, tuple[str, ...] | None] = {
    "_read_watch_event": ("buffer", "offset"),  # wrapped by instrument_connection
    "_read_response": ("header", "buffer", "offset"),  # wrapped by instrument_connection
    "_socket": None,  # shut down by abort, asked its peer by expire_session
    "connection_stopped": None,  # awaited by abort
}


def missing_kazoo_internals(client: Any) -> list[str]:
    """The kazoo internals the backend relies on that ``client`` lacks, or has
    with other parameters (empty with the kazoo versions pyproject allows)."""
    missing = [f"KazooClient.{name}" for name in _CLIENT_INTERNALS if not hasattr(client, name)]
    connection = getattr(client, "_connection", None)
    for name, parameters in _CONNECTION_INTERNALS.items():
        where = f"ConnectionHandler.{name}"
        if not hasattr(connection, name):
            missing.append(where)
        elif parameters is not None:
            found = tuple(inspect.signature(getattr(connection, name)).parameters)
            if found != parameters:
                missing.append(f"{where}({', '.join(parameters)}) (found ({', '.join(found)}))")
    return missing


def instrument_connection(client: Any, on_notification: Callable[[int, str, int], None]) -> None:
    """Hook kazoo's connection (see the module docstring).

    Notifications go to ``on_notification(type, path, seq)`` on the connection
    thread, ``seq`` counting them from 1. Every reply's ``AsyncResult`` gets
    ``zxid`` (the header zxid: for a write, the zxid of that write; for a read,
    the server's last applied zxid) and ``notified`` (the ``seq`` of the last
    notification received before it, so a reader can tell which changes its
    answer may already include).
    """
    connection = client._connection
    read_watch_event = connection._read_watch_event
    read_response = connection._read_response
    seq = 0

    def _read_watch_event(buffer: bytes, offset: int) -> Any:
        nonlocal seq
        watch, _ = Watch.deserialize(buffer, offset)
        seq += 1
        if not client._stopped.is_set():
            on_notification(watch.type, decode_path(client.unchroot(watch.path)), seq)
        return read_watch_event(buffer, offset)

    def _read_response(header: Any, buffer: bytes, offset: int) -> Any:
        if client._pending:
            _, async_object, xid = client._pending[0]
            if async_object is not None and xid == header.xid:
                async_object.zxid = header.zxid
                async_object.notified = seq
        return read_response(header, buffer, offset)

    connection._read_watch_event = _read_watch_event
    connection._read_response = _read_response
