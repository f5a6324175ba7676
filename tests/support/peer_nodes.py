"""Real Raft transports on loopback for tests: a node is ``serve()`` plus a PeerTransport.

:func:`start_node` runs one node in a task group (its port, its transport, an
inbox of delivered messages); :func:`start_cluster` runs several and tells
each the others' addresses. Nothing here is mocked: every byte crosses a real
TCP (or TLS) connection.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import anyio
from anyio.abc import TaskGroup

from coordkit.backends.raft.core.messages import Entry, Message, MessageType
from coordkit.backends.raft.node.transport import (
    ClusterIdentity,
    PeerTransport,
    SnapshotSink,
    SnapshotSource,
    TransportSettings,
    serve,
)
from coordkit.backends.raft.wire import Address, FrameStream, Hello

__all__ = [
    "CLUSTER",
    "NOWHERE",
    "TOKEN",
    "Inbox",
    "Node",
    "append",
    "records_about",
    "start_cluster",
    "start_node",
    "start_pair",
    "until_logged",
    "wait_until",
]

CLUSTER = "test-cluster"
TOKEN = "test-token"
#: The address given for a peer that only ever dials this node (it is never used).
NOWHERE = Address("127.0.0.1", 9)


class Inbox:
    """The messages delivered to a node, and a way to wait for some."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._changed = anyio.Event()

    def deliver(self, message: Message) -> None:
        self.messages.append(message)
        self._changed.set()

    def of(self, frm: str) -> list[Message]:
        return [m for m in self.messages if m.frm == frm]

    async def until(self, done: Callable[[list[Message]], bool]) -> None:
        """Wait until ``done(messages)`` holds (the caller bounds the wait)."""
        while not done(self.messages):
            self._changed = anyio.Event()
            await self._changed.wait()


@dataclass
class Node:
    name: str
    transport: PeerTransport
    address: Address
    inbox: Inbox
    #: How many peer connections this node's port accepted, per peer.
    accepted: dict[str, int] = field(default_factory=dict)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    stopped: anyio.Event = field(default_factory=anyio.Event)

    async def stop(self) -> None:
        self.scope.cancel()
        await self.stopped.wait()


async def echo_client(stream: FrameStream, hello: Hello) -> None:
    """A stand-in client protocol: answers each frame with the same frame."""
    try:
        while True:
            frame = await stream.receive()
            await stream.send(frame.header, frame.payload)
    except anyio.EndOfStream:
        return


async def start_node(
    tg: TaskGroup,
    name: str,
    peers: Mapping[str, Address] | None = None,
    *,
    port: int = 0,
    settings: TransportSettings | None = None,
    server_tls: ssl.SSLContext | None = None,
    client_tls: ssl.SSLContext | None = None,
    snapshot_source: SnapshotSource | None = None,
    snapshot_sink: SnapshotSink | None = None,
    hello_timeout: float = 5.0,
) -> Node:
    """Start a node listening on 127.0.0.1:``port`` (0: any free port)."""
    identity = ClusterIdentity(CLUSTER, name, TOKEN)
    inbox = Inbox()
    transport = PeerTransport(
        identity,
        peers or {},
        inbox.deliver,
        settings=settings,
        ssl_context=client_tls,
        snapshot_source=snapshot_source,
        snapshot_sink=snapshot_sink,
    )
    node = Node(name, transport, Address("127.0.0.1", port), inbox)

    async def on_peer(peer: str, stream: FrameStream) -> None:
        node.accepted[peer] = node.accepted.get(peer, 0) + 1
        await transport.accept(peer, stream)

    async def run(*, task_status: anyio.abc.TaskStatus[Address]) -> None:
        try:
            with node.scope:
                async with transport, anyio.create_task_group() as inner:
                    bound = await inner.start(
                        partial(
                            serve,
                            node.address,
                            identity,
                            check_peer=transport.check_peer,
                            on_peer=on_peer,
                            on_client=echo_client,
                            ssl_context=server_tls,
                            hello_timeout=hello_timeout,
                            max_frame=transport.settings.max_frame,
                        )
                    )
                    task_status.started(bound)
                    await anyio.sleep_forever()
        finally:
            node.stopped.set()

    node.address = await tg.start(run)
    return node


@asynccontextmanager
async def start_cluster(names: Sequence[str], **options: object) -> AsyncIterator[dict[str, Node]]:
    """Nodes ``names`` on free ports, each told the others' addresses; stopped on exit."""
    async with anyio.create_task_group() as tg:
        nodes = {name: await start_node(tg, name, **options) for name in names}  # type: ignore[arg-type]
        addresses = {name: node.address for name, node in nodes.items()}
        for node in nodes.values():
            node.transport.set_peers(addresses)
        yield nodes
        tg.cancel_scope.cancel()


async def start_pair(
    tg: TaskGroup,
    *,
    settings: TransportSettings | None = None,
    source: SnapshotSource | None = None,
    sink: SnapshotSink | None = None,
) -> tuple[Node, Node]:
    """n1 (with the snapshot ``source``) dialling n2 (with the ``sink``)."""
    n2 = await start_node(tg, "n2", {"n1": NOWHERE}, settings=settings, snapshot_sink=sink)
    n1 = await start_node(tg, "n1", {"n2": n2.address}, settings=settings, snapshot_source=source)
    return n1, n2


def append(frm: str, to: str, index: int, data: bytes = b"x", term: int = 1) -> Message:
    """An APP message carrying one entry at ``index`` (the order tests count on it)."""
    entry = Entry(term, index, data=data)
    return Message(MessageType.APP, frm, to, term, index=index - 1, entries=(entry,))


def records_about(records: Sequence[logging.LogRecord], text: str) -> list[logging.LogRecord]:
    """The coordkit log records at WARNING or above whose message contains ``text``."""
    return [
        r
        for r in records
        if r.name.startswith("coordkit") and r.levelno >= logging.WARNING and text in r.getMessage()
    ]


async def wait_until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds, checking every 5 ms (the caller bounds the wait).

    Only for what has no event by design: a message dropped on arrival by an
    isolated transport is silent, as a partition is; its counter is all there is.
    """
    while not condition():  # noqa: ASYNC110 (there is no event to wait for: see above)
        await anyio.sleep(0.005)


async def until_logged(records: Sequence[logging.LogRecord], text: str, count: int = 1) -> None:
    """Wait until ``count`` of the captured ``records`` (pytest's ``caplog.records``)
    contain ``text``, checking as each record is logged (the caller bounds the wait)."""

    def enough() -> bool:
        return sum(text in r.getMessage() for r in records) >= count

    arrived = anyio.Event()

    class Watch(logging.Handler):
        # Added to the root logger after pytest's capture handler, so it runs
        # after that handler has captured the record.
        def emit(self, record: logging.LogRecord) -> None:
            if enough():
                arrived.set()

    watch = Watch()
    logging.getLogger().addHandler(watch)
    try:
        if not enough():
            await arrived.wait()
    finally:
        logging.getLogger().removeHandler(watch)
