"""Transactions: compares, then the success or the failure branch, atomically, one revision."""

from __future__ import annotations

from functools import partial

from coordkit.client import Client
from coordkit.errors import BadVersionError, NodeExistsError, NoNodeError, NotEmptyError
from coordkit.model import Capability
from coordkit.txn import Compare, CreateOp, DeleteOp, GetOp, Op, SetOp

from .harness import (
    ConformanceBase,
    Kit,
    assert_unchanged,
    existing_node,
    expect_error,
    require,
    revision_of,
    sequential_counter,
    tree_state,
)

__all__ = ["TxnRules"]


async def _holds(client: Client, *compares: Compare) -> bool:
    """Whether the compares hold, judged by a transaction that changes nothing."""
    return (await client.txn(list(compares))).succeeded


class TxnRules(ConformanceBase):
    async def test_txn_compares_exists_and_missing(self, kit: Kit) -> None:
        async with kit.connect() as client:
            await client.create("/x", b"")
            assert await _holds(client, Compare.exists("/x"))
            assert not await _holds(client, Compare.missing("/x"))
            assert await _holds(client, Compare.missing("/none"))
            assert not await _holds(client, Compare.exists("/none"))
            assert not await _holds(client, Compare.exists("/x"), Compare.exists("/none"))

    async def test_txn_compares_version_with_each_operator(self, kit: Kit) -> None:
        async with kit.connect() as client:
            await client.create("/v", b"")
            await client.set("/v", b"")
            await client.set("/v", b"")  # version 2
            for op, value, expected in [
                ("==", 2, True), ("==", 1, False), ("!=", 1, True), ("!=", 2, False),
                ("<", 3, True), ("<", 2, False), (">", 1, True), (">", 2, False),
            ]:  # fmt: skip
                assert await _holds(client, Compare.version("/v", op, value)) is expected, (
                    f"version 2 {op} {value} should be {expected}"
                )

    async def test_txn_compares_create_revision(self, kit: Kit) -> None:
        async with kit.connect() as client:
            require(client, Capability.TXN_REVISION_COMPARE)
            created = (await client.create("/cr", b"")).create_revision
            await client.set("/cr", b"changed")  # leaves create_revision alone
            assert await _holds(client, Compare.create_revision("/cr", "==", created))
            assert await _holds(client, Compare.create_revision("/cr", "<", created + 1))
            assert await _holds(client, Compare.create_revision("/cr", ">", created - 1))
            assert not await _holds(client, Compare.create_revision("/cr", "!=", created))
            assert not await _holds(client, Compare.create_revision("/cr", ">", created))

    async def test_txn_compares_mod_revision(self, kit: Kit) -> None:
        async with kit.connect() as client:
            require(client, Capability.TXN_REVISION_COMPARE)
            await client.create("/mr", b"")
            modified = (await client.set("/mr", b"1")).mod_revision
            assert await _holds(client, Compare.mod_revision("/mr", "==", modified))
            assert await _holds(client, Compare.mod_revision("/mr", ">", modified - 1))
            await client.set("/mr", b"2")
            assert not await _holds(client, Compare.mod_revision("/mr", "==", modified))
            assert await _holds(client, Compare.mod_revision("/mr", ">", modified))

    async def test_txn_compares_value(self, kit: Kit) -> None:
        async with kit.connect() as client:
            require(client, Capability.TXN_VALUE_COMPARE)
            await client.create("/val", b"banana")
            assert await _holds(client, Compare.value_is("/val", "==", b"banana"))
            assert not await _holds(client, Compare.value_is("/val", "==", b"apple"))
            assert await _holds(client, Compare.value_is("/val", "!=", b"apple"))
            assert await _holds(client, Compare.value_is("/val", ">", b"apple"))
            assert await _holds(client, Compare.value_is("/val", "<", b"cherry"))
            assert not await _holds(client, Compare.value_is("/val", "<", b"banana"))

    async def test_txn_compare_on_a_missing_node_holds_only_for_missing(self, kit: Kit) -> None:
        async with kit.connect() as client:
            compares = [Compare.version("/none", op, 0) for op in ("==", "!=", "<", ">")]
            if Capability.TXN_REVISION_COMPARE in client.capabilities:
                compares += [
                    Compare.create_revision("/none", "==", 0),
                    Compare.mod_revision("/none", "<", 1 << 62),
                ]
            if Capability.TXN_VALUE_COMPARE in client.capabilities:
                compares += [
                    Compare.value_is("/none", "==", b""),
                    Compare.value_is("/none", "!=", b"x"),
                ]
            for compare in compares:
                assert not await _holds(client, compare), f"{compare} held on a missing node"
            assert await _holds(client, Compare.missing("/none"))

    async def test_txn_runs_the_success_branch_only_when_every_compare_holds(
        self, kit: Kit
    ) -> None:
        async with kit.connect() as client:
            await client.create("/b", b"0")
            before = await tree_state(client, ["/b", "/b/new"])
            ops: list[Op] = [SetOp("/b", b"1"), CreateOp("/b/new", b"")]
            failed = await client.txn([Compare.exists("/b"), Compare.version("/b", "==", 9)], ops)
            assert not failed.succeeded and failed.results == ()
            await assert_unchanged(client, before, "the failed call")
            passed = await client.txn([Compare.exists("/b"), Compare.version("/b", "==", 0)], ops)
            assert passed.succeeded
            assert (await existing_node(client, "/b")).value == b"1"
            assert await client.exists("/b/new")

    async def test_txn_runs_the_failure_branch_when_a_compare_fails(self, kit: Kit) -> None:
        async with kit.connect() as client:
            require(client, Capability.TXN_ELSE)
            await client.create("/b", b"0")
            before = await revision_of(client)
            result = await client.txn(
                [Compare.missing("/b")],
                [CreateOp("/b/success", b"")],
                [SetOp("/b", b"else"), CreateOp("/b/failure", b"f"), GetOp("/b")],
            )
            assert not result.succeeded
            assert result.revision > before
            set_node, created, read = result.results
            assert set_node is not None and set_node.value == b"else"
            assert set_node.mod_revision == result.revision
            assert created is not None and created.create_revision == result.revision
            assert read is not None and read.path == "/b"
            assert await client.children("/b") == ["failure"]
            assert await client.get("/b/failure") == created

    async def test_txn_op_error_raises_it_and_changes_nothing(self, kit: Kit) -> None:
        async with kit.connect() as client:
            await client.create("/a", b"a")
            await client.create("/a/child", b"")
            paths = ["/a", "/a/child", "/a/new", "/a/new2"]
            before = await tree_state(client, paths)
            cases: list[tuple[str, type[Exception], list[Op]]] = [
                ("create existing", NodeExistsError,
                 [CreateOp("/a/new"), SetOp("/a", b"x"), CreateOp("/a/child")]),
                ("create without parent", NoNodeError, [SetOp("/a", b"x"), CreateOp("/z/y")]),
                ("set missing", NoNodeError, [CreateOp("/a/new"), SetOp("/a/none", b"")]),
                ("set bad version", BadVersionError,
                 [CreateOp("/a/new"), SetOp("/a", b"x", version=7)]),
                ("delete bad version", BadVersionError,
                 [SetOp("/a", b"x"), DeleteOp("/a/child", version=3)]),
                ("delete missing", NoNodeError, [CreateOp("/a/new"), DeleteOp("/a/none")]),
                ("delete non-empty", NotEmptyError, [CreateOp("/a/new2"), DeleteOp("/a")]),
            ]  # fmt: skip
            for label, error, ops in cases:
                await expect_error(label, error, partial(client.txn, [Compare.exists("/a")], ops))
                await assert_unchanged(client, before, f"txn {label}")

    async def test_txn_op_error_in_the_failure_branch_raises_it_and_changes_nothing(
        self, kit: Kit
    ) -> None:
        async with kit.connect() as client:
            require(client, Capability.TXN_ELSE)
            await client.create("/a", b"a")
            before = await tree_state(client, ["/a", "/a/new"])
            await expect_error(
                "failure branch",
                NodeExistsError,
                lambda: client.txn(
                    [Compare.missing("/a")], [], [CreateOp("/a/new"), CreateOp("/a")]
                ),
            )
            await assert_unchanged(client, before, "the failed call")

    async def test_txn_results_have_one_entry_per_op_in_order(self, kit: Kit) -> None:
        async with kit.connect() as client:
            await client.create("/o", b"")
            await client.create("/o/set", b"old")
            await client.create("/o/del", b"")
            read_me = await client.create("/o/read", b"r")
            result = await client.txn(
                [],
                [
                    CreateOp("/o/new", b"n"),
                    SetOp("/o/set", b"new", version=0),
                    DeleteOp("/o/del", version=0),
                    GetOp("/o/read"),
                    GetOp("/o/none"),
                ],
            )
            assert result.succeeded and len(result.results) == 5
            created, updated, deleted, read, missing = result.results
            assert created == await client.get("/o/new") and created is not None
            assert created.value == b"n" and created.version == 0
            assert updated == await client.get("/o/set") and updated is not None
            assert updated.version == 1 and updated.mod_revision == result.revision
            assert deleted is None and await client.get("/o/del") is None
            assert read == read_me
            assert missing is None

    async def test_txn_creates_sequential_and_ephemeral_nodes(self, kit: Kit) -> None:
        async with kit.connect() as observer:
            await observer.create("/q", b"")
            async with kit.connect() as client:
                result = await client.txn(
                    [],
                    [
                        CreateOp("/q/item-", b"1", sequential=True),
                        CreateOp("/q/item-", b"2", sequential=True),
                        CreateOp("/q/mine", b"", ephemeral=True),
                        CreateOp("/q/both-", b"", ephemeral=True, sequential=True),
                    ],
                )
                first, second, mine, both = result.results
                assert first is not None and second is not None
                assert mine is not None and both is not None
                counters = [
                    sequential_counter(first.path, "/q/item-"),
                    sequential_counter(second.path, "/q/item-"),
                    sequential_counter(both.path, "/q/both-"),
                ]
                assert counters == sorted(set(counters)), counters
                after = await client.create("/q/item-", sequential=True)
                assert sequential_counter(after.path, "/q/item-") > counters[-1]
                assert mine.ephemeral_owner == both.ephemeral_owner == client.session.id
                assert first.ephemeral_owner is None
            assert await observer.get(mine.path) is None, "txn ephemeral outlived its session"
            assert await observer.get(both.path) is None
            assert await observer.get(first.path) == first
