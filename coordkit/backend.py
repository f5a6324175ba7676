"""The Backend contract: what every backend (built-in or third-party) implements.

The :class:`~coordkit.Client` validates every path, value and argument before
calling a backend, so a backend may assume well-formed input. A backend is
opened and closed by the same task (``async with coordkit.connect(...)``), which
lets it own an anyio task group for keepalives and watches. Clients of one task
nest, so ``close`` runs in LIFO order; ``abort`` may come in any order, so it
must only cancel work and drop connections, leaving the task group's exit to
``close`` (which the client always calls afterwards, and which must then not
end the session).

Rules every backend honours (the conformance kit in :mod:`coordkit.testing`
pins each one):

* every successful mutation advances one cluster-wide revision; a transaction
  is one revision;
* ``create`` needs the parent (:class:`NoNodeError`) unless ``make_parents``;
  an existing path raises :class:`NodeExistsError`; ``sequential`` appends a
  10-digit zero-padded counter unique under the parent; ``ephemeral`` ties the
  node to the session, and ephemeral nodes cannot have children;
* ``set``/``delete`` with ``version`` raise :class:`BadVersionError` on
  mismatch; ``delete`` of a node with children raises :class:`NotEmptyError`
  unless ``recursive``; missing nodes raise :class:`NoNodeError`;
* ``close`` ends the session at once (its ephemeral nodes go in one
  revision); a session that is not kept alive expires after its TTL;
* watches deliver events in revision order, none lost or repeated while the
  watch lives, optionally from a past revision (:class:`CompactedError` if
  compacted).
"""

from __future__ import annotations

import abc
import enum
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import anyio

from .errors import ConfigurationError, UnsupportedError
from .model import Capability, Event, Node, Status
from .paths import DEFAULT_MAX_VALUE_BYTES
from .retry import RETRY_OPTIONS, RetryPolicy
from .txn import Compare, Op, TxnResult

__all__ = [
    "CONNECT_OPTIONS",
    "SECURITY_OPTIONS",
    "Backend",
    "BackendFactory",
    "BackendURL",
    "ConnectOptions",
    "Session",
    "SessionChange",
    "SessionListener",
    "SessionState",
    "WatchContext",
    "check_options",
]

WatchContext = AbstractAsyncContextManager[AsyncIterator[Event]]

log = logging.getLogger("coordkit.session")


class SessionState(enum.Enum):
    """A session's state, and the changes a client reports (:class:`SessionChange`).

    :attr:`Session.state` is CONNECTED, SUSPENDED or LOST; RESTORED is only
    ever a change: the session it names is CONNECTED again.
    """

    #: the backend confirms the session is alive. As a change: a new session
    #: is in place (the replacement of a lost one).
    CONNECTED = "connected"
    #: the connection is down; the session may still be alive on the server.
    SUSPENDED = "suspended"
    #: the session has expired or was closed; its ephemeral nodes are gone.
    LOST = "lost"
    #: as a change only: the connection came back and the session survived
    #: (its ephemeral nodes, locks and leadership are intact).
    RESTORED = "restored"


@dataclass(frozen=True, slots=True)
class SessionChange:
    """One change of a client's session state, as listeners receive it."""

    #: CONNECTED (a new session), SUSPENDED, RESTORED or LOST.
    state: SessionState
    #: the session it happened to (for CONNECTED: the new one).
    session: Session


#: A callback for :meth:`Session.add_listener`; called on the event loop.
SessionListener = Callable[[SessionChange], None]


