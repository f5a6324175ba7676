"""Which backend URL to use: argument, ``COORDKIT_URL``, config file, embedded default."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from .errors import ConfigurationError

__all__ = ["DEFAULT_URL", "resolve_url"]

#: The embedded default backend: a 3-node Raft cluster inside this process
#: (temporary data; see docs/backends/raft.md), reached through the raft:// client.
DEFAULT_URL = "raft+embedded://?nodes=3"


def _from_toml(path: Path, *, section: tuple[str, ...]) -> str | None:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    table: object = data
    for key in section:
        if not isinstance(table, dict):
            return None
        table = table.get(key)
    if not isinstance(table, dict) or "url" not in table:
        return None
    url = table["url"]
    if not isinstance(url, str):
        raise ConfigurationError(f"{path}: 'url' must be a string")
    return url


def resolve_url(url: str | None = None, *, cwd: Path | None = None) -> str:
    """Pick the backend URL, first match wins.

    1. the ``url`` argument;
    2. the ``COORDKIT_URL`` environment variable;
    3. ``url`` in ``[tool.coordkit]`` of ``pyproject.toml`` in the working directory;
    4. ``url`` at the top of ``coordkit.toml`` in the working directory;
    5. :data:`DEFAULT_URL`.
    """
    if url is not None:
        return url
    env = os.environ.get("COORDKIT_URL")
    if env:
        return env
    where = cwd or Path.cwd()
    found = _from_toml(where / "pyproject.toml", section=("tool", "coordkit"))
    if found is None:
        found = _from_toml(where / "coordkit.toml", section=())
    return found if found is not None else DEFAULT_URL
