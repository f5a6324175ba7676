"""The ``raft://`` client: a Backend that talks to a coordkit Raft cluster."""

from __future__ import annotations

from .backend import RaftBackend
from .dialer import Endpoint

__all__ = ["Endpoint", "RaftBackend"]
