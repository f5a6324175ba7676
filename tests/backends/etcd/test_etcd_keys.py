"""The key layout of the etcd backend (pure, no server)."""

from __future__ import annotations

import pytest

from coordkit.backends.etcd.keys import KeyLayout, depth, prefix_end
from coordkit.errors import ConfigurationError


def test_depth_counts_segments() -> None:
    assert [depth(p) for p in ("/", "/a", "/a/b", "/a/b/c")] == [0, 1, 2, 3]


def test_prefix_end_is_the_first_key_after_the_prefix() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


def test_url_path_becomes_the_prefix() -> None:
    assert KeyLayout.from_url_path("").prefix == ""
    assert KeyLayout.from_url_path("/").prefix == ""
    assert KeyLayout.from_url_path("/apps/x/").prefix == "/apps/x"
    with pytest.raises(ConfigurationError):
        KeyLayout.from_url_path("/a//b")


def test_children_of_a_node_are_one_prefix_of_index_keys() -> None:
    layout = KeyLayout("/p")
    kids = layout.children("/a")
    assert layout.index("/a/b").startswith(kids)
    assert layout.index("/a/b/c").startswith(kids) is False  # grandchild: other depth
    assert layout.index("/ab").startswith(kids) is False  # sibling sharing a prefix
    assert layout.index("/a").startswith(kids) is False
    assert layout.index("/x").startswith(layout.children("/"))
    assert layout.name_of(layout.index("/a/b")) == "b"


def test_a_subtree_is_one_prefix_of_data_keys() -> None:
    layout = KeyLayout("/p")
    below = layout.subtree("/a")
    assert layout.data("/a/b/c").startswith(below)
    assert not layout.data("/a").startswith(below)
    assert not layout.data("/ab").startswith(below)
    assert layout.path_of(layout.data("/a/b")) == "/a/b"
    assert layout.path_of(layout.data("/")) == "/"


def test_recursive_watch_range_is_filtered_to_the_subtree() -> None:
    layout = KeyLayout("")
    start, end = layout.watch_range("/a", recursive=True)
    assert end is not None
    for path, inside in (("/a", True), ("/a/b", True), ("/a-b", False), ("/a/b/c", True)):
        key = layout.data(path)
        assert start <= key < end or not inside
        assert layout.in_watch("/a", True, path) is inside
    assert layout.watch_range("/a", recursive=False) == (layout.data("/a"), None)


def test_hierarchy_keys_never_collide_with_native_lock_keys() -> None:
    # Lock keys are NAME/<lease hex> with NAME = prefix + path; a path has no
    # empty segment, so nothing under "prefix//" is ever a lock key.
    layout = KeyLayout("/p")
    lock_key = (layout.native_name("/d/x") + "/694d7a1b").encode()
    assert not lock_key.startswith(layout.base)
    assert layout.native_name("/locks/job") == "/p/locks/job"
    assert KeyLayout("").native_name("/locks/job") == "/locks/job"


def test_sequence_counters_of_a_subtree_share_a_prefix() -> None:
    layout = KeyLayout("/p")
    assert layout.sequence("/a/b").startswith(layout.sequence_subtree("/a"))
    assert not layout.sequence("/ab").startswith(layout.sequence_subtree("/a"))
