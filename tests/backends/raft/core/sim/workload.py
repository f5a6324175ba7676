"""Simulated clients of the store: real encoded commands, exactly-once sessions.

Each client does one thing at a time, against a node it picked (redirected
by the leader hints of refusals), and records every operation on a register
or a sequence for the linearizability checker (``model.py``):

* writes are :class:`ClientRequest`s of the client's session (``Set``,
  ``Create``, sequential ``Create``, ``Delete``, and compare-and-set as a
  ``Txn`` comparing the value), proposed as the store's encoded commands; the
  answer is the store's encoded result (``results.py``) of the entry applied
  at the proposal's index and term on the node the client asked, as the Raft
  server answers. A write without an answer in time is retried with the same
  sequence number (the store applies it at most once) or given up: its outcome
  stays unknown;
* reads go through ReadIndex (on a follower too) and read the node's store;
* a session is opened by an ``OpenSession`` command when a write needs one;
  clients also create ephemeral nodes, send keepalives to the leader, and
  sometimes go quiet for longer than their session's TTL, so that the leader
  expires the session and its ephemeral nodes go on every replica.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from coordkit import Compare
from coordkit.backends.raft.core.errors import RaftError
from coordkit.backends.raft.core.messages import Role
from coordkit.backends.store import (
    ClientRequest,
    Create,
    Delete,
    OpenSession,
    RequestCommand,
    Set,
    Txn,
    decode_result,
    encode_command,
)
from coordkit.errors import CoordkitError, NodeExistsError, NoNodeError, SessionExpiredError
from coordkit.model import Node
from coordkit.paths import SEQUENCE_DIGITS
from coordkit.txn import CreateOp, SetOp, TxnResult

from .linearizability import Operation
from .model import CAS, CREATE, DELETE, GET, PUT, REFUSED, SEQ

if TYPE_CHECKING:
    from .cluster import Cluster, SimNode

#: The parent of the sequential creates (a "sequence" key of the model).
SEQ_PARENT = "/q"
#: The parent of the clients' ephemeral nodes.
EPHEMERAL_PARENT = "/eph"

#: Write kinds and their weights (reads are ``Cluster.read_ratio`` of all operations).
WRITES = {PUT: 30, CAS: 25, CREATE: 12, DELETE: 8, SEQ: 12, "ephemeral": 8}


def upsert(path: str, value: str) -> bytes:
    """An encoded store command that always succeeds: create ``path`` or set its value."""
    data = value.encode()
    return encode_command(
        Txn(
            compares=(Compare.exists(path),),
            success=(SetOp(path, data),),
            failure=(CreateOp(path, data),),
        )
    )


@dataclass(slots=True)
class _Waiting:
    """What a client waits for: a session, a write's answer, or a read."""

    kind: str  # "open", "write" or "read"
    op: Operation | None = None
    data: bytes = b""  # the encoded command (retried as is)
    seq: int = 0
    session: int | None = None
    attempts: int = 1  # tries so far (the current one included)
    proposed: int = 0  # tries that a core accepted into its log
    what: str = ""  # the write's kind (model kind, or "ephemeral")
    at: str = ""  # the node the current attempt went to


@dataclass(slots=True)
class SimClient:
    id: int
    target: str
    session: int | None = None
    seq: int = 0  # the last sequence number used in ``session``
    token: int = 0  # bumped on every attempt: stale timeouts are ignored
    waiting: _Waiting | None = None
    scheduled: bool = False  # its next action is on the event queue
    sessions_opened: int = 0


@dataclass(slots=True)
class _Proposal:
    client: int
    term: int
    token: int
    seq: int  # 0 for an OpenSession
    session: int | None


