"""The ``zookeeper://host:port,host:port/chroot`` backend (extra: ``coordkit[zookeeper]``).

The backend itself lives in :mod:`coordkit.backends.zookeeper.backend` and is
imported only when a ``zookeeper://`` URL is opened, so importing this module
needs no kazoo. Its native ``Lock`` (:mod:`coordkit.backends.zookeeper.native`)
is supplied through ``coordkit_native_recipe``. See ``docs/backends/zookeeper.md``.
"""

from __future__ import annotations

import sys
from typing import Any

from coordkit import hookimpl
from coordkit.backend import Backend, BackendFactory, BackendURL, ConnectOptions
from coordkit.errors import ConfigurationError

__all__ = ["coordkit_backends", "coordkit_native_recipe", "create_backend"]

_BACKEND_MODULE = "coordkit.backends.zookeeper.backend"


def create_backend(url: BackendURL, options: ConnectOptions) -> Backend:
    """The factory for ``zookeeper://`` URLs."""
    try:
        import kazoo  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "the zookeeper backend needs kazoo: pip install 'coordkit[zookeeper]'"
        ) from exc
    from .backend import ZooKeeperBackend

    return ZooKeeperBackend(url, options)


@hookimpl
def coordkit_backends() -> dict[str, BackendFactory]:
    return {"zookeeper": create_backend}


@hookimpl
def coordkit_native_recipe(backend: Backend, name: str) -> type[Any] | None:
    """Lock and Election waiting as kazoo does (same layout, fewer requests) on ZooKeeper."""
    module = sys.modules.get(_BACKEND_MODULE)
    if module is None or not isinstance(backend, module.ZooKeeperBackend):
        return None
    from . import native

    return native.NATIVE_RECIPES.get(name)
