"""Test certificates, made at test time with ``trustme`` (a dev dependency).

trustme rather than the ``openssl`` command line: it is a pip package that
``pip install -e '.[dev]'`` brings on any machine (no system binary to find),
it makes ECDSA keys in milliseconds, and one call issues a certificate with
the right subject names (127.0.0.1, localhost) and key usages for both server
and client authentication, which the openssl CLI needs a config file for.

Each :class:`TestPKI` is its own certificate authority: certificates from two
of them do not trust each other, which is how a test makes an untrusted one.
"""

from __future__ import annotations

from pathlib import Path

import trustme

from coordkit.backends.raft.node.tls import TLSFiles

__all__ = ["TestPKI", "secure_query"]

HOSTS = ("127.0.0.1", "localhost")


class TestPKI:
    """A CA whose files live in ``directory``; :meth:`issue` makes a node's files."""

    __test__ = False  # not a test class, despite its name

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))

    def issue(self, name: str) -> TLSFiles:
        """A certificate and key for ``name`` (valid for 127.0.0.1 and localhost)."""
        leaf = self._ca.issue_cert(*HOSTS, common_name=name)
        cert, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        for blob in leaf.cert_chain_pems:
            blob.write_to_path(str(cert), append=True)
        leaf.private_key_pem.write_to_path(str(key))
        return TLSFiles(cert, key, self.ca_file)


def secure_query(
    pki: TestPKI, client: TLSFiles, user: str, password: str, extra: dict[str, str]
) -> str:
    """The URL query of a client with a certificate of ``pki`` and a user (``extra``
    options replace those or, with a value of "", drop them)."""
    options = {
        "tls_ca": str(pki.ca_file),
        "tls_cert": str(client.cert),
        "tls_key": str(client.key),
        "user": user,
        "password": password,
        **extra,
    }
    return "&".join(f"{k}={v}" for k, v in options.items() if v)