@dataclass
class Clients:
    cluster: Cluster
    clients: dict[int, SimClient] = field(default_factory=dict)
    # (node, index) -> the client proposal awaiting its entry there
    proposals: dict[tuple[str, int], _Proposal] = field(default_factory=dict)
    # read context -> (client, token)
    reads: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    # what happened, for tests and reports
    sessions_expired_seen: int = 0
    retries: int = 0
    ttl_s: float = 0.5  # virtual seconds
    keepalive_ratio: float = 0.05
    idle_ratio: float = 0.01

    # -- life of a client -------------------------------------------------------------

    def start(self, count: int) -> None:
        c = self.cluster
        ids = list(c.nodes)
        for _ in range(count):
            cid = len(self.clients)
            self.clients[cid] = client = SimClient(cid, c.rng.choice(ids))
            self._next(client, 0, 10)

    def _action(self, cid: int) -> Callable[[], None]:
        return lambda: self.issue(cid)

    def _next(self, client: SimClient, lo: int = 0, hi: int = 5) -> None:
        if client.scheduled:
            return
        client.scheduled = True
        c = self.cluster
        c.call_at(c.now + c.rng.randint(lo, hi), self._action(client.id))

    def _redirect(self, client: SimClient, hint: str | None) -> None:
        c = self.cluster
        client.target = hint if hint else c.rng.choice(list(c.nodes))

    def issue(self, cid: int) -> None:
        c = self.cluster
        client = self.clients[cid]
        client.scheduled = False
        if c.now >= c.client_stop_at or client.waiting is not None:
            return
        rng = c.rng
        node = c.nodes[client.target]
        if node.core is None or node.store is None:
            self._redirect(client, None)
            self._next(client, 5, 20)
            return
        roll = rng.random()
        if roll < c.read_ratio:
            self._read(client, node)
            return
        if client.session is None:
            self._open(client, node)
            return
        roll = rng.random()
        if roll < self.keepalive_ratio:
            # Keepalives go to the leader's session tracker, not through the log.
            if node.core.role is Role.LEADER and node.tracker.active:
                node.tracker.keepalive(client.session)
            self._next(client)
            return
        if roll < self.keepalive_ratio + self.idle_ratio:
            # Quiet for longer than the TTL: the leader should expire the session.
            quiet = int(self.ttl_s * 1000 * rng.uniform(1.2, 3.0))
            self._next(client, quiet, quiet + 20)
            return
        self._write(client, node)

    # -- reads ------------------------------------------------------------------------

    def _read(self, client: SimClient, node: SimNode) -> None:
        c = self.cluster
        assert node.core is not None
        if not c.reads_from_followers and node.core.role is not Role.LEADER:
            self._redirect(client, node.core.leader)
            self._next(client, 5, 20)
            return
        op = self._operation(client, c.rng.choice(c.keys), GET, None, node.id)
        client.token += 1
        ctx = f"r{client.id}:{client.token}".encode()
        try:
            node.core.read_index(ctx)
        except RaftError as exc:
            c.history.pop()
            self._redirect(client, getattr(exc, "leader", None))
            self._next(client, 5, 20)
            return
        op.call = c.stamp()
        client.waiting = _Waiting("read", op, at=node.id)
        self.reads[ctx] = (client.id, client.token)
        self._arm_timeout(client)
        c.process(node)

    def serve_read(self, node: SimNode, ctx: bytes) -> None:
        """``node`` has applied up to the read's index: answer from its store."""
        found = self.reads.pop(ctx, None)
        if found is None:
            return
        cid, token = found
        client = self.clients[cid]
        w = client.waiting
        if client.token != token or w is None or w.kind != "read" or w.op is None:
            return
        if w.op.node != node.id:
            return
        assert node.store is not None
        got = node.store.get(w.op.key)
        self._finish(client, None if got is None else got.value.decode())

    # -- sessions ---------------------------------------------------------------------

    def _open(self, client: SimClient, node: SimNode) -> None:
        client.waiting = _Waiting("open")
        self._propose(client, node, encode_command(OpenSession(self.ttl_s)), seq=0)

    # -- writes -----------------------------------------------------------------------

    def _write(self, client: SimClient, node: SimNode) -> None:
        c = self.cluster
        rng = c.rng
        assert client.session is not None and node.store is not None
        what = rng.choices(list(WRITES), weights=list(WRITES.values()))[0]
        n = c.next_op_id()
        value = f"v{n}"
        key = rng.choice(c.keys)
        command: RequestCommand
        op: Operation | None
        if what == PUT:
            command = Set(key, value.encode())
            op = self._operation(client, key, PUT, value, node.id)
        elif what == CAS:
            seen = node.store.get(key)
            if seen is not None and rng.random() < 0.7:
                expected = seen.value.decode()  # maybe stale: a follower's state
            else:
                expected = f"v{rng.randint(max(1, n - 20), n)}"
            command = Txn(
                compares=(Compare.value_is(key, "==", expected.encode()),),
                success=(SetOp(key, value.encode()),),
            )
            op = self._operation(client, key, CAS, (expected, value), node.id)
        elif what == CREATE:
            command = Create(key, value.encode())
            op = self._operation(client, key, CREATE, value, node.id)
        elif what == DELETE:
            command = Delete(key)
            op = self._operation(client, key, DELETE, None, node.id)
        elif what == SEQ:
            command = Create(f"{SEQ_PARENT}/s-", value.encode(), sequential=True, make_parents=True)
            op = self._operation(client, SEQ_PARENT, SEQ, None, node.id)
        else:
            command = Create(
                f"{EPHEMERAL_PARENT}/c{client.id}-",
                session_id=client.session,
                sequential=True,
                make_parents=True,
            )
            op = None
        client.seq += 1
        request = ClientRequest(client.session, client.seq, client.seq, command)
        client.waiting = _Waiting(
            "write", op, encode_command(request), client.seq, client.session, what=what
        )
        if op is not None:
            op.call = c.stamp()
        self._propose(client, node, client.waiting.data, seq=client.seq)

    def _operation(
        self, client: SimClient, key: str, kind: str, arg: object, node: str
    ) -> Operation:
        op = Operation(key, kind, arg, 0, client=client.id, op_id=self.cluster.next_op_id())
        op.node = node
        self.cluster.history.append(op)
        return op

    def _propose(self, client: SimClient, node: SimNode, data: bytes, seq: int) -> None:
        c = self.cluster
        assert node.core is not None and client.waiting is not None
        client.token += 1
        client.waiting.at = node.id
        try:
            index = node.core.propose(data)
        except RaftError as exc:
            self._redirect(client, getattr(exc, "leader", None))
            self._no_answer(client)
            return
        client.waiting.proposed += 1
        self.proposals[(node.id, index)] = _Proposal(
            client.id, node.core.term, client.token, seq, client.session
        )
        self._arm_timeout(client)
        c.process(node)

    def on_applied(self, node: SimNode, index: int, term: int, result: bytes | None) -> None:
        """``node`` applied the entry at ``index`` of ``term`` with this encoded result."""
        p = self.proposals.pop((node.id, index), None)
        if p is None:
            return
        client = self.clients[p.client]
        w = client.waiting
        if w is None:
            return
        if p.term != term:
            # Overwritten: this attempt is lost (another may still apply).
            if p.token == client.token:
                self._no_answer(client)
            return
        assert result is not None
        answer = decode_result(result)
        if w.kind == "open":
            if p.seq == 0 and p.token == client.token and isinstance(answer, int):
                client.session, client.seq = answer, 0
                client.sessions_opened += 1
                client.waiting = None
                self._next(client)
            return  # an older attempt's session: nobody keeps it alive, it expires
        if w.kind != "write" or p.session != w.session or p.seq != w.seq:
            return
        if isinstance(answer, SessionExpiredError):
            self.sessions_expired_seen += 1
            client.session = None
            # Refused and never proposed elsewhere: not applied. Otherwise another
            # attempt may have been applied before the session expired.
            self._finish(client, REFUSED if w.proposed == 1 else None, known=w.proposed == 1)
            return
        self._finish(client, self._outcome(w.what, answer))

    def _outcome(self, what: str, answer: object) -> object:
        if isinstance(answer, NoNodeError):
            return "nonode"
        if isinstance(answer, NodeExistsError):
            return "exists"
        if isinstance(answer, CoordkitError):
            self.cluster.checker.fail(f"unexpected answer to a {what}: {answer!r}")
        if what == CAS:
            assert isinstance(answer, TxnResult)
            return "ok" if answer.succeeded else "fail"
        if what == SEQ:
            assert isinstance(answer, Node)
            return int(answer.path[-SEQUENCE_DIGITS:])
        return "ok"

    # -- outcomes ---------------------------------------------------------------------

    def _finish(self, client: SimClient, result: object, known: bool = True) -> None:
        w = client.waiting
        assert w is not None
        if w.op is not None and known:
            w.op.ret = self.cluster.stamp()
            w.op.result = result
            w.op.returned = True
        client.waiting = None
        self._next(client)

    def node_lost(self, nid: str, writes_only: bool) -> None:
        """``nid`` crashed (every attempt on it fails at once, as a closed connection
        does) or stepped down (its proposals fail, as the server's do)."""
        for client in self.clients.values():
            w = client.waiting
            if w is not None and w.at == nid and not (writes_only and w.kind == "read"):
                self._redirect(client, None)
                self._no_answer(client)

    def _arm_timeout(self, client: SimClient) -> None:
        c = self.cluster
        token = client.token
        c.call_at(c.now + c.op_timeout_ms, lambda: self._timeout(client, token))

    def _timeout(self, client: SimClient, token: int) -> None:
        if client.token == token and client.waiting is not None:
            self._redirect(client, None)
            self._no_answer(client)

    def _no_answer(self, client: SimClient) -> None:
        """No answer to the current attempt: retry a write with the same seq, or give up."""
        c = self.cluster
        w = client.waiting
        if w is None:
            return
        client.token += 1  # the old attempt's timeout no longer counts
        if w.kind == "write" and w.attempts < 6 and c.now < c.client_stop_at:
            w.attempts += 1
            self.retries += 1
            c.call_at(c.now + c.rng.randint(5, 20), lambda: self._retry(client, w))
            return
        client.waiting = None
        if w.op is not None and w.kind == "write" and not w.proposed:
            # No core ever took it: it cannot take effect, forget it.
            c.history.remove(w.op)
        # Otherwise the outcome is unknown: the operation stays open-ended in the history.
        self._next(client, 0, 5)

    def _retry(self, client: SimClient, w: _Waiting) -> None:
        if client.waiting is not w:
            return
        node = self.cluster.nodes[client.target]
        if node.core is None:
            self._redirect(client, None)
            self._no_answer(client)
            return
        self._propose(client, node, w.data, seq=w.seq)
