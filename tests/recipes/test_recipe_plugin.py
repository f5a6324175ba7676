"""A third-party recipe plugin (examples/recipe-plugin) is found through its entry point.

``scripts/test.sh`` installs every example package (``pip install -e
examples/recipe-plugin``); the plugin's own tests run here too, as a user of
the package would run them.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import coordkit
from coordkit.plugins import recipe_classes, reset_plugin_manager

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "recipe-plugin"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("coordkit_example_recipe") is None,
    reason="the example plugin is not installed: pip install -e examples/recipe-plugin",
)


@pytest.mark.anyio
async def test_the_plugin_recipe_is_discovered_and_runs(backend_url: str) -> None:
    reset_plugin_manager()  # load the entry points afresh
    latch_class = recipe_classes()["Latch"]
    assert latch_class.__module__ == "coordkit_example_recipe"
    async with coordkit.connect(backend_url) as a, coordkit.connect(backend_url) as b:
        released = anyio.Event()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def wait() -> None:
                    await latch_class(a, "/latch", 2).wait()
                    released.set()

                tg.start_soon(wait)
                assert await latch_class(b, "/latch", 2).count_down() == 1
                await anyio.wait_all_tasks_blocked()
                assert not released.is_set()
                assert await latch_class(b, "/latch", 2).count_down() == 0
        assert released.is_set()


def test_the_plugin_packages_own_tests_pass() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=EXAMPLE,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
