"""The peer transport: one connection per pair of nodes, bounded queues, snapshots in chunks.

:class:`PeerTransport` carries Raft messages between this node and its peers.
Raft tolerates lost, duplicated and reordered messages, so the transport
never blocks the node and never buffers without bound: :meth:`PeerTransport.send`
queues a message (each peer has a queue bounded in count and bytes) and drops
it, counted, when the queue is full or the peer is isolated.

Guarantees and rules:

* **One connection per pair**, used in both directions: the node with the
  smaller id dials (``"n1" < "n2"``, string order), the other accepts and
  sends over the accepted stream. A dialer reconnects with the shared
  :class:`~coordkit.retry.RetryPolicy`; a newer accepted connection from a
  peer replaces the older one.
* **Order**: messages to one peer leave in the order of ``send``; received
  messages are handed to ``deliver`` in arrival order, on the reading task,
  one at a time. A streamed snapshot is delivered when its last chunk is
  committed, so messages sent after it may be delivered before it.
* **Liveness**: each side sends a ping after ``keepalive_interval`` seconds
  without traffic; a connection silent for ``idle_timeout`` is closed as dead.
* **Faults**: a malformed frame, a message that names the wrong sender, a
  broken snapshot stream: that connection is closed with one log line naming
  the peer, its address and the reason; the node goes on.
* **Snapshots** stream in chunks interleaved with the other frames to that
  peer, so heartbeats and appends are not stuck behind a large snapshot.
* **Logging**: one line per state change of a peer (connected, lost,
  unreachable), never one per attempt; drops at most once per second per peer.

:func:`serve` (from :mod:`.listener`) is the node's one port; the snapshot
Protocols (:class:`SnapshotSource`, :class:`SnapshotSink`,
:class:`SnapshotReceiver`) come from :mod:`.snapshot_stream`. Both are
re-exported here: this module is what the server imports.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import math
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from contextlib import aclosing, suppress
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from coordkit.errors import ConfigurationError
from coordkit.retry import RetryPolicy

from ..core.messages import Message, MessageType
from ..wire import (
    DEFAULT_MAX_FRAME,
    Address,
    FrameError,
    FrameStream,
    HandshakeError,
    Hello,
    connect,
    describe_error,
    frame_size,
)
from .codec import (
    PING,
    Ping,
    SnapshotChunk,
    SnapshotStart,
    decode,
    encode_message,
    encode_snapshot_end,
)
from .listener import ClusterIdentity, serve
from .snapshot_stream import (
    SnapshotInbox,
    SnapshotReceiver,
    SnapshotSink,
    SnapshotSource,
    snapshot_frames,
)

__all__ = [
    "ClusterIdentity",
    "PeerStats",
    "PeerTransport",
    "SnapshotReceiver",
    "SnapshotSink",
    "SnapshotSource",
    "TransportSettings",
    "asyncio_backend_options",
    "serve",
]

log = logging.getLogger(__name__)

# Errors that end a connection without saying anything about the node itself.
_LINK_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, ssl.SSLError)


@dataclass(frozen=True, slots=True)
class TransportSettings:
    """Limits and timings of the peer transport (both ends must agree on ``max_frame``)."""

    max_frame: int = DEFAULT_MAX_FRAME
    #: Per-peer send queue bound, in messages and in encoded bytes.
    queue_messages: int = 4096
    queue_bytes: int = 64 << 20
    #: Seconds without any frame after which a connection is considered dead.
    idle_timeout: float = 3.0
    #: Seconds without sending after which a ping is sent (well below idle_timeout).
    keepalive_interval: float = 0.5
    #: Seconds a dial (TCP, TLS, hello and answer) may take.
    connect_timeout: float = 3.0
    #: Seconds a peer that was never reached may refuse dials before a WARNING says so
    #: (members of a cluster start one after another: a refusal at first is normal).
    report_unreachable_after: float = 3.0
    #: Queued frames go out together, up to this many bytes per socket write.
    write_batch_bytes: int = 1 << 20
    #: Bytes per snapshot chunk frame.
    snapshot_chunk: int = 256 << 10
    #: Largest snapshot held in memory when no ``snapshot_sink`` is given.
    memory_snapshot_limit: int = 256 << 20
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(0.05, 1.0))

    def __post_init__(self) -> None:
        for name in ("idle_timeout", "keepalive_interval", "connect_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigurationError(f"transport {name} must be > 0, not {value!r}")
        wait = self.report_unreachable_after
        if not (isinstance(wait, int | float) and math.isfinite(wait) and wait >= 0):
            raise ConfigurationError(
                f"transport report_unreachable_after must be >= 0, not {wait!r}"
            )
        if self.keepalive_interval * 2 > self.idle_timeout:
            raise ConfigurationError("transport keepalive_interval must be at most idle_timeout/2")
        for name in (
            "max_frame",
            "queue_messages",
            "queue_bytes",
            "write_batch_bytes",
            "snapshot_chunk",
        ):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"transport {name} must be >= 1")
        if self.snapshot_chunk + 1024 > self.max_frame:
            raise ConfigurationError("transport snapshot_chunk must fit in max_frame")


@dataclass(frozen=True, slots=True)
class PeerStats:
    """Counters of one peer, since the transport started."""

    connected: bool
    queued: int
    queued_bytes: int
    sent: int
    received: int
    dropped: int
    #: Socket writes: ``sent / writes`` is how many messages one write carried.
    writes: int


class _Peer:
    """What the transport keeps about one peer across its connections."""

    def __init__(self, node: str, address: Address) -> None:
        self.node = node
        self.address = address
        self.frames: deque[bytes] = deque()
        self.queued_bytes = 0
        self.wakeup = anyio.Event()  # set when frames are queued
        self.snapshot: Message | None = None  # the latest SNAP waiting to stream
        self.snapshot_ready = anyio.Event()
        self.streaming: tuple[int, int] | None = None  # (index, term) being streamed
        self.link: _Link | None = None
        self.connected = anyio.Event()
        self.dialer: anyio.CancelScope | None = None
        self.reported_down = False
        self.unreachable_since: float | None = None  # first failed dial since the last success
        self.sent = self.received = self.dropped = self.writes = 0
        self.unreported_drops = 0
        self.last_drop_log = -math.inf

    def take(self, limit: float) -> list[bytes]:
        """Queued frames, oldest first, up to ``limit`` bytes (at least one frame)."""
        if self.queued_bytes <= limit:
            frames = list(self.frames)
            self.frames.clear()
            self.queued_bytes = 0
            return frames
        frames, size = [], 0
        while self.frames and (not frames or size + len(self.frames[0]) <= limit):
            frame = self.frames.popleft()
            frames.append(frame)
            size += len(frame)
        self.queued_bytes -= size
        return frames


class _Link:
    """One live connection with a peer; ends with exactly one log line."""

    def __init__(self, peer: _Peer, stream: FrameStream) -> None:
        self.peer = peer
        self.stream = stream
        self.scope = anyio.CancelScope()
        self.frames_in = 0
        self.reason: str | None = None
        self.level = logging.WARNING

    def end(self, reason: str, level: int = logging.WARNING) -> None:
        """Record why the connection ends (the first reason wins) and stop it."""
        if self.reason is None:
            self.reason, self.level = reason, level
        self.scope.cancel()


class _ShortLink(Exception):
    """A connection that ended soon after it was made: back off before the next."""


class PeerTransport:
    """Raft messages to and from this node's peers. Use as ``async with``.

    ``peers`` maps every other member's id to its address (this node's own id
    is ignored). ``deliver(message)`` is called synchronously for every
    message received, in arrival order. Pass :meth:`accept` as ``on_peer`` and
    :meth:`check_peer` as ``check_peer`` to :func:`serve`. ``ssl_context`` is
    the client context to dial peers with (mutual TLS: it holds this node's
    certificate). ``snapshot_source`` provides the data of a SNAP message sent
    without inline data; ``snapshot_sink`` receives incoming snapshots (then
    the SNAP is delivered with ``data=b""``); without a sink, a snapshot is
    collected in memory and delivered with its data.
    """

    def __init__(
        self,
        identity: ClusterIdentity,
        peers: Mapping[str, Address],
        deliver: Callable[[Message], None],
        *,
        settings: TransportSettings | None = None,
        ssl_context: ssl.SSLContext | None = None,
        snapshot_source: SnapshotSource | None = None,
        snapshot_sink: SnapshotSink | None = None,
    ) -> None:
        self.identity = identity
        self.settings = settings or TransportSettings()
        self._deliver = deliver
        self._ssl = ssl_context
        self._source = snapshot_source
        self._sink = snapshot_sink
        self._peers: dict[str, _Peer] = {}
        self._isolated: set[str] = set()
        self._isolate_all = False
        self._tg: TaskGroup | None = None
        self._closed = False
        self._stream_ids = itertools.count()
        self.set_peers(peers)

    @property
    def node(self) -> str:
        return self.identity.node

    async def __aenter__(self) -> Self:
        if self._tg is not None or self._closed:
            raise RuntimeError("a PeerTransport runs once")
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        for peer in self._peers.values():
            self._start_dialer(peer)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._closed = True
        for peer in self._peers.values():
            if peer.link is not None:
                peer.link.end("transport closed", logging.DEBUG)
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        return await self._tg.__aexit__(exc_type, exc, tb)

    # -- membership --------------------------------------------------------------

    def set_peers(self, peers: Mapping[str, Address]) -> None:
        """Make ``peers`` the members to talk to: new ones are dialled (or awaited),
        removed ones disconnected and their queues dropped, moved ones redialled."""
        wanted = {node: address for node, address in peers.items() if node != self.node}
        for node in list(self._peers):
            if node not in wanted:
                gone = self._peers.pop(node)
                self._stop_dialer(gone)
                if gone.link is not None:
                    gone.link.end("removed from the membership", logging.INFO)
                log.info("peer %s removed", node)
        for node, address in wanted.items():
            peer = self._peers.get(node)
            if peer is None:
                self._peers[node] = peer = _Peer(node, address)
                self._start_dialer(peer)
            elif peer.address != address:
                log.info("peer %s moved from %s to %s", node, peer.address, address)
                peer.address = address
                if self._dials(node):
                    self._stop_dialer(peer)
                    self._start_dialer(peer)

    def check_peer(self, node: str) -> str | None:
        """Why a peer hello from ``node`` is refused, or None (for :func:`serve`)."""
        if node == self.node:
            return f"{node} is this node's own id"
        if node not in self._peers:
            return f"{node} is not a member of this cluster"
        if self._dials(node):
            return f"{node} must not dial {self.node}: the node with the smaller id dials"
        return None

    def _dials(self, node: str) -> bool:
        return self.node < node

    def _start_dialer(self, peer: _Peer) -> None:
        if self._tg is not None and not self._closed and self._dials(peer.node):
            peer.dialer = anyio.CancelScope()
            self._tg.start_soon(self._dial, peer, peer.dialer)

    def _stop_dialer(self, peer: _Peer) -> None:
        if peer.dialer is not None:
            peer.dialer.cancel()
            peer.dialer = None

    # -- sending -------------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Queue ``message`` for its recipient; never blocks, never raises for a full queue.

        Dropped (and counted) when the peer is unknown, isolated, or its queue
        is full. A SNAP message is streamed; only the latest one waits per peer.
        """
        peer = self._peers.get(message.to)
        if peer is None:
            log.debug("dropped a %s message to unknown peer %s", message.type.value, message.to)
            return
        if self._is_isolated(peer.node):
            return
        if message.type is MessageType.SNAP and message.snapshot is not None:
            self._queue_snapshot(peer, message)
            return
        data = encode_message(message)
        settings = self.settings
        if frame_size(data) > settings.max_frame:
            log.error(
                "dropped a %s message of %d bytes to %s: larger than max_frame (%d)",
                message.type.value,
                frame_size(data),
                peer.node,
                settings.max_frame,
            )
            peer.dropped += 1
            return
        if (
            len(peer.frames) >= settings.queue_messages
            or peer.queued_bytes + len(data) > settings.queue_bytes
        ):
            self._count_drop(peer)
            return
        peer.frames.append(data)
        peer.queued_bytes += len(data)
        peer.wakeup.set()

    def _queue_snapshot(self, peer: _Peer, message: Message) -> None:
        assert message.snapshot is not None
        meta = message.snapshot.meta
        key = (meta.index, meta.term)
        waiting = peer.snapshot.snapshot.meta if peer.snapshot and peer.snapshot.snapshot else None
        if peer.streaming == key or (waiting is not None and (waiting.index, waiting.term) == key):
            return  # that snapshot is already on its way
        if peer.snapshot is not None:
            peer.dropped += 1  # superseded by a newer one before it started
        peer.snapshot = message
        peer.snapshot_ready.set()

    def _count_drop(self, peer: _Peer) -> None:
        peer.dropped += 1
        peer.unreported_drops += 1
        now = time.monotonic()
        if now - peer.last_drop_log >= 1.0:
            log.warning(
                "send queue to %s full (%d messages, %d bytes): dropped %d message(s) (%d in all)",
                peer.node,
                len(peer.frames),
                peer.queued_bytes,
                peer.unreported_drops,
                peer.dropped,
            )
            peer.last_drop_log = now
            peer.unreported_drops = 0

    # -- fault hook ------------------------------------------------------------------

    def isolate(self, peers: Iterable[str] | None = None) -> None:
        """Drop every message to and from ``peers`` (all, present and future, when None),
        as a network partition would; connections stay open (pings still flow)."""
        if peers is None:
            self._isolate_all = True
        else:
            self._isolated.update(peers)
        for peer in self._peers.values():
            if self._is_isolated(peer.node):
                peer.take(math.inf)
                peer.snapshot = None
        log.info("isolated from %s", "every peer" if peers is None else sorted(self._isolated))

    def heal(self) -> None:
        """Undo every :meth:`isolate`."""
        self._isolate_all = False
        self._isolated.clear()
        log.info("isolation healed")

    def _is_isolated(self, node: str) -> bool:
        return self._isolate_all or node in self._isolated

    # -- observation -----------------------------------------------------------------

    def stats(self) -> dict[str, PeerStats]:
        return {
            node: PeerStats(
                p.link is not None,
                len(p.frames),
                p.queued_bytes,
                p.sent,
                p.received,
                p.dropped,
                p.writes,
            )
            for node, p in self._peers.items()
        }

    async def wait_connected(self, nodes: Iterable[str] | None = None) -> None:
        """Return once a connection with each of ``nodes`` (default: every peer) is up."""
        for node in list(self._peers) if nodes is None else nodes:
            peer = self._peers.get(node)
            if peer is None:
                raise KeyError(f"{node} is not a peer")
            await peer.connected.wait()

    # -- connections -------------------------------------------------------------------

    async def _dial(self, peer: _Peer, scope: anyio.CancelScope) -> None:
        """Keep one connection to ``peer`` up. A failed dial, or a connection that
        ended before ``idle_timeout``, is a failed attempt of the retry policy; a
        connection that lasted longer starts the backoff afresh."""
        hello = Hello("peer", self.identity.cluster, self.node, self.identity.token)
        # A member is dialled for as long as it is one: no attempt limit.
        policy = replace(self.settings.retry, max_attempts=None)
        with scope:
            while True:
                async for attempt in policy.retrying(
                    retry_on=(OSError, HandshakeError, _ShortLink),
                    what=f"connection to peer {peer.node} at {peer.address}",
                    logger=log,
                ):
                    with attempt:
                        await self._dial_once(peer, hello)

    async def _dial_once(self, peer: _Peer, hello: Hello) -> None:
        settings = self.settings
        try:
            stream, welcome = await connect(
                peer.address,
                hello,
                ssl_context=self._ssl,
                timeout=settings.connect_timeout,
                max_frame=settings.max_frame,
            )
            if welcome.node != peer.node:
                await stream.aclose()
                raise HandshakeError(f"found {welcome.node} there instead")
        except (OSError, HandshakeError) as exc:
            now = anyio.current_time()
            if peer.unreachable_since is None:
                peer.unreachable_since = now
            waited = now - peer.unreachable_since
            if not peer.reported_down and waited >= settings.report_unreachable_after:
                peer.reported_down = True
                log.warning(
                    "cannot reach peer %s at %s for %.1f s: %s; retrying",
                    peer.node,
                    peer.address,
                    waited,
                    describe_error(exc),
                )
            else:
                log.debug("cannot reach peer %s yet: %s", peer.node, describe_error(exc))
            raise
        peer.reported_down = False
        peer.unreachable_since = None
        log.info("connected to peer %s at %s", peer.node, peer.address)
        started = anyio.current_time()
        await self._run_link(peer, stream)
        if anyio.current_time() - started < settings.idle_timeout:
            raise _ShortLink

    async def accept(self, node: str, stream: FrameStream) -> None:
        """Run a connection accepted (and checked) by :func:`serve` until it ends."""
        peer = self._peers.get(node)
        if peer is None or self._closed or self._tg is None:
            await stream.aclose()
            return
        if peer.link is None:
            log.info("accepted peer %s from %s", node, stream.remote)
        await self._run_link(peer, stream)

    async def _run_link(self, peer: _Peer, stream: FrameStream) -> None:
        link = _Link(peer, stream)
        if peer.link is not None:
            peer.link.end(f"replaced by a newer connection from {stream.remote}", logging.INFO)
        peer.link = link
        peer.connected.set()
        chunk_tx, chunk_rx = anyio.create_memory_object_stream[bytes](2)
        try:
            with link.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._write_loop, link, chunk_rx)
                    tg.start_soon(self._stream_snapshots, link, chunk_tx)
                    tg.start_soon(self._watch_idle, link)
                    await self._read_loop(link)
        finally:
            if peer.link is link:
                peer.link = None
                peer.connected = anyio.Event()
            if link.reason is None:  # cancelled from outside: the node is stopping
                link.reason, link.level = "closed", logging.DEBUG
            log.log(
                link.level,
                "connection with peer %s (%s) closed: %s",
                peer.node,
                stream.remote,
                link.reason,
            )
            peer.reported_down = True  # the line above said it; dial failures stay quiet
            chunk_tx.close()
            chunk_rx.close()
            await stream.aclose()

    async def _read_loop(self, link: _Link) -> None:
        peer = link.peer
        inbox = SnapshotInbox(peer.node, self._sink, self.settings.memory_snapshot_limit)
        try:
            while True:
                item = decode(await link.stream.receive())
                link.frames_in += 1
                if isinstance(item, Ping):
                    continue
                peer.received += 1
                if isinstance(item, Message):
                    self._check_route(link, item)
                    if not self._is_isolated(peer.node):
                        self._hand_over(item)
                elif isinstance(item, SnapshotStart):
                    self._check_route(link, item.message)
                    await inbox.start(item)
                elif isinstance(item, SnapshotChunk):
                    await inbox.chunk(item)
                else:
                    done = await inbox.end(item, accept=not self._is_isolated(peer.node))
                    if done is not None:
                        self._hand_over(done)
        except FrameError as exc:
            link.end(f"bad frame: {exc}")
        except anyio.EndOfStream:
            # A peer restarting or shutting down; failing to reach it again is logged by the dial.
            link.end("closed by the peer", logging.INFO)
        except _LINK_ERRORS as exc:
            link.end(f"connection error: {describe_error(exc)}")
        except Exception as exc:  # a bug: keep the node up, and say so loudly
            log.exception("reading from peer %s failed", peer.node)
            link.end(f"internal error: {describe_error(exc)}", logging.ERROR)
        finally:
            await inbox.abort_all()

    def _check_route(self, link: _Link, message: Message) -> None:
        if message.frm != link.peer.node or message.to != self.node:
            raise FrameError(
                f"a message from {message.frm} to {message.to} on the connection with "
                f"{link.peer.node}"
            )

    def _hand_over(self, message: Message) -> None:
        try:
            self._deliver(message)
        except Exception:
            log.exception("deliver() failed on a %s message from %s", message.type, message.frm)

    async def _write_loop(self, link: _Link, chunks: MemoryObjectReceiveStream[bytes]) -> None:
        """Send what is queued, several frames per write, with at most one snapshot
        chunk per write so that other frames are never stuck behind a snapshot."""
        peer, stream = link.peer, link.stream
        try:
            while True:
                if peer.wakeup.is_set():
                    peer.wakeup = anyio.Event()
                batch = peer.take(self.settings.write_batch_bytes)
                sent = len(batch)
                with suppress(anyio.WouldBlock):  # at most one chunk per write
                    batch.append(chunks.receive_nowait())
                if not batch:
                    with anyio.move_on_after(self.settings.keepalive_interval) as idle:
                        await peer.wakeup.wait()
                    if idle.cancelled_caught:
                        await stream.send_encoded(PING)
                    continue
                peer.sent += sent  # handed to the connection (lost with it if it breaks)
                peer.writes += 1
                await stream.send_encoded(batch[0] if len(batch) == 1 else b"".join(batch))
        except _LINK_ERRORS as exc:
            link.end(f"connection error while sending: {describe_error(exc)}")

    async def _watch_idle(self, link: _Link) -> None:
        seen = -1
        while link.frames_in != seen:
            seen = link.frames_in
            await anyio.sleep(self.settings.idle_timeout)
        link.end(f"silent for more than {self.settings.idle_timeout:g} s")

    async def _stream_snapshots(self, link: _Link, chunks: MemoryObjectSendStream[bytes]) -> None:
        """Stream each SNAP queued for the peer, one at a time, into ``chunks`` (a small
        bounded channel the writer takes from: a slow link holds the snapshot back)."""
        peer = link.peer
        while True:
            while peer.snapshot is None:
                peer.snapshot_ready = anyio.Event()
                await peer.snapshot_ready.wait()
            message, peer.snapshot = peer.snapshot, None
            assert message.snapshot is not None
            peer.streaming = (message.snapshot.meta.index, message.snapshot.meta.term)
            stream_id = next(self._stream_ids)
            frames = snapshot_frames(message, stream_id, self._source, self.settings.snapshot_chunk)
            try:
                async with aclosing(frames):
                    started = False
                    async for frame in frames:
                        if self._is_isolated(peer.node):
                            if started:  # partitioned mid-stream: the peer drops what it has
                                await self._put(peer, chunks, encode_snapshot_end(stream_id, False))
                            break
                        await self._put(peer, chunks, frame)
                        started = True
            finally:
                peer.streaming = None

    @staticmethod
    async def _put(peer: _Peer, chunks: MemoryObjectSendStream[bytes], frame: bytes) -> None:
        await chunks.send(frame)
        peer.wakeup.set()


def asyncio_backend_options() -> dict[str, object]:
    """``backend_options`` for ``anyio.run(..., backend="asyncio")``: uvloop when installed.

    uvloop is optional (``pip install uvloop``); without it the default loop runs.
    """
    if importlib.util.find_spec("uvloop") is None:
        return {}
    return {"use_uvloop": True}
