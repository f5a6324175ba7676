"""Revisions (one cluster-wide counter, one step per mutation) and the fields of a Node."""

from __future__ import annotations

from coordkit.errors import (
    BadVersionError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
)
from coordkit.txn import Compare, CreateOp, DeleteOp, GetOp, SetOp

from .harness import (
    ConformanceBase,
    Kit,
    assert_unchanged,
    expect_error,
    revision_of,
    take_events,
    tree_state,
)

__all__ = ["NodeFieldRules", "RevisionRules"]


class RevisionRules(ConformanceBase):
    """Every successful mutation advances one shared revision; failures do not."""

    async def test_every_mutation_advances_the_revision_strictly(self, kit: Kit) -> None:
        async with kit.connect() as client:
            seen = [await revision_of(client)]

            async def advanced(revision: int, what: str) -> None:
                assert revision > seen[-1], f"{what} did not advance the revision"
                assert await revision_of(client) >= revision, f"status() is behind {what}"
                seen.append(await revision_of(client))

            await advanced((await client.create("/r", b"1")).mod_revision, "create")
            await advanced((await client.set("/r", b"2")).mod_revision, "set")
            await advanced((await client.create("/r/c", ephemeral=True)).mod_revision, "ephemeral")
            await client.delete("/r/c")
            await advanced(await revision_of(client), "delete")
            await advanced((await client.txn([], [SetOp("/r", b"3")])).revision, "txn")
            await client.create("/r/d/e", make_parents=True)
            await advanced(await revision_of(client), "create(make_parents)")
            await client.delete("/r", recursive=True)
            await advanced(await revision_of(client), "delete(recursive)")

    async def test_revision_is_one_counter_shared_by_all_paths_and_clients(self, kit: Kit) -> None:
        async with kit.clients(2) as (a, b):
            revisions = [
                (await a.create("/x", b"")).mod_revision,
                (await b.create("/y", b"")).mod_revision,
                (await a.set("/y", b"1")).mod_revision,
                (await b.set("/x", b"1")).mod_revision,
                (await a.create("/x/z", b"")).mod_revision,
            ]
            assert revisions == sorted(set(revisions)), f"not one increasing counter: {revisions}"

    async def test_transaction_is_one_revision(self, kit: Kit) -> None:
        async with kit.connect() as client:
            await client.create("/t", b"")
            await client.create("/t/old", b"")
            async with client.watch("/t", recursive=True) as events:
                before = await revision_of(client)
                result = await client.txn(
                    [Compare.exists("/t")],
                    [
                        CreateOp("/t/a", b"a"),
                        CreateOp("/t/b", b"b"),
                        SetOp("/t", b"t"),
                        DeleteOp("/t/old"),
                    ],
                )
                assert result.succeeded
                assert result.revision > before
                a, b, t, gone = result.results
                assert a is not None and b is not None and t is not None and gone is None
                assert a.create_revision == b.create_revision == t.mod_revision == result.revision
                got = await take_events(events, 4, kit.wait_timeout)
                assert {e.revision for e in got} == {result.revision}, got
                assert sorted((e.type.value, e.path) for e in got) == [
                    ("created", "/t/a"),
                    ("created", "/t/b"),
                    ("deleted", "/t/old"),
                    ("updated", "/t"),
                ]
                assert await revision_of(client) >= result.revision

    async def test_failed_operations_do_not_advance_the_revision(self, kit: Kit) -> None:
        async with kit.connect() as client:
            await client.create("/f", b"f")
            await client.create("/f/child", b"")
            await client.create("/f/eph", ephemeral=True)
            paths = ["/f", "/f/child", "/f/eph", "/f/missing"]
            before = await tree_state(client, paths)
            failures = [
                ("create existing", NodeExistsError, lambda: client.create("/f")),
                ("create without parent", NoNodeError, lambda: client.create("/f/no/x")),
                ("create under ephemeral", NoChildrenForEphemeralsError,
                 lambda: client.create("/f/eph/x")),
                ("set missing", NoNodeError, lambda: client.set("/f/missing", b"")),
                ("set bad version", BadVersionError, lambda: client.set("/f", b"", version=5)),
                ("delete missing", NoNodeError, lambda: client.delete("/f/missing")),
                ("delete bad version", BadVersionError,
                 lambda: client.delete("/f/child", version=3)),
                ("delete non-empty", NotEmptyError, lambda: client.delete("/f")),
                ("txn failing op", NodeExistsError,
                 lambda: client.txn([], [CreateOp("/f/new"), CreateOp("/f/child")])),
            ]  # fmt: skip
            for label, error, call in failures:
                await expect_error(label, error, call)
                await assert_unchanged(client, before, label)

    async def test_transaction_that_changes_nothing_does_not_advance_the_revision(
        self, kit: Kit
    ) -> None:
        async with kit.connect() as client:
            await client.create("/q", b"q")
            before = await tree_state(client, ["/q"])
            failed = await client.txn([Compare.missing("/q")], [SetOp("/q", b"no")])
            assert not failed.succeeded and failed.results == ()
            reads = await client.txn([Compare.exists("/q")], [GetOp("/q"), GetOp("/none")])
            assert reads.succeeded
            assert reads.results == (before.nodes["/q"], None)
            empty = await client.txn()
            assert empty.succeeded and empty.results == ()
            await assert_unchanged(client, before, "a transaction that changes nothing")


