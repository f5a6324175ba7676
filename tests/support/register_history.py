"""Recording a history of register operations through a real client, for the
linearizability checker (``sim.linearizability``, with the store model of
``sim.model``): each operation's call and return times, and its result, or an
unknown outcome when the call failed without an answer (the write may or may
not have happened). The registers must exist (created empty) before the
history starts: ``set`` of a missing node fails in the store."""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sim.linearizability import Operation, check_history

import coordkit
from coordkit import Compare, SetOp

__all__ = ["History"]


@dataclass
class History:
    ops: list[Operation] = field(default_factory=list)
    acknowledged: dict[str, set[str]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def _start(self, key: str, kind: str, arg: object, client: int) -> Operation:
        op = Operation(key, kind, arg, time.monotonic(), client=client, op_id=next(self._ids))
        self.ops.append(op)
        return op

    @staticmethod
    def _done(op: Operation, result: object) -> None:
        op.ret = time.monotonic()
        op.result = result
        op.returned = True

    async def put(self, client: coordkit.Client, key: str, value: str, who: int) -> None:
        op = self._start(key, "put", value, who)
        await client.set(key, value.encode())
        self._done(op, "ok")
        self.acknowledged.setdefault(key, set()).add(value)

    async def cas(
        self, client: coordkit.Client, key: str, expected: str, new: str, who: int
    ) -> bool:
        op = self._start(key, "cas", (expected, new), who)
        result = await client.txn(
            [Compare.value_is(key, "==", expected.encode())], [SetOp(key, new.encode())]
        )
        self._done(op, "ok" if result.succeeded else "fail")
        if result.succeeded:
            self.acknowledged.setdefault(key, set()).add(new)
        return result.succeeded

    async def get(self, client: coordkit.Client, key: str, who: int) -> str | None:
        async def read() -> str | None:
            node = await client.get(key)
            return None if node is None else node.value.decode()

        return await self.get_via(read, key, who)

    async def get_via(
        self, read: Callable[[], Awaitable[str | None]], key: str, who: int
    ) -> str | None:
        """A read made some other way (e.g. straight to one node)."""
        op = self._start(key, "get", None, who)
        value = await read()
        self._done(op, value)
        return value

    def not_linearizable(self) -> list[str]:
        """The keys whose history no sequential order explains ([] when all do)."""
        # A read that failed tells nothing: drop it (a write that failed stays, unknown).
        kept = [op for op in self.ops if op.returned or op.kind != "get"]
        # Every register exists, empty, before the first recorded operation.
        return check_history(kept, initial=dict.fromkeys({op.key for op in kept}, ""))
