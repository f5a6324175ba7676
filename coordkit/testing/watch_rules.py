"""Watches: every change of a node or subtree, in revision order, none lost or repeated.

Backends without ``WATCH_EVERY_CHANGE`` (ZooKeeper) may fold a state that is
overwritten before they read it; the order, no-repeat and real-state rules
are checked for every backend, folding or not.

A watch is in place once ``async with client.watch(...)`` has entered. To prove
that *nothing else* arrives, tests end with a "fence": one more write inside
the watched scope, which must be the very next event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar

import anyio
import pytest

from coordkit.client import Client
from coordkit.errors import CompactedError
from coordkit.model import Capability, Event, EventType, Node

from .harness import (
    ConformanceBase,
    Kit,
    event_key,
    expect_error,
    gather_events,
    next_event,
    require,
    revision_of,
    take_events,
)

__all__ = ["WatchRules"]

CREATED, UPDATED, DELETED = EventType.CREATED, EventType.UPDATED, EventType.DELETED


def _assert_event(event: Event, type_: EventType, node: Node) -> None:
    """``event`` is the ``type_`` change that produced ``node``."""
    revision = node.create_revision if type_ is CREATED else node.mod_revision
    assert (event.type, event.path, event.revision) == (type_, node.path, revision), event
    assert event.node == node, f"event carries {event.node}, the write returned {node}"


class WatchRules(ConformanceBase):
    #: clients writing concurrently in the ordering test, tasks per client, and
    #: updates per task (each task creates its node, updates it, deletes it).
    watch_writer_clients: ClassVar[int] = 4
    watch_tasks_per_client: ClassVar[int] = 3
    watch_updates_per_task: ClassVar[int] = 8

    async def test_node_watch_sees_created_updated_deleted_with_their_revisions(
        self, kit: Kit
    ) -> None:
        async with kit.clients(2) as (watcher, writer):
            require(watcher, Capability.WATCH_EVERY_CHANGE)
            async with watcher.watch("/w") as events:
                created = await writer.create("/w", b"1")
                updated = await writer.set("/w", b"2")
                await writer.delete("/w")
                deleted_by = await revision_of(writer)
                got = await take_events(events, 3, kit.wait_timeout)
            _assert_event(got[0], CREATED, created)
            _assert_event(got[1], UPDATED, updated)
            deleted = got[2]
            assert (deleted.type, deleted.path) == (DELETED, "/w"), deleted
            assert updated.mod_revision < deleted.revision <= deleted_by, deleted
            if deleted.node is not None:  # the node as it was, when the backend knows it
                assert deleted.node.path == "/w" and deleted.node.value == b"2", deleted

    async def test_node_watch_ignores_children_and_other_paths(self, kit: Kit) -> None:
        async with kit.clients(2) as (watcher, writer):
            async with watcher.watch("/w") as events:
                created = await writer.create("/w", b"")
                await writer.create("/w/child", b"")
                await writer.set("/w/child", b"x")
                await writer.create("/wx", b"")
                await writer.create("/other", b"")
                await writer.delete("/w/child")
                fence = await writer.set("/w", b"fence")
                got = await take_events(events, 2, kit.wait_timeout)
            _assert_event(got[0], CREATED, created)
            _assert_event(got[1], UPDATED, fence)

    async def test_recursive_watch_sees_the_whole_subtree_and_nothing_outside(
        self, kit: Kit
    ) -> None:
        async with kit.clients(2) as (watcher, writer):
            require(watcher, Capability.WATCH_EVERY_CHANGE)
            async with watcher.watch("/s", recursive=True) as events:
                writes = [
                    (CREATED, await writer.create("/s", b"")),
                    (CREATED, await writer.create("/s/a", b"")),
                    (CREATED, await writer.create("/s/a/b", b"")),
                    (UPDATED, await writer.set("/s/a/b", b"x")),
                ]
                await writer.create("/sx", b"outside, sharing the prefix")
                await writer.create("/sx/y", b"")
                await writer.delete("/s", recursive=True)
                fence = await writer.create("/s", b"fence")
                got = await take_events(events, len(writes) + 4, kit.wait_timeout)
            for event, (type_, node) in zip(got, writes, strict=False):
                _assert_event(event, type_, node)
            deleted = got[len(writes) : -1]
            assert {(e.type, e.path) for e in deleted} == {
                (DELETED, p) for p in ("/s", "/s/a", "/s/a/b")
            }, deleted
            assert len({e.revision for e in deleted}) == 1
            assert writes[-1][1].mod_revision < deleted[0].revision < fence.create_revision
            _assert_event(got[-1], CREATED, fence)

    async def test_watch_is_established_when_entered(self, kit: Kit) -> None:
        async with kit.clients(2) as (watcher, writer):
            for i in range(3):
                for recursive in (False, True):
                    path = f"/est-{i}-{recursive}"
                    async with watcher.watch(path, recursive=recursive) as events:
                        node = await writer.create(path, b"")  # right after entering
                        _assert_event(await next_event(events, kit.wait_timeout), CREATED, node)

    async def test_watch_delivers_events_in_order_none_lost_or_repeated_under_concurrent_writes(
        self, kit: Kit
    ) -> None:
        updates = self.watch_updates_per_task
        tasks = self.watch_writer_clients * self.watch_tasks_per_client
        total = tasks * (updates + 2)
        # (type, path, revision) of every create/update; deletes report no revision.
        written: list[tuple[EventType, str, int]] = []
        deleted_paths: list[str] = []

        async def write(client: Client, path: str) -> None:
            node = await client.create(path, b"0")
            written.append((CREATED, path, node.create_revision))
            for n in range(1, updates + 1):
                node = await client.set(path, str(n).encode(), version=n - 1)
                written.append((UPDATED, path, node.mod_revision))
            await client.delete(path, version=updates)
            deleted_paths.append(path)

        async def collect(events: AsyncIterator[Event], into: list[Event], count: int) -> None:
            into.extend(await gather_events(events, count, kit.wait_timeout))

        one_path = "/load/c0-t0"
        async with kit.connect() as watcher, kit.clients(self.watch_writer_clients) as writers:
            require(watcher, Capability.WATCH_EVERY_CHANGE)
            await writers[0].create("/load", b"")
            everything: list[Event] = []
            one: list[Event] = []
            async with (
                watcher.watch("/load", recursive=True) as events,
                watcher.watch(one_path) as one_events,
            ):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(collect, events, everything, total)
                    tg.start_soon(collect, one_events, one, updates + 2)
                    async with anyio.create_task_group() as writing:
                        for c, client in enumerate(writers):
                            for t in range(self.watch_tasks_per_client):
                                writing.start_soon(write, client, f"/load/c{c}-t{t}")
                lost, lost_one = total - len(everything), updates + 2 - len(one)
                assert not lost, f"the subtree watch lost {lost} of {total} events"
                assert not lost_one, f"the node watch lost {lost_one} of {updates + 2} events"
                fence = await writers[0].set("/load", b"fence")
                _assert_event(await next_event(events, kit.wait_timeout), UPDATED, fence)
                fence_one = await writers[0].create(one_path, b"fence")
                _assert_event(await next_event(one_events, kit.wait_timeout), CREATED, fence_one)

        revisions = [e.revision for e in everything]
        assert revisions == sorted(revisions), "events out of revision order"
        assert len(set(revisions)) == len(revisions), "an event was repeated"
        seen = [event_key(e) for e in everything if e.type is not DELETED]
        assert sorted(seen, key=lambda k: k[2]) == sorted(written, key=lambda k: k[2])
        by_path: dict[str, list[Event]] = {}
        for event in everything:
            by_path.setdefault(event.path, []).append(event)
        assert sorted(by_path) == sorted(deleted_paths)
        for path, path_events in by_path.items():
            types = [e.type for e in path_events]
            assert types == [CREATED] + [UPDATED] * updates + [DELETED], (path, types)
            for n, event in enumerate(path_events[1:-1], start=1):
                assert event.node is not None and event.node.value == str(n).encode(), event
        assert [event_key(e) for e in one] == [event_key(e) for e in by_path[one_path]]

    async def test_watch_keeps_order_and_real_states_when_writes_outrun_it(self, kit: Kit) -> None:
        """What every backend guarantees, folding or not (see ``WATCH_EVERY_CHANGE``).

        Under concurrent writes: revision order, no repeats, every create/update
        event a real state with the revision that produced it, each node's
        history in order and ending with its delete, and nothing after a fence
        arriving before it.
        """
        updates = self.watch_updates_per_task
        written: dict[str, list[Node]] = {}

        async def write(client: Client, path: str) -> None:
            states = written.setdefault(path, [])
            states.append(await client.create(path, b"0"))
            for n in range(1, updates + 1):
                states.append(await client.set(path, str(n).encode(), version=n - 1))
            await client.delete(path, version=updates)

        events: list[Event] = []
        async with kit.connect() as watcher, kit.clients(self.watch_writer_clients) as writers:
            await writers[0].create("/fold", b"")
            async with watcher.watch("/fold", recursive=True) as stream:
                async with anyio.create_task_group() as tg:
                    for c, client in enumerate(writers):
                        for t in range(self.watch_tasks_per_client):
                            tg.start_soon(write, client, f"/fold/c{c}-t{t}")
                last_write = await revision_of(writers[0])
                fence = await writers[0].set("/fold", b"fence")
                with anyio.fail_after(kit.wait_timeout):
                    async for event in stream:
                        if event.path == "/fold":
                            break
                        events.append(event)
                _assert_event(event, UPDATED, fence)

        revisions = [e.revision for e in events]
        assert revisions == sorted(revisions), "events out of revision order"
        keys = [event_key(e) for e in events]
        assert len(set(keys)) == len(keys), "an event was repeated"
        assert {e.path for e in events} <= set(written), "an event for a path never written"
        for path, states in written.items():
            history = [e for e in events if e.path == path]
            if not history:
                continue  # lived and died between two reads of a folding backend
            *changes, deleted = history
            assert changes, f"{path}: a delete without the create before it: {history}"
            assert deleted.type is DELETED, history
            assert changes[-1].revision < deleted.revision <= last_write, history
            assert changes[0].type is CREATED, history
            assert all(e.type is UPDATED for e in changes[1:]), history
            for event in changes:
                assert event.node in states, f"not a state that was written: {event}"
                assert event.node is not None and event.revision == event.node.mod_revision
            versions = [e.node.version for e in changes if e.node is not None]
            assert versions == sorted(set(versions)), f"{path}: states out of order: {versions}"

    async def test_watch_from_a_past_revision_replays_history_then_continues_live(
        self, kit: Kit
    ) -> None:
        async with kit.connect() as client:
            require(client, Capability.WATCH_FROM_REVISION)
            first = await client.create("/h", b"0")
            history = [
                (CREATED, first),
                (UPDATED, await client.set("/h", b"1")),
                (CREATED, await client.create("/h/c", b"")),
                (UPDATED, await client.set("/h/c", b"c")),
                (UPDATED, await client.set("/h", b"2")),
            ]
            await client.create("/elsewhere", b"")
            start = history[1][1].mod_revision
            async with client.watch("/h", recursive=True, start_revision=start) as events:
                replayed = await take_events(events, len(history) - 1, kit.wait_timeout)
                for event, (type_, node) in zip(replayed, history[1:], strict=True):
                    _assert_event(event, type_, node)
                live = await client.set("/h", b"live")  # then the live stream, no gap, no repeat
                _assert_event(await next_event(events, kit.wait_timeout), UPDATED, live)
            async with client.watch("/h/c", start_revision=first.create_revision) as events:
                for event, (type_, node) in zip(
                    await take_events(events, 2, kit.wait_timeout),
                    history[2:4],
                    strict=True,
                ):
                    _assert_event(event, type_, node)
                fence = await client.set("/h/c", b"fence")
                _assert_event(await next_event(events, kit.wait_timeout), UPDATED, fence)

    async def test_watch_resumed_from_last_revision_plus_one_misses_nothing(self, kit: Kit) -> None:
        async with kit.clients(2) as (watcher, writer):
            require(watcher, Capability.WATCH_FROM_REVISION)
            await writer.create("/res", b"")
            async with watcher.watch("/res", recursive=True) as events:
                first = await writer.create("/res/a", b"")
                last_seen = (await next_event(events, kit.wait_timeout)).revision
                assert last_seen == first.create_revision
            missed = [await writer.create("/res/b", b""), await writer.set("/res/a", b"x")]
            async with watcher.watch("/res", recursive=True, start_revision=last_seen + 1) as ev:
                got = await take_events(ev, 2, kit.wait_timeout)
                _assert_event(got[0], CREATED, missed[0])
                _assert_event(got[1], UPDATED, missed[1])

    async def test_watch_from_a_compacted_revision_raises_compacted(self, kit: Kit) -> None:
        async with kit.connect() as client:
            require(client, Capability.WATCH_FROM_REVISION)
            first = await client.create("/cp", b"0")
            await client.set("/cp", b"1")
            await client.set("/cp", b"2")
            last = await client.set("/cp", b"3")
            if not await self.compact(client, last.mod_revision):
                pytest.skip(
                    f"no way to compact {type(client.backend).__name__} from a test "
                    "(override BackendConformance.compact to enable this test)"
                )

            async def watch_from_first() -> None:
                async with client.watch("/cp", start_revision=first.create_revision) as events:
                    await next_event(events, kit.wait_timeout)

            error = await expect_error("watch from compacted", CompactedError, watch_from_first)
            assert isinstance(error, CompactedError)
            oldest = error.compact_revision
            assert oldest == 0 or first.create_revision < oldest <= last.mod_revision, oldest
            async with client.watch("/cp", start_revision=last.mod_revision) as events:
                _assert_event(await next_event(events, kit.wait_timeout), UPDATED, last)
