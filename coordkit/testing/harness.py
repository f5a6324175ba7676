"""What every rule class of the conformance kit shares: fixtures, hooks, helpers.

A rule class is a plain class of ``async def test_*`` methods, each pinning
one rule of the backend contract (see :mod:`coordkit.backend`). It talks to the
backend only through the public :class:`~coordkit.Client`, so the same test
proves the same rule on every backend.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import anyio
import pytest

import coordkit
from coordkit.client import Client
from coordkit.model import Capability, Event, EventType, Node
from coordkit.paths import SEQUENCE_DIGITS

__all__ = [
    "ConformanceBase",
    "Kit",
    "TreeState",
    "assert_unchanged",
    "existing_node",
    "expect_error",
    "gather_events",
    "next_event",
    "require",
    "revision_of",
    "sequential_counter",
    "take_events",
    "tree_state",
]


@dataclass(frozen=True)
class Kit:
    """The backend under test, as one conformance test sees it.

    ``url`` is fresh and isolated for this test (the ``backend_url`` fixture);
    ``options`` are the keyword arguments of :func:`coordkit.connect` the
    backend author chose (``connect_options`` fixture).
    """

    url: str
    options: Mapping[str, Any]
    #: TTL (seconds) of the sessions that tests let expire.
    short_session_ttl: float
    #: bound (seconds) on any single wait for something the rule promises.
    wait_timeout: float

    def connect(self, **overrides: Any) -> Client:
        """A new client of the backend under test (enter it with ``async with``)."""
        return coordkit.connect(self.url, **{**self.options, **overrides})

    @asynccontextmanager
    async def clients(self, count: int, **overrides: Any) -> AsyncIterator[list[Client]]:
        """``count`` open clients, each with its own connection and session."""
        async with AsyncExitStack() as stack:
            yield [await stack.enter_async_context(self.connect(**overrides)) for _ in range(count)]

    @property
    def expiry_bound(self) -> float:
        """How long a session of ``short_session_ttl`` may take to be expired."""
        return 3 * self.short_session_ttl + self.wait_timeout


class ConformanceBase:
    """Fixtures and hooks shared by every rule class.

    Subclasses (through :class:`~coordkit.testing.BackendConformance`) must
    provide a ``backend_url`` fixture returning a fresh, isolated URL per test,
    and an ``anyio_backend`` fixture (``"asyncio"``, ``"trio"``, or both).
    """

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]

    #: TTL (seconds) of the sessions that tests let expire; raise it for
    #: servers with a minimum session timeout (ZooKeeper: 2 * tickTime).
    short_session_ttl: ClassVar[float] = 1.0
    #: bound (seconds) on any single wait for an event the contract promises.
    wait_timeout: ClassVar[float] = 10.0

    #: bound (seconds) on a whole test, so a backend that hangs fails the
    #: test (with the traceback of the hanging call) instead of the run.
    test_timeout: ClassVar[float] = 120.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, test in list(vars(cls).items()):
            if name.startswith("test_") and inspect.iscoroutinefunction(test):
                setattr(cls, name, _bounded(test))

    @pytest.fixture
    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for :func:`coordkit.connect` (override to tune)."""
        return {}

    @pytest.fixture
    def kit(self, backend_url: str, connect_options: dict[str, Any]) -> Kit:
        return Kit(backend_url, dict(connect_options), self.short_session_ttl, self.wait_timeout)

    async def compact(self, client: Client, revision: int) -> bool:
        """Discard the watch history before ``revision``, if a test can make the backend do so.

        Return ``True`` once revisions below ``revision`` are compacted (a watch
        from them raises :class:`~coordkit.CompactedError`), ``False`` if this
        backend offers no way to do it from a test: the compaction test then
        skips. Backend authors override this.
        """
        return False


