"""Finding the leader of a Raft cluster from a list of endpoints (dissertation §6.2).

Any node accepts a client and says who leads; the dialer goes there. It tries
the last known leader first, then every endpoint in turn, with the shared
retry policy between rounds, until the connect timeout; then it fails with
one error naming every endpoint tried and why each failed (refused, timed
out, name not resolved, TLS failure, no leader elected).
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import anyio

from coordkit.connecting import describe_connect_error as describe_os_error
from coordkit.errors import CannotConnectError, ConnectionLostError
from coordkit.retry import RetryPolicy

from ..protocol import Op as RequestOp
from ..wire import Address, FrameError, FrameStream, HandshakeError, Hello, connect

__all__ = ["Dialer"]

_HELLO = Hello("client", None)

log = logging.getLogger(__name__)


class _NoLeaderYet(Exception):
    """Every reachable node says no leader is known (an election is under way)."""


class Dialer:
    def __init__(
        self,
        endpoints: list[Address],
        *,
        ssl_context: ssl.SSLContext | None,
        connect_timeout: float,
        retry: RetryPolicy,
    ) -> None:
        self.endpoints = endpoints
        self._ssl = ssl_context
        self._timeout = connect_timeout
        self._retry = retry
        self._leader: Address | None = None

    def hint_leader(self, address: object) -> None:
        if isinstance(address, str) and address:
            try:
                self._leader = Address.parse(address)
            except ValueError:
                log.debug("ignoring a malformed leader address %r", address)

    def forget_leader(self, address: str) -> None:
        if self._leader is not None and str(self._leader) == address:
            self._leader = None

    async def connect_leader(self) -> tuple[FrameStream, str, str]:
        """A greeted connection to the current leader: ``(stream, node name, address)``.

        Raises :class:`CannotConnectError` naming every endpoint and its cause
        if no leader is reachable within the connect timeout.
        """
        causes: dict[str, str] = {}
        try:
            with anyio.fail_after(self._timeout):
                return await self._retry.call(
                    lambda: self._one_round(causes),
                    retry_on=(ConnectionLostError, _NoLeaderYet),
                    what="find the raft leader",
                    logger=log,
                )
        except TimeoutError:
            pass
        except (ConnectionLostError, _NoLeaderYet):
            pass
        for endpoint in self.endpoints:
            causes.setdefault(str(endpoint), "not tried: the connect timeout ran out first")
        raise CannotConnectError.tried("the leader of the raft cluster", causes, self._timeout)

    async def _one_round(self, causes: dict[str, str]) -> tuple[FrameStream, str, str]:
        order = list(self.endpoints)
        if self._leader is not None:
            order = [self._leader, *[e for e in order if e != self._leader]]
        seen: set[Address] = set()
        queue = list(order)
        no_leader = False
        while queue:
            endpoint = queue.pop(0)
            if endpoint in seen:
                continue
            seen.add(endpoint)
            # What it stays if the connect timeout ends this attempt (a node
            # that accepts the connection and never answers).
            causes.setdefault(str(endpoint), "timed out")
            try:
                stream, _ = await connect(
                    endpoint, _HELLO, ssl_context=self._ssl, timeout=min(self._timeout, 2.0)
                )
            except (OSError, HandshakeError, ssl.SSLError) as exc:
                causes[str(endpoint)] = describe_connect_error(exc)
                continue
            try:
                with anyio.fail_after(min(self._timeout, 2.0)):
                    await stream.send({"t": "q", "i": 0, "op": RequestOp.STATUS})
                    header = (await stream.receive()).header
            except (OSError, TimeoutError, FrameError, anyio.EndOfStream) as exc:
                causes[str(endpoint)] = describe_connect_error(exc)
                await _close(stream)
                continue
            except BaseException:  # cancelled: leave no socket behind
                await _close(stream)
                raise
            info = header.get("status", {})
            node = str(info.get("node", endpoint))
            if info.get("role") == "leader":
                causes.pop(str(endpoint), None)
                self._leader = endpoint
                return stream, node, str(endpoint)
            await _close(stream)
            hint = info.get("leader_addr")
            if isinstance(hint, str) and hint:
                leader = Address.parse(hint)
                causes[str(endpoint)] = f"{node} is a follower of {info.get('leader')}"
                queue.insert(0, leader)
            else:
                no_leader = True
                causes[str(endpoint)] = f"{node} knows no leader (election under way?)"
        if no_leader:
            raise _NoLeaderYet("no leader elected yet")
        raise ConnectionLostError("no endpoint reachable")

    async def status_of(self, endpoint: Address) -> dict[str, Any]:
        """What one node says of itself (its ``status``), over a connection of its own."""
        try:
            stream, _ = await connect(
                endpoint, _HELLO, ssl_context=self._ssl, timeout=min(self._timeout, 2.0)
            )
        except (OSError, HandshakeError, ssl.SSLError) as exc:
            raise ConnectionLostError(f"{endpoint}: {describe_connect_error(exc)}") from exc
        try:
            with anyio.fail_after(min(self._timeout, 2.0)):
                await stream.send({"t": "q", "i": 0, "op": RequestOp.STATUS})
                header = (await stream.receive()).header
        except (OSError, TimeoutError, FrameError, anyio.EndOfStream) as exc:
            raise ConnectionLostError(f"{endpoint}: {describe_connect_error(exc)}") from exc
        finally:
            await _close(stream)
        status: dict[str, Any] = header.get("status", {})
        return status


async def _close(stream: FrameStream) -> None:
    with anyio.CancelScope(shield=True):
        await stream.aclose()


def describe_connect_error(exc: BaseException) -> str:
    """A short cause: refused, timed out, name not resolved, TLS failure, ..."""
    if isinstance(exc, HandshakeError):
        return str(exc)
    return describe_os_error(exc)
