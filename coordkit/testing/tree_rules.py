"""The hierarchy: create (parents, sequential, ephemeral), set, delete, children."""

from __future__ import annotations

from functools import partial

from coordkit.errors import (
    BadVersionError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
)
from coordkit.model import EventType
from coordkit.paths import sequence_of

from .harness import (
    ConformanceBase,
    Kit,
    assert_unchanged,
    expect_error,
    next_event,
    sequential_counter,
    take_events,
    tree_state,
)

__all__ = ["ChildrenRules", "CreateRules", "DeleteRules", "SetRules"]


class CreateRules(ConformanceBase):
    async def test_create_without_parent_raises_no_node_and_changes_nothing(self, kit: Kit) -> None:
        async with kit.connect() as client:
            await client.create("/c", b"")
            before = await tree_state(client, ["/c", "/c/x", "/c/x/y"])
            await expect_error("create", NoNodeError, lambda: client.create("/c/x/y", b"v"))
            await expect_error(
                "create(ephemeral)", NoNodeError, lambda: client.create("/c/x/y", ephemeral=True)
            )
            await expect_error(
                "create(sequential)", NoNodeError, lambda: client.create("/c/x/y", sequential=True)
            )
            await assert_unchanged(client, before, "the failed call")

    async def test_create_with_make_parents_creates_missing_ancestors_as_empty_persistent_nodes(
        self, kit: Kit
    ) -> None:
        async with kit.connect() as client:
            await client.create("/mp", b"keep")
            leaf = await client.create("/mp/a/b/leaf", b"v", ephemeral=True, make_parents=True)
            assert leaf.path == "/mp/a/b/leaf" and leaf.ephemeral_owner == client.session.id
            for path in ("/mp/a", "/mp/a/b"):
                node = await client.get(path)
                assert node is not None, f"{path} was not created"
                assert node.value == b"" and node.ephemeral_owner is None and node.version == 0
            existing = await client.get("/mp")
            assert existing is not None and existing.value == b"keep" and existing.version == 0
            assert await client.children("/mp/a/b") == ["leaf"]
            seq = await client.create("/mp/s/t/job-", sequential=True, make_parents=True)
            sequential_counter(seq.path, "/mp/s/t/job-")

    async def test_create_of_existing_path_raises_node_exists_and_keeps_the_node(
        self, kit: Kit
    ) -> None:
        async with kit.clients(2) as (a, b):
            await a.create("/dup", b"first")
            before = await tree_state(a, ["/dup"])
            for client, who in ((a, "same client"), (b, "other client")):
                for flags in ({}, {"ephemeral": True}, {"make_parents": True}):
                    await expect_error(
                        f"{who}, create{flags}",
                        NodeExistsError,
                        partial(client.create, "/dup", b"x", **flags),
                    )
            await assert_unchanged(a, before, "the failed call")

    async def test_sequential_create_appends_a_ten_digit_zero_padded_counter(
        self, kit: Kit
    ) -> None:
        async with kit.connect() as client:
            await client.create("/seq", b"")
            node = await client.create("/seq/job-", b"payload", sequential=True)
            counter = sequential_counter(node.path, "/seq/job-")
            assert sequence_of(node.name) == counter
            got = await client.get(node.path)
            assert got is not None and got.value == b"payload"
            assert await client.children("/seq") == [node.name]

    async def test_sequential_counters_are_unique_and_increasing_under_a_parent(
        self, kit: Kit
    ) -> None:
        async with kit.connect() as client:
            await client.create("/seq", b"")
            counters = []
            for i in range(12):
                prefix = ("lock-", "read-", "x")[i % 3]  # one counter for every name
                ephemeral = i % 2 == 0
                node = await client.create(f"/seq/{prefix}", sequential=True, ephemeral=ephemeral)
                counters.append(sequential_counter(node.path, f"/seq/{prefix}"))
            assert counters == sorted(set(counters)), f"counters not increasing: {counters}"
            assert len(await client.children("/seq")) == 12

    async def test_sequential_counter_never_reuses_a_number_after_delete(self, kit: Kit) -> None:
        async with kit.connect() as client:
            await client.create("/seq", b"")
            first = await client.create("/seq/n-", sequential=True)
            await client.delete(first.path)
            second = await client.create("/seq/n-", sequential=True)
            before, after = (sequential_counter(n.path, "/seq/n-") for n in (first, second))
            assert after > before, f"counter {before} reused or decreased: {after}"

    async def test_ephemeral_node_cannot_have_children(self, kit: Kit) -> None:
        async with kit.connect() as client:
            await client.create("/eph", ephemeral=True)
            paths = ["/eph", "/eph/c", "/eph/c/d"]
            before = await tree_state(client, paths)
            await expect_error(
                "create", NoChildrenForEphemeralsError, lambda: client.create("/eph/c")
            )
            await expect_error(
                "create(ephemeral)",
                NoChildrenForEphemeralsError,
                lambda: client.create("/eph/c", ephemeral=True),
            )
            await expect_error(
                "create(sequential)",
                NoChildrenForEphemeralsError,
                lambda: client.create("/eph/c", sequential=True),
            )
            await expect_error(
                "create(make_parents)",
                NoChildrenForEphemeralsError,
                lambda: client.create("/eph/c/d", make_parents=True),
            )
            await assert_unchanged(client, before, "the failed call")

    async def test_create_returns_the_node_as_stored(self, kit: Kit) -> None:
        async with kit.connect() as client:
            for path, flags in [
                ("/r", {}),
                ("/r/e", {"ephemeral": True}),
                ("/r/s-", {"sequential": True}),
                ("/r/t/u", {"make_parents": True}),
            ]:
                node = await client.create(path, path.encode(), **flags)
                assert await client.get(node.path) == node, f"create{flags}"


