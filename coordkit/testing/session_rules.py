"""Sessions: ephemeral nodes live exactly as long as their session.

Closing a client ends its session at once; a client that vanishes keeps its
session until the TTL runs out; an expired session's ephemeral nodes go in one
revision, its holder sees it lost, and the client carries on with a new one.
Waits for expiry are bounded watch events or ``wait_lost()``, never sleeps.
"""

from __future__ import annotations

import anyio

from coordkit.backend import SessionState
from coordkit.errors import ClientClosedError
from coordkit.model import Capability, EventType

from .harness import (
    ConformanceBase,
    Kit,
    expect_error,
    expect_quiet,
    monotonic,
    require,
    take_events,
)

__all__ = ["SessionRules"]

_EPHEMERALS = ("/e/1", "/e/2", "/e/3")


class SessionRules(ConformanceBase):
    async def test_each_client_has_its_own_live_session(self, kit: Kit) -> None:
        async with kit.clients(2) as (a, b):
            assert a.session.id != b.session.id
            for client in (a, b):
                assert client.session.state is SessionState.CONNECTED and not client.session.lost
                assert (await client.status()).session_id in (None, client.session.id)

    async def test_close_ends_the_session_and_removes_its_ephemerals_at_once(
        self, kit: Kit
    ) -> None:
        async with kit.connect() as observer:
            await observer.create("/e", b"")
            async with observer.watch("/e", recursive=True) as events:
                async with kit.connect() as owner:
                    session = owner.session
                    for path in _EPHEMERALS:
                        await owner.create(path, ephemeral=True)
                    await owner.create("/e/persistent", b"")
                    await take_events(events, 4, kit.wait_timeout)
                assert session.lost, "the session is not lost after close"
                with anyio.fail_after(kit.wait_timeout):
                    await session.wait_lost()
                # At once: the very next read of another client no longer sees them.
                for path in _EPHEMERALS:
                    assert await observer.get(path) is None, f"{path} outlived close()"
                assert await observer.children("/e") == ["persistent"]
                deleted = await take_events(events, 3, kit.wait_timeout)
                assert {(e.type, e.path) for e in deleted} == {
                    (EventType.DELETED, p) for p in _EPHEMERALS
                }
                assert len({e.revision for e in deleted}) == 1, f"not one revision: {deleted}"

    async def test_ephemerals_of_other_sessions_stay_when_a_client_closes(self, kit: Kit) -> None:
        async with kit.connect() as stays:
            await stays.create("/e", b"")
            mine = await stays.create("/e/mine", ephemeral=True)
            async with kit.connect() as leaves:
                await leaves.create("/e/theirs", ephemeral=True)
            assert await stays.get("/e/mine") == mine
            assert await stays.get("/e/theirs") is None

    async def test_aborted_client_keeps_its_ephemerals_until_the_ttl_then_all_go_in_one_revision(
        self, kit: Kit
    ) -> None:
        async with kit.connect() as observer:
            require(observer, Capability.ABORT)
            await observer.create("/e", b"")
            ttl = kit.short_session_ttl
            async with observer.watch("/e", recursive=True) as events:
                async with kit.connect(session_ttl=ttl) as vanishing:
                    for path in _EPHEMERALS:
                        await vanishing.create(path, ephemeral=True)
                    await take_events(events, 3, kit.wait_timeout)
                    aborted_at = monotonic()
                    await vanishing.abort()
                    # Not at once: the session outlives the connection.
                    for path in _EPHEMERALS:
                        assert await observer.get(path) is not None, f"{path} went at abort()"
                    await expect_error("get after abort", ClientClosedError,
                                       lambda: vanishing.get("/e"))  # fmt: skip
                deleted = await take_events(events, 3, kit.expiry_bound)
                elapsed = monotonic() - aborted_at
                assert {(e.type, e.path) for e in deleted} == {
                    (EventType.DELETED, p) for p in _EPHEMERALS
                }
                assert len({e.revision for e in deleted}) == 1, f"not one revision: {deleted}"
                assert elapsed >= ttl / 4, f"ephemerals went {elapsed:.2f} s after abort, TTL {ttl}"
                assert await observer.children("/e") == []

    async def test_open_client_keeps_its_session_alive_past_the_ttl(self, kit: Kit) -> None:
        ttl = kit.short_session_ttl
        async with kit.connect() as observer, kit.connect(session_ttl=ttl) as owner:
            node = await owner.create("/alive", ephemeral=True)
            async with observer.watch("/alive") as events:
                await expect_quiet(events, 2.5 * ttl)  # several TTLs pass without expiry
            assert not owner.session.lost
            assert await observer.get("/alive") == node

    async def test_expired_session_is_lost_its_ephemerals_go_and_the_client_carries_on(
        self, kit: Kit
    ) -> None:
        async with kit.clients(2) as (observer, client):
            require(client, Capability.EXPIRE_SESSION)
            await observer.create("/e", b"")
            old = client.session
            async with observer.watch("/e", recursive=True) as events:
                for path in _EPHEMERALS:
                    await client.create(path, ephemeral=True)
                await take_events(events, 3, kit.wait_timeout)
                await client.expire_session()
                with anyio.fail_after(kit.wait_timeout):
                    await old.wait_lost()
                assert old.lost and old.state is SessionState.LOST
                deleted = await take_events(events, 3, kit.wait_timeout)
                assert {(e.type, e.path) for e in deleted} == {
                    (EventType.DELETED, p) for p in _EPHEMERALS
                }
                assert len({e.revision for e in deleted}) == 1, f"not one revision: {deleted}"
            for path in _EPHEMERALS:
                assert await observer.get(path) is None
            # The client keeps working, under a new session, which live_session() waits for.
            with anyio.fail_after(kit.wait_timeout):
                live = await client.live_session()
                node = await client.create("/e/again", ephemeral=True)
            new = client.session
            assert live is new, "live_session() did not return the replacing session"
            assert new is not old and new.id != old.id and not new.lost
            assert node.ephemeral_owner == new.id
            assert await observer.get("/e/again") == node
