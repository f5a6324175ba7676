"""The client protocol, server side: one :class:`ClientConnection` per connected client.

Requests are read in order and answered as they complete, in any order, each
answer carrying its request's number. Nothing waits in a task per request:
writes and reads register callbacks with the node (the ready loop calls them
when the entry applies or the ReadIndex round returns), and every answer or
watch event is appended to the connection's outgoing buffer, which one
writer task flushes in a single send however many frames queued meanwhile.

A client that does not read its answers does not grow the node's memory
without bound: past ``MAX_BUFFERED`` bytes the connection is closed (one log
line); the client reconnects and its watches resume from their last revision.
Malformed requests get an ``invalid`` answer; a malformed frame closes the
connection. Neither ever affects the node.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from coordkit.errors import ConfigurationError, CoordkitError, InvalidArgumentError
from coordkit.model import Event
from coordkit.paths import STORED_PATH_BYTES, check_path

from ...store import (
    ClientRequest,
    CloseSession,
    Command,
    Compact,
    Create,
    Delete,
    ExpireSession,
    OpenSession,
    Set,
    Store,
    Txn,
    decode_command,
    encode_result,
)
from ..core import ConfChangeError, ProposalDroppedError
from ..protocol import Op, Status, encode_events
from ..wire import Address, Frame, FrameError, FrameStream, Hello, encode_frame
from .config import NodeConfig, check_name, parse_address
from .refusals import NotLeader, Refused
from .requests import Outcome
from .transport import PeerTransport
from .watches import Watcher, WatchHub, replay

__all__ = ["ClientService", "ServedNode"]

log = logging.getLogger(__name__)

#: bytes of answers and events a client may leave unread before it is disconnected.
MAX_BUFFERED = 64 << 20
#: a streamed snapshot pauses while this many bytes wait to be sent.
STREAM_HIGH_WATER = 8 << 20


class ServedNode(Protocol):
    """What the client protocol needs of a node (the server's ServedNode)."""

    config: NodeConfig
    store: Store
    watches: WatchHub

    @property
    def transport(self) -> PeerTransport: ...

    def propose(self, command: Command, done: Outcome) -> None: ...

    def read_barrier(self, then: Callable[[str], None]) -> None: ...

    def keepalive(self, session_id: int, then: Callable[[bool, str], None]) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def add_member(self, name: str, address: Address) -> int: ...

    def remove_member(self, name: str) -> int: ...


@dataclass
class Faults:
    """Faults a test injects through the ``fault`` request (``--allow-faults`` nodes only).

    ``drop_replies``: the probability that the answer to a write is lost *after*
    the write applied. A lost answer is a broken connection (TCP loses no single
    frame), so the connection is closed instead of answered: the client sends the
    write again, with the same sequence number, on its next connection.
    """

    drop_replies: float = 0.0
    dropped: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def drop_reply(self) -> bool:
        if self.drop_replies > 0.0 and self.rng.random() < self.drop_replies:
            self.dropped += 1
            return True
        return False


class ClientService:
    """Accepts client connections for one node."""

    def __init__(self, node: ServedNode) -> None:
        self.node = node
        self.connections: set[ClientConnection] = set()
        self.faults = Faults()
        self._numbers = itertools.count(1)

    async def handle(self, stream: FrameStream, hello: Hello) -> None:
        conn = ClientConnection(
            self.node, stream, f"client #{next(self._numbers)}", faults=self.faults
        )
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)