def _bounded(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """``test`` failing with TimeoutError after ``self.test_timeout`` seconds.

    ``functools.wraps`` keeps the signature pytest reads to pass fixtures.
    """
    if getattr(test, "__conformance_bounded__", False):
        return test

    @functools.wraps(test)
    async def run(self: ConformanceBase, *args: Any, **kwargs: Any) -> None:
        with anyio.fail_after(self.test_timeout):
            await test(self, *args, **kwargs)

    run.__conformance_bounded__ = True  # type: ignore[attr-defined]
    return run


# -- helpers -------------------------------------------------------------------


def require(client: Client, capability: Capability) -> None:
    """Skip the test, naming the capability, unless the backend declares it."""
    if capability not in client.capabilities:
        pytest.skip(f"{type(client.backend).__name__} lacks capability {capability.value!r}")


async def revision_of(client: Client) -> int:
    """The backend's current revision, as ``status()`` reports it."""
    return (await client.status()).revision


async def existing_node(client: Client, path: str) -> Node:
    """The node at ``path``, failing the test if it is missing."""
    node = await client.get(path)
    assert node is not None, f"{path} is missing"
    return node


async def next_event(events: AsyncIterator[Event], timeout: float) -> Event:
    """The next event of a watch; fails the test if none comes within ``timeout``."""
    try:
        with anyio.fail_after(timeout):
            return await events.__anext__()
    except TimeoutError:
        pytest.fail(f"no watch event within {timeout} s")
    except StopAsyncIteration:
        pytest.fail("the watch ended while an event was expected")


async def take_events(events: AsyncIterator[Event], count: int, timeout: float) -> list[Event]:
    """The next ``count`` events of a watch, each within ``timeout``."""
    return [await next_event(events, timeout) for _ in range(count)]


async def gather_events(events: AsyncIterator[Event], count: int, timeout: float) -> list[Event]:
    """Up to ``count`` events; stops early when none comes for ``timeout`` s.

    Unlike :func:`take_events` it never fails the test, so it can run in a
    task beside the writers; the caller asserts on what arrived.
    """
    got: list[Event] = []
    while len(got) < count:
        with anyio.move_on_after(timeout) as scope:
            try:
                event = await events.__anext__()
            except StopAsyncIteration:
                break
        if scope.cancelled_caught:
            break
        got.append(event)
    return got


async def expect_quiet(events: AsyncIterator[Event], seconds: float) -> None:
    """Fail if the watch yields any event within ``seconds`` (for "nothing happens")."""
    with anyio.move_on_after(seconds):
        event = await events.__anext__()
        pytest.fail(f"unexpected watch event {event}")


@dataclass(frozen=True)
class TreeState:
    """The revision and a few nodes (with their children) at one moment."""

    revision: int
    nodes: dict[str, Node | None]
    children: dict[str, list[str]]


async def tree_state(client: Client, paths: Sequence[str]) -> TreeState:
    nodes: dict[str, Node | None] = {}
    children: dict[str, list[str]] = {}
    for path in paths:
        nodes[path] = node = await client.get(path)
        if node is not None:
            children[path] = await client.children(path)
    return TreeState(await revision_of(client), nodes, children)


async def assert_unchanged(client: Client, before: TreeState, what: str) -> None:
    """The revision and the nodes of ``before`` are as they were; else say what moved.

    The revision is compared only on backends with ``DENSE_REVISIONS``: others
    (ZooKeeper) may spend a revision on a failed write without changing the tree.
    """
    after = await tree_state(client, list(before.nodes))
    changes = []
    dense = Capability.DENSE_REVISIONS in client.capabilities
    if dense and after.revision != before.revision:
        changes.append(f"revision {before.revision} -> {after.revision}")
    for path, node in before.nodes.items():
        if after.nodes[path] != node:
            changes.append(f"{path}: {node} -> {after.nodes[path]}")
        if after.children.get(path) != before.children.get(path):
            changes.append(
                f"children of {path}: {before.children.get(path)} -> {after.children.get(path)}"
            )
    assert not changes, f"{what} changed the tree: " + "; ".join(changes)


async def expect_error(
    label: str, error: type[BaseException], call: Callable[[], Awaitable[object]]
) -> BaseException:
    """Run ``call`` and require it to raise ``error``; the failure names ``label``."""
    try:
        await call()
    except error as exc:
        return exc
    except Exception as exc:
        pytest.fail(f"{label}: raised {exc!r}, expected {error.__name__}")
    pytest.fail(f"{label}: succeeded, expected {error.__name__}")


def sequential_counter(path: str, prefix: str) -> int:
    """The counter of sequential node ``path``, checking it is ``prefix`` + 10 digits."""
    assert path.startswith(prefix), f"{path!r} does not start with {prefix!r}"
    suffix = path[len(prefix) :]
    assert len(suffix) == SEQUENCE_DIGITS and suffix.isdigit() and suffix.isascii(), (
        f"{path!r}: sequential suffix {suffix!r} is not {SEQUENCE_DIGITS} zero-padded digits"
    )
    return int(suffix)


def event_key(event: Event) -> tuple[EventType, str, int]:
    return (event.type, event.path, event.revision)


def monotonic() -> float:
    return time.monotonic()
