"""Real contention: many tasks on separate clients racing for the same nodes.

Each task gets a client of its own (round-robin over ``contention_clients``
connections), so the races cross connections and sessions as they would
across processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import anyio

from coordkit.client import Client
from coordkit.errors import BadVersionError, NodeExistsError, NoNodeError
from coordkit.model import Node
from coordkit.txn import Compare, SetOp

from .harness import ConformanceBase, Kit, existing_node, sequential_counter

__all__ = ["ConcurrencyRules"]

#: one task of a race: ``work(task_index, client)``.
Work = Callable[[int, Client], Coroutine[Any, Any, None]]


class ConcurrencyRules(ConformanceBase):
    #: concurrent tasks in each race, and the client connections they share.
    contention_tasks: ClassVar[int] = 50
    contention_clients: ClassVar[int] = 10
    #: sequential creates per task, and compare-and-set increments per task.
    creates_per_task: ClassVar[int] = 4
    increments_per_task: ClassVar[int] = 3

    @asynccontextmanager
    async def _race(self, kit: Kit, work: Work) -> AsyncIterator[list[Client]]:
        """Run ``work(task_index, client)`` in ``contention_tasks`` concurrent tasks.

        The body runs once every task has finished, with the clients still open.
        """
        async with kit.clients(self.contention_clients) as clients:
            with anyio.fail_after(kit.wait_timeout * 6):
                async with anyio.create_task_group() as tg:
                    for i in range(self.contention_tasks):
                        tg.start_soon(work, i, clients[i % len(clients)])
            yield clients

    async def _race_to_end(self, kit: Kit, work: Work) -> None:
        async with self._race(kit, work):
            pass

    async def test_concurrent_sequential_creates_are_unique_increasing_and_none_lost(
        self, kit: Kit
    ) -> None:
        per_task: dict[int, list[Node]] = {}

        async def create(i: int, client: Client) -> None:
            mine = per_task.setdefault(i, [])
            for _ in range(self.creates_per_task):
                mine.append(await client.create("/seq/n-", str(i).encode(), sequential=True))

        async with kit.connect() as reader:
            await reader.create("/seq", b"")
            await self._race_to_end(kit, create)
            nodes = [node for mine in per_task.values() for node in mine]
            names = [node.name for node in nodes]
            assert len(nodes) == self.contention_tasks * self.creates_per_task
            assert len(set(names)) == len(names), "two creates got the same sequential name"
            assert await reader.children("/seq") == sorted(names), "a create was lost"
            for mine in per_task.values():
                counters = [sequential_counter(n.path, "/seq/n-") for n in mine]
                assert counters == sorted(counters), f"one task's counters went back: {counters}"
            # The counter grows in commit (revision) order across every client.
            by_revision = sorted(nodes, key=lambda n: n.create_revision)
            assert len({n.create_revision for n in nodes}) == len(nodes)
            counters = [sequential_counter(n.path, "/seq/n-") for n in by_revision]
            assert counters == sorted(counters), "sequential counters disagree with revisions"
            for i, mine in per_task.items():
                for node in mine:
                    assert (await existing_node(reader, node.path)).value == str(i).encode()

    async def test_racing_compare_and_set_increments_lose_no_update(self, kit: Kit) -> None:
        async def attempt(client: Client, node: Node) -> bool:
            try:
                await client.set(
                    "/counter", str(int(node.value) + 1).encode(), version=node.version
                )
            except BadVersionError:
                return False
            return True

        await self._race_increments(kit, attempt, "no set(version=...) ever conflicted")

    async def test_racing_transaction_compare_and_set_increments_lose_no_update(
        self, kit: Kit
    ) -> None:
        async def attempt(client: Client, node: Node) -> bool:
            result = await client.txn(
                [Compare.version("/counter", "==", node.version)],
                [SetOp("/counter", str(int(node.value) + 1).encode())],
            )
            return result.succeeded

        await self._race_increments(kit, attempt, "no compare ever failed")

    async def _race_increments(
        self,
        kit: Kit,
        attempt: Callable[[Client, Node], Coroutine[Any, Any, bool]],
        no_conflict: str,
    ) -> None:
        """Every task increments ``/counter`` by read-then-``attempt`` until it applies.

        No increment may be lost, and at least one attempt must have lost the
        race (else the test proved nothing).
        """
        conflicts = 0

        async def increment(_: int, client: Client) -> None:
            nonlocal conflicts
            for _ in range(self.increments_per_task):
                while not await attempt(client, await existing_node(client, "/counter")):
                    conflicts += 1

        async with kit.connect() as reader:
            await reader.create("/counter", b"0")
            await self._race_to_end(kit, increment)
            total = self.contention_tasks * self.increments_per_task
            final = await existing_node(reader, "/counter")
            assert (final.value, final.version) == (str(total).encode(), total), "lost update"
            assert conflicts > 0, f"{no_conflict}: the race never happened"

    async def test_concurrent_creates_of_one_path_exactly_one_wins(self, kit: Kit) -> None:
        await self._assert_one_create_wins(kit, "/one", ephemeral=False)
        await self._assert_one_create_wins(kit, "/one-ephemeral", ephemeral=True)

    async def _assert_one_create_wins(self, kit: Kit, path: str, *, ephemeral: bool) -> None:
        winners: list[tuple[int, Client, Node]] = []
        losers: list[int] = []

        async def create(i: int, client: Client) -> None:
            try:
                node = await client.create(path, str(i).encode(), ephemeral=ephemeral)
            except NodeExistsError:
                losers.append(i)
            else:
                winners.append((i, client, node))

        async with kit.connect() as reader, self._race(kit, create):
            assert len(winners) == 1, f"{len(winners)} creates of {path} succeeded"
            assert len(losers) == self.contention_tasks - 1
            (i, winner, node), stored = winners[0], await existing_node(reader, path)
            assert stored.value == str(i).encode() and stored == node
            assert stored.ephemeral_owner == (winner.session.id if ephemeral else None)

    async def test_concurrent_deletes_of_one_node_exactly_one_wins(self, kit: Kit) -> None:
        deleted: list[int] = []
        missing: list[int] = []

        async def delete(i: int, client: Client) -> None:
            try:
                await client.delete("/doomed")
            except NoNodeError:
                missing.append(i)
            else:
                deleted.append(i)

        async with kit.connect() as reader:
            await reader.create("/doomed", b"")
            await self._race_to_end(kit, delete)
            assert len(deleted) == 1, f"{len(deleted)} deletes of one node succeeded"
            assert len(missing) == self.contention_tasks - 1
            assert await reader.get("/doomed") is None
