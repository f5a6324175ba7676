"""``raft://`` and ``raft+embedded://`` URLs: their options, checked, into a backend.

``raft://h:p,h:p,...?session_ttl=10&timeout=10&connect_timeout=5&tls_ca=...``
``raft+embedded://[NAME]?nodes=3&data_dir=DIR``

An option that is not known is refused with the list of valid ones, so a
typo never goes silently unused.
"""

from __future__ import annotations

from pathlib import Path

from coordkit.backend import Backend, BackendURL, ConnectOptions, check_options
from coordkit.errors import ConfigurationError
from coordkit.retry import RetryPolicy

from .client import RaftBackend
from .wire import Address

__all__ = ["embedded_backend", "raft_backend"]

DEFAULT_PORT = 7001

#: what a raft:// URL may carry besides coordkit.connect()'s own options.
_CLIENT_OPTIONS = ("tls_ca", "tls_cert", "tls_key")
_EMBEDDED_OPTIONS = ("nodes", "data_dir")


def raft_backend(url: BackendURL, options: ConnectOptions) -> Backend:
    check_options(url, _CLIENT_OPTIONS)
    endpoints = [Address(host, port) for host, port in url.host_ports(DEFAULT_PORT)]
    if not endpoints:
        raise ConfigurationError(f"no host:port in {url.display!r}: raft://host:port,host:port,...")
    ssl_context = None
    tls_ca, tls_cert, tls_key = (_file(options, name) for name in ("tls_ca", "tls_cert", "tls_key"))
    if tls_ca is not None or tls_cert is not None or tls_key is not None:
        from .node.tls import client_context

        ssl_context = client_context(tls_ca, cert=tls_cert, key=tls_key)
    return RaftBackend(
        endpoints,
        options,
        ssl_context=ssl_context,
        connect_timeout=options.connect_timeout,
        retry=RetryPolicy.from_query(url.query),
        root=url.path,
    )


def _file(options: ConnectOptions, name: str) -> Path | None:
    """A TLS file of ``options`` (coordkit.connect() fills them from the URL too)."""
    given: str | None = getattr(options, name)
    return None if given is None else Path(given).expanduser()


def embedded_backend(url: BackendURL, options: ConnectOptions) -> Backend:
    check_options(url, _EMBEDDED_OPTIONS)
    if len(url.hosts) > 1:
        raise ConfigurationError(
            "embedded raft URLs look like raft+embedded://[NAME][/chroot]?nodes=3&data_dir=DIR: "
            f"{url.display}"
        )
    raw_nodes = url.query.get("nodes", "3")
    if not raw_nodes.isdigit() or not 1 <= int(raw_nodes) <= 9:
        raise ConfigurationError(f"nodes must be a whole number from 1 to 9, not {raw_nodes!r}")
    from .embedded import EmbeddedRaftBackend

    return EmbeddedRaftBackend(
        name=url.hosts[0] if url.hosts else "",
        nodes=int(raw_nodes),
        data_dir=None if "data_dir" not in url.query else Path(url.query["data_dir"]).expanduser(),
        options=options,
        retry=RetryPolicy.from_query(url.query),
        root=url.path,
    )
