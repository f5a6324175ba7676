"""Loading plugins: entry points of group ``coordkit``, loaded once, lazily."""

from __future__ import annotations

import importlib
import sys
import threading
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .backend import Backend, BackendFactory, BackendURL, ConnectOptions
    from .commands import CliCommand

__all__ = [
    "backend_factories",
    "cli_commands",
    "get_plugin_manager",
    "lazy_backend",
    "native_recipe",
    "native_recipe_of",
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


def native_recipe_of(
    backend: Backend, name: str, *, backend_class: str, natives: str
) -> type[Any] | None:
    """What a backend plugin's ``coordkit_native_recipe`` hook returns.

    ``NATIVE_RECIPES[name]`` of module ``natives`` when ``backend`` is a
    ``backend_class`` (``"module:Class"``), else None. Neither module is
    imported to answer "no": a backend whose module was never loaded has no
    instance, and the natives (which import the recipes) load only when used.
    """
    module_name, _, class_name = backend_class.partition(":")
    module = sys.modules.get(module_name)
    if module is None or not isinstance(backend, getattr(module, class_name)):
        return None
    recipes: dict[str, type[Any]] = importlib.import_module(natives).NATIVE_RECIPES
    return recipes.get(name)


def lazy_backend(backend_class: str, *, extra: str) -> BackendFactory:
    """A factory for a backend plugin's ``coordkit_backends`` hook that imports
    ``backend_class`` (``"module:Class"``) only when a URL of its scheme is
    opened, so the plugin loads without its client library; if that library
    is missing, the factory raises :class:`~coordkit.ConfigurationError`
    naming it and the ``coordkit[extra]`` to install."""

    def create(url: BackendURL, options: ConnectOptions) -> Backend:
        module_name, _, class_name = backend_class.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigurationError(
                f"the {extra} backend needs its client library ({exc.name or exc}): "
                f"pip install 'coordkit[{extra}]'"
            ) from exc
        backend: Backend = getattr(module, class_name)(url, options)
        return backend

    return create
