"""A third-party backend plugin: ``example://NAME``.

It reuses coordkit's deterministic store in-process (as the memory backend
does) under its own scheme and namespace, to show the whole plugin path: an
entry point, a ``coordkit_backends`` hook, a factory, and the conformance kit.
"""

from __future__ import annotations

from coordkit import ConnectOptions, hookimpl
from coordkit.backend import BackendFactory, BackendURL
from coordkit.backends.memory import MemoryBackend


class ExampleBackend(MemoryBackend):
    """``example://NAME``: a separate in-process store per NAME."""


def connect_example(url: BackendURL, options: ConnectOptions) -> ExampleBackend:
    name = url.hosts[0] if url.hosts else "default"
    return ExampleBackend(f"example:{name}", options)


@hookimpl
def coordkit_backends() -> dict[str, BackendFactory]:
    return {"example": connect_example}
