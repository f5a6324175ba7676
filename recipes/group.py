"""Group: membership as ephemeral nodes ``path/<member_id>`` holding each member's data."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from types import TracebackType
from typing import Self

import anyio

from coordkit import (
    Client,
    ClientClosedError,
    InvalidArgumentError,
    NodeExistsError,
    NoNodeError,
    Session,
    SessionExpiredError,
)
from coordkit.paths import check_path, join
from coordkit.retry import Conflict

from .config_watch import Tracker, follow

__all__ = ["Group"]

log = logging.getLogger(__name__)


class _Membership(Tracker[frozenset[str]]):
    def __init__(self, group: Group) -> None:
        self._group = group

    async def reset(self) -> frozenset[str]:
        try:
            return frozenset(await self._group.client.children(self._group.path))
        except NoNodeError:
            return frozenset()


class Group:
    """Membership of a group: ``async with Group(client, "/groups/workers", "w1"): ...``.

    A member is an ephemeral node ``path/<member_id>`` whose value is its
    ``data``, so it lives exactly as long as the session that joined: a
    member that closes its client leaves at once, one that crashes or is cut
    off leaves when its session expires (after the TTL). A member whose
    session was lost is **not** re-added automatically (:attr:`joined` turns
    False and :attr:`session` tells which session it joined under); call
    :meth:`join` again to come back.

    ``member_id`` is one path segment (no ``/``) and unique in the group:
    joining with an id held by another session raises
    :class:`~coordkit.NodeExistsError`. During a partition shorter than the
    TTL the member stays listed; :meth:`members` and :meth:`watch` show what
    the servers know, which is the only consistent answer.
    """

    def __init__(self, client: Client, path: str, member_id: str, data: bytes = b"") -> None:
        check_path(path)
        if not isinstance(member_id, str) or not member_id or "/" in member_id:
            raise InvalidArgumentError(f"member_id must be one path segment, not {member_id!r}")
        check_path(join(path, member_id))
        self.client = client
        self.path = path
        self.member_id = member_id
        self.data = data
        self._node = join(path, member_id)
        #: the session this member joined under, while joined.
        self.session: Session | None = None

    @property
    def joined(self) -> bool:
        """Whether this member is in the group: joined, not left, session alive."""
        return self.session is not None and not self.session.lost

    async def join(self) -> None:
        """Add this member (ephemeral node with :attr:`data`); idempotent for this session.

        Joins under the client's current session; if that session ends during
        the call, joins under the next one (for up to the client's operation
        timeout, then :class:`TimeoutError`).
        """
        with anyio.fail_after(self.client.options.timeout):
            while True:
                session = await self.client.live_session()
                try:
                    await self._create(session)
                except SessionExpiredError:
                    continue  # the session ended under us: join under the next one
                self.session = session
                return

    async def _create(self, session: Session) -> None:
        async def attempt() -> None:
            try:
                await self.client.create(self._node, self.data, ephemeral=True, make_parents=True)
                return
            except NodeExistsError:
                node = await self.client.get(self._node)
            if node is None:
                raise Conflict("its holder left between our create and our read")  # try again
            if node.ephemeral_owner != session.id:
                raise NodeExistsError(
                    f"member {self.member_id!r} of {self.path} is held by another session"
                )
            # already ours (a retried join)

        options = self.client.options
        await options.retry.on_conflict(
            attempt, deadline=options.timeout, what=f"Group.join of {self._node}", logger=log
        )

    async def leave(self) -> None:
        """Remove this member; a no-op if it is not in the group (any more).

        Shielded from cancellation; if the backend stays unreachable for the
        client's operation timeout, the member goes when its session ends.
        """
        session, self.session = self.session, None
        if session is None or session.lost:
            return
        # Shielded: a cancelled leave would otherwise linger until the session ends.
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(self.client.options.timeout),
            suppress(ClientClosedError),  # a closed client's session ends by itself
        ):
            node = await self.client.get(self._node)
            if node is not None and node.ephemeral_owner == session.id:
                with suppress(NoNodeError):
                    await self.client.delete(self._node)

    async def members(self) -> dict[str, bytes]:
        """``{member_id: data}`` of every current member."""
        try:
            names = await self.client.children(self.path)
        except NoNodeError:
            return {}
        found: dict[str, bytes] = {}
        for name in names:
            node = await self.client.get(join(self.path, name))
            if node is not None:  # else it left between the two reads
                found[name] = node.value
        return found

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[AsyncIterator[frozenset[str]]]:
        """``async with group.watch() as snapshots: async for ids in snapshots: ...``.

        Yields the set of member ids when the block starts, then a new set on
        each change of membership (never the same set twice in a row). A
        consumer that falls behind gets the newest set; after a broken watch
        the set is read afresh (see :func:`~coordkit.recipes.config_watch.follow`).
        """
        async with follow(self.client, self.path, _Membership(self), recursive=True) as sets:
            yield sets

    async def __aenter__(self) -> Self:
        await self.join()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.leave()

    def __repr__(self) -> str:
        state = "joined" if self.joined else "not joined"
        return f"Group({self.path!r}, member_id={self.member_id!r}, {state})"
