"""What the transaction, watch and native-recipe code needs of the etcd backend.

A Protocol, so ``txn``, ``watch`` and ``native`` depend on this narrow view
instead of importing the backend that imports them (no import cycle).
"""

from __future__ import annotations

from typing import Any, Protocol

from coordkit.backend import ConnectOptions

from .keys import KeyLayout
from .rpc import EtcdChannel

__all__ = ["EtcdAccess"]


class EtcdAccess(Protocol):
    """The backend's connection, key layout and request helpers."""

    options: ConnectOptions
    layout: KeyLayout

    @property
    def channel(self) -> EtcdChannel: ...

    async def kv_txn(self, request: Any, *, idempotent: bool = False) -> Any:
        """One Txn request (retried only if ``idempotent``)."""
        ...

    async def read(self, *requests: Any) -> Any:
        """Several range ops read atomically at one revision."""
        ...

    def lease_for(self, ephemeral: bool) -> int:
        """The lease an ephemeral (or, 0, a persistent) key is written with."""
        ...