class NodeFieldRules(ConformanceBase):
    """version, create_revision, mod_revision, num_children, ephemeral_owner."""

    async def test_version_is_zero_at_create_and_grows_by_one_per_set(self, kit: Kit) -> None:
        async with kit.connect() as client:
            node = await client.create("/v", b"a")
            assert node.version == 0
            for expected, value in enumerate([b"b", b"b", b"", b"c"], start=1):
                node = await client.set("/v", value)  # an unchanged value still counts
                assert node.version == expected
                got = await client.get("/v")
                assert got is not None and got.version == expected and got.value == value
            await client.set("/v", b"d", version=4)
            got = await client.get("/v")
            assert got is not None and got.version == 5

    async def test_create_revision_stays_and_mod_revision_follows_each_set(self, kit: Kit) -> None:
        async with kit.connect() as client:
            created = await client.create("/m", b"0")
            assert created.create_revision == created.mod_revision > 0
            assert await client.get("/m") == created
            previous = created
            for value in (b"1", b"2"):
                updated = await client.set("/m", value)
                assert updated.create_revision == created.create_revision
                assert updated.mod_revision > previous.mod_revision
                assert await client.get("/m") == updated
                previous = updated
            await client.create("/other", b"")  # other paths leave this node's revisions alone
            assert await client.get("/m") == previous

    async def test_node_has_its_full_path_and_value(self, kit: Kit) -> None:
        async with kit.connect() as client:
            node = await client.create("/p/q/leaf", b"value", make_parents=True)
            assert node.path == "/p/q/leaf" and node.name == "leaf" and node.value == b"value"
            got = await client.get("/p/q/leaf")
            assert got is not None and got.path == "/p/q/leaf" and got.value == b"value"

    async def test_num_children_counts_direct_children(self, kit: Kit) -> None:
        async with kit.connect() as client:
            assert (await client.create("/n", b"")).num_children == 0
            await client.create("/n/a", b"")
            await client.create("/n/b", ephemeral=True)
            await client.create("/n/a/deep", b"")
            parent = await client.get("/n")
            assert parent is not None and parent.num_children == 2
            child = await client.get("/n/a")
            assert child is not None and child.num_children == 1
            await client.delete("/n/b")
            parent = await client.get("/n")
            assert parent is not None and parent.num_children == 1

    async def test_ephemeral_owner_is_the_session_id_and_none_otherwise(self, kit: Kit) -> None:
        async with kit.clients(2) as (owner, other):
            node = await owner.create("/e", b"", ephemeral=True)
            assert node.ephemeral_owner == owner.session.id
            seen = await other.get("/e")
            assert seen is not None and seen.ephemeral_owner == owner.session.id
            assert (await owner.create("/p", b"")).ephemeral_owner is None
            persistent = await other.get("/p")
            assert persistent is not None and persistent.ephemeral_owner is None

    async def test_get_of_missing_node_returns_none(self, kit: Kit) -> None:
        async with kit.connect() as client:
            assert await client.get("/missing") is None
            assert await client.get("/missing/child") is None
            assert not await client.exists("/missing")
            await client.create("/gone", b"")
            await client.delete("/gone")
            assert await client.get("/gone") is None
            assert not await client.exists("/gone")

    async def test_recreated_node_starts_again_at_version_zero(self, kit: Kit) -> None:
        async with kit.connect() as client:
            first = await client.create("/again", b"1")
            await client.set("/again", b"2")
            await client.delete("/again")
            second = await client.create("/again", b"3")
            assert second.version == 0
            assert second.create_revision > first.create_revision
            assert await client.get("/again") == second
