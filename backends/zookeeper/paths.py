"""coordkit paths on ZooKeeper: the characters ZooKeeper refuses, escaped.

coordkit accepts any UTF-8 path without control characters; ZooKeeper's
``PathUtils.validatePath`` also refuses U+0080-U+009F, U+D800-U+F8FF (which
covers the private-use area), U+FFF0-U+FFFF and, because Java strings are
UTF-16, every character beyond U+FFFF (emoji, for instance). Such a character
is stored as ``%XX`` escapes of its UTF-8 bytes, and ``%`` itself as ``%25``,
so the mapping is one-to-one; every other path is stored unchanged (what
kazoo and zkCli show). :class:`EscapingClient` applies the mapping to every
path the backend sends through kazoo; names and paths coming back (children,
created paths, notifications) go through :func:`decode_path`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EscapingClient", "decode_path", "encode_path"]


def _refused(ch: str) -> bool:
    code = ord(ch)
    return (
        ch == "%"
        or 0x80 <= code <= 0x9F
        or 0xD800 <= code <= 0xF8FF
        or 0xFFF0 <= code <= 0xFFFF
        or code > 0xFFFF
    )


def encode_path(path: str) -> str:
    """``path`` as stored in ZooKeeper (unchanged unless it has a refused character)."""
    if not any(_refused(ch) for ch in path):
        return path
    return "".join(
        "".join(f"%{b:02X}" for b in ch.encode("utf-8")) if _refused(ch) else ch for ch in path
    )


def decode_path(stored: str) -> str:
    """The coordkit path (or name) of a path (or name) as stored by :func:`encode_path`."""
    if "%" not in stored:
        return stored
    out: list[str] = []
    pending = bytearray()
    i = 0
    while i < len(stored):
        ch = stored[i]
        if ch == "%" and i + 2 < len(stored) and _is_hex(stored[i + 1 : i + 3]):
            pending.append(int(stored[i + 1 : i + 3], 16))
            i += 3
            continue
        if pending:
            out.append(pending.decode("utf-8", "replace"))
            pending.clear()
        out.append(ch)
        i += 1
    if pending:
        out.append(pending.decode("utf-8", "replace"))
    return "".join(out)


def _is_hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789abcdefABCDEF" for c in text)


class _EscapingTransaction:
    """kazoo's ``TransactionRequest`` with every path escaped."""

    def __init__(self, txn: Any) -> None:
        self._txn = txn

    def create(self, path: str, *args: Any, **kwargs: Any) -> None:
        self._txn.create(encode_path(path), *args, **kwargs)

    def delete(self, path: str, *args: Any, **kwargs: Any) -> None:
        self._txn.delete(encode_path(path), *args, **kwargs)

    def set_data(self, path: str, *args: Any, **kwargs: Any) -> None:
        self._txn.set_data(encode_path(path), *args, **kwargs)

    def check(self, path: str, *args: Any, **kwargs: Any) -> None:
        self._txn.check(encode_path(path), *args, **kwargs)

    def commit_async(self) -> Any:
        return self._txn.commit_async()


class EscapingClient:
    """A kazoo client whose path-taking requests escape their path (see the module docstring).

    Everything else is the wrapped client's. Results are not translated: a
    caller decodes the names and paths it gets back with :func:`decode_path`.
    """

    def __init__(self, client: Any) -> None:
        self.__dict__["_client"] = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._client, name, value)

    def create_async(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._client.create_async(encode_path(path), *args, **kwargs)

    def get_async(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._client.get_async(encode_path(path), *args, **kwargs)

    def exists_async(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._client.exists_async(encode_path(path), *args, **kwargs)

    def set_async(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._client.set_async(encode_path(path), *args, **kwargs)

    def delete_async(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._client.delete_async(encode_path(path), *args, **kwargs)

    def get_children_async(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._client.get_children_async(encode_path(path), *args, **kwargs)

    def sync_async(self, path: str) -> Any:
        return self._client.sync_async(encode_path(path))

    def transaction(self) -> _EscapingTransaction:
        return _EscapingTransaction(self._client.transaction())
