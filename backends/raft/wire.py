"""The Raft node's wire format: frames over a byte stream, and the handshake.

Shared by the node (peers and clients arrive on one port) and the ``raft://``
client. A frame is::

    u32 header length | u32 payload length | header | payload        (big-endian)

where the header is an orjson object whose ``"t"`` names the frame's kind and
the payload is raw bytes (entry data, snapshot chunks): no base64, no JSON of
payload bytes. Both lengths are checked against the stream's maximum frame
size *before* anything of the body is read or allocated, so a peer cannot make
a node allocate more than ``max_frame`` bytes per connection.

The handshake: the connecting side's first frame is a :class:`Hello`; the
listener answers ``welcome`` (its node id and cluster id) or ``refused`` with
a reason and closes. Everything after that is up to the role (peer or client).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import ssl
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import orjson
from anyio.abc import ByteReceiveStream, ByteStream, SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.tls import TLSStream

from coordkit.errors import ConfigurationError, CoordkitError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HELLO_MAX_FRAME",
    "PROTOCOL_VERSION",
    "Address",
    "Frame",
    "FrameError",
    "FrameStream",
    "HandshakeError",
    "HandshakeRefused",
    "Hello",
    "Welcome",
    "connect",
    "describe_error",
    "describe_remote",
    "describe_tls_error",
    "encode_frame",
    "frame_size",
    "read_hello",
    "send_refused",
    "send_welcome",
]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1

#: Largest frame (header + payload) accepted by default: a Raft append carries
#: up to ``max_size_per_msg`` (1 MiB) plus one entry, which may itself be large.
DEFAULT_MAX_FRAME = 16 << 20

#: Largest first frame (the hello) a listener reads from a connection it knows
#: nothing about yet: an unauthenticated peer cannot make it allocate more.
HELLO_MAX_FRAME = 64 << 10

_PREFIX = struct.Struct(">II")

# How much a receive asks the socket for at once: frames that arrive together
# (a batch written in one send) are then parsed from one read.
_READ_AHEAD = 256 << 10


class FrameError(CoordkitError):
    """Malformed input on the wire: the connection it came from is closed."""


class HandshakeError(CoordkitError):
    """The handshake did not complete: TLS failed, no answer, or an answer that is not one."""


class HandshakeRefused(HandshakeError):
    """The listener answered ``refused``; :attr:`reason` says why."""

    def __init__(self, address: Address, reason: str) -> None:
        super().__init__(f"{address} refused the connection: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Address:
    """A host and a TCP port; ``str()`` gives ``host:port`` (``[v6]:port``)."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigurationError("address without a host")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ConfigurationError(f"port must be an int, not {self.port!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(f"port out of range: {self.port}")

    @staticmethod
    def parse(text: str) -> Address:
        """``host:port`` or ``[v6 host]:port`` -> Address; ConfigurationError otherwise."""
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigurationError(f"address must be host:port, not {text!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return Address(host, int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: a header object (its ``"t"`` is the kind) and raw payload bytes."""

    header: dict[str, Any]
    payload: bytes = b""

    @property
    def kind(self) -> object:
        return self.header.get("t")


def encode_frame(header: Mapping[str, Any], *payload: bytes) -> bytes:
    """The wire bytes of one frame; the payload parts are concatenated without a copy of each."""
    head = orjson.dumps(header)
    size = sum(len(p) for p in payload)
    return b"".join((_PREFIX.pack(len(head), size), head, *payload))


def frame_size(data: bytes) -> int:
    """Header + payload bytes of an encoded frame (what ``max_frame`` bounds)."""
    return len(data) - _PREFIX.size


class _ReadAhead(ByteReceiveStream):
    """Asks the wrapped stream for at least ``_READ_AHEAD`` bytes per receive.

    ``BufferedByteReceiveStream.receive_exactly`` asks for exactly what is
    missing, which would cost one system call for each 8-byte prefix; it keeps
    whatever surplus a receive returns, so reading ahead is safe.
    """

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream

    async def receive(self, max_bytes: int = _READ_AHEAD) -> bytes:
        return await self._stream.receive(max(max_bytes, _READ_AHEAD))

    async def aclose(self) -> None:
        await self._stream.aclose()


def describe_remote(stream: ByteStream) -> str:
    """``host:port`` of the other end of a socket stream (possibly under TLS), or ``?``."""
    try:
        raw = stream.extra(SocketAttribute.remote_address)
    except anyio.TypedAttributeLookupError:
        return "?"
    if isinstance(raw, tuple) and len(raw) >= 2:
        return str(Address(str(raw[0]) or "?", int(raw[1])))
    return str(raw)


class FrameStream:
    """Frames over one anyio byte stream (TCP, or TLS over TCP).

    Not safe for concurrent receives or concurrent sends: each direction has
    one owner (a reader task, a writer task). ``receive`` raises
    :class:`FrameError` on malformed input (oversized, truncated, a header that
    is not a JSON object) and ``anyio.EndOfStream`` when the other side closed
    cleanly between frames.
    """

    def __init__(self, stream: ByteStream, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 2:
            raise ConfigurationError(f"max_frame must be >= 2, not {max_frame}")
        self.stream = stream
        self.max_frame = max_frame
        #: ``host:port`` of the other end, for log lines.
        self.remote = describe_remote(stream)
        self._buffered = BufferedByteReceiveStream(_ReadAhead(stream))

    async def receive(self) -> Frame:
        """The next frame; the size check comes before the body is read."""
        try:
            prefix = await self._buffered.receive_exactly(_PREFIX.size)
        except anyio.IncompleteRead:
            if self._buffered.buffer:
                raise FrameError("truncated frame (the stream ended inside a prefix)") from None
            raise anyio.EndOfStream from None
        head_len, body_len = _PREFIX.unpack(prefix)
        if head_len + body_len > self.max_frame:
            raise FrameError(
                f"frame of {head_len + body_len} bytes exceeds the maximum of {self.max_frame}"
            )
        if head_len < 2:
            raise FrameError(f"frame header of {head_len} bytes cannot be a JSON object")
        try:
            body = await self._buffered.receive_exactly(head_len + body_len)
        except anyio.IncompleteRead:
            raise FrameError(
                f"truncated frame (the stream ended inside a frame of {head_len + body_len} bytes)"
            ) from None
        try:
            header = orjson.loads(body[:head_len])
        except orjson.JSONDecodeError as exc:
            raise FrameError(f"frame header is not JSON: {exc}") from None
        if not isinstance(header, dict):
            raise FrameError(f"frame header is a {type(header).__name__}, not an object")
        return Frame(header, body[head_len:])

    async def send(self, header: Mapping[str, Any], *payload: bytes) -> None:
        """Encode and send one frame (FrameError if it exceeds ``max_frame``)."""
        data = encode_frame(header, *payload)
        if frame_size(data) > self.max_frame:
            raise FrameError(
                f"frame of {frame_size(data)} bytes exceeds the maximum of {self.max_frame}"
            )
        await self.stream.send(data)

    async def send_encoded(self, data: bytes) -> None:
        """Send frames already encoded with :func:`encode_frame` (a batch, in one write)."""
        await self.stream.send(data)

    async def aclose(self) -> None:
        """Close at once, without waiting for the other side (TLS close_notify included)."""
        await anyio.aclose_forcefully(self.stream)


# -- the handshake -------------------------------------------------------------

Role = Literal["peer", "client"]


@dataclass(frozen=True, slots=True)
class Hello:
    """The connecting side's first frame.

    A peer names its node id and the cluster token; a client needs neither.
    ``cluster`` is the cluster id the connecting side expects: peers must
    match it; a client may send None to accept any (the welcome tells it).
    """

    role: Role
    cluster: str | None
    node: str | None = None
    token: str | None = None
    version: int = PROTOCOL_VERSION

    def header(self) -> dict[str, Any]:
        header: dict[str, Any] = {
            "t": "hello",
            "v": self.version,
            "role": self.role,
            "cluster": self.cluster,
        }
        if self.role == "peer":
            header["node"] = self.node
            header["token"] = self.token
        return header

    @staticmethod
    def from_frame(frame: Frame) -> Hello:
        """Parse a hello; FrameError names what is wrong with it."""
        h = frame.header
        if h.get("t") != "hello":
            raise FrameError(f"expected a hello, got a frame of type {h.get('t')!r}")
        version = h.get("v")
        if isinstance(version, bool) or not isinstance(version, int):
            raise FrameError(f"hello without an integer version: {version!r}")
        role = h.get("role")
        cluster = h.get("cluster")
        if cluster is not None and not isinstance(cluster, str):
            raise FrameError(f"hello with a cluster id that is not a string: {cluster!r}")
        if role == "client":
            return Hello("client", cluster, version=version)
        if role != "peer":
            raise FrameError(f"hello with an unknown role {role!r}")
        node, token = h.get("node"), h.get("token")
        if not isinstance(node, str) or not node:
            raise FrameError(f"peer hello without a node id: {node!r}")
        if not isinstance(token, str):
            raise FrameError("peer hello without a token")
        return Hello("peer", cluster, node, token, version)


@dataclass(frozen=True, slots=True)
class Welcome:
    """The listener's acceptance: who it is."""

    node: str
    cluster: str


async def read_hello(stream: FrameStream) -> Hello:
    """The first frame of an accepted connection, as a Hello (FrameError otherwise).

    Reads it with a frame limit of :data:`HELLO_MAX_FRAME`, then restores the
    stream's own limit. The caller bounds the wait (a hello must come in time).
    """
    limit, stream.max_frame = stream.max_frame, min(stream.max_frame, HELLO_MAX_FRAME)
    try:
        return Hello.from_frame(await stream.receive())
    finally:
        stream.max_frame = limit


async def send_welcome(stream: FrameStream, welcome: Welcome) -> None:
    await stream.send({"t": "welcome", "node": welcome.node, "cluster": welcome.cluster})


async def send_refused(stream: FrameStream, reason: str) -> None:
    await stream.send({"t": "refused", "reason": reason})


async def open_tcp(host: str, port: int) -> SocketStream:
    """A TCP connection to ``host:port`` (each address in turn), with TCP_NODELAY.

    Unlike ``anyio.connect_tcp``, a connect that is cancelled while pending
    (a peer whose listen backlog is full, e.g. a paused process) closes its
    socket at once instead of leaving it to the garbage collector.
    """
    infos = await _resolve(host, port)
    failure: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            try:
                sock.connect(sockaddr)
            except BlockingIOError:
                await anyio.wait_writable(sock)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, os.strerror(error)) from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return await SocketStream.from_socket(sock)
        except OSError as exc:
            sock.close()
            failure = exc
        except BaseException:
            sock.close()
            raise
    raise failure or OSError(f"no address for {host}")


async def _resolve(host: str, port: int) -> list[tuple[Any, Any, int, str, Any]]:
    """``host``'s addresses; an IP literal needs no lookup (nor a resolver thread,
    which is gone while the interpreter exits and an embedded node still dials)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return list(await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return [(family, socket.SOCK_STREAM, 0, "", (host, port))]


def describe_tls_error(exc: ssl.SSLError) -> str:
    """A one-line reason for a TLS failure (``certificate verify failed: ...``)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    reason = exc.reason or exc.strerror or str(exc)
    return str(reason).replace("_", " ").lower()


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a connection-level error, for log lines."""
    if isinstance(exc, ssl.SSLError):
        return describe_tls_error(exc)
    if isinstance(exc, anyio.BrokenResourceError) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def connect(
    address: Address,
    hello: Hello,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 5.0,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> tuple[FrameStream, Welcome]:
    """Open a connection to a node and complete the handshake within ``timeout`` seconds.

    Raises ``OSError`` when the node cannot be reached (``TimeoutError``, an
    ``OSError``, when it does not answer in time), :class:`HandshakeRefused`
    when it refuses (wrong cluster, token, unknown node...), and
    :class:`HandshakeError` when TLS fails or the answer is not a welcome.
    Either way nothing stays open.
    """
    with anyio.fail_after(timeout):
        try:
            raw: ByteStream = await open_tcp(address.host, address.port)
            if ssl_context is not None:
                try:
                    raw = await TLSStream.wrap(
                        raw,
                        server_side=False,
                        hostname=address.host,
                        ssl_context=ssl_context,
                        standard_compatible=False,
                    )
                except BaseException:
                    await anyio.aclose_forcefully(raw)
                    raise
        except ssl.SSLError as exc:
            raise HandshakeError(
                f"TLS handshake with {address} failed: {describe_tls_error(exc)}"
            ) from None
        stream = FrameStream(raw, max_frame=max_frame)
        try:
            await stream.send(hello.header())
            answer = await stream.receive()
        except ssl.SSLError as exc:
            # Under TLS 1.3 the server checks our certificate after our side of
            # the handshake is done: its verdict arrives as an alert here.
            await stream.aclose()
            raise HandshakeError(f"TLS with {address} failed: {describe_tls_error(exc)}") from None
        except (FrameError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            await stream.aclose()
            if ssl_context is not None and not isinstance(exc, FrameError):
                # TLS gives the client no reason when the server rejects its
                # certificate after the handshake (TLS 1.3): the node's log has it.
                raise HandshakeError(
                    f"{address} closed the connection during TLS: see its log for why "
                    "(for instance, it does not trust this side's certificate)"
                ) from None
            why = str(exc) or "the connection was closed"
            if ssl_context is None and not isinstance(exc, FrameError):
                # A node that speaks TLS closes a plain connection without a word.
                why += " (if the cluster uses TLS, give tls_ca=CA.pem)"
            raise HandshakeError(f"no valid answer to the hello from {address}: {why}") from None
        except BaseException:
            await stream.aclose()
            raise
    kind = answer.header.get("t")
    if kind == "welcome":
        node, cluster = answer.header.get("node"), answer.header.get("cluster")
        if isinstance(node, str) and isinstance(cluster, str):
            return stream, Welcome(node, cluster)
    await stream.aclose()
    if kind == "refused":
        raise HandshakeRefused(address, str(answer.header.get("reason", "no reason given")))
    raise HandshakeError(f"{address} answered the hello with {answer.header!r}")
