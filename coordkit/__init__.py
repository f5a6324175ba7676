"""coordkit: coordination recipes over interchangeable backends."""

from __future__ import annotations

from .backend import (
    Backend,
    BackendURL,
    ConnectOptions,
    Session,
    SessionChange,
    SessionState,
)
from .client import Client, connect
from .errors import (
    BadVersionError,
    CannotConnectError,
    ClientClosedError,
    CompactedError,
    ConfigurationError,
    ConnectionLostError,
    CoordkitError,
    InvalidArgumentError,
    InvalidPathError,
    LockLostError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    OperationTimeoutError,
    RecipeStateError,
    SessionExpiredError,
    UnsupportedError,
    ValueTooLargeError,
    WrongTypeError,
)
from .hookspecs import hookimpl
from .model import Capability, Event, EventType, Node, Status
from .retry import RetryPolicy
from .txn import Compare, CreateOp, DeleteOp, GetOp, SetOp, TxnResult

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendURL",
    "BadVersionError",
    "CannotConnectError",
    "Capability",
    "Client",
    "ClientClosedError",
    "CompactedError",
    "Compare",
    "ConfigurationError",
    "ConnectOptions",
    "ConnectionLostError",
    "CoordkitError",
    "CreateOp",
    "DeleteOp",
    "Event",
    "EventType",
    "GetOp",
    "InvalidArgumentError",
    "InvalidPathError",
    "LockLostError",
    "NoChildrenForEphemeralsError",
    "NoNodeError",
    "Node",
    "NodeExistsError",
    "NotEmptyError",
    "OperationTimeoutError",
    "RecipeStateError",
    "RetryPolicy",
    "Session",
    "SessionChange",
    "SessionExpiredError",
    "SessionState",
    "SetOp",
    "Status",
    "TxnResult",
    "UnsupportedError",
    "ValueTooLargeError",
    "WrongTypeError",
    "__version__",
    "connect",
    "hookimpl",
]
