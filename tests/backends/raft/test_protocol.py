"""The client protocol's watch-event encoding: round trips, and garbage is refused."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordkit.backends.raft.protocol import decode_events, encode_events
from coordkit.errors import InvalidArgumentError
from coordkit.model import Event, EventType, Node

paths = st.text(min_size=1, max_size=30).map(lambda s: "/" + s.replace("/", "_"))
nodes = st.builds(
    Node,
    path=paths,
    value=st.binary(max_size=64),
    create_revision=st.integers(0, 2**40),
    mod_revision=st.integers(0, 2**40),
    version=st.integers(0, 2**31),
    ephemeral_owner=st.none() | st.integers(0, 2**62),
    num_children=st.integers(0, 2**31),
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    node = draw(st.none() | nodes)
    path = node.path if node is not None else draw(paths)
    return Event(draw(st.sampled_from(EventType)), path, node, draw(st.integers(1, 2**40)))


@given(st.lists(events(), max_size=8))
def test_events_round_trip(batch: list[Event]) -> None:
    assert decode_events(encode_events(batch)) == batch


@given(st.lists(events(), min_size=1, max_size=4), st.data())
def test_truncated_or_padded_input_is_refused_cleanly(
    batch: list[Event], data: st.DataObject
) -> None:
    encoded = encode_events(batch)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(InvalidArgumentError):
        decode_events(encoded[:cut])
    with pytest.raises(InvalidArgumentError):
        decode_events(encoded + b"\x00")


@given(st.binary(max_size=200))
def test_garbage_raises_only_invalid_argument(garbage: bytes) -> None:
    with contextlib.suppress(InvalidArgumentError):
        decode_events(garbage)
