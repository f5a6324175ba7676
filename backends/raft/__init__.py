"""The built-in Raft backend, in layers that import downwards only.

* :mod:`.core`: the consensus state machine, sans-I/O (no clock, sockets,
  threads, randomness or files: all injected), proven in simulation;
* :mod:`.node`: what makes it a server process: durable storage (write-ahead
  log, snapshots), the peer transport and the server runtime;
* :mod:`.client`: the ``raft://`` Backend that talks to a cluster of nodes;
* :mod:`.embedded`: ``raft+embedded://``, nodes inside the calling process.

This module is the plugin: it registers the two URL schemes and imports the
client lazily, so importing it costs nothing.
"""

from __future__ import annotations

from coordkit import hookimpl
from coordkit.backend import Backend, BackendFactory, BackendURL, ConnectOptions
from coordkit.commands import CliCommand

__all__ = ["connect_embedded", "connect_raft"]

DEFAULT_PORT = 7001


def connect_raft(url: BackendURL, options: ConnectOptions) -> Backend:
    """The factory for ``raft://host:port,host:port,...``."""
    from .urls import raft_backend

    return raft_backend(url, options)


def connect_embedded(url: BackendURL, options: ConnectOptions) -> Backend:
    """The factory for ``raft+embedded://?nodes=3&data_dir=...``."""
    from .urls import embedded_backend

    return embedded_backend(url, options)


@hookimpl
def coordkit_backends() -> dict[str, BackendFactory]:
    return {"raft": connect_raft, "raft+embedded": connect_embedded}


@hookimpl
def coordkit_commands() -> list[CliCommand]:
    from .commands import COMMANDS

    return COMMANDS
