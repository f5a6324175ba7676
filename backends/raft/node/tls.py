"""TLS for a node's one port: ``ssl.SSLContext`` objects built from PEM files.

A node with a certificate and key serves TLS to peers and clients alike. With
a CA as well it verifies the other side: a dialling peer must present a
certificate signed by that CA (mutual TLS between peers, checked by
:func:`~coordkit.backends.raft.node.transport.serve` at the hello), and so must
every client when ``require_client_cert`` is set; a client that presents a
certificate the CA did not sign is refused by the TLS handshake itself.

Errors in the files (missing, unreadable, a key that does not match the
certificate, a CA file with no certificate) raise one
:class:`~coordkit.errors.ConfigurationError` naming the file and the reason,
at start-up rather than at the first connection.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from coordkit.errors import ConfigurationError

from ..wire import describe_tls_error

__all__ = ["TLSFiles", "client_context", "server_context"]

_MIN_VERSION = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """The PEM files of a node (``--tls-cert``, ``--tls-key``, ``--tls-ca``)."""

    cert: Path
    key: Path
    ca: Path | None = None

    def server(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        return server_context(self.cert, self.key, self.ca, require_client_cert=require_client_cert)

    def client(self) -> ssl.SSLContext:
        """The context this node dials its peers with (its own certificate included)."""
        return client_context(self.ca, cert=self.cert, key=self.key)


def server_context(
    cert: Path | str,
    key: Path | str,
    ca: Path | str | None = None,
    *,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """The context a node serves its port with.

    Without ``ca`` the other side is not asked for a certificate. With ``ca``
    it is asked, and a certificate it presents must verify against ``ca``
    (``CERT_OPTIONAL``: a client without one may still connect, unless
    ``require_client_cert``; a peer without one is refused at its hello).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _MIN_VERSION
    _load_chain(context, cert, key)
    if ca is not None:
        _load_ca(context, ca)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise ConfigurationError("TLS: require_client_cert needs a CA file to verify them with")
    return context


def client_context(
    ca: Path | str | None,
    *,
    cert: Path | str | None = None,
    key: Path | str | None = None,
) -> ssl.SSLContext:
    """The context to dial a node with: verifies its certificate and host name.

    ``ca`` is the CA that signed the nodes' certificates (None: the system's
    trusted CAs). ``cert``/``key``: this side's own certificate, which peers
    must present (mutual TLS) and clients may.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = _MIN_VERSION
    if ca is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_ca(context, ca)
    if (cert is None) != (key is None):
        raise ConfigurationError("TLS: a certificate needs its key, and a key its certificate")
    if cert is not None and key is not None:
        _load_chain(context, cert, key)
    return context


def _load_chain(context: ssl.SSLContext, cert: Path | str, key: Path | str) -> None:
    for what, path in (("certificate", cert), ("key", key)):
        if not Path(path).is_file():
            raise ConfigurationError(f"TLS {what} file {path} does not exist")
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise ConfigurationError(
            f"TLS: cannot use certificate {cert} with key {key}: {describe_tls_error(exc)}"
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"TLS: cannot read {cert} or {key}: {exc.strerror}") from None


def _load_ca(context: ssl.SSLContext, ca: Path | str) -> None:
    if not Path(ca).is_file():
        raise ConfigurationError(f"TLS CA file {ca} does not exist")
    try:
        context.load_verify_locations(cafile=str(ca))
    except ssl.SSLError as exc:
        reason = describe_tls_error(exc)
        raise ConfigurationError(f"TLS: cannot use CA file {ca}: {reason}") from None
    except OSError as exc:
        raise ConfigurationError(f"TLS: cannot read CA file {ca}: {exc.strerror}") from None
    if not context.get_ca_certs():
        raise ConfigurationError(f"TLS: CA file {ca} holds no certificate")
