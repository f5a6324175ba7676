"""``raft://`` and ``raft+embedded://`` URLs: their options, checked, into a backend.

``raft://h:p,h:p,...?session_ttl=10&timeout=10&connect_timeout=5&tls_ca=...``
``raft+embedded://[NAME]?nodes=3&data_dir=DIR``

An option that is not known is refused with the list of valid ones, so a
typo never goes silently unused.
"""

from __future__ import annotations

from pathlib import Path

from coordkit.backend import Backend, BackendURL, ConnectOptions
from coordkit.errors import ConfigurationError
from coordkit.retry import RETRY_OPTIONS, RetryPolicy

from .client import RaftBackend
from .wire import Address

__all__ = ["embedded_backend", "raft_backend"]

DEFAULT_PORT = 7001
DEFAULT_CONNECT_TIMEOUT = 5.0

#: options read by coordkit.connect() itself, valid on every URL.
_CONNECT_OPTIONS = ("session_ttl", "timeout")
_CLIENT_OPTIONS = (
    *_CONNECT_OPTIONS,
    *RETRY_OPTIONS,
    "connect_timeout",
    "tls_ca",
    "tls_cert",
    "tls_key",
)
_EMBEDDED_OPTIONS = (*_CONNECT_OPTIONS, *RETRY_OPTIONS, "nodes", "data_dir")


def _check_options(url: BackendURL, valid: tuple[str, ...]) -> None:
    unknown = sorted(set(url.query) - set(valid))
    if unknown:
        raise ConfigurationError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"in {url.raw!r}; valid options: {', '.join(sorted(valid))}"
        )


def _positive(url: BackendURL, name: str, default: float) -> float:
    raw = url.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, not {raw!r}") from None
    if not value > 0:
        raise ConfigurationError(f"{name} must be > 0, not {raw!r}")
    return value


def raft_backend(url: BackendURL, options: ConnectOptions) -> Backend:
    _check_options(url, _CLIENT_OPTIONS)
    endpoints = [Address(host, port) for host, port in url.host_ports(DEFAULT_PORT)]
    if not endpoints:
        raise ConfigurationError(f"no host:port in {url.raw!r}: raft://host:port,host:port,...")
    ssl_context = None
    if any(k in url.query for k in ("tls_ca", "tls_cert", "tls_key")):
        from .node.tls import client_context

        ssl_context = client_context(
            _path(url, "tls_ca"), cert=_path(url, "tls_cert"), key=_path(url, "tls_key")
        )
    return RaftBackend(
        endpoints,
        options,
        ssl_context=ssl_context,
        connect_timeout=_positive(url, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        retry=RetryPolicy.from_query(url.query),
        root=url.path,
    )


def _path(url: BackendURL, name: str) -> Path | None:
    raw = url.query.get(name)
    return None if raw is None else Path(raw).expanduser()


def embedded_backend(url: BackendURL, options: ConnectOptions) -> Backend:
    _check_options(url, _EMBEDDED_OPTIONS)
    if len(url.hosts) > 1:
        raise ConfigurationError(
            "embedded raft URLs look like raft+embedded://[NAME][/chroot]?nodes=3&data_dir=DIR: "
            f"{url.raw}"
        )
    raw_nodes = url.query.get("nodes", "3")
    if not raw_nodes.isdigit() or not 1 <= int(raw_nodes) <= 9:
        raise ConfigurationError(f"nodes must be a whole number from 1 to 9, not {raw_nodes!r}")
    from .embedded import EmbeddedRaftBackend

    return EmbeddedRaftBackend(
        name=url.hosts[0] if url.hosts else "",
        nodes=int(raw_nodes),
        data_dir=_path(url, "data_dir"),
        options=options,
        retry=RetryPolicy.from_query(url.query),
        root=url.path,
    )
