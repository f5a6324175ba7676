"""How the node hierarchy is laid out on etcd's flat keys (pure; no I/O).

Everything lives under the URL's path, the *prefix* ``P`` (``etcd://h:p/P``;
empty by default). For a node at ``path``, in the manner of zetcd:

``P//d<path>``
    the **data key**: its value is the node's value, its etcd revisions and
    version are the node's, its lease is the ephemeral owner. Keys sort by
    path, so a subtree is one prefix (``P//d<path>/``): recursive watches and
    recursive deletes are one range each.
``P//i/<depth:04d><path>``
    the **index key** (empty value, same lease), written and deleted in the
    same transaction as the data key. Children of ``path`` are exactly the
    index keys with prefix ``P//i/<depth+1><path>/``, so ``children()`` is one
    range query and ``num_children`` one count; "has no children" is one
    range compare (``create_revision == 0`` over that prefix).
``P//s<path>``
    the **sequence counter** of ``path``'s children (decimal text), bumped in
    the same transaction as each sequential create under ``path``.

The ``//`` (an empty segment, which no coordkit path contains) keeps the
hierarchy disjoint from the native lock and election keys, which etcd's own
concurrency layout puts at ``P<path>/<lease id in hex>`` (see
:meth:`KeyLayout.native_name`), so ``etcdctl lock P<path>`` interoperates.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordkit.errors import ConfigurationError, InvalidPathError
from coordkit.paths import check_path

__all__ = ["DEPTH_DIGITS", "KeyLayout", "depth", "prefix_end"]

#: Digits of the depth in index keys (a 1024-byte path has at most 512 segments).
DEPTH_DIGITS = 4


def depth(path: str) -> int:
    """Number of segments: 0 for the root, 1 for ``/a``, 2 for ``/a/b``."""
    return 0 if path == "/" else path.count("/")


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (etcd's rule)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key: etcd reads range_end "\0" as "to the end"


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """The etcd keys of a hierarchy rooted at ``prefix`` ("" or an absolute path)."""

    prefix: str = ""

    @classmethod
    def from_url_path(cls, url_path: str) -> KeyLayout:
        """The layout for an ``etcd://`` URL's path ("" and "/" mean no prefix)."""
        trimmed = url_path.rstrip("/")
        if trimmed:
            try:
                check_path(trimmed)
            except InvalidPathError as exc:
                raise ConfigurationError(f"bad etcd key prefix {url_path!r}: {exc}") from exc
        return cls(trimmed)

    @property
    def base(self) -> bytes:
        return f"{self.prefix}//".encode()

    def data(self, path: str) -> bytes:
        """The data key (the root's is ``P//d/``)."""
        return self.base + b"d" + path.encode()

    def subtree(self, path: str) -> bytes:
        """The prefix of every data key strictly below ``path``."""
        return self.data(path) if path == "/" else self.data(path) + b"/"

    def index(self, path: str) -> bytes:
        return self.base + f"i/{depth(path):0{DEPTH_DIGITS}d}".encode() + path.encode()

    def children(self, path: str) -> bytes:
        """The prefix of the index keys of ``path``'s children."""
        below = "" if path == "/" else path
        return self.base + f"i/{depth(path) + 1:0{DEPTH_DIGITS}d}{below}/".encode()

    def descendants_at(self, path: str, level: int) -> bytes:
        """The prefix of the index keys of ``path``'s descendants at absolute depth ``level``."""
        below = "" if path == "/" else path
        return self.base + f"i/{level:0{DEPTH_DIGITS}d}{below}/".encode()

    def sequence(self, path: str) -> bytes:
        """The sequence counter of ``path``'s children."""
        return self.base + b"s" + path.encode()

    def sequence_subtree(self, path: str) -> bytes:
        return self.sequence(path) if path == "/" else self.sequence(path) + b"/"

    def path_of(self, data_key: bytes) -> str:
        """The node path of a data key."""
        head = self.base + b"d"
        if not data_key.startswith(head):
            raise ValueError(f"not a data key of this layout: {data_key!r}")
        return data_key[len(head) :].decode()

    def name_of(self, index_key: bytes) -> str:
        """The last segment of the node an index key stands for."""
        return index_key.decode().rsplit("/", 1)[1]

    def watch_range(self, path: str, recursive: bool) -> tuple[bytes, bytes | None]:
        """``(key, range_end)`` to watch; a recursive range may include siblings
        that share ``path``'s name as a prefix (``/a-b`` for ``/a``): filter with
        :meth:`in_watch`."""
        if not recursive:
            return self.data(path), None
        return self.data(path), prefix_end(self.subtree(path))

    @staticmethod
    def in_watch(watched: str, recursive: bool, path: str) -> bool:
        if path == watched:
            return True
        if not recursive:
            return False
        return watched == "/" or path.startswith(watched + "/")

    def native_name(self, path: str) -> str:
        """The etcd lock/election name of a coordkit path: the prefix then the path.

        ``etcdctl lock NAME`` and ``etcdctl elect NAME`` use keys ``NAME/<lease hex>``.
        """
        return self.prefix + path if path != "/" else (self.prefix or "/")
