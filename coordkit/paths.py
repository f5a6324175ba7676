"""Path and value rules, checked once in the client before any backend sees a call.

A path is absolute, ``/``-separated, with no empty, ``.`` or ``..`` segment,
no trailing ``/`` except the root itself, valid UTF-8 text without NUL or
control characters, and at most :data:`MAX_PATH_BYTES` bytes encoded.
"""

from __future__ import annotations

from .errors import InvalidArgumentError, InvalidPathError, ValueTooLargeError, WrongTypeError

__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "MAX_CHROOT_BYTES",
    "MAX_PATH_BYTES",
    "SEQUENCE_DIGITS",
    "STORED_PATH_BYTES",
    "basename",
    "check_path",
    "check_value",
    "check_version",
    "is_ancestor",
    "join",
    "parent",
    "sequence_of",
]

MAX_PATH_BYTES = 1024
#: A backend that roots a client's paths below a prefix (a chroot) stores paths
#: up to this much longer, so a client may still use the full MAX_PATH_BYTES.
MAX_CHROOT_BYTES = 256
#: The longest path a backend's store holds: a full client path below a chroot.
STORED_PATH_BYTES = MAX_PATH_BYTES + MAX_CHROOT_BYTES
DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
#: Sequential nodes get this many zero-padded digits appended (ZooKeeper's rule).
SEQUENCE_DIGITS = 10


def check_path(path: object, max_bytes: int = MAX_PATH_BYTES) -> str:
    """Return ``path`` if it obeys the path rules, else raise :class:`InvalidPathError`.

    ``max_bytes`` is for backends storing paths below a chroot; clients keep
    the default.
    """
    if not isinstance(path, str):
        raise InvalidPathError(f"path must be str, not {type(path).__name__}")
    if not path.startswith("/"):
        raise InvalidPathError(f"path must be absolute (start with '/'): {path!r}")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidPathError(f"path is not valid UTF-8: {path!r}") from exc
    if len(encoded) > max_bytes:
        raise InvalidPathError(f"path is {len(encoded)} bytes, the limit is {max_bytes}")
    if path == "/":
        return path
    if path.endswith("/"):
        raise InvalidPathError(f"path must not end with '/': {path!r}")
    for segment in path[1:].split("/"):
        if segment == "":
            raise InvalidPathError(f"path has an empty segment: {path!r}")
        if segment in (".", ".."):
            raise InvalidPathError(f"path has a {segment!r} segment: {path!r}")
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in segment):
            raise InvalidPathError(f"path has a control character: {path!r}")
    return path


def check_value(value: object, max_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> bytes:
    """Return ``value`` if it is ``bytes`` within ``max_bytes``, else raise."""
    if not isinstance(value, bytes):
        raise WrongTypeError(f"value must be bytes, not {type(value).__name__}")
    if len(value) > max_bytes:
        raise ValueTooLargeError(f"value is {len(value)} bytes, the limit is {max_bytes}")
    return value


def check_version(version: object) -> int | None:
    """Validate an optional expected version (a non-negative int or None)."""
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int):
        raise WrongTypeError(f"version must be int or None, not {type(version).__name__}")
    if version < 0:
        raise InvalidArgumentError(f"version must be >= 0, not {version}")
    return version


def parent(path: str) -> str:
    """The parent path (the root is its own parent)."""
    if path == "/":
        return "/"
    head = path.rsplit("/", 1)[0]
    return head or "/"


def basename(path: str) -> str:
    """The last segment of ``path`` ("" for the root)."""
    return path.rsplit("/", 1)[-1]


def join(base: str, name: str) -> str:
    """``base`` + ``/`` + ``name`` without doubling the root's slash."""
    return f"/{name}" if base == "/" else f"{base}/{name}"


def is_ancestor(ancestor: str, path: str) -> bool:
    """Whether ``path`` is ``ancestor`` itself or lies below it."""
    if ancestor == "/":
        return True
    return path == ancestor or path.startswith(ancestor + "/")


def sequence_of(name: str) -> int | None:
    """The counter of a sequential node's name, or None if it has none."""
    digits = name[-SEQUENCE_DIGITS:]
    if len(name) >= SEQUENCE_DIGITS and digits.isdigit() and digits.isascii():
        return int(digits)
    return None