class Session:
    """A client's session (a ZooKeeper session, an etcd lease).

    Backends create one on ``open`` and call :meth:`mark_lost` once when it
    ends; they then open a fresh session so the client keeps working, and
    :attr:`Backend.session` returns the new one. A backend that opens the
    replacement asynchronously hands the old session over to it
    (:meth:`hand_over`), which is what :meth:`Backend.live_session` waits
    for. Recipes keep the Session object they acquired under and watch
    :meth:`wait_lost`.

    The ``mark_*`` methods return whether the state changed, so a backend
    logs each change once however often it reports the same state. Each
    change is also reported to the listeners (:meth:`add_listener`), which a
    session shares with the sessions that replace it: a listener follows the
    client across session losses.
    """

    def __init__(self, session_id: int, ttl: float) -> None:
        self.id = session_id
        self.ttl = ttl
        self.state = SessionState.CONNECTED
        self._lost = anyio.Event()
        self._successor: Session | None = None
        self._replaced = anyio.Event()
        self._listeners: list[SessionListener] = []

    def add_listener(self, listener: SessionListener) -> None:
        """Call ``listener(change)`` on every later change of this session and its successors.

        Listeners run on the event loop, synchronously, in the backend's
        code: keep them short and never block (hand the change to a task,
        as :meth:`coordkit.Client.watch_session` does). One that raises is
        logged and kept.
        """
        if not callable(listener):
            raise TypeError(f"listener must be callable, not {type(listener).__name__}")
        self._listeners.append(listener)

    def remove_listener(self, listener: SessionListener) -> None:
        """Stop calling ``listener`` (a no-op if it is not registered)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _report(self, state: SessionState, session: Session | None = None) -> None:
        change = SessionChange(state, session or self)
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("a session listener failed on %s", change)

    @property
    def lost(self) -> bool:
        return self.state is SessionState.LOST

    @property
    def successor(self) -> Session | None:
        """The session that replaced this one once it was lost (None until then)."""
        return self._successor

    def mark_suspended(self) -> bool:
        """The connection dropped; the session may live on. True if it was connected."""
        if self.state is SessionState.CONNECTED:
            self.state = SessionState.SUSPENDED
            self._report(SessionState.SUSPENDED)
            return True
        return False

    def mark_connected(self) -> bool:
        """The connection is back with this session. True if it was suspended."""
        if self.state is SessionState.SUSPENDED:
            self.state = SessionState.CONNECTED
            self._report(SessionState.RESTORED)
            return True
        return False

    def mark_lost(self) -> bool:
        """Record that the session ended. Idempotent: True only the first time."""
        if self.state is SessionState.LOST:
            return False
        self.state = SessionState.LOST
        self._lost.set()
        self._report(SessionState.LOST)
        return True

    def hand_over(self, successor: Session) -> None:
        """Record the session that replaces this one (marking this one lost first).

        The successor takes over this session's listeners, which are told
        it is CONNECTED.
        """
        self.mark_lost()
        if self._successor is successor:
            return
        self._successor = successor
        successor._listeners = self._listeners
        self._replaced.set()
        self._report(SessionState.CONNECTED, successor)

    async def wait_lost(self) -> None:
        """Return once the session has ended."""
        await self._lost.wait()

    async def wait_successor(self) -> Session:
        """Return the session that replaced this one, once there is one."""
        await self._replaced.wait()
        assert self._successor is not None
        return self._successor

    def __repr__(self) -> str:
        return f"Session(id={self.id:#x}, ttl={self.ttl}, state={self.state.value})"


#: URL options :func:`coordkit.connect` reads into :class:`ConnectOptions`: valid on every URL.
CONNECT_OPTIONS = ("session_ttl", "timeout", "connect_timeout", *RETRY_OPTIONS)
#: URL options of a secure connection (TLS files, user and password): the same
#: names on every backend that supports them (etcd, ZooKeeper; raft has the TLS ones).
SECURITY_OPTIONS = ("tls_ca", "tls_cert", "tls_key", "user", "password")
#: Query options whose value is never shown (in messages, logs, ``repr``).
_SECRET_OPTIONS = frozenset({"password"})


@dataclass(frozen=True, slots=True)
class BackendURL:
    """A parsed backend URL: ``scheme://host[:port],host[:port]/path?query``."""

    raw: str = field(repr=False)
    scheme: str
    hosts: tuple[str, ...]
    path: str
    query: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def parse(cls, url: str) -> BackendURL:
        if not isinstance(url, str) or "://" not in url:
            raise ConfigurationError(
                f"malformed backend URL {redact_url(url)!r}: expected scheme://[hosts][?options]"
            )
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if not scheme:
            raise ConfigurationError(f"malformed backend URL {redact_url(url)!r}: no scheme")
        hosts = tuple(h for h in parts.netloc.split(",") if h)
        try:
            query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
        except ValueError as exc:
            raise ConfigurationError(f"malformed query in {redact_url(url)!r}: {exc}") from exc
        return cls(url, scheme, hosts, parts.path, query)

    @property
    def display(self) -> str:
        """The URL as it may be shown: a ``password`` option's value is masked."""
        return redact_url(self.raw)

    def host_ports(self, default_port: int) -> list[tuple[str, int]]:
        """``hosts`` as ``(host, port)`` pairs; raises ConfigurationError on a bad port."""
        out: list[tuple[str, int]] = []
        for item in self.hosts:
            host, sep, port = item.rpartition(":")
            if not sep:
                host, port = item, str(default_port)
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigurationError(f"bad host:port {item!r} in {self.display!r}")
            out.append((host.strip("[]"), int(port)))
        return out


def redact_url(url: object) -> str:
    """``url`` with the value of each secret option (``password``) replaced by ``***``."""
    text = str(url)
    if "?" not in text:
        return text
    try:
        parts = urlsplit(text)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return text.split("?", 1)[0] + "?***"
    if not any(name in _SECRET_OPTIONS for name, _ in pairs):
        return text
    shown = [(name, "***" if name in _SECRET_OPTIONS else value) for name, value in pairs]
    return urlunsplit(parts._replace(query=urlencode(shown, quote_via=quote, safe="/:*")))


