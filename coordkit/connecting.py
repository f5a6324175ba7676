"""What backends share to connect securely and to say why a connection failed.

* :func:`client_ssl_context` builds the client's TLS context from
  :class:`~coordkit.ConnectOptions` (``tls_ca``, ``tls_cert``, ``tls_key``),
  refusing unreadable or mismatched files with one
  :class:`~coordkit.ConfigurationError` naming the file.
* :func:`describe_connect_error` turns a failed connection attempt into a
  short cause: ``connection refused``, ``timed out``, ``name not resolved``,
  ``TLS failure: ...``.
* :func:`probe` tries one endpoint the way a client would (TCP, then the TLS
  handshake) and returns that cause, or None if the endpoint accepts us. A
  backend whose client library hides why it could not connect (grpc, kazoo)
  probes each endpoint once its connect timeout has run out, so that
  :class:`~coordkit.CannotConnectError` names every endpoint with its cause.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path

import anyio
from anyio.streams.tls import TLSStream

from .backend import ConnectOptions
from .errors import ConfigurationError

__all__ = ["client_ssl_context", "describe_connect_error", "diagnose", "probe", "read_file"]

_MIN_VERSION = ssl.TLSVersion.TLSv1_2
#: the longest :func:`diagnose` probes one endpoint (after the connect timeout ran out).
PROBE_TIMEOUT = 1.0
#: how long a probe waits after a TLS handshake for the server to refuse our certificate.
_ALERT_WAIT = 0.3


def read_file(path: str, what: str) -> bytes:
    """The bytes of ``path`` (``what`` names the option) or a ConfigurationError naming it."""
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None


def client_ssl_context(options: ConnectOptions) -> ssl.SSLContext | None:
    """The TLS context for ``options`` (None without TLS options).

    It verifies the server against ``tls_ca`` (the system's CAs without one)
    and the server's name (the host of the URL), and presents
    ``tls_cert``/``tls_key`` when given.
    """
    if not options.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = _MIN_VERSION
    if options.tls_ca is not None:
        read_file(options.tls_ca, "tls_ca")  # a clear error for a missing file
        try:
            context.load_verify_locations(cafile=str(Path(options.tls_ca).expanduser()))
        except ssl.SSLError as exc:
            raise ConfigurationError(
                f"tls_ca {options.tls_ca!r} holds no usable CA certificate: {exc.reason or exc}"
            ) from None
    if options.tls_cert is not None and options.tls_key is not None:
        read_file(options.tls_cert, "tls_cert")
        read_file(options.tls_key, "tls_key")
        try:
            context.load_cert_chain(
                str(Path(options.tls_cert).expanduser()), str(Path(options.tls_key).expanduser())
            )
        except ssl.SSLError as exc:
            raise ConfigurationError(
                f"tls_cert {options.tls_cert!r} and tls_key {options.tls_key!r} cannot be used "
                f"together: {exc.reason or exc}"
            ) from None
    return context


def describe_tls_error(exc: ssl.SSLError) -> str:
    """``TLS failure: certificate verify failed: ...`` and the like."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"TLS failure: certificate verify failed: {exc.verify_message}"
    reason = exc.reason or exc.strerror or str(exc)
    return f"TLS failure: {str(reason).replace('_', ' ').lower()}"


def describe_connect_error(exc: BaseException) -> str:
    """A short cause: connection refused, timed out, name not resolved, TLS failure, ..."""
    if isinstance(exc, ssl.SSLError):
        return describe_tls_error(exc)
    if isinstance(exc, anyio.BrokenResourceError) and isinstance(exc.__cause__, ssl.SSLError):
        return describe_tls_error(exc.__cause__)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return "name not resolved"
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    # anyio.connect_tcp: "All connection attempts failed", from the address's
    # error (or a group of them, one per address tried).
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        return describe_connect_error(cause.exceptions[0])
    if isinstance(cause, OSError):
        return describe_connect_error(cause)
    if isinstance(exc, OSError) and exc.__class__ is OSError and exc.args:
        text = str(exc)
        if "refused" in text.lower():
            return "connection refused"
        return text
    if isinstance(exc, anyio.EndOfStream | anyio.BrokenResourceError):
        return "the server closed the connection"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def probe(
    host: str, port: int, *, ssl_context: ssl.SSLContext | None, timeout: float
) -> str | None:
    """Try ``host:port`` as a client would; the cause of the failure, or None if it accepts.

    With ``ssl_context`` the TLS handshake is made too, and then the probe
    waits briefly for an alert: under TLS 1.3 a server that refuses the
    client's certificate says so only after the client's side of the
    handshake is done. Nothing stays open.
    """
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_tcp(host, port)
            if ssl_context is None:
                await stream.aclose()
                return None
            try:
                tls = await TLSStream.wrap(
                    stream, hostname=host, ssl_context=ssl_context, standard_compatible=False
                )
            except BaseException:
                await anyio.aclose_forcefully(stream)
                raise
            try:
                with anyio.move_on_after(min(_ALERT_WAIT, timeout)):
                    await tls.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                cause = exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else None
                if cause is not None:
                    return describe_tls_error(cause)
            finally:
                await anyio.aclose_forcefully(tls)
            return None
    except ssl.SSLError as exc:
        return describe_tls_error(exc)
    except (OSError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
        return describe_connect_error(exc)


async def diagnose(
    endpoints: Sequence[tuple[str, int]],
    ssl_context: ssl.SSLContext | None,
    within: float,
    *,
    what: str,
) -> dict[str, str]:
    """Why each endpoint could not be used, all probed at once: ``host:port`` -> cause.

    An endpoint that accepts the probe is reported as reached but silent
    (``what`` names the server: "etcd", "ZooKeeper"), since the client
    library could not use it within ``within`` seconds.
    """
    names = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in endpoints]
    causes = dict.fromkeys(names, "")

    async def one(name: str, host: str, port: int) -> None:
        cause = await probe(host, port, ssl_context=ssl_context, timeout=min(PROBE_TIMEOUT, within))
        causes[name] = cause or f"reached, but {what} did not answer within {within:g} s"

    async with anyio.create_task_group() as tg:
        for name, (host, port) in zip(names, endpoints, strict=True):
            tg.start_soon(one, name, host, port)
    return causes
