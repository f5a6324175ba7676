"""Counter: an integer on one node, changed atomically by compare-and-set.

The value is stored as ASCII decimal bytes (``b"42"``, ``b"-7"``); a missing
node or an empty value reads as the counter's default.
"""

from __future__ import annotations

import logging
import re

from coordkit import (
    BadVersionError,
    Client,
    InvalidArgumentError,
    NodeExistsError,
    WrongTypeError,
)
from coordkit.paths import check_path
from coordkit.retry import Conflict

__all__ = ["Counter"]

log = logging.getLogger(__name__)

_DECIMAL = re.compile(rb"-?[0-9]+")


class Counter:
    """An atomic counter on ``path``: ``await Counter(client, "/stats/jobs").add(1)``.

    Guarantees: every :meth:`add` is applied exactly once when it returns,
    and the value it returns is the counter right after that add (no other
    add falls between). It is a compare-and-set on the node's version,
    retried (after the client's retry policy's jittered waits) until it wins,
    so adds under contention are linearizable but may take several round
    trips; one that loses every race for the client's operation timeout (or
    ``retry_max_attempts``) raises :class:`~coordkit.OperationTimeoutError`
    and has changed nothing.

    Faults: the counter holds no session state. If the connection fails
    during :meth:`add`, the error propagates and the add may or may not have
    been applied (the outcome of the last write is unknown, as with any
    write); retrying may then count twice.
    """

    def __init__(self, client: Client, path: str, default: int = 0) -> None:
        if not isinstance(client, Client):
            raise WrongTypeError(f"client must be a coordkit.Client, not {type(client).__name__}")
        check_path(path)
        _check_int("default", default)
        self.client = client
        self.path = path
        self.default = default

    async def get(self) -> int:
        """The current value (the default if the node does not exist)."""
        node = await self.client.get(self.path)
        return self.default if node is None else self._decode(node.value)

    async def add(self, delta: int) -> int:
        """Add ``delta`` (may be negative) atomically; return the new value."""
        _check_int("delta", delta)

        async def attempt() -> int:
            node = await self.client.get(self.path)
            if node is None:
                value = self.default + delta
                try:
                    await self.client.create(self.path, _encode(value), make_parents=True)
                except NodeExistsError as exc:
                    raise Conflict("created by another client first") from exc  # add to theirs
                return value
            value = self._decode(node.value) + delta
            try:
                await self.client.set(self.path, _encode(value), version=node.version)
            except BadVersionError as exc:
                raise Conflict("changed by another client first") from exc
            return value

        options = self.client.options
        return await options.retry.on_conflict(
            attempt, deadline=options.timeout, what=f"Counter.add on {self.path}", logger=log
        )

    def _decode(self, raw: bytes) -> int:
        if not raw:
            return self.default
        if _DECIMAL.fullmatch(raw) is None:
            raise InvalidArgumentError(
                f"counter {self.path} holds {raw[:40]!r}, not a decimal integer"
            )
        return int(raw)

    def __repr__(self) -> str:
        return f"Counter({self.path!r}, default={self.default})"


def _check_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WrongTypeError(f"{name} must be int, not {type(value).__name__}")


def _encode(value: int) -> bytes:
    return str(value).encode("ascii")
