"""Every error coordkit raises derives from :class:`CoordkitError`.

Backends map their client library's errors to these in one function at their
boundary, so application code catches the same exceptions on every backend.
"""

from __future__ import annotations

__all__ = [
    "BadVersionError",
    "CannotConnectError",
    "ClientClosedError",
    "CompactedError",
    "ConfigurationError",
    "ConnectionLostError",
    "CoordkitError",
    "InvalidArgumentError",
    "InvalidPathError",
    "LockLostError",
    "NoChildrenForEphemeralsError",
    "NoNodeError",
    "NodeExistsError",
    "NotEmptyError",
    "OperationTimeoutError",
    "RecipeStateError",
    "SessionExpiredError",
    "UnsupportedError",
    "ValueTooLargeError",
    "WrongTypeError",
]


class CoordkitError(Exception):
    """Base of every error raised by coordkit."""


# -- bad input: raised before any backend sees the call; nothing changes ------


class InvalidArgumentError(CoordkitError, ValueError):
    """An argument has the wrong type or an impossible value."""


class WrongTypeError(InvalidArgumentError, TypeError):
    """An argument has the wrong type (e.g. a value that is not ``bytes``)."""


class InvalidPathError(InvalidArgumentError):
    """A path breaks the path rules (absolute, no empty/./.. segments, <= 1024 bytes)."""


class ValueTooLargeError(InvalidArgumentError):
    """A value is larger than the backend's maximum (1 MiB by default)."""


class ConfigurationError(CoordkitError):
    """A URL, scheme or configuration file cannot be used."""


# -- the data-model outcomes ---------------------------------------------------


class NodeExistsError(CoordkitError):
    """``create`` of a path that already exists."""


class NoNodeError(CoordkitError):
    """The node (or, for ``create``, its parent) does not exist."""


class BadVersionError(CoordkitError):
    """The node's version is not the expected one."""


class NotEmptyError(CoordkitError):
    """``delete`` of a node that has children, without ``recursive=True``."""


class NoChildrenForEphemeralsError(CoordkitError):
    """Ephemeral nodes cannot have children (ZooKeeper's rule, kept on every backend)."""


class CompactedError(CoordkitError):
    """A watch asked to start from a revision whose history has been compacted."""

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message)
        #: The oldest revision still available (a watch may restart from here).
        self.compact_revision = compact_revision


class UnsupportedError(CoordkitError):
    """The backend does not have a capability the call needs."""


# -- sessions and connectivity -------------------------------------------------


class SessionExpiredError(CoordkitError):
    """The session ended: its ephemeral nodes are gone and whatever it held is lost."""


class ConnectionLostError(CoordkitError):
    """The backend could not be reached; the outcome of the call is unknown."""


class CannotConnectError(ConnectionLostError):
    """Opening a client failed: no endpoint could be reached within the connect timeout.

    One error for the whole attempt, naming every endpoint tried and why each
    failed (connection refused, timed out, name not resolved, TLS failure,
    authentication failed). :attr:`causes` maps each endpoint to its cause.
    """

    def __init__(self, message: str, causes: dict[str, str] | None = None) -> None:
        super().__init__(message)
        #: endpoint (``host:port``) -> why it could not be used.
        self.causes: dict[str, str] = dict(causes or {})

    @classmethod
    def tried(cls, what: str, causes: dict[str, str], within: float) -> CannotConnectError:
        """The error for ``what`` (e.g. ``"etcd"``) after ``within`` seconds of trying."""
        tried = "; ".join(f"{endpoint} ({cause})" for endpoint, cause in causes.items())
        return cls(f"cannot connect to {what} within {within:g} s: tried {tried}", causes)


class OperationTimeoutError(CoordkitError, TimeoutError):
    """An operation did not finish within its deadline; its outcome is unknown."""


class ClientClosedError(CoordkitError):
    """The client was closed (or not yet opened with ``async with``)."""


# -- recipes -------------------------------------------------------------------


class LockLostError(CoordkitError):
    """A held lock, semaphore lease or leadership was lost (usually: session expired)."""


class RecipeStateError(CoordkitError, RuntimeError):
    """A recipe object was used out of turn: releasing a lock it does not hold,
    acquiring again without ``reentrant=True``, entering a barrier twice."""
