"""Registers the built-in recipes through the ``coordkit`` entry point, like any plugin."""

from __future__ import annotations

from typing import Any

from coordkit import hookimpl


@hookimpl
def coordkit_recipes() -> dict[str, type[Any]]:
    from . import (
        Barrier,
        ConfigWatch,
        Counter,
        DoubleBarrier,
        Election,
        Group,
        Lock,
        Queue,
        ReadWriteLock,
        Semaphore,
    )

    recipes: list[type[Any]] = [
        Barrier,
        ConfigWatch,
        Counter,
        DoubleBarrier,
        Election,
        Group,
        Lock,
        Queue,
        ReadWriteLock,
        Semaphore,
    ]
    return {recipe.__name__: recipe for recipe in recipes}
