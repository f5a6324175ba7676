"""Registers the built-in recipes through the ``coordkit`` entry point, like any plugin."""

from __future__ import annotations

import importlib
from typing import Any

from coordkit import hookimpl

#: the recipes users construct (helpers such as QueueItem or ReadLock are not listed).
BUILTIN = (
    "Barrier",
    "ConfigWatch",
    "Counter",
    "DoubleBarrier",
    "Election",
    "Group",
    "Lock",
    "Queue",
    "ReadWriteLock",
    "Semaphore",
)


@hookimpl
def coordkit_recipes() -> dict[str, type[Any]]:
    recipes = importlib.import_module("coordkit.recipes")
    return {name: getattr(recipes, name) for name in BUILTIN}
