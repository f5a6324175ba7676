"""Built-ins register through the same entry points as third parties."""

from __future__ import annotations

from importlib.metadata import entry_points

from coordkit import hookspecs
from coordkit.plugins import backend_factories, get_plugin_manager, recipe_classes


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
