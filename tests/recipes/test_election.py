"""Election: failover on a dead leader, observe() without gaps, leader(), FIFO hand-over."""

from __future__ import annotations

from contextlib import AsyncExitStack, aclosing

import anyio
import pytest

import coordkit
from coordkit import Capability
from coordkit.recipes.election import Election

pytestmark = pytest.mark.anyio

TTL = 1.5


async def _wait_candidates(election: Election, count: int) -> None:
    """Until ``count`` candidates have entered.

    The generic layout lives under the election's path, so its watch wakes us
    on each entry. A native election (etcd's) keeps its keys outside the
    coordkit tree, where no coordkit watch reaches: there we look again after
    a moment. (Until EtcdElection offers ``contenders()``, its private
    ``_contender_values()`` answers the same question.)
    """
    contenders = getattr(election, "contenders", None) or getattr(
        election, "_contender_values", None
    )
    if contenders is None:
        pytest.skip(f"{type(election).__name__} cannot list its candidates")
    if type(election) is not Election:
        while len(await contenders()) < count:  # noqa: ASYNC110 (no event to wait on)
            await anyio.sleep(0.01)
        return
    async with election.client.watch(election.path, recursive=True) as events:
        if len(await contenders()) >= count:
            return
        async for _ in events:
            if len(await contenders()) >= count:
                return


async def test_leader_reports_the_current_leader(backend_url: str) -> None:
    async with coordkit.connect(backend_url) as a, coordkit.connect(backend_url) as b:
        first, second = Election(a, "/el/who", "a"), Election(b, "/el/who", "b")
        assert await first.leader() is None
        await first.campaign()
        assert first.is_leader and first.token is not None
        assert await second.leader() == "a"
        await first.resign()
        assert not first.is_leader and first.token is None
        assert await second.leader() is None
        await first.resign()  # a no-op when not leading


async def test_resign_hands_over_in_fifo_order(backend_url: str) -> None:
    order: list[str] = []
    tokens: list[int] = []
    async with AsyncExitStack() as stack:
        names = ["a", "b", "c", "d"]
        elections = [
            Election(await stack.enter_async_context(coordkit.connect(backend_url)), "/el/fifo", n)
            for n in names
        ]
        resign = {n: anyio.Event() for n in names}

        async def candidate(election: Election) -> None:
            await election.campaign()
            order.append(election.identity)
            assert election.token is not None
            tokens.append(election.token)
            await resign[election.identity].wait()
            await election.resign()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for count, election in enumerate(elections, start=1):
                    tg.start_soon(candidate, election)
                    await _wait_candidates(elections[0], count)  # queue them in this order
                for name in names:
                    resign[name].set()
    assert order == names
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


async def test_observe_sees_every_leader_in_order_without_repeats(backend_url: str) -> None:
    async with AsyncExitStack() as stack:
        observer = await stack.enter_async_context(coordkit.connect(backend_url))
        names = ["a", "b", "c"]
        elections = [
            Election(await stack.enter_async_context(coordkit.connect(backend_url)), "/el/obs", n)
            for n in names
        ]
        seen: list[str | None] = []
        hand_over = anyio.Event()

        async def candidate(election: Election) -> None:
            await election.campaign()
            await hand_over.wait()
            await election.resign()  # each leader resigns as soon as it leads

        with anyio.fail_after(20):
            async with (
                aclosing(Election(observer, "/el/obs", "observer").observe()) as leaders,
                anyio.create_task_group() as tg,
            ):
                seen.append(await leaders.__anext__())
                for count, election in enumerate(elections, start=1):
                    tg.start_soon(candidate, election)
                    await _wait_candidates(election, count)
                    if count == 1:
                        seen.append(await leaders.__anext__())
                # Three hand-overs in quick succession, then nobody: each leader is seen.
                hand_over.set()
                for _ in range(3):
                    seen.append(await leaders.__anext__())
    assert seen == [None, "a", "b", "c", None]


@pytest.mark.parametrize("fault", ["expire_session", "abort"])
async def test_a_dead_leader_is_replaced_within_the_ttl(backend_url: str, fault: str) -> None:
    capability = {
        "expire_session": coordkit.Capability.EXPIRE_SESSION,
        "abort": coordkit.Capability.ABORT,
    }[fault]
    async with (
        coordkit.connect(backend_url, session_ttl=TTL, timeout=2.0) as doomed,
        coordkit.connect(backend_url, session_ttl=TTL) as heir_client,
        coordkit.connect(backend_url) as observer,
    ):
        if capability not in doomed.capabilities:
            pytest.skip(f"the backend lacks {capability.value}")
        old, heir = Election(doomed, "/el/fail", "old"), Election(heir_client, "/el/fail", "heir")
        body: list[str] = []
        leading, heir_leads, old_done = anyio.Event(), anyio.Event(), anyio.Event()
        seen: list[str | None] = []

        async def lead() -> None:
            try:
                async with old:
                    leading.set()
                    body.append("started")
                    await anyio.sleep_forever()
            except coordkit.LockLostError:
                body.append("lost")
            finally:
                old_done.set()

        heir_tokens: list[int | None] = []

        async def succeed() -> None:
            await heir.campaign()
            heir_tokens.append(heir.token)  # while leading (after the clients close it is None)
            heir_leads.set()

        async with (
            aclosing(Election(observer, "/el/fail", "o").observe()) as leaders,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(lead)
            await leading.wait()
            seen.append(await leaders.__anext__())
            old_token = old.token
            tg.start_soon(succeed)
            await _wait_candidates(heir, 2)
            await getattr(doomed, fault)()
            with anyio.fail_after(TTL + 3):
                seen.append(await leaders.__anext__())
                await heir_leads.wait()
                if fault == "expire_session":
                    await old_done.wait()
            tg.cancel_scope.cancel()  # after abort the old process is simply gone
    assert seen == ["old", "heir"]
    (heir_token,) = heir_tokens
    assert heir_token is not None and old_token is not None and heir_token > old_token
    if fault == "expire_session":
        assert body == ["started", "lost"]
        assert old.lost and not old.is_leader


async def test_a_leader_whose_session_expired_can_campaign_again(backend_url: str) -> None:
    async with coordkit.connect(backend_url, session_ttl=2.0) as client:
        if Capability.EXPIRE_SESSION not in client.capabilities:
            pytest.skip(f"{type(client.backend).__name__} cannot expire a session on demand")
        election = Election(client, "/election/again", "a")
        with anyio.fail_after(10):
            await election.campaign()
            first = election.token
            assert first is not None
            await client.expire_session()
            await election.wait_lost()
            assert not election.is_leader and election.lost
            assert election.token is None  # no fencing token without leadership
            await election.campaign()  # no resign() needed first
        assert election.is_leader and not election.lost
        assert election.token is not None and election.token > first
        await election.resign()
        assert await election.leader() is None
