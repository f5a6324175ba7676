"""What a Raft node is told at start: who it is, where it listens, who its peers are.

Parsed from ``coordkit serve`` options (or built by the embedded cluster and
``coordkit cluster up``). Every check happens here, before anything starts,
so a mistake is one clear :class:`~coordkit.ConfigurationError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from coordkit.errors import ConfigurationError

from ..wire import Address

__all__ = ["Address", "NodeConfig", "parse_address", "parse_peers"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def parse_address(text: str, *, what: str = "address") -> Address:
    """``host:port`` (IPv6 hosts in brackets) -> Address; ConfigurationError naming ``what``."""
    try:
        address = Address.parse(text.strip())
    except ConfigurationError as exc:
        raise ConfigurationError(f"bad {what} {text!r}: {exc}") from None
    if address.port == 0 and what != "--listen":
        raise ConfigurationError(f"bad {what} {text!r}: port 0")
    return address


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"bad node name {name!r}: 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def parse_peers(text: str) -> dict[str, Address]:
    """``n1=127.0.0.1:7001,n2=...`` -> ``{name: Address}``."""
    peers: dict[str, Address] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, address = item.partition("=")
        if not sep:
            raise ConfigurationError(f"bad peer {item!r}: expected NAME=HOST:PORT")
        name = check_name(name.strip())
        if name in peers:
            raise ConfigurationError(f"peer {name!r} is listed twice")
        peers[name] = parse_address(address, what=f"address of peer {name}")
    return peers


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node needs to start. Times are in seconds."""

    name: str
    data_dir: Path
    listen: Address
    #: every member of the initial configuration, this node included, with its
    #: client/peer address; a joining node lists the members it can reach.
    peers: Mapping[str, Address]
    #: join an existing cluster (start with no configuration, learn it from the
    #: leader) instead of bootstrapping one from ``peers``.
    join: bool = False
    cluster_id: str = "coordkit"
    #: shared secret every peer presents in its handshake.
    cluster_token: str = ""
    #: the address other nodes and clients use (defaults to ``listen``).
    advertise: Address | None = None
    tick: float = 0.02
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    #: take a snapshot once this many entries were applied since the last one.
    snapshot_entries: int = 20_000
    #: entries kept behind a snapshot, so slightly slow followers need no snapshot.
    snapshot_retain: int = 5_000
    #: proposals waiting for their entry to apply; past this, clients get "busy".
    max_pending: int = 20_000
    #: watch history kept by the store (events); older start revisions: CompactedError.
    max_history: int = 10_000
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    #: accept the ``fault`` request (transport isolation) from clients: for tests only.
    allow_faults: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.name)
        if not self.join and self.name not in self.peers:
            raise ConfigurationError(
                f"node {self.name!r} is not among its peers ({', '.join(self.peers)}): "
                f"add {self.name}={self.listen} to --peers"
            )
        if self.tick <= 0 or self.election_ticks <= self.heartbeat_ticks:
            raise ConfigurationError("need tick > 0 and election_ticks > heartbeat_ticks")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigurationError("--tls-cert and --tls-key go together")

    @property
    def advertised(self) -> Address:
        return self.advertise or self.listen

    @property
    def election_timeout(self) -> float:
        return self.tick * self.election_ticks

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None
