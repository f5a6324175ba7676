"""Raft messages <-> frames: every message round-trips; anything malformed is a FrameError."""

from __future__ import annotations

import struct
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordkit.backends.raft.core.messages import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from coordkit.backends.raft.node.codec import (
    PING,
    Ping,
    SnapshotChunk,
    SnapshotEnd,
    SnapshotStart,
    decode,
    decode_message,
    encode_message,
    encode_snapshot_chunk,
    encode_snapshot_end,
    encode_snapshot_start,
)
from coordkit.backends.raft.wire import Frame, FrameError

ids = st.text(min_size=1, max_size=8)
uints = st.integers(min_value=0, max_value=2**63 - 1)
small = st.integers(min_value=0, max_value=1000)
entries = st.builds(Entry, small, small, st.sampled_from(EntryType), st.binary(max_size=64))
snapshots = st.builds(
    Snapshot,
    st.builds(
        SnapshotMeta,
        uints,
        uints,
        st.builds(ConfState.of, st.lists(ids, max_size=4), st.lists(ids, max_size=3)),
    ),
    st.binary(max_size=256),
)
messages = st.builds(
    Message,
    st.sampled_from(MessageType),
    ids,
    ids,
    term=uints,
    log_term=uints,
    index=uints,
    entries=st.lists(entries, max_size=8).map(tuple),
    commit=uints,
    reject=st.booleans(),
    reject_hint=uints,
    snapshot=st.none() | snapshots,
    context=st.binary(max_size=32),
)


def as_frame(data: bytes) -> Frame:
    """The frame that FrameStream.receive would make of encoded bytes."""
    head_len, body_len = struct.unpack(">II", data[:8])
    assert len(data) == 8 + head_len + body_len
    return Frame(orjson.loads(data[8 : 8 + head_len]), data[8 + head_len :])


@settings(max_examples=400)
@given(messages)
def test_every_message_round_trips(message: Message) -> None:
    assert decode(as_frame(encode_message(message))) == message


def test_payload_bytes_are_raw_and_defaults_are_left_out() -> None:
    data = bytes(range(256))
    m = Message(
        MessageType.APP, "n1", "n2", 3, entries=(Entry(3, 7, data=data), Entry(3, 8)), context=b"c"
    )
    frame = as_frame(encode_message(m))
    assert frame.payload == b"c" + data  # no base64, no JSON of the bytes
    assert frame.header == {
        "t": "app",
        "f": "n1",
        "o": "n2",
        "T": 3,
        "cx": 1,
        "e": [3, 7, 0, 256, 3, 8, 0, 0],
    }
    heartbeat = Message(MessageType.HEARTBEAT, "n1", "n2", 3, commit=5)
    assert as_frame(encode_message(heartbeat)).header == {
        "t": "heartbeat", "f": "n1", "o": "n2", "T": 3, "c": 5
    }  # fmt: skip


@given(snapshots.filter(lambda s: s.data))
def test_snapshot_stream_frames_round_trip(snapshot: Snapshot) -> None:
    m = Message(MessageType.SNAP, "n1", "n2", 4, snapshot=snapshot)
    start = decode(as_frame(encode_snapshot_start(m, 9)))
    stripped = Message(MessageType.SNAP, "n1", "n2", 4, snapshot=Snapshot(snapshot.meta, b""))
    assert start == SnapshotStart(9, stripped)
    assert decode(as_frame(encode_snapshot_chunk(9, snapshot.data))) == SnapshotChunk(
        9, snapshot.data
    )
    assert decode(as_frame(encode_snapshot_end(9, False))) == SnapshotEnd(9, False)
    assert decode(as_frame(PING)) == Ping()


def test_only_a_snap_with_a_snapshot_can_be_streamed() -> None:
    with pytest.raises(ValueError, match="SNAP"):
        encode_snapshot_start(Message(MessageType.APP, "n1", "n2"), 1)


def header_of(m: Message) -> tuple[dict[str, Any], bytes]:
    frame = as_frame(encode_message(m))
    return frame.header, frame.payload


APP = Message(MessageType.APP, "n1", "n2", 2, entries=(Entry(2, 5, data=b"abc"),))
SNAP = Message(MessageType.SNAP, "n1", "n2", 2, snapshot=Snapshot(SnapshotMeta(4, 2), b"s"))


