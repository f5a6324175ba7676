"""The ``etcd://`` backend's plugin: its scheme and its native Lock and Election.

``etcd://host:port[,host:port...][/prefix][?session_ttl=S&timeout=T]``. This
module imports no client library, so ``import coordkit.backends.etcd`` works
without the ``coordkit[etcd]`` extra; the factory imports it and says what to
install when it is missing. The implementation lives beside it: ``backend``,
``rpc`` (channel, errors), ``keys`` (key layout), ``ops``, ``txn``, ``watch``
and ``native`` (etcd-compatible Lock and Election).
"""

from __future__ import annotations

import sys
from typing import Any

from coordkit import hookimpl
from coordkit.backend import Backend, BackendFactory, BackendURL, ConnectOptions
from coordkit.errors import ConfigurationError

__all__ = ["connect_etcd"]

_BACKEND_MODULE = "coordkit.backends.etcd.backend"


def connect_etcd(url: BackendURL, options: ConnectOptions) -> Backend:
    """The factory registered for ``etcd://``."""
    try:
        from .backend import EtcdBackend
    except ImportError as exc:
        raise ConfigurationError(
            f"the etcd backend needs its client library ({exc.name or exc}): "
            "pip install 'coordkit[etcd]'"
        ) from exc
    return EtcdBackend(url, options)


@hookimpl
def coordkit_backends() -> dict[str, BackendFactory]:
    return {"etcd": connect_etcd}


@hookimpl
def coordkit_native_recipe(backend: Backend, name: str) -> type[Any] | None:
    """etcd-compatible ``Lock`` and ``Election`` for etcd backends (etcdctl interoperates)."""
    module = sys.modules.get(_BACKEND_MODULE)
    if module is None or not isinstance(backend, module.EtcdBackend):
        return None
    from . import native

    return native.NATIVE_RECIPES.get(name)
