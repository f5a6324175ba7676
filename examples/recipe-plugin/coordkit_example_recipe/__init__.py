"""A third-party recipe plugin: :class:`Latch`, a distributed count-down latch.

Like every recipe it uses only the public :class:`coordkit.Client` API, so it
runs unchanged on every backend; the ``coordkit_recipes`` hook below makes it
show up in :func:`coordkit.plugins.recipe_classes`.
"""

from __future__ import annotations

from typing import Any

from coordkit import BadVersionError, Client, NodeExistsError, hookimpl

__all__ = ["Latch"]


class Latch:
    """``Latch(client, "/latches/startup", 3)``: :meth:`wait` returns after 3 ``count_down``s.

    The count lives in the node at ``path`` (ASCII decimal), created by the
    first ``count_down``; each ``count_down`` is a compare-and-set, so
    concurrent callers never lose a count. It holds no session state: a
    session loss changes nothing, and a count-down whose reply was lost in a
    partition may or may not have counted.
    """

    def __init__(self, client: Client, path: str, count: int) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive int, not {count!r}")
        self.client = client
        self.path = path
        self.count = count

    async def remaining(self) -> int:
        """How many count-downs are still missing (``count`` before the first)."""
        node = await self.client.get(self.path)
        return self.count if node is None else int(node.value)

    async def count_down(self) -> int:
        """Count one down (never below zero); returns what remains."""
        while True:
            node = await self.client.get(self.path)
            try:
                if node is None:
                    left = self.count - 1
                    await self.client.create(self.path, b"%d" % left, make_parents=True)
                else:
                    left = max(int(node.value) - 1, 0)
                    await self.client.set(self.path, b"%d" % left, version=node.version)
            except (NodeExistsError, BadVersionError):
                continue  # someone counted first: read again
            return left

    async def wait(self) -> None:
        """Return once the count reached zero (watch first, then read: nothing is missed)."""
        async with self.client.watch(self.path) as events:
            if await self.remaining() == 0:
                return
            async for _ in events:
                if await self.remaining() == 0:
                    return


@hookimpl
def coordkit_recipes() -> dict[str, type[Any]]:
    return {"Latch": Latch}
