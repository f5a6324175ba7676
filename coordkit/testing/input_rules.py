"""Bad input is refused with a specific error before the backend acts, and changes nothing.

Every call that takes a path (create, get, set, delete, children, exists,
ensure_path, watch, transaction compares and ops) is tried with each invalid
form; the revision and the nodes around are compared before and after.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import PurePosixPath
from typing import Any

from coordkit.client import Client
from coordkit.errors import (
    InvalidArgumentError,
    InvalidPathError,
    NodeExistsError,
    ValueTooLargeError,
    WrongTypeError,
)
from coordkit.paths import DEFAULT_MAX_VALUE_BYTES, MAX_PATH_BYTES
from coordkit.txn import Compare, CreateOp, DeleteOp, GetOp, SetOp

from .harness import ConformanceBase, Kit, assert_unchanged, expect_error, tree_state

__all__ = ["InputRules"]

Call = Callable[[], Awaitable[object]]

#: the nodes every input test creates, then checks unchanged.
_WATCHED = ("/k", "/k/a")


def _path_calls(client: Client, path: Any) -> list[tuple[str, Call]]:
    """Every client call taking ``path``, as (label, call)."""

    async def watch(recursive: bool) -> None:
        async with client.watch(path, recursive=recursive):
            pass

    return [
        ("create", lambda: client.create(path, b"x")),
        ("create(make_parents)", lambda: client.create(path, b"x", make_parents=True)),
        ("create(sequential)", lambda: client.create(path, b"x", sequential=True)),
        ("create(ephemeral)", lambda: client.create(path, b"x", ephemeral=True)),
        ("ensure_path", lambda: client.ensure_path(path)),
        ("get", lambda: client.get(path)),
        ("get(consistent=False)", lambda: client.get(path, consistent=False)),
        ("exists", lambda: client.exists(path)),
        ("children", lambda: client.children(path)),
        ("set", lambda: client.set(path, b"x")),
        ("delete", lambda: client.delete(path)),
        ("delete(recursive)", lambda: client.delete(path, recursive=True)),
        ("watch", lambda: watch(False)),
        ("watch(recursive)", lambda: watch(True)),
        ("txn Compare.exists", lambda: client.txn([Compare.exists(path)])),
        ("txn Compare.version", lambda: client.txn([Compare.version(path, "==", 0)])),
        ("txn CreateOp", lambda: client.txn(success=[CreateOp(path, b"x")])),
        ("txn SetOp", lambda: client.txn(success=[SetOp(path, b"x")])),
        ("txn DeleteOp", lambda: client.txn(success=[DeleteOp(path)])),
        ("txn GetOp", lambda: client.txn(success=[GetOp(path)])),
    ]


def _value_calls(client: Client, value: Any) -> list[tuple[str, Call]]:
    """Every client call taking a value, as (label, call); ``/k/a`` exists, ``/k/new`` not."""
    return [
        ("create", lambda: client.create("/k/new", value)),
        ("create(ephemeral)", lambda: client.create("/k/new", value, ephemeral=True)),
        ("create(sequential)", lambda: client.create("/k/new-", value, sequential=True)),
        ("set", lambda: client.set("/k/a", value)),
        ("set(version)", lambda: client.set("/k/a", value, version=0)),
        ("txn CreateOp", lambda: client.txn(success=[CreateOp("/k/new", value)])),
        ("txn SetOp", lambda: client.txn(success=[SetOp("/k/a", value)])),
    ]


async def _prepare(client: Client) -> None:
    if await client.exists("/k"):  # several checks may share one URL
        return
    await client.create("/k", b"k-value")
    await client.create("/k/a", b"a-value")


async def _assert_rejected(
    kit: Kit, error: type[BaseException], calls: Callable[[Client], list[tuple[str, Call]]]
) -> None:
    """Each call raises ``error``; the revision and the nodes are as before."""
    async with kit.connect() as client:
        await _prepare(client)
        before = await tree_state(client, _WATCHED)
        for label, call in calls(client):
            await expect_error(label, error, call)
        await assert_unchanged(client, before, "rejected input")


async def _assert_path_rejected(kit: Kit, path: Any) -> None:
    await _assert_rejected(kit, InvalidPathError, lambda c: _path_calls(c, path))


class InputRules(ConformanceBase):
    """Paths, values and arguments are checked before the backend; errors change nothing."""

    async def test_relative_path_is_invalid_and_changes_nothing(self, kit: Kit) -> None:
        await _assert_path_rejected(kit, "k/a")

    async def test_empty_path_is_invalid_and_changes_nothing(self, kit: Kit) -> None:
        await _assert_path_rejected(kit, "")

    async def test_path_with_empty_segment_is_invalid_and_changes_nothing(self, kit: Kit) -> None:
        await _assert_path_rejected(kit, "/k//a")

    async def test_path_with_dot_segment_is_invalid_and_changes_nothing(self, kit: Kit) -> None:
        await _assert_path_rejected(kit, "/k/./a")

    async def test_path_with_dotdot_segment_is_invalid_and_changes_nothing(self, kit: Kit) -> None:
        await _assert_path_rejected(kit, "/k/a/..")

    async def test_path_with_trailing_slash_is_invalid_and_changes_nothing(self, kit: Kit) -> None:
        await _assert_path_rejected(kit, "/k/a/")

    async def test_path_over_1024_bytes_is_invalid_and_changes_nothing(self, kit: Kit) -> None:
        path = "/k/" + "a" * (MAX_PATH_BYTES - 2)
        assert len(path.encode()) == MAX_PATH_BYTES + 1
        await _assert_path_rejected(kit, path)

    async def test_path_limit_counts_utf8_bytes_not_characters(self, kit: Kit) -> None:
        path = "/k/" + "\u00e9" * ((MAX_PATH_BYTES - 2) // 2)  # 2 bytes each
        assert len(path) < MAX_PATH_BYTES < len(path.encode())
        await _assert_path_rejected(kit, path)

    async def test_path_that_is_not_utf8_is_invalid_and_changes_nothing(self, kit: Kit) -> None:
        await _assert_path_rejected(kit, "/k/\udc80")  # a lone surrogate cannot be encoded

    async def test_path_with_control_character_is_invalid_and_changes_nothing(
        self, kit: Kit
    ) -> None:
        await _assert_path_rejected(kit, "/k/a\x00b")

    async def test_non_str_path_is_invalid_and_changes_nothing(self, kit: Kit) -> None:
        for path in (b"/k/a", None, 1, PurePosixPath("/k/a")):
            await _assert_path_rejected(kit, path)

    async def test_path_of_exactly_1024_bytes_is_valid(self, kit: Kit) -> None:
        path = "/k/" + "a" * (MAX_PATH_BYTES - 3)
        async with kit.connect() as client:
            await client.create("/k")
            node = await client.create(path, b"long")
            assert node.path == path
            got = await client.get(path)
            assert got is not None and got.value == b"long"
            assert await client.children("/k") == ["a" * (MAX_PATH_BYTES - 3)]

    async def test_non_ascii_path_round_trips(self, kit: Kit) -> None:
        path = "/k/\u00fcn\u00efc\u00f6de-\u2603-\U0001f600"
        async with kit.connect() as client:
            await client.create("/k")
            assert (await client.create(path, b"u")).path == path
            got = await client.get(path)
            assert got is not None and got.path == path and got.value == b"u"
            assert await client.children("/k") == [path.rsplit("/", 1)[1]]

    async def test_value_over_1mib_is_too_large_and_changes_nothing(self, kit: Kit) -> None:
        value = b"x" * (DEFAULT_MAX_VALUE_BYTES + 1)
        await _assert_rejected(kit, ValueTooLargeError, lambda c: _value_calls(c, value))

    async def test_value_limit_is_the_clients_max_value_bytes(self, kit: Kit) -> None:
        async with kit.connect(max_value_bytes=64) as client:
            await _prepare(client)
            before = await tree_state(client, _WATCHED)
            for label, call in _value_calls(client, b"y" * 65):
                await expect_error(label, ValueTooLargeError, call)
            await assert_unchanged(client, before, "the failed call")
            await client.set("/k/a", b"y" * 64)
            node = await client.get("/k/a")
            assert node is not None and node.value == b"y" * 64

    async def test_non_bytes_value_is_wrong_type_and_changes_nothing(self, kit: Kit) -> None:
        def calls_with(value: Any) -> Callable[[Client], list[tuple[str, Call]]]:
            def calls(client: Client) -> list[tuple[str, Call]]:
                compare = Compare.value_is("/k/a", "==", value)
                return [
                    *_value_calls(client, value),
                    ("txn Compare.value_is", lambda: client.txn([compare])),
                ]

            return calls

        for value in ("text", bytearray(b"x"), memoryview(b"x"), None, 7):
            await _assert_rejected(kit, WrongTypeError, calls_with(value))

    async def test_binary_values_round_trip_exactly(self, kit: Kit) -> None:
        values = [b"", b"\x00", bytes(range(256)), b"\xff" * 4096]
        async with kit.connect() as client:
            await client.create("/k")
            for i, value in enumerate(values):
                assert (await client.create(f"/k/{i}", value)).value == value
                got = await client.get(f"/k/{i}")
                assert got is not None and got.value == value
                assert (await client.set(f"/k/{i}", value[::-1])).value == value[::-1]
                got = await client.get(f"/k/{i}")
                assert got is not None and got.value == value[::-1]

    async def test_bad_version_argument_is_rejected_and_changes_nothing(self, kit: Kit) -> None:
        def calls(client: Client) -> list[tuple[str, Call]]:
            return [
                ("set(version=-1)", lambda: client.set("/k/a", b"x", version=-1)),
                ("delete(version=-1)", lambda: client.delete("/k/a", version=-1)),
                ("txn SetOp(version=-1)", lambda: client.txn([], [SetOp("/k/a", b"", -1)])),
            ]

        def wrong_type_calls(client: Client) -> list[tuple[str, Call]]:
            return [
                ("set(version=True)", lambda: client.set("/k/a", b"x", version=True)),
                ("set(version='0')", lambda: client.set("/k/a", b"x", version="0")),  # type: ignore[arg-type]
                ("delete(version=0.0)", lambda: client.delete("/k/a", version=0.0)),  # type: ignore[arg-type]
            ]

        await _assert_rejected(kit, InvalidArgumentError, calls)
        await _assert_rejected(kit, WrongTypeError, wrong_type_calls)

    async def test_non_bool_flag_is_wrong_type_and_changes_nothing(self, kit: Kit) -> None:
        def calls(client: Client) -> list[tuple[str, Call]]:
            return [
                ("create(ephemeral=1)", lambda: client.create("/k/n", ephemeral=1)),  # type: ignore[arg-type]
                ("create(sequential='y')", lambda: client.create("/k/n", sequential="y")),  # type: ignore[arg-type]
                ("create(make_parents=1)", lambda: client.create("/k/x/n", make_parents=1)),  # type: ignore[arg-type]
                ("delete(recursive=1)", lambda: client.delete("/k", recursive=1)),  # type: ignore[arg-type]
                ("get(consistent=0)", lambda: client.get("/k", consistent=0)),  # type: ignore[arg-type]
            ]

        await _assert_rejected(kit, WrongTypeError, calls)

    async def test_root_always_exists_and_cannot_be_created_or_deleted(self, kit: Kit) -> None:
        async with kit.connect() as client:
            await _prepare(client)
            assert await client.exists("/")
            assert await client.get("/") is not None
            assert "k" in await client.children("/")
            before = await tree_state(client, _WATCHED)
            await expect_error("create('/')", NodeExistsError, lambda: client.create("/"))
            await expect_error(
                "delete('/')", InvalidArgumentError, lambda: client.delete("/", recursive=True)
            )
            await expect_error(
                "txn CreateOp('/')", InvalidPathError, lambda: client.txn([], [CreateOp("/")])
            )
            await expect_error(
                "txn DeleteOp('/')", InvalidPathError, lambda: client.txn([], [DeleteOp("/")])
            )
            await assert_unchanged(client, before, "the failed call")