@pytest.mark.parametrize(
    ("change", "payload", "error"),
    [
        ({"t": "bogus"}, None, "unknown message type 'bogus'"),
        ({"t": 7}, None, "unknown message type 7"),
        ({"f": ""}, None, "sender/recipient"),
        ({"o": None}, None, "sender/recipient"),
        ({"T": -1}, None, "'T' is not a non-negative integer"),
        ({"T": True}, None, "'T' is not a non-negative integer"),
        ({"c": "5"}, None, "'c' is not a non-negative integer"),
        ({"rj": 1}, None, "non-boolean reject"),
        ({"e": [2, 5, 0]}, None, "flat list of 4-tuples"),
        ({"e": {"a": 1}}, None, "flat list of 4-tuples"),
        ({"e": [2, 5, 9, 3]}, None, "unknown type 9"),
        ({"e": [2, -5, 0, 3]}, None, "bad term/index/length"),
        ({"e": [2, 5, 0, 4]}, None, "exceed"),
        ({"e": [2, 5, 0, 2]}, None, "1 payload bytes left over"),
        ({}, b"abcd", "left over"),
        ({}, b"ab", "exceed"),
        ({"cx": 10}, None, "exceed"),
    ],
)
def test_malformed_message_is_a_frame_error(
    change: dict[str, Any], payload: bytes | None, error: str
) -> None:
    header, body = header_of(APP)
    header.update(change)
    with pytest.raises(FrameError, match=error):
        decode(Frame(header, body if payload is None else payload))


@pytest.mark.parametrize(
    ("snapshot", "error"),
    [
        ([4, 2, [], []], "snapshot is not"),
        ("x", "snapshot is not"),
        ([4, -2, [], [], 1], "bad index/term/length"),
        ([4, 2, "n1", [], 1], "list of ids"),
        ([4, 2, [1], [], 1], "list of ids"),
        ([4, 2, [], [""], 1], "list of ids"),
        ([4, 2, [], [], 2], "exceed"),
    ],
)
def test_malformed_snapshot_is_a_frame_error(snapshot: object, error: str) -> None:
    header, body = header_of(SNAP)
    header["s"] = snapshot
    with pytest.raises(FrameError, match=error):
        decode(Frame(header, body))


@pytest.mark.parametrize(
    ("header", "payload", "error"),
    [
        ({"t": "snap-chunk"}, b"x", "stream id"),
        ({"t": "snap-chunk", "sid": -1}, b"x", "stream id"),
        ({"t": "snap-end", "sid": 1}, b"", "boolean 'ok'"),
        ({"t": "snap-end", "sid": 1, "ok": 1}, b"", "boolean 'ok'"),
        ({**header_of(APP)[0], "sid": 1}, header_of(APP)[1], "cannot start a snapshot stream"),
        ({**header_of(SNAP)[0], "sid": 1}, header_of(SNAP)[1], "in chunks, not inline"),
    ],
)
def test_malformed_stream_frame_is_a_frame_error(
    header: dict[str, Any], payload: bytes, error: str
) -> None:
    with pytest.raises(FrameError, match=error):
        decode(Frame(header, payload))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=12,
)
keys = st.sampled_from(
    ["t", "f", "o", "T", "lt", "i", "c", "rj", "rh", "cx", "e", "s", "sid", "ok"]
)
types = st.sampled_from([t.value for t in MessageType] + ["snap-chunk", "snap-end", "ping", "x"])


@settings(max_examples=500)
@given(
    base=messages,
    changes=st.dictionaries(keys, json_values | types, max_size=4),
    payload=st.none() | st.binary(max_size=64),
)
def test_a_corrupted_message_decodes_or_raises_only_frame_error(
    base: Message, changes: dict[str, Any], payload: bytes | None
) -> None:
    header, body = header_of(base)
    header.update(changes)
    try:
        result = decode(Frame(header, body if payload is None else payload))
    except FrameError:
        return
    if isinstance(result, Message):  # whatever is accepted is a well-formed message
        assert decode(as_frame(encode_message(result))) == result


def test_decode_message_rejects_frames_that_are_not_messages() -> None:
    with pytest.raises(FrameError, match="unknown message type 'ping'"):
        decode_message(as_frame(PING))
