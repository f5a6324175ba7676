"""PeerTransport between real nodes on loopback: order, one connection per pair,
reconnection, bounded queues, snapshots in chunks, and the partition hook."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from peer_nodes import (
    CLUSTER,
    NOWHERE,
    TOKEN,
    append,
    records_about,
    start_cluster,
    start_node,
    start_pair,
    until_logged,
    wait_until,
)

from coordkit.backends.raft.core.messages import (
    ConfState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from coordkit.backends.raft.node.codec import encode_message
from coordkit.backends.raft.node.transport import (
    ClusterIdentity,
    PeerTransport,
    SnapshotReceiver,
    TransportSettings,
    asyncio_backend_options,
)
from coordkit.backends.raft.wire import Address, Hello, connect
from coordkit.errors import ConfigurationError
from coordkit.retry import RetryPolicy

pytestmark = pytest.mark.anyio

LOG = "coordkit.backends.raft.node"
PROC_TCP = Path("/proc/net/tcp")
HAS_PROC_TCP = PROC_TCP.exists()


def established(ports: set[int]) -> list[tuple[int, int]]:
    """(local port, remote port) of every established IPv4 TCP socket on loopback
    between two of ``ports`` or from an ephemeral port to one of them, as the
    kernel lists them (/proc/net/tcp): each connection appears once per end."""
    rows = []
    for line in PROC_TCP.read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if state != "01":  # ESTABLISHED
            continue
        lport, rport = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
        if lport in ports or rport in ports:
            rows.append((lport, rport))
    return rows


async def test_messages_arrive_in_send_order_between_three_transports() -> None:
    count = 400
    names = ["n1", "n2", "n3"]
    with anyio.fail_after(20):
        async with start_cluster(names) as nodes:

            async def sender(frm: str, to: str) -> None:
                for i in range(1, count + 1):
                    nodes[frm].transport.send(append(frm, to, i, data=bytes([i % 256]) * 100))
                    if i % 50 == 0:
                        await anyio.lowlevel.checkpoint()  # let the writers run meanwhile

            async with anyio.create_task_group() as tg:
                for frm in names:
                    for to in names:
                        if frm != to:
                            tg.start_soon(sender, frm, to)
            for to in names:
                inbox = nodes[to].inbox
                await inbox.until(lambda ms: len(ms) == count * 2)
                for frm in names:
                    if frm != to:
                        got = [m.entries[0].index for m in inbox.of(frm)]
                        assert got == list(range(1, count + 1))
                        assert all(m.to == to for m in inbox.of(frm))
            stats = nodes["n1"].transport.stats()
            assert stats["n2"].sent == count and stats["n2"].received == count
            assert stats["n2"].dropped == 0


async def test_the_smaller_id_dials_and_each_pair_shares_one_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    names = ["n1", "n2", "n3"]
    caplog.set_level(logging.INFO, logger=LOG)
    with anyio.fail_after(20):
        async with start_cluster(names) as nodes:
            for node in nodes.values():
                await node.transport.wait_connected()
            # Traffic both ways on every pair, so each side has used the connection.
            for frm in names:
                for to in names:
                    if frm != to:
                        nodes[frm].transport.send(append(frm, to, 1))
            for to in names:
                await nodes[to].inbox.until(lambda ms: len(ms) == 2)
            assert nodes["n1"].accepted == {}
            assert nodes["n2"].accepted == {"n1": 1}
            assert nodes["n3"].accepted == {"n1": 1, "n2": 1}
            if HAS_PROC_TCP:  # the kernel's view, where there is one
                ports = {node.address.port for node in nodes.values()}
                rows = established(ports)
                # 3 connections, each listed by both of its ends, each to a listening port.
                assert len(rows) == 6
                assert sum(1 for _, remote in rows if remote in ports) == 3
            assert not [r for r in caplog.records if "must not dial" in r.getMessage()]


async def test_reconnects_after_the_peer_restarts_on_the_same_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOG)
    settings = TransportSettings(retry=RetryPolicy(0.01, 0.05))
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            n1, n2 = await start_pair(tg, settings=settings)
            await n1.transport.wait_connected()
            n1.transport.send(append("n1", "n2", 1))
            await n2.inbox.until(lambda ms: len(ms) == 1)

            port = n2.address.port
            await n2.stop()
            # Wait for several failed attempts, so "once per state change" is tested.
            await until_logged(caplog.records, "connection to peer n2 at", count=3)
            n2 = await start_node(tg, "n2", {"n1": n1.address}, port=port, settings=settings)
            await n1.transport.wait_connected()
            n1.transport.send(append("n1", "n2", 2))
            n2.transport.send(append("n2", "n1", 7))
            await n2.inbox.until(lambda ms: len(ms) == 1)
            await n1.inbox.until(lambda ms: len(ms) == 1)
            assert n2.inbox.messages[0].entries[0].index == 2

            on_n1 = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
            about = [line for line in on_n1 if "peer n2" in line]
            assert len([line for line in about if line.startswith("connected to")]) == 2
            assert len([line for line in about if "closed" in line]) == 1
            assert len([line for line in about if "cannot reach" in line]) == 0
            tg.cancel_scope.cancel()


async def test_a_peer_refusing_dials_is_reported_once_and_only_after_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Members of a cluster start one after another: refusals at first are normal.
    caplog.set_level(logging.DEBUG, logger=LOG)
    grace = 0.5
    settings = TransportSettings(retry=RetryPolicy(0.01, 0.05), report_unreachable_after=grace)
    address = await unreachable_address()
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            started = anyio.current_time()
            await start_node(tg, "n1", {"n2": address}, settings=settings)
            await until_logged(caplog.records, "cannot reach peer n2 yet", count=3)
            assert not records_about(caplog.records, "cannot reach peer n2")  # within the grace
            await until_logged(caplog.records, "cannot reach peer n2 at", count=1)
            assert anyio.current_time() - started >= grace
            seen = sum("cannot reach peer n2" in r.getMessage() for r in caplog.records)
            await until_logged(caplog.records, "cannot reach peer n2", count=seen + 5)
            assert len(records_about(caplog.records, "cannot reach peer n2")) == 1
            tg.cancel_scope.cancel()


async def unreachable_address() -> Address:
    """A loopback port nobody listens on (bound, then closed)."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        return Address("127.0.0.1", listener.extra(anyio.abc.SocketAttribute.local_port))