class SetRules(ConformanceBase):
    async def test_set_of_missing_node_raises_no_node(self, kit: Kit) -> None:
        async with kit.connect() as client:
            before = await tree_state(client, ["/nothing"])
            await expect_error("set", NoNodeError, lambda: client.set("/nothing", b"v"))
            await expect_error(
                "set(version)", NoNodeError, lambda: client.set("/nothing", b"v", version=0)
            )
            await assert_unchanged(client, before, "the failed call")

    async def test_set_with_wrong_version_raises_bad_version_and_keeps_the_value(
        self, kit: Kit
    ) -> None:
        async with kit.connect() as client:
            await client.create("/bv", b"v0")
            await client.set("/bv", b"v1")
            before = await tree_state(client, ["/bv"])
            for wrong in (0, 2, 99):
                await expect_error(
                    f"version={wrong}",
                    BadVersionError,
                    partial(client.set, "/bv", b"no", version=wrong),
                )
            await assert_unchanged(client, before, "the failed call")

    async def test_set_with_matching_version_succeeds(self, kit: Kit) -> None:
        async with kit.connect() as client:
            await client.create("/ok", b"v0")
            node = await client.set("/ok", b"v1", version=0)
            assert node.version == 1 and node.value == b"v1"
            node = await client.set("/ok", b"v2", version=1)
            assert await client.get("/ok") == node


class DeleteRules(ConformanceBase):
    async def test_delete_of_missing_node_raises_no_node(self, kit: Kit) -> None:
        async with kit.connect() as client:
            before = await tree_state(client, ["/nothing"])
            await expect_error("delete", NoNodeError, lambda: client.delete("/nothing"))
            await expect_error(
                "delete(recursive)", NoNodeError, lambda: client.delete("/nothing", recursive=True)
            )
            await expect_error(
                "delete(version)", NoNodeError, lambda: client.delete("/nothing", version=0)
            )
            await assert_unchanged(client, before, "the failed call")

    async def test_delete_with_wrong_version_raises_bad_version_and_keeps_the_node(
        self, kit: Kit
    ) -> None:
        async with kit.connect() as client:
            await client.create("/dv", b"")
            await client.set("/dv", b"1")
            before = await tree_state(client, ["/dv"])
            await expect_error(
                "version=0", BadVersionError, lambda: client.delete("/dv", version=0)
            )
            await assert_unchanged(client, before, "the failed call")
            await client.delete("/dv", version=1)
            assert await client.get("/dv") is None

    async def test_delete_of_node_with_children_raises_not_empty(self, kit: Kit) -> None:
        async with kit.connect() as client:
            await client.create("/ne/child", b"", make_parents=True)
            before = await tree_state(client, ["/ne", "/ne/child"])
            await expect_error("delete", NotEmptyError, lambda: client.delete("/ne"))
            await expect_error(
                "delete(version)", NotEmptyError, lambda: client.delete("/ne", version=0)
            )
            await assert_unchanged(client, before, "the failed call")

    async def test_recursive_delete_removes_every_descendant_in_one_revision(
        self, kit: Kit
    ) -> None:
        subtree = ["/t/a", "/t/a/b", "/t/a/b/c", "/t/a/d", "/t/a/e"]
        async with kit.connect() as client:
            await client.create("/t", b"")
            for path in subtree[:-1]:
                await client.create(path, path.encode())
            await client.create("/t/a/e", ephemeral=True)
            await client.create("/t/ab", b"sibling sharing the prefix")
            async with client.watch("/t", recursive=True) as events:
                await client.delete("/t/a", recursive=True)
                deleted = await take_events(events, len(subtree), kit.wait_timeout)
                assert {e.type for e in deleted} == {EventType.DELETED}
                assert sorted(e.path for e in deleted) == sorted(subtree)
                assert len({e.revision for e in deleted}) == 1, f"not one revision: {deleted}"
                fence = await client.set("/t", b"fence")  # nothing else was deleted
                after = await next_event(events, kit.wait_timeout)
                assert (after.type, after.path, after.revision) == (
                    EventType.UPDATED,
                    "/t",
                    fence.mod_revision,
                )
            for path in subtree:
                assert await client.get(path) is None, f"{path} survived a recursive delete"
            assert await client.children("/t") == ["ab"]
            sibling = await client.get("/t/ab")
            assert sibling is not None and sibling.value == b"sibling sharing the prefix"

    async def test_recursive_delete_of_a_leaf_deletes_it(self, kit: Kit) -> None:
        async with kit.connect() as client:
            await client.create("/leaf", b"")
            await client.delete("/leaf", recursive=True)
            assert await client.get("/leaf") is None


class ChildrenRules(ConformanceBase):
    async def test_children_are_the_sorted_names_of_direct_children(self, kit: Kit) -> None:
        names = ["b", "a10", "a2", "C", "\u00e9t\u00e9", "a", "_", "z-0000000001"]
        async with kit.connect() as client:
            await client.create("/ch", b"")
            for name in names:
                await client.create(f"/ch/{name}", b"")
            await client.create("/ch/a/grandchild", b"")
            await client.create("/chx", b"")
            assert await client.children("/ch") == sorted(names)
            assert await client.children("/ch/a") == ["grandchild"]

    async def test_children_of_a_leaf_is_empty(self, kit: Kit) -> None:
        async with kit.connect() as client:
            await client.create("/leaf", b"")
            assert await client.children("/leaf") == []

    async def test_children_of_missing_node_raises_no_node(self, kit: Kit) -> None:
        async with kit.connect() as client:
            await expect_error("children", NoNodeError, lambda: client.children("/missing"))
