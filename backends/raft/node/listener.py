"""The node's one port: peers and clients connect here, and say who they are first.

:func:`serve` accepts connections on exactly the address it is given, wraps
them in TLS when the node has a certificate, reads the hello within a
deadline, checks it, answers ``welcome`` or ``refused``, and hands the
connection to ``on_peer`` or ``on_client``. Whatever a connection sends, the
node goes on: a connection that fails any of this is closed with one log line
naming its remote address and the reason.
"""

from __future__ import annotations

import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from anyio.streams.tls import TLSAttribute, TLSStream

from coordkit.errors import ConfigurationError

from ..wire import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    Address,
    FrameError,
    FrameStream,
    Hello,
    Welcome,
    describe_error,
    describe_remote,
    describe_tls_error,
    read_hello,
    send_refused,
    send_welcome,
)

__all__ = ["ClusterIdentity", "serve"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClusterIdentity:
    """Who this node is, and the secret (``token``) its peers prove membership with."""

    cluster: str
    node: str
    token: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.cluster or not self.node:
            raise ConfigurationError("a node needs a cluster id and a node id")


async def serve(
    listen: Address,
    identity: ClusterIdentity,
    *,
    check_peer: Callable[[str], str | None],
    on_peer: Callable[[str, FrameStream], Awaitable[None]],
    on_client: Callable[[FrameStream, Hello], Awaitable[None]],
    ssl_context: ssl.SSLContext | None = None,
    hello_timeout: float = 5.0,
    max_frame: int = DEFAULT_MAX_FRAME,
    task_status: TaskStatus[Address] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve peers and clients on ``listen`` (exactly that address) until cancelled.

    Each connection must complete its TLS handshake (when ``ssl_context`` is
    given) and send its hello within ``hello_timeout`` seconds. A peer must
    name this cluster and its token, present a verified certificate when
    ``ssl_context`` asks for one, and pass ``check_peer(node)`` (which returns
    None, or the reason to refuse); a client must name this cluster, or none.
    An accepted connection is welcomed and handed to ``on_peer(node, stream)``
    or ``on_client(stream, hello)``, which own it until they return; it is
    closed afterwards, and an exception they raise is logged, never
    propagated. ``task_status.started`` receives the bound address (useful
    with port 0).
    """
    listener = await anyio.create_tcp_listener(local_host=listen.host, local_port=listen.port)
    local = listener.extra(SocketAttribute.local_address)
    bound = Address(str(local[0]), int(local[1])) if isinstance(local, tuple) else listen
    log.info("node %s listening on %s%s", identity.node, bound, " (TLS)" if ssl_context else "")

    async def handle(raw: SocketStream) -> None:
        remote = describe_remote(raw)
        greeted = await _greet(raw, remote, identity, check_peer, ssl_context, hello_timeout)
        if greeted is None:
            return
        stream, hello = greeted
        stream.max_frame = max_frame
        try:
            if hello.role == "peer":
                assert hello.node is not None
                await on_peer(hello.node, stream)
            else:
                await on_client(stream, hello)
        except Exception:
            log.exception("connection from %s: its handler failed", remote)
        finally:
            await stream.aclose()

    task_status.started(bound)
    async with listener:
        await listener.serve(handle)


async def _greet(
    raw: SocketStream,
    remote: str,
    identity: ClusterIdentity,
    check_peer: Callable[[str], str | None],
    ssl_context: ssl.SSLContext | None,
    hello_timeout: float,
) -> tuple[FrameStream, Hello] | None:
    """TLS, the hello and the answer; None (after one log line) if the connection is refused."""
    stream: FrameStream | None = None
    level = logging.WARNING
    try:
        with anyio.fail_after(hello_timeout):
            if ssl_context is None:
                stream = FrameStream(raw)
            else:
                tls = await TLSStream.wrap(
                    raw, server_side=True, ssl_context=ssl_context, standard_compatible=False
                )
                stream = FrameStream(tls)
            hello = await read_hello(stream)
            refusal = _refusal(hello, identity, check_peer, stream, ssl_context)
            if refusal is None:
                await send_welcome(stream, Welcome(identity.node, identity.cluster))
                return stream, hello
            await send_refused(stream, refusal)
            who = f"peer {hello.node}" if hello.role == "peer" else "client"
            problem = f"refused {who}: {refusal}"
    except TimeoutError:
        problem = f"no hello within {hello_timeout:g} s"
    except FrameError as exc:
        problem = str(exc)
    except ssl.SSLError as exc:
        problem = f"TLS handshake failed: {describe_tls_error(exc)}"
    except anyio.EndOfStream:
        problem, level = "closed before its hello", logging.INFO
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
        problem, level = f"connection error before the hello: {describe_error(exc)}", logging.INFO
    except BaseException:
        await anyio.aclose_forcefully(raw)
        raise
    log.log(level, "closed connection from %s: %s", remote, problem)
    await anyio.aclose_forcefully(stream.stream if stream is not None else raw)
    return None


def _refusal(
    hello: Hello,
    identity: ClusterIdentity,
    check_peer: Callable[[str], str | None],
    stream: FrameStream,
    ssl_context: ssl.SSLContext | None,
) -> str | None:
    if hello.version != PROTOCOL_VERSION:
        return f"protocol version {hello.version} is not supported (this node: {PROTOCOL_VERSION})"
    if hello.role == "client":
        if hello.cluster is not None and hello.cluster != identity.cluster:
            return f"wrong cluster id {hello.cluster!r}"
        return None
    if hello.cluster != identity.cluster:
        return f"wrong cluster id {hello.cluster!r}"
    assert hello.token is not None and hello.node is not None
    if not hmac.compare_digest(hello.token.encode(), identity.token.encode()):
        return "wrong cluster token"
    if (
        ssl_context is not None
        and ssl_context.verify_mode != ssl.CERT_NONE
        and not stream.stream.extra(TLSAttribute.peer_certificate, None)
    ):
        return "a peer must present a TLS certificate"
    return check_peer(hello.node)