async def test_a_full_queue_drops_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    settings = TransportSettings(queue_messages=10, queue_bytes=4000)
    nowhere = await unreachable_address()
    transport = PeerTransport(
        ClusterIdentity(CLUSTER, "n1", TOKEN), {"n2": nowhere}, lambda m: None, settings=settings
    )
    with anyio.fail_after(10):
        async with transport:
            for i in range(1, 26):
                transport.send(append("n1", "n2", i))
            stats = transport.stats()["n2"]
            assert (stats.queued, stats.dropped, stats.connected) == (10, 15, False)
            # One log line for the burst, not one per message.
            assert len(records_about(caplog.records, "send queue to n2 full")) == 1
            # The byte bound: 10 messages fill the count; free it and fill the bytes instead.
            transport.isolate(["n2"])
            transport.heal()
            assert transport.stats()["n2"].queued == 0
            for i in range(1, 4):
                transport.send(append("n1", "n2", i, data=b"x" * 1500))
            stats = transport.stats()["n2"]
            assert stats.queued == 2 and stats.queued_bytes <= 4000 and stats.dropped == 16


async def test_a_burst_goes_out_in_one_write_up_to_the_batch_size() -> None:
    message = append("n1", "n2", 1, data=b"x" * 400)
    frame = len(encode_message(message))
    settings = TransportSettings(write_batch_bytes=2 * frame)
    with anyio.fail_after(20):
        async with start_cluster(["n1", "n2"]) as nodes:
            await nodes["n1"].transport.wait_connected()
            for i in range(1, 201):  # no checkpoint in between: one burst
                nodes["n1"].transport.send(append("n1", "n2", i))
            await nodes["n2"].inbox.until(lambda ms: len(ms) == 200)
            stats = nodes["n1"].transport.stats()["n2"]
            assert (stats.sent, stats.writes) == (200, 1)
        async with start_cluster(["n1", "n2"], settings=settings) as nodes:
            await nodes["n1"].transport.wait_connected()
            for _ in range(10):
                nodes["n1"].transport.send(message)
            await nodes["n2"].inbox.until(lambda ms: len(ms) == 10)
            stats = nodes["n1"].transport.stats()["n2"]
            assert (stats.sent, stats.writes) == (10, 5)  # two frames fit in a batch


