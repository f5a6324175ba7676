"""Loading plugins: entry points of group ``coordkit``, loaded once, lazily."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs

if TYPE_CHECKING:
    from .backend import Backend, BackendFactory
    from .commands import CliCommand

__all__ = [
    "backend_factories",
    "cli_commands",
    "get_plugin_manager",
    "native_recipe",
    "recipe_classes",
    "reset_plugin_manager",
]

_lock = threading.Lock()
_manager: pluggy.PluginManager | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with every installed entry point loaded."""
    global _manager
    with _lock:
        if _manager is None:
            manager = pluggy.PluginManager("coordkit")
            manager.add_hookspecs(hookspecs)
            manager.load_setuptools_entrypoints("coordkit")
            _manager = manager
        return _manager


def reset_plugin_manager() -> None:
    """Forget the loaded plugins (tests use this after installing or registering one)."""
    global _manager
    with _lock:
        _manager = None


def backend_factories() -> dict[str, BackendFactory]:
    """Every installed backend, ``{scheme: factory}``; a later plugin cannot shadow a scheme."""
    merged: dict[str, BackendFactory] = {}
    # pluggy calls the most recently registered plugin first; reverse for load order.
    for mapping in reversed(get_plugin_manager().hook.coordkit_backends()):
        for scheme, factory in mapping.items():
            merged.setdefault(scheme.lower(), factory)
    return merged


def recipe_classes() -> dict[str, type[Any]]:
    """Every installed recipe, ``{name: class}``."""
    merged: dict[str, type[Any]] = {}
    for mapping in reversed(get_plugin_manager().hook.coordkit_recipes()):
        for name, cls in mapping.items():
            merged.setdefault(name, cls)
    return merged


def native_recipe(backend: Backend, name: str) -> type[Any] | None:
    """A backend-native implementation of recipe ``name``, if a plugin supplies one."""
    result: type[Any] | None = get_plugin_manager().hook.coordkit_native_recipe(
        backend=backend, name=name
    )
    return result


def cli_commands() -> dict[str, CliCommand]:
    """Every subcommand added by a plugin, ``{name: command}``, in load order."""
    merged: dict[str, CliCommand] = {}
    for commands in reversed(get_plugin_manager().hook.coordkit_commands()):
        for command in commands:
            merged.setdefault(command.name, command)
    return merged
