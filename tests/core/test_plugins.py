"""Built-ins register through the same entry points as third parties."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import pytest

import coordkit
from coordkit import ConfigurationError, ConnectOptions, hookspecs
from coordkit.backend import BackendURL
from coordkit.plugins import (
    backend_factories,
    get_plugin_manager,
    lazy_backend,
    native_recipe_of,
    recipe_classes,
)


def test_builtin_backends_are_ordinary_entry_point_plugins() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="coordkit")}
    assert names["memory"] == "coordkit.backends.memory"
    assert names["etcd"] == "coordkit.backends.etcd"
    assert names["zookeeper"] == "coordkit.backends.zookeeper"
    assert "memory" in backend_factories()


def test_every_hook_is_specified_and_documented() -> None:
    manager = get_plugin_manager()
    for name in ("coordkit_backends", "coordkit_recipes", "coordkit_native_recipe"):
        spec = getattr(hookspecs, name)
        assert spec.__doc__ and len(spec.__doc__.strip()) > 20, name
        assert hasattr(manager.hook, name)


def test_native_recipe_hook_is_firstresult() -> None:
    spec = get_plugin_manager().hook.coordkit_native_recipe.spec
    assert spec is not None and spec.opts["firstresult"] is True


def test_builtin_recipes_register_through_the_recipes_hook() -> None:
    import coordkit.recipes as recipes

    names = {ep.name: ep.value for ep in entry_points(group="coordkit")}
    assert names["recipes"] == "coordkit.recipes.registry"
    found = recipe_classes()
    for name in (
        "Lock",
        "ReadWriteLock",
        "Semaphore",
        "Barrier",
        "DoubleBarrier",
        "Queue",
        "Election",
        "ConfigWatch",
        "Counter",
        "Group",
    ):
        assert found[name] is getattr(recipes, name), name


def test_a_lazy_backend_names_the_missing_client_library_and_the_extra() -> None:
    factory = lazy_backend("coordkit_no_such_client.backend:NoBackend", extra="nosuch")
    url = BackendURL.parse("nosuch://h:1")
    with pytest.raises(ConfigurationError) as info:
        factory(url, ConnectOptions())
    assert str(info.value) == (
        "the nosuch backend needs its client library (coordkit_no_such_client): "
        "pip install 'coordkit[nosuch]'"
    )


@pytest.mark.anyio
async def test_native_recipes_come_only_for_the_backend_class_named(memory_url: str) -> None:
    async with coordkit.connect(memory_url) as client:
        backend = client.backend
        natives = "coordkit_no_such_natives"  # never imported when the class does not match
        assert (
            native_recipe_of(backend, "Lock", backend_class="json:JSONDecoder", natives=natives)
            is None
        )
        assert (
            native_recipe_of(backend, "Lock", backend_class="nosuch.mod:Cls", natives=natives)
            is None
        )
        assert sys.modules.get(natives) is None
        module = f"{type(backend).__module__}:{type(backend).__name__}"
        with pytest.raises(ModuleNotFoundError, match=natives):
            native_recipe_of(backend, "Lock", backend_class=module, natives=natives)
