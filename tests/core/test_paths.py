"""The path and value rules, checked before any backend sees a call."""

from __future__ import annotations

import pytest

from coordkit.errors import InvalidPathError, ValueTooLargeError, WrongTypeError
from coordkit.paths import (
    MAX_PATH_BYTES,
    check_path,
    check_value,
    check_version,
    is_ancestor,
    join,
    parent,
    sequence_of,
)


@pytest.mark.parametrize("path", ["/", "/a", "/a/b", "/a.b/c-d_e", "/ü/日本", "/a/" + "x" * 1000])
def test_valid_paths_pass(path: str) -> None:
    assert check_path(path) == path


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "absolute"),
        ("a/b", "absolute"),
        ("//a", "empty segment"),
        ("/a//b", "empty segment"),
        ("/a/", "end with"),
        ("/a/.", "'.'"),
        ("/a/../b", "'..'"),
        ("/a\x00b", "control"),
        ("/a\nb", "control"),
        ("/" + "x" * MAX_PATH_BYTES, "limit is 1024"),
        ("/" + "é" * 512, "limit is 1024"),  # 1025 bytes in UTF-8, 513 characters
        ("/\ud800", "UTF-8"),
    ],
)
def test_invalid_paths_raise_invalid_path_error(path: str, why: str) -> None:
    with pytest.raises(InvalidPathError, match=why):
        check_path(path)


@pytest.mark.parametrize("path", [None, b"/a", 1, ["/a"]])
def test_non_string_paths_raise_invalid_path_error(path: object) -> None:
    with pytest.raises(InvalidPathError, match="must be str"):
        check_path(path)


def test_value_limit_is_one_mib_by_default() -> None:
    assert check_value(b"x" * (1 << 20)) == b"x" * (1 << 20)
    with pytest.raises(ValueTooLargeError):
        check_value(b"x" * ((1 << 20) + 1))


@pytest.mark.parametrize("value", ["text", bytearray(b"x"), memoryview(b"x"), None, 1])
def test_non_bytes_values_raise_wrong_type_error(value: object) -> None:
    with pytest.raises(WrongTypeError):
        check_value(value)
    # WrongTypeError is a TypeError too, for code that catches the builtin
    with pytest.raises(TypeError):
        check_value(value)


@pytest.mark.parametrize("version", [-1, True, 1.0, "1"])
def test_bad_versions_are_rejected(version: object) -> None:
    with pytest.raises(ValueError):
        check_version(version)


def test_path_helpers() -> None:
    assert parent("/a/b") == "/a"
    assert parent("/a") == "/"
    assert join("/", "a") == "/a"
    assert join("/a", "b") == "/a/b"
    assert is_ancestor("/", "/x") and is_ancestor("/a", "/a/b") and is_ancestor("/a", "/a")
    assert not is_ancestor("/a", "/ab")
    assert sequence_of("lock-0000000042") == 42
    assert sequence_of("lock") is None
