"""The ``zookeeper://host:port,host:port/chroot`` backend (extra: ``coordkit[zookeeper]``).

The backend itself lives in :mod:`coordkit.backends.zookeeper.backend` and is
imported only when a ``zookeeper://`` URL is opened, so importing this module
needs no kazoo. Its native ``Lock`` (:mod:`coordkit.backends.zookeeper.native`)
is supplied through ``coordkit_native_recipe``. See ``docs/backends/zookeeper.md``.
"""

from __future__ import annotations

from typing import Any

from coordkit import hookimpl
from coordkit.backend import Backend, BackendFactory
from coordkit.plugins import lazy_backend, native_recipe_of

__all__ = ["coordkit_backends", "coordkit_native_recipe", "create_backend"]


#: The factory registered for ``zookeeper://`` (imports the client library when used).
create_backend = lazy_backend(f"{__name__}.backend:ZooKeeperBackend", extra="zookeeper")


@hookimpl
def coordkit_backends() -> dict[str, BackendFactory]:
    return {"zookeeper": create_backend}


@hookimpl
def coordkit_native_recipe(backend: Backend, name: str) -> type[Any] | None:
    """Lock and Election waiting as kazoo does (same layout, fewer requests) on ZooKeeper."""
    return native_recipe_of(
        backend,
        name,
        backend_class=f"{__name__}.backend:ZooKeeperBackend",
        natives=f"{__name__}.native",
    )
