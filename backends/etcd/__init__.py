"""The ``etcd://`` backend's plugin: its scheme and its native Lock and Election.

``etcd://host:port[,host:port...][/prefix][?session_ttl=S&timeout=T]``. This
module imports no client library, so ``import coordkit.backends.etcd`` works
without the ``coordkit[etcd]`` extra; the factory imports it and says what to
install when it is missing. The implementation lives beside it: ``backend``,
``lease`` (sessions), ``rpc`` (channel, errors), ``keys`` (key layout),
``ops``, ``txn``, ``watch`` and ``native`` (etcd-compatible Lock and Election).
"""

from __future__ import annotations

import os
from typing import Any

from coordkit import hookimpl
from coordkit.backend import Backend, BackendFactory, BackendURL, ConnectOptions
from coordkit.plugins import lazy_backend, native_recipe_of

__all__ = ["connect_etcd"]

_factory = lazy_backend(f"{__name__}.backend:EtcdBackend", extra="etcd")


def connect_etcd(url: BackendURL, options: ConnectOptions) -> Backend:
    """The factory registered for ``etcd://`` (imports the client library when used).

    grpc's C core writes its own log lines (a refused TLS handshake, each
    reconnection) straight to stderr, past Python's logging; the backend
    reports each failure itself, with its cause, on its loggers. So unless
    the application chose a ``GRPC_VERBOSITY`` itself, grpc is silenced
    before it is first imported.
    """
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    return _factory(url, options)


@hookimpl
def coordkit_backends() -> dict[str, BackendFactory]:
    return {"etcd": connect_etcd}


@hookimpl
def coordkit_native_recipe(backend: Backend, name: str) -> type[Any] | None:
    """etcd-compatible ``Lock`` and ``Election`` for etcd backends (etcdctl interoperates)."""
    return native_recipe_of(
        backend, name, backend_class=f"{__name__}.backend:EtcdBackend", natives=f"{__name__}.native"
    )