def check_options(url: BackendURL, known: Iterable[str] = ()) -> None:
    """Refuse a URL option that is neither one of :data:`CONNECT_OPTIONS` nor in ``known``.

    Every backend calls this with the options it reads itself, so a typo
    (``?conect_timeout=1``) or an option this backend does not support
    (``memory://?tls_ca=...``) is one clear error naming it and the valid
    ones, never silently unused.
    """
    valid = set(CONNECT_OPTIONS) | set(known)
    unknown = sorted(set(url.query) - valid)
    if unknown:
        raise ConfigurationError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for {url.scheme}:// in {url.display!r}; valid options: {', '.join(sorted(valid))}"
        )


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """Options every backend receives besides its URL.

    :func:`coordkit.connect` fills them from its keyword arguments, else from
    the URL options of the same names (:data:`CONNECT_OPTIONS`,
    :data:`SECURITY_OPTIONS`), else these defaults. A backend that does not
    support an option refuses it in the URL (:func:`check_options`).
    """

    #: seconds a session lives without keepalives.
    session_ttl: float = 10.0
    #: seconds a single operation (including retries) may take.
    timeout: float = 10.0
    #: largest value accepted (the client enforces it before the backend).
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    #: how reconnects, keepalive retries and conflict retries back off (URL
    #: options ``retry_initial_delay``, ``retry_max_delay``, ``retry_max_attempts``).
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: seconds opening a client may take before it fails with
    #: :class:`~coordkit.CannotConnectError` naming every endpoint tried and why.
    connect_timeout: float = 5.0
    #: PEM file of the CA that signed the servers' certificates: connect with TLS.
    tls_ca: str | None = None
    #: PEM files of this client's certificate and key (mutual TLS); both or neither.
    tls_cert: str | None = None
    tls_key: str | None = None
    #: who to authenticate as (etcd user, ZooKeeper digest user), with ``password``.
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigurationError(
                "tls_cert and tls_key go together: give both (a client certificate) or neither"
            )
        if (self.user is None) != (self.password is None):
            raise ConfigurationError("user and password go together: give both or neither")
        if self.user is not None and (not self.user or ":" in self.user):
            raise ConfigurationError(
                f"user must be a non-empty name without ':', not {self.user!r}"
            )

    @property
    def tls(self) -> bool:
        """Whether the connection is to use TLS (any ``tls_*`` option given)."""
        return self.tls_ca is not None or self.tls_cert is not None


class Backend(abc.ABC):
    """The interface every backend implements (see the module docstring for the rules)."""

    #: What this backend can do beyond the required core.
    capabilities: frozenset[Capability] = frozenset()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and start a session (with background keepalive)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """End the session at once and release every resource. Idempotent."""

    @property
    @abc.abstractmethod
    def session(self) -> Session:
        """The current session."""

    async def live_session(self) -> Session:
        """The current session once it is live: after a loss, the one replacing it.

        The default waits for the lost session's :meth:`Session.hand_over`
        (a backend that installs the new session before marking the old one
        lost needs no more); a backend that knows another way may override
        this. The client bounds the wait by its timeout.
        """
        session = self.session
        while session.lost:
            session = await session.wait_successor()
        return session

    @abc.abstractmethod
    async def create(
        self, path: str, value: bytes, *, ephemeral: bool, sequential: bool, make_parents: bool
    ) -> Node:
        """Create a node and return it (its path carries the sequential suffix)."""

    @abc.abstractmethod
    async def get(self, path: str, *, consistent: bool) -> Node | None:
        """The node at ``path`` or ``None``."""

    @abc.abstractmethod
    async def set(self, path: str, value: bytes, *, version: int | None) -> Node:
        """Replace the value, optionally only at ``version``; return the new node."""

    @abc.abstractmethod
    async def delete(self, path: str, *, version: int | None, recursive: bool) -> None:
        """Delete the node (and with ``recursive`` its subtree, in one revision)."""

    @abc.abstractmethod
    async def children(self, path: str, *, consistent: bool) -> list[str]:
        """Sorted names of the node's children."""

    async def exists(self, path: str) -> bool:
        return await self.get(path, consistent=True) is not None

    @abc.abstractmethod
    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]
    ) -> TxnResult:
        """Evaluate ``compares`` and run one branch atomically."""

    @abc.abstractmethod
    def watch(self, path: str, *, recursive: bool, start_revision: int | None) -> WatchContext:
        """An async context manager yielding an async iterator of :class:`Event`.

        The watch is established when ``__aenter__`` returns: every change
        committed after that point (or from ``start_revision`` on) is delivered.
        """

    @abc.abstractmethod
    async def status(self) -> Status:
        """What the backend reports about itself, including the current revision."""

    async def abort(self) -> None:
        """Drop the connection without ending the session, as if the process died.

        The session's ephemeral nodes stay until its TTL runs out. For fault
        tests. Only cancel work and drop connections here; ``close`` follows.
        """
        raise UnsupportedError(f"{type(self).__name__} cannot abort a connection")

    async def expire_session(self) -> None:
        """Make the current session expire now, as a server would. For fault tests."""
        raise UnsupportedError(f"{type(self).__name__} cannot expire a session on demand")

    async def kill_leader(self, restart_after: float | None = None) -> str:
        """Crash the server leading the cluster, as a power cut would; return its name.

        With ``restart_after``, it is started again (recovering from its data)
        that many seconds later. For failover demos and fault tests.
        """
        raise UnsupportedError(f"{type(self).__name__} cannot kill its cluster's leader")


BackendFactory = Callable[[BackendURL, ConnectOptions], Backend]
