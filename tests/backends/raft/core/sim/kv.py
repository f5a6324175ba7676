"""The replicated state machine of the simulation: a key/value register with CAS.

Commands are ``op|<op id>|<kind>|<key>|<a>|<b>`` in UTF-8; anything else is an
opaque command (scenario tests replicate arbitrary bytes) and changes nothing.
"""

from __future__ import annotations

import json

PREFIX = b"op|"


def encode_put(op_id: int, key: str, value: str) -> bytes:
    return f"op|{op_id}|put|{key}|{value}|".encode()


def encode_cas(op_id: int, key: str, expected: str | None, new: str) -> bytes:
    return f"op|{op_id}|cas|{key}|{'' if expected is None else expected}|{new}".encode()


class KVStore:
    def __init__(self, data: dict[str, str] | None = None) -> None:
        self.data: dict[str, str] = data if data is not None else {}

    def apply(self, command: bytes) -> tuple[int, str] | None:
        """Apply one command; returns (op id, result) for client operations."""
        if not command.startswith(PREFIX):
            return None
        _, op_id, kind, key, a, b = command.decode().split("|")
        if kind == "put":
            self.data[key] = a
            return int(op_id), "ok"
        current = self.data.get(key)
        if (current or "") == a:
            self.data[key] = b
            return int(op_id), "ok"
        return int(op_id), "fail"

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def snapshot(self) -> bytes:
        return json.dumps(self.data, sort_keys=True).encode()

    @staticmethod
    def restore(data: bytes) -> KVStore:
        return KVStore(json.loads(data) if data else {})