class FileSink:
    """A snapshot receiver on real files: chunks go to a temporary file, renamed on commit."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.committed: list[Path] = []
        self.aborted = 0
        self.finished = anyio.Event()  # set when a snapshot is committed or aborted

    async def __call__(self, meta: SnapshotMeta) -> SnapshotReceiver:
        sink = self

        class Receiver:
            def __init__(self) -> None:
                self.temp = anyio.Path(sink.directory / f"snap-{meta.index}.tmp")
                self.file: anyio.AsyncFile[bytes] | None = None

            async def write(self, chunk: bytes) -> None:
                if self.file is None:
                    self.file = await anyio.open_file(self.temp, "wb")
                await self.file.write(chunk)

            async def commit(self) -> None:
                if self.file is None:
                    self.file = await anyio.open_file(self.temp, "wb")
                await self.file.aclose()
                final = sink.directory / f"snap-{meta.index}"
                await self.temp.rename(final)
                sink.committed.append(final)
                sink.finished.set()

            async def abort(self) -> None:
                if self.file is not None:
                    await self.file.aclose()
                await self.temp.unlink(missing_ok=True)
                sink.aborted += 1
                sink.finished.set()

        return Receiver()


def snap(frm: str, to: str, index: int, data: bytes = b"") -> Message:
    meta = SnapshotMeta(index, 2, ConfState.of(["n1", "n2"]))
    return Message(MessageType.SNAP, frm, to, 2, snapshot=Snapshot(meta, data))


async def test_a_multi_chunk_snapshot_streams_while_heartbeats_keep_flowing(
    tmp_path: Path,
) -> None:
    source_file = tmp_path / "snapshot.bin"
    data = bytes(range(256)) * 4096  # 1 MiB: 64 chunks of 16 KiB
    source_file.write_bytes(data)
    halfway = anyio.Event()
    resume = anyio.Event()

    async def source(meta: SnapshotMeta) -> AsyncIterator[bytes]:
        assert meta.index == 50
        async with await anyio.open_file(source_file, "rb") as f:
            sent = 0
            while piece := await f.read(40_000):
                yield piece
                sent += len(piece)
                if sent >= len(data) // 2 and not halfway.is_set():
                    halfway.set()
                    await resume.wait()  # the snapshot is still streaming from here on

    sink = FileSink(tmp_path)
    settings = TransportSettings(snapshot_chunk=16 << 10)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            n1, n2 = await start_pair(tg, settings=settings, source=source, sink=sink)
            n1.transport.send(snap("n1", "n2", 50))
            await halfway.wait()
            for i in range(1, 21):
                n1.transport.send(Message(MessageType.HEARTBEAT, "n1", "n2", 2, commit=i))
            await n2.inbox.until(lambda ms: len(ms) == 20)
            assert all(m.type is MessageType.HEARTBEAT for m in n2.inbox.messages)
            assert sink.committed == []
            resume.set()
            await n2.inbox.until(lambda ms: len(ms) == 21)
            delivered = n2.inbox.messages[-1]
            assert delivered.type is MessageType.SNAP
            assert delivered.snapshot == Snapshot(snap("n1", "n2", 50).snapshot.meta, b"")  # type: ignore[union-attr]
            assert sink.committed == [tmp_path / "snap-50"]
            assert (tmp_path / "snap-50").read_bytes() == data
            tg.cancel_scope.cancel()


async def test_a_snapshot_whose_source_fails_is_aborted_and_the_link_stays_up(
    tmp_path: Path,
) -> None:
    async def failing(meta: SnapshotMeta) -> AsyncIterator[bytes]:
        yield b"a" * 100_000
        raise OSError("disk read error")

    sink = FileSink(tmp_path)
    settings = TransportSettings(snapshot_chunk=16 << 10)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            n1, n2 = await start_pair(tg, settings=settings, source=failing, sink=sink)
            n1.transport.send(snap("n1", "n2", 9))
            n1.transport.send(append("n1", "n2", 10))
            await n2.inbox.until(lambda ms: len(ms) == 1)
            # An inline snapshot (no source needed) collected in memory by a sink-less node.
            n2.transport.send(snap("n2", "n1", 11, data=b"inline" * 10_000))
            await n1.inbox.until(lambda ms: len(ms) == 1)
            assert n1.inbox.messages[0].snapshot.data == b"inline" * 10_000  # type: ignore[union-attr]
            assert n2.inbox.messages[0].type is MessageType.APP
            await sink.finished.wait()
            assert sink.committed == [] and sink.aborted == 1
            assert [p async for p in anyio.Path(tmp_path).iterdir()] == []
            assert n1.transport.stats()["n2"].connected
            tg.cancel_scope.cancel()


async def test_isolation_during_a_snapshot_aborts_it_on_the_receiver(tmp_path: Path) -> None:
    halfway, resume = anyio.Event(), anyio.Event()

    async def source(meta: SnapshotMeta) -> AsyncIterator[bytes]:
        for piece in range(8):
            yield bytes([piece]) * 20_000
            if piece == 3 and meta.index == 50:
                halfway.set()
                await resume.wait()

    sink = FileSink(tmp_path)
    settings = TransportSettings(snapshot_chunk=16 << 10)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            n1, n2 = await start_pair(tg, settings=settings, source=source, sink=sink)
            n1.transport.send(snap("n1", "n2", 50))
            await halfway.wait()
            n1.transport.isolate(["n2"])
            resume.set()
            await sink.finished.wait()
            assert (sink.aborted, sink.committed, n2.inbox.messages) == (1, [], [])
            n1.transport.heal()
            n1.transport.send(snap("n1", "n2", 51))
            await n2.inbox.until(lambda ms: len(ms) == 1)
            assert sink.committed == [tmp_path / "snap-51"]
            assert (tmp_path / "snap-51").read_bytes() == b"".join(
                bytes([p]) * 20_000 for p in range(8)
            )
            assert n1.transport.stats()["n2"].connected
            tg.cancel_scope.cancel()


async def test_isolate_drops_both_ways_keeps_sockets_and_heal_restores(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    with anyio.fail_after(20):
        async with start_cluster(["n1", "n2", "n3"]) as nodes:
            n1, n2, n3 = nodes["n1"], nodes["n2"], nodes["n3"]
            for node in nodes.values():
                await node.transport.wait_connected()

            def arrived_at_n1(frm: str, count: int) -> Callable[[], bool]:
                return lambda: n1.transport.stats()[frm].received == count

            n1.transport.isolate(["n2"])
            n1.transport.send(append("n1", "n2", 1))  # dropped on sending
            n2.transport.send(append("n2", "n1", 1))  # dropped on arrival
            await wait_until(arrived_at_n1("n2", 1))
            n1.transport.send(append("n1", "n3", 1))  # other peers are not affected
            await n3.inbox.until(lambda ms: len(ms) == 1)

            # Isolated from every peer: a client still talks to the node.
            n1.transport.isolate()
            n3.transport.send(append("n3", "n1", 1))
            await wait_until(arrived_at_n1("n3", 1))
            stream, _ = await connect(n1.address, Hello("client", CLUSTER))
            await stream.send({"t": "echo"}, b"still here")
            assert (await stream.receive()).payload == b"still here"
            await stream.aclose()

            n1.transport.heal()
            n2.transport.send(append("n2", "n1", 2))
            n3.transport.send(append("n3", "n1", 2))
            n1.transport.send(append("n1", "n2", 2))
            await n1.inbox.until(lambda ms: len(ms) == 2)
            await n2.inbox.until(lambda ms: len(ms) == 1)
            assert sorted((m.frm, m.entries[0].index) for m in n1.inbox.messages) == [
                ("n2", 2),
                ("n3", 2),
            ]
            assert [m.entries[0].index for m in n2.inbox.messages] == [2]
            # No socket was closed by the partition.
            assert all(s.connected for s in n1.transport.stats().values())
            assert n2.accepted == {"n1": 1} and n3.accepted == {"n1": 1, "n2": 1}
            assert not [r for r in caplog.records if "closed:" in r.getMessage()]


async def test_an_idle_pair_stays_connected_through_pings_and_a_silent_one_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = TransportSettings(idle_timeout=0.4, keepalive_interval=0.1)
    with anyio.fail_after(20):
        async with start_cluster(["n1", "n2"], settings=settings) as nodes:
            await nodes["n1"].transport.wait_connected()
            # Nothing to say for several idle timeouts: the pings keep the pair alive.
            await anyio.sleep(1.2)
            assert nodes["n2"].accepted == {"n1": 1}
            assert not records_about(caplog.records, "closed")
            # A peer that stops sending anything at all is dropped as dead.
            nodes["n2"].transport.set_peers({"n0": NOWHERE, "n1": nodes["n1"].address})
            stream, _ = await connect(
                nodes["n2"].address, Hello("peer", CLUSTER, "n0", TOKEN), timeout=5
            )
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                while True:  # the node's pings arrive until it gives up on us
                    await stream.receive()
            await stream.aclose()
            assert len(records_about(caplog.records, "silent for more than 0.4 s")) == 1


async def test_set_peers_adds_and_removes_members() -> None:
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            n1 = await start_node(tg, "n1")
            n3 = await start_node(tg, "n3", {"n1": NOWHERE})
            n1.transport.set_peers({"n1": n1.address, "n3": n3.address})
            await n1.transport.wait_connected(["n3"])
            n1.transport.set_peers({"n1": n1.address})
            assert "n3" not in n1.transport.stats()
            n1.transport.send(append("n1", "n3", 1))  # an unknown peer: dropped quietly
            n1.transport.set_peers({"n3": n3.address})
            await n1.transport.wait_connected(["n3"])
            n1.transport.send(append("n1", "n3", 2))
            await n3.inbox.until(lambda ms: len(ms) == 1)
            assert n3.inbox.messages[0].entries[0].index == 2
            tg.cancel_scope.cancel()


def test_settings_refuse_impossible_values() -> None:
    with pytest.raises(ConfigurationError, match="keepalive_interval"):
        TransportSettings(idle_timeout=1.0, keepalive_interval=0.6)
    with pytest.raises(ConfigurationError, match="idle_timeout"):
        TransportSettings(idle_timeout=0)
    with pytest.raises(ConfigurationError, match="report_unreachable_after"):
        TransportSettings(report_unreachable_after=-1)
    with pytest.raises(ConfigurationError, match="snapshot_chunk"):
        TransportSettings(max_frame=1000, snapshot_chunk=1000)
    with pytest.raises(ConfigurationError, match="cluster id"):
        ClusterIdentity("", "n1", "t")
    assert "secret" not in repr(ClusterIdentity("c", "n1", "secret"))


def test_uvloop_is_used_only_when_installed() -> None:
    import importlib.util

    expected = {"use_uvloop": True} if importlib.util.find_spec("uvloop") else {}
    assert asyncio_backend_options() == expected