class ClientConnection:
    def __init__(
        self, node: ServedNode, stream: FrameStream, remote: str, *, faults: Faults | None = None
    ) -> None:
        self.node = node
        self.remote = remote
        self._faults = faults or Faults()
        self._stream = stream
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush = anyio.Event()
        self._drained = anyio.Event()
        self._closed = False
        self._watches: dict[int, Watcher] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._writer)
            try:
                while not self._closed:
                    frame = await self._stream.receive()
                    self._dispatch(frame)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            except FrameError as exc:
                log.warning("client %s: malformed frame, closing: %s", self.remote, exc)
            finally:
                self._close()
                tg.cancel_scope.cancel()

    def _close(self) -> None:
        self._closed = True
        self._drained.set()
        for watcher in self._watches.values():
            self.node.watches.remove(watcher)
        self._watches.clear()
        self._flush.set()

    # -- sending --------

    def _queue(self, data: bytes) -> None:
        if self._closed:
            return
        self._out.append(data)
        self._out_bytes += len(data)
        if self._out_bytes > MAX_BUFFERED:
            log.warning(
                "client %s: %d bytes of answers unread, disconnecting it",
                self.remote,
                self._out_bytes,
            )
            self._close()
            return
        self._flush.set()

    def answer(self, number: int, code: str, payload: bytes = b"", **fields: Any) -> None:
        self._queue(encode_frame({"t": "r", "i": number, "s": code, **fields}, payload))

    def refuse(self, number: int, error: Refused) -> None:
        fields: dict[str, Any] = {"m": str(error)}
        if isinstance(error, NotLeader):
            fields["leader"] = error.leader
            fields["addr"] = error.address
        self.answer(number, error.status, **fields)

    async def _writer(self) -> None:
        while True:
            await self._flush.wait()
            self._flush = anyio.Event()
            if self._out:
                data = b"".join(self._out)
                self._out.clear()
                self._out_bytes = 0
                await self._stream.send_encoded(data)
                self._drained.set()
                self._drained = anyio.Event()
            if self._closed:
                await self._stream.aclose()
                return

    # -- requests --------

    def _dispatch(self, frame: Frame) -> None:
        header = frame.header
        number = header.get("i")
        if header.get("t") != "q" or isinstance(number, bool) or not isinstance(number, int):
            raise FrameError(f"not a request: {header!r:.200}")
        op = header.get("op")
        try:
            handler = _HANDLERS.get(op)  # type: ignore[arg-type]
            if handler is None:
                raise InvalidArgumentError(f"unknown request {op!r}")
            handler(self, number, header, frame.payload)
        except Refused as exc:
            self.refuse(number, exc)
        except (InvalidArgumentError, KeyError, TypeError, ValueError) as exc:
            self.answer(number, Status.INVALID, m=f"invalid {op} request: {exc}")

    def _write(self, number: int, header: dict[str, Any], payload: bytes) -> None:
        session_id = _int(header, "sid")
        command = decode_command(payload)  # validated here: a bad one never reaches the log
        if not isinstance(command, Create | Set | Delete | Txn | CloseSession):
            raise InvalidArgumentError(f"{type(command).__name__} is not a client write")
        request = ClientRequest(session_id, _int(header, "seq"), _int(header, "una"), command)
        self.node.propose(request, self._replier(number, may_drop=True))

    def _replier(self, number: int, *, may_drop: bool = False) -> Any:
        def done(result: bytes | None, why: str) -> None:
            if result is None:
                self.answer(number, Status.UNAVAILABLE, m=why)
            elif may_drop and self._faults.drop_reply():
                log.info("client %s: fault: dropping the answer to %d", self.remote, number)
                self._close()  # applied, answer lost: the client retries the same (sid, seq)
            else:
                self.answer(number, Status.OK, result)

        return done

    def _open_session(self, number: int, header: dict[str, Any], payload: bytes) -> None:
        ttl = header["ttl"]
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
            raise InvalidArgumentError(f"ttl must be a positive number, not {ttl!r}")

        def done(result: bytes | None, why: str) -> None:
            if result is None:
                self.answer(number, Status.UNAVAILABLE, m=why)
                return
            from ...store import unwrap_result

            try:
                session_id = int(unwrap_result(result))
            except CoordkitError as exc:
                self.answer(number, Status.OK, encode_result(exc))
                return
            self.answer(number, Status.OK, sid=session_id)

        self.node.propose(OpenSession(float(ttl)), done)

    def _keepalive(self, number: int, header: dict[str, Any], payload: bytes) -> None:
        session_id = _int(header, "sid")

        def then(alive: bool, why: str) -> None:
            if alive:
                self.answer(number, Status.OK)
            elif why:
                self.answer(number, Status.UNAVAILABLE, m=why)
            else:
                self.answer(number, Status.EXPIRED, m=f"session {session_id:#x} has expired")

        self.node.keepalive(session_id, then)

    def _end_session(self, number: int, header: dict[str, Any], payload: bytes) -> None:
        session_id = _int(header, "sid")
        command = (
            CloseSession(session_id)
            if header.get("op") == Op.CLOSE_SESSION
            else ExpireSession(session_id)
        )
        self.node.propose(command, self._replier(number))

    def _read(self, number: int, header: dict[str, Any], payload: bytes) -> None:
        kind = header["k"]
        path = check_path(header["p"], STORED_PATH_BYTES)
        consistent = header.get("c", True)
        if kind not in ("get", "children", "exists"):
            raise InvalidArgumentError(f"unknown read {kind!r}")

        def serve(why: str = "") -> None:
            if why:
                self.answer(number, Status.UNAVAILABLE, m=why)
                return
            store = self.node.store
            try:
                if kind == "get":
                    value: Any = store.get(path)
                elif kind == "children":
                    value = store.children(path)
                else:
                    value = int(store.exists(path))
            except CoordkitError as exc:
                self.answer(number, Status.OK, encode_result(exc))
                return
            self.answer(number, Status.OK, encode_result(value))

        if consistent:
            self.node.read_barrier(serve)
        else:
            serve()

    def _watch(self, number: int, header: dict[str, Any], payload: bytes) -> None:
        watch_id = _int(header, "w")
        path = check_path(header["p"], STORED_PATH_BYTES)
        recursive = bool(header.get("rec", False))
        start = header.get("from")
        if start is not None and (isinstance(start, bool) or not isinstance(start, int)):
            raise InvalidArgumentError("from must be an int or null")
        old = self._watches.pop(watch_id, None)
        if old is not None:
            self.node.watches.remove(old)
        store = self.node.store

        def deliver(events: list[Event]) -> None:
            self._queue(encode_frame({"t": "e", "w": watch_id}, encode_events(events)))

        backlog: list[list[Event]] = []
        if start is not None:
            try:
                backlog = replay(store.events_since(start, path, recursive), path, recursive)
            except CoordkitError as exc:
                self.answer(number, Status.OK, encode_result(exc))
                return
        # No await between the replay and the registration: nothing falls in a gap.
        watcher = Watcher(path, recursive, deliver)
        self.node.watches.add(watcher)
        self._watches[watch_id] = watcher
        self.answer(number, Status.OK, w=watch_id, rev=store.revision)
        for group in backlog:
            deliver(group)

    def _unwatch(self, number: int, header: dict[str, Any], payload: bytes) -> None:
        watcher = self._watches.pop(_int(header, "w"), None)
        if watcher is not None:
            self.node.watches.remove(watcher)

    def _status(self, number: int, header: dict[str, Any], payload: bytes) -> None:
        self.answer(number, Status.OK, status=self.node.status())

    def _member_add(self, number: int, header: dict[str, Any], payload: bytes) -> None:
        try:
            name = check_name(str(header["name"]))
            address = parse_address(str(header["addr"]), what=f"address of {name}")
        except ConfigurationError as exc:
            raise InvalidArgumentError(str(exc)) from None
        members = self._leader_members()
        if name in members:
            raise InvalidArgumentError(f"{name} is already a member ({', '.join(members)})")
        index = self._change_members(lambda: self.node.add_member(name, address))
        self.answer(number, Status.OK, index=index)

    def _member_remove(self, number: int, header: dict[str, Any], payload: bytes) -> None:
        name = str(header["name"])
        members = self._leader_members()
        if name not in members:
            raise InvalidArgumentError(
                f"no member named {name!r}; members: {', '.join(members) or 'none'}"
            )
        index = self._change_members(lambda: self.node.remove_member(name))
        self.answer(number, Status.OK, index=index)

    def _leader_members(self) -> list[str]:
        """The configuration's members, as the leader knows them (NotLeader elsewhere)."""
        status = self.node.status()
        if status.get("role") != "leader":
            raise NotLeader(status.get("leader"), status.get("leader_addr"))
        return list(status.get("members", ()))

    @staticmethod
    def _change_members(change: Callable[[], int]) -> int:
        """Propose a checked membership change; a change the leader cannot take *now*
        (its first entry of the term or the previous change not committed yet, the
        log full) is refused as busy, which the client retries."""
        try:
            return change()
        except (ConfChangeError, ProposalDroppedError) as exc:
            raise Refused(Status.BUSY, f"membership change refused for now: {exc}") from None

    def _snapshot(self, number: int, header: dict[str, Any], payload: bytes) -> None:
        """Stream a consistent snapshot of the store (as of now) in chunk frames."""
        chunks = self.node.store.snapshot_chunks()
        assert self._tg is not None

        async def stream() -> None:
            for chunk in chunks:  # copy-on-write: applies go on between chunks
                self._queue(encode_frame({"t": "s", "i": number}, chunk))
                while self._out_bytes > STREAM_HIGH_WATER and not self._closed:
                    await self._drained.wait()  # let the writer send before making more
                await anyio.lowlevel.checkpoint()
            self.answer(number, Status.OK)

        self._tg.start_soon(stream)

    def _compact(self, number: int, header: dict[str, Any], payload: bytes) -> None:
        self.node.propose(Compact(_int(header, "rev")), self._replier(number))

    def _fault(self, number: int, header: dict[str, Any], payload: bytes) -> None:
        if not self.node.config.allow_faults:
            raise InvalidArgumentError("fault injection is off on this node")
        if "drop_replies" in header:
            probability = header["drop_replies"]
            if (
                isinstance(probability, bool)
                or not isinstance(probability, int | float)
                or not 0.0 <= probability <= 1.0
            ):
                raise InvalidArgumentError(
                    f"drop_replies must be a probability from 0 to 1, not {probability!r}"
                )
            seed = header.get("seed")
            if seed is not None:
                self._faults.rng.seed(_int(header, "seed"))
            self._faults.drop_replies = float(probability)
            self.answer(number, Status.OK, dropped=self._faults.dropped)
            return
        if header.get("isolate"):
            self.node.transport.isolate()
        else:
            self.node.transport.heal()
        self.answer(number, Status.OK)


def _int(header: dict[str, Any], key: str) -> int:
    value = header[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{key} must be an int, not {value!r}")
    return value


_HANDLERS = {
    Op.WRITE: ClientConnection._write,
    Op.READ: ClientConnection._read,
    Op.OPEN_SESSION: ClientConnection._open_session,
    Op.KEEPALIVE: ClientConnection._keepalive,
    Op.CLOSE_SESSION: ClientConnection._end_session,
    Op.EXPIRE_SESSION: ClientConnection._end_session,
    Op.WATCH: ClientConnection._watch,
    Op.UNWATCH: ClientConnection._unwatch,
    Op.STATUS: ClientConnection._status,
    Op.MEMBER_ADD: ClientConnection._member_add,
    Op.MEMBER_REMOVE: ClientConnection._member_remove,
    Op.FAULT: ClientConnection._fault,
    Op.SNAPSHOT: ClientConnection._snapshot,
    Op.COMPACT: ClientConnection._compact,
}
