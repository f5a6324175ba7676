"""Streaming snapshots: the state at their start though the store keeps applying; no garbage in.

The reference for "the state at the start" is a twin store that applied the
same commands (the store is deterministic), compared through the public
reads: every node, child list and sequence counter, every session with its
TTL and dedup table, the history, the revisions, the counters and limits.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordkit.backends.store import (
    ClientRequest,
    CloseSession,
    Command,
    Compact,
    Configure,
    Create,
    Delete,
    ExpireSession,
    OpenSession,
    Set,
    Store,
    StoreLoader,
    Txn,
    encode_result,
)
from coordkit.errors import CoordkitError, InvalidArgumentError, NoNodeError
from coordkit.paths import check_path
from coordkit.txn import Compare, CreateOp, DeleteOp, SetOp

PATHS = ["/a", "/b", "/a/x", "/a/y", "/b/x", "/a/x/z"]
path = st.sampled_from(PATHS)
values = st.binary(max_size=60)
sid = st.integers(1, 4)
txn_ops = st.lists(
    st.one_of(
        st.builds(CreateOp, path, values, st.booleans(), st.booleans()),
        st.builds(SetOp, path, values),
        st.builds(DeleteOp, path),
    ),
    max_size=3,
).map(tuple)
request_commands = st.one_of(
    st.builds(Create, path, values, st.none() | sid, st.booleans(), st.booleans()),
    st.builds(Set, path, values, st.none() | st.integers(0, 3)),
    st.builds(Delete, path, st.none() | st.integers(0, 2), st.booleans()),
    st.builds(Txn, st.tuples(st.builds(Compare.exists, path)), txn_ops, txn_ops, st.none() | sid),
    st.builds(CloseSession, sid),
)
commands: st.SearchStrategy[Command] = st.one_of(
    request_commands,
    st.builds(OpenSession, st.sampled_from([1.0, 2.5])),
    st.builds(ExpireSession, sid),
    st.builds(Compact, st.integers(0, 30)),
    st.builds(Configure, st.none() | st.integers(1, 20), st.none() | st.integers(1, 4)),
    st.builds(ClientRequest, sid, st.integers(0, 6), st.integers(0, 3), request_commands),
    # weight the commands that change records already in the tree
    st.builds(Set, path, values),
    st.builds(Create, path, values, st.none(), st.just(True), st.just(True)),
)


def run(store: Store, batch: Iterable[Command]) -> list[bytes]:
    """Apply each command; the encoded result or error of each."""
    outcomes = []
    for command in batch:
        try:
            outcomes.append(encode_result(store.apply(command)))
        except CoordkitError as exc:
            outcomes.append(encode_result(exc))
    return outcomes


def dump(store: Store) -> dict[str, Any]:
    """Everything a store holds, read through its public queries."""
    return {
        "revision": store.revision,
        "oldest_revision": store.oldest_revision,
        "limits": (store.max_history, store.max_session_results, store.max_value_bytes),
        "next_session_id": store.next_session_id,
        "nodes": [(store.get(p), store.children(p), store.next_sequence(p)) for p in store.paths()],
        "sessions": [store.session(s) for s in store.session_ids()],
        "ttls": store.session_ttls(),
        "history": store.history(),
    }


def load(chunks: Iterable[bytes]) -> Store:
    loader = StoreLoader()
    for chunk in chunks:
        loader.feed(chunk)
    return loader.finish()


@given(
    prefix=st.lists(commands, max_size=40),
    during=st.lists(st.lists(commands, max_size=4), max_size=40),
    after=st.lists(commands, max_size=15),
    chunk=st.integers(1, 300),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_snapshot_is_the_state_at_its_start_though_commands_run_between_chunks(
    prefix: list[Command], during: list[list[Command]], after: list[Command], chunk: int
) -> None:
    store, twin = Store(max_history=8), Store(max_history=8)
    run(store, prefix)
    run(twin, prefix)
    expected = dump(twin)
    loader = StoreLoader()
    batches = iter(during)
    for piece in store.snapshot_chunks(chunk):
        loader.feed(piece)
        run(store, next(batches, []))
    restored = loader.finish()
    assert dump(restored) == expected
    assert store._captures == []  # the finished stream keeps nothing aside
    # and the restored store behaves as the original did from that point
    assert run(restored, after) == run(twin, after)
    assert dump(restored) == dump(twin)


def test_two_overlapping_snapshots_each_keep_their_own_start() -> None:
    store = Store()
    store.apply(Create("/n", b""))
    for i in range(50):
        store.apply(Create(f"/n/{i}", b"v0"))
    first_state = dump(store)
    first = store.snapshot_chunks(64)
    next_chunk = [next(first)]
    for i in range(0, 50, 2):
        store.apply(Set(f"/n/{i}", b"v1"))
    second_state = dump(store)
    second = store.snapshot_chunks(64)
    for i in range(50):
        store.apply(Delete(f"/n/{i}"))
    assert dump(load([*next_chunk, *first])) == first_state
    assert dump(load(second)) == second_state


def test_only_records_changed_during_the_stream_are_kept_aside() -> None:
    store = Store()
    store.apply(Create("/n", b""))
    for i in range(2000):
        store.apply(Create(f"/n/{i}", b"x" * 50))
    stream = store.snapshot_chunks(4096)
    first = next(stream)
    (capture,) = store._captures
    for i in range(0, 2000, 100):
        store.apply(Set(f"/n/{i}", b"new"))
        store.apply(Set(f"/n/{i}", b"newer"))  # a second change keeps the first pre-image
    for i in range(2000, 2100):
        store.apply(Create(f"/n/{i}", b""))  # new nodes are not in the snapshot: nothing kept
    store.apply(Create("/n/q-", b"", sequential=True))  # the parent's counter changes
    assert sorted(capture.saved) == sorted(["/n", *(f"/n/{i}" for i in range(0, 2000, 100))])
    restored = load([first, *stream])
    assert store._captures == []
    assert restored.get("/n/100").value == b"x" * 50  # type: ignore[union-attr]
    assert restored.next_sequence("/n") == 0
    assert len(restored) == 2002


def test_closing_or_dropping_a_stream_stops_keeping_pre_images() -> None:
    store = Store()
    store.apply(Create("/a", b""))
    stream = store.snapshot_chunks(8)
    next(stream)
    stream.close()  # type: ignore[attr-defined]
    assert store._captures == []
    assert list(stream) == []
    dropped = store.snapshot_chunks(8)
    next(dropped)
    assert len(store._captures) == 1
    del dropped  # no reference cycle: released at once, no collector needed
    assert store._captures == []


def test_chunks_have_exactly_the_asked_size_but_the_last() -> None:
    store = Store()
    for i in range(30):
        store.apply(Create(f"/k{i}", bytes(range(i))))
    data = store.snapshot()
    for size in (1, 5, 64, 1000, len(data), len(data) + 1):
        chunks = list(store.snapshot_chunks(size))
        assert b"".join(chunks) == data
        assert all(len(c) == size for c in chunks[:-1]) and 0 < len(chunks[-1]) <= size


def test_a_bad_chunk_size_is_refused() -> None:
    for size in (0, -1, 1.5, True):
        with pytest.raises(InvalidArgumentError):
            Store().snapshot_chunks(size)  # type: ignore[arg-type]


def test_the_loader_accepts_any_split_of_the_stream() -> None:
    store = Store(max_history=5)
    sid = store.apply(OpenSession(3.0))
    store.apply(ClientRequest(sid, 0, 0, Create("/e", b"eph", session_id=sid)))
    store.apply(Create("/a/b/c", b"abc", make_parents=True))
    data = store.snapshot()
    expected = dump(store)
    for size in range(1, 40):
        assert dump(load(data[i : i + size] for i in range(0, len(data), size))) == expected
    assert load([data]).session_ephemerals(sid) == ["/e"]


# -- corrupt input: one clear error ----------------------------------------------


@pytest.fixture(scope="module")
def sample() -> bytes:
    store = Store(max_history=4)
    sid = store.apply(OpenSession(2.0))
    store.apply(ClientRequest(sid, 0, 0, Create("/s-", b"r", session_id=sid, sequential=True)))
    with pytest.raises(NoNodeError):  # a recorded error, in the snapshot too
        store.apply(ClientRequest(sid, 1, 0, Delete("/missing")))
    store.apply(Create("/a/b", b"value", make_parents=True))
    store.apply(Set("/a", b"w"))
    return store.snapshot()


def refused(chunks: Iterable[bytes]) -> InvalidArgumentError:
    with pytest.raises(InvalidArgumentError, match="corrupt store snapshot") as raised:
        load(chunks)
    return raised.value


def test_every_truncation_is_refused(sample: bytes) -> None:
    for cut in range(len(sample)):
        refused([sample[:cut]])


def test_every_changed_byte_is_refused(sample: bytes) -> None:
    for spot in range(len(sample)):
        for flip in (0x01, 0x80, 0xFF):
            damaged = bytearray(sample)
            damaged[spot] ^= flip
            refused([bytes(damaged)])


def test_trailing_data_is_refused(sample: bytes) -> None:
    refused([sample, b"\x00"])
    refused([sample + sample])


def test_a_loader_that_failed_refuses_to_go_on(sample: bytes) -> None:
    loader = StoreLoader()
    with pytest.raises(InvalidArgumentError):
        loader.feed(b"NOTASNAPSHOT")
    with pytest.raises(InvalidArgumentError, match="corrupt store snapshot"):
        loader.feed(sample)
    with pytest.raises(InvalidArgumentError, match="corrupt store snapshot"):
        loader.finish()
    done = StoreLoader()
    done.feed(sample)
    done.finish()
    with pytest.raises(InvalidArgumentError, match="finished"):
        done.feed(b"")


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_random_bytes_are_refused(data: bytes) -> None:
    refused([data])


def reseal(data: bytes) -> bytes:
    """Recompute the CRC of the end frame, so the damage must be caught by the checks."""
    end = len(data) - 41  # u32 length, u8 type, four u64 counts, u32 CRC
    crc = zlib.crc32(data[:end])
    return data[:-4] + struct.pack("<I", crc)


def refused_or_coherent(data: bytes) -> None:
    """``data`` is refused with the one error, or loads a store whose invariants hold."""
    try:
        store = load([data])
    except InvalidArgumentError as exc:
        assert "corrupt store snapshot" in str(exc)
        return
    # It snapshots and reloads identically, every path is valid, every node's parent
    # exists and may have children, and every ephemeral belongs to a session that lists it.
    assert dump(Store.restore(store.snapshot())) == dump(store)
    for p in store.paths():
        check_path(p)
        node = store.get(p)
        assert node is not None
        if p != "/":
            parent = store.get(p.rsplit("/", 1)[0] or "/")
            assert parent is not None and parent.ephemeral_owner is None
            assert node.create_revision <= node.mod_revision <= store.revision
        if node.ephemeral_owner is not None:
            assert p in store.session_ephemerals(node.ephemeral_owner)


def test_every_changed_byte_behind_a_valid_checksum_is_refused_or_harmless(sample: bytes) -> None:
    for spot in range(len(sample) - 41):
        for byte in {0x00, 0x01, 0x2F, 0xFF, sample[spot] ^ 0x01}:
            damaged = bytearray(sample)
            damaged[spot] = byte
            refused_or_coherent(reseal(bytes(damaged)))


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_damage_behind_a_valid_checksum_is_refused_or_harmless(
    sample: bytes, data: st.DataObject
) -> None:
    damaged = bytearray(sample)
    for _ in range(data.draw(st.integers(2, 4))):
        damaged[data.draw(st.integers(0, len(sample) - 42))] = data.draw(st.integers(0, 255))
    refused_or_coherent(reseal(bytes(damaged)))
