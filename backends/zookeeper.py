"""The zookeeper backend (being written; registers no scheme yet)."""

from __future__ import annotations

from coordkit import hookimpl
from coordkit.backend import BackendFactory


@hookimpl
def coordkit_backends() -> dict[str, BackendFactory]:
    return {}
