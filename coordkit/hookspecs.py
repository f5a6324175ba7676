"""The plugin hooks (pluggy, entry-point group ``coordkit``).

A plugin is a module or object with functions marked ``@coordkit.hookimpl``,
registered under ``[project.entry-points.coordkit]`` in its pyproject.toml.
The built-in backends and recipes register the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .backend import Backend, BackendFactory
    from .commands import CliCommand

hookspec = pluggy.HookspecMarker("coordkit")
hookimpl = pluggy.HookimplMarker("coordkit")


@hookspec
def coordkit_backends() -> dict[str, BackendFactory]:  # type: ignore[empty-body]
    """Return ``{scheme: factory}``; ``factory(url, options) -> Backend``.

    A factory should import heavy client libraries lazily and raise
    :class:`~coordkit.errors.ConfigurationError` naming the extra to install
    when they are missing.
    """


@hookspec
def coordkit_recipes() -> dict[str, type[Any]]:  # type: ignore[empty-body]
    """Return ``{name: class}`` of recipes this plugin provides."""


@hookspec(firstresult=True)
def coordkit_native_recipe(backend: Backend, name: str) -> type[Any] | None:
    """Return a backend-native implementation of recipe ``name`` for ``backend``, or None.

    For example the etcd backend supplies a Lock laid out as ``etcdctl lock``
    expects. The class is constructed with the same arguments as the generic recipe.
    """


@hookspec
def coordkit_commands() -> list[CliCommand]:  # type: ignore[empty-body]
    """Return the ``coordkit`` subcommands this plugin adds (:class:`coordkit.commands.CliCommand`).

    The Raft backend adds ``serve``, ``cluster``, ``member`` and ``snapshot``
    this way; a later plugin cannot replace a command already registered.
    """
