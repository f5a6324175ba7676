"""The architecture rules hold (see tests/support/architecture.py), and each one bites.

Each ``test_rule_catches_*`` plants one violation in a copy of the tree and
checks that exactly that rule reports it, so a rule cannot silently stop
working.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from architecture import violations

ROOT = Path(__file__).resolve().parents[1]


def test_the_tree_follows_the_architecture_rules() -> None:
    assert violations(ROOT) == []


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("coordkit", "backends", "recipes"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "tests" / "support").mkdir(parents=True)
    for support in (ROOT / "tests" / "support").glob("*.py"):
        shutil.copy(support, tmp_path / "tests" / "support")
    return tmp_path


def plant(tree: Path, relative: str, code: str) -> None:
    path = tree / relative
    path.write_text(path.read_text() + "\n" + code + "\n")


@pytest.mark.parametrize(
    ("relative", "code", "rule"),
    [
        ("recipes/lock.py", "import coordkit.backends.memory", "recipes never import a backend"),
        (
            "coordkit/client.py",
            "from coordkit.backends import memory",
            "the core finds backends through plugins",
        ),
        (
            "coordkit/paths.py",
            "from coordkit.recipes import lock",
            "the core imports no recipe",
        ),
        (
            "backends/etcd/keys.py",
            "from coordkit.backends.zookeeper import paths",
            "a backend imports no other backend",
        ),
        (
            "backends/etcd/keys.py",
            "from coordkit.backends.store import Store",
            "a backend imports no other backend",
        ),
        (
            "backends/zookeeper/watch.py",
            "from coordkit.recipes.lock import Lock",
            "only a backend's native module imports recipes",
        ),
        ("backends/raft/core/log.py", "import time", "is pure"),
        ("backends/raft/core/log.py", "import anyio", "is pure"),
        ("backends/raft/core/progress.py", "from random import random", "is pure"),
        ("backends/raft/core/quorum.py", "import socket", "is pure"),
        ("backends/raft/core/quorum.py", "import threading", "is pure"),
        ("backends/raft/core/quorum.py", "data = open('x').read()", "does no file I/O"),
        (
            "backends/raft/core/quorum.py",
            "from coordkit.backends.store import Store",
            "the Raft core imports nothing of coordkit",
        ),
        ("backends/store/machine.py", "import asyncio", "is pure"),
        ("backends/store/commands.py", "import os", "is pure"),
        ("coordkit/model.py", "import recipe_support", "nothing imports the tests"),
        ("backends/memory.py", "from sim.cluster import Cluster", "nothing imports the tests"),
        ("coordkit/errors.py", "from coordkit import client", "import cycle"),
        (
            "coordkit/paths.py",
            "import importlib\nimportlib.import_module('coordkit.backends.memory')",
            "the core finds backends through plugins",
        ),
    ],
)
def test_rule_catches_a_planted_violation(tree: Path, relative: str, code: str, rule: str) -> None:
    assert violations(tree) == []
    plant(tree, relative, code)
    found = violations(tree)
    assert found, f"planting {code!r} in {relative} broke no rule"
    assert any(rule in line for line in found), found


def test_a_type_only_import_is_allowed_in_the_pure_core(tree: Path) -> None:
    plant(
        tree,
        "backends/raft/core/quorum.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import random",
    )
    assert violations(tree) == []


def test_tests_mirror_the_source_tree() -> None:
    """Every backend package has its folder under tests/backends."""
    backends = ROOT / "backends"
    packages = {p.name for p in backends.iterdir() if (p / "__init__.py").exists()}
    tested = {p.name for p in (ROOT / "tests" / "backends").iterdir() if p.is_dir()}
    assert not packages - tested, f"no tests/backends/ folder for {packages - tested}"
