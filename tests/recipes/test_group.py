"""Group: join/leave/members/watch, and members leaving with their sessions."""

from __future__ import annotations

from contextlib import AsyncExitStack

import anyio
import pytest

import coordkit
from coordkit.recipes.group import Group

pytestmark = pytest.mark.anyio


async def test_join_leave_and_members(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as a, coordkit.connect(backend_url) as b:
        first = Group(a, "/groups/web", "w1", b"10.0.0.1")
        second = Group(b, "/groups/web", "w2")
        assert await first.members() == {}
        await first.join()
        await first.join()  # idempotent for the same session
        async with second:
            assert second.joined
            assert await first.members() == {"w1": b"10.0.0.1", "w2": b""}
        assert not second.joined
        assert await first.members() == {"w1": b"10.0.0.1"}
        await first.leave()
        await first.leave()  # a no-op when not joined
        assert await second.members() == {}


async def test_a_member_id_taken_by_another_session_is_refused(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as a, coordkit.connect(backend_url) as b:
        async with Group(a, "/groups/unique", "m"):
            with pytest.raises(coordkit.NodeExistsError):
                await Group(b, "/groups/unique", "m").join()
        with pytest.raises(coordkit.InvalidArgumentError):
            Group(a, "/groups/unique", "a/b")


async def test_an_id_freed_between_our_create_and_our_read_is_joined(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as a, coordkit.connect(backend_url) as b:
        holder = Group(a, "/groups/race", "m")
        await holder.join()
        read = b.get

        async def get_after_the_holder_leaves(path: str, **options: bool) -> coordkit.Node | None:
            # The interleaving under test: B's create failed, then the holder left.
            await holder.leave()
            return await read(path, **options)

        b.get = get_after_the_holder_leaves  # type: ignore[method-assign]
        late = Group(b, "/groups/race", "m")
        await late.join()
        assert late.joined
        node = await read("/groups/race/m")
        assert node is not None and node.ephemeral_owner == b.session.id


async def test_watch_reports_each_membership_change(backend_url: str) -> None:
    async with AsyncExitStack() as stack:
        watcher = await stack.enter_async_context(coordkit.connect(backend_url))
        members = [
            Group(await stack.enter_async_context(coordkit.connect(backend_url)), "/g", f"m{i}")
            for i in range(3)
        ]
        with anyio.fail_after(10):
            async with Group(watcher, "/g", "watcher").watch() as snapshots:
                assert await snapshots.__anext__() == frozenset()
                expected: set[str] = set()
                for member in members:
                    await member.join()
                    expected.add(member.member_id)
                    assert await snapshots.__anext__() == expected
                await members[1].leave()
                assert await snapshots.__anext__() == {"m0", "m2"}


async def test_membership_shrinks_when_a_members_session_expires(backend_url: str) -> None:
    async with (
        coordkit.connect(backend_url) as watcher,
        coordkit.connect(backend_url, session_ttl=1.5) as doomed,
    ):
        if coordkit.Capability.EXPIRE_SESSION not in doomed.capabilities:
            pytest.skip("the backend cannot expire a session on demand")
        await Group(watcher, "/expiry", "stays").join()
        member = Group(doomed, "/expiry", "goes", b"x")
        await member.join()
        with anyio.fail_after(10):
            async with Group(watcher, "/expiry", "stays").watch() as snapshots:
                assert await snapshots.__anext__() == {"stays", "goes"}
                await doomed.expire_session()
                assert await snapshots.__anext__() == {"stays"}
        assert not member.joined
        assert await Group(watcher, "/expiry", "stays").members() == {"stays": b""}
        await member.join()  # a new session may join again
        assert set(await member.members()) == {"stays", "goes"}
