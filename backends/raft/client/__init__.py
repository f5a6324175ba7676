"""The ``raft://`` client: a Backend that talks to a coordkit Raft cluster."""

from __future__ import annotations

from .backend import RaftBackend

__all__ = ["RaftBackend"]
