"""Fixed-width little-endian primitives shared by the store's binary formats.

Commands, results and snapshots are all built from these: unsigned and
signed 64-bit integers, bytes and UTF-8 strings with a 32-bit length, bools
as one byte (0 or 1), optional integers as a presence byte then the value.
Fixed widths keep decoding to one ``struct`` call per field, which matters on
the apply path of every replica.

:class:`Reader` raises :class:`~coordkit.errors.InvalidArgumentError` for
every way input can be wrong (truncated, an out-of-range byte, bad UTF-8) and
nothing else; :class:`Writer` raises it for a value it cannot represent (an
integer outside 64 bits, a string that is not valid UTF-8, a wrong type).
"""

from __future__ import annotations

import struct

from coordkit.errors import InvalidArgumentError, WrongTypeError

__all__ = ["Reader", "Writer"]

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")


class Writer:
    """Appends encoded fields to a growing buffer; :meth:`getvalue` returns the bytes."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def getvalue(self) -> bytes:
        return bytes(self._buf)

    def _pack(self, fmt: struct.Struct, value: object, what: str) -> None:
        if isinstance(value, bool) and fmt is not _U8:
            raise WrongTypeError(f"{what} must be an int, not bool")
        try:
            self._buf += fmt.pack(value)
        except struct.error as exc:
            raise InvalidArgumentError(f"{what} {value!r} cannot be encoded: {exc}") from exc

    def u8(self, value: int) -> None:
        self._pack(_U8, value, "byte")

    def u16(self, value: int) -> None:
        self._pack(_U16, value, "16-bit field")

    def u32(self, value: int) -> None:
        self._pack(_U32, value, "count")

    def u64(self, value: int) -> None:
        self._pack(_U64, value, "unsigned 64-bit field")

    def i64(self, value: int) -> None:
        self._pack(_I64, value, "signed 64-bit field")

    def f64(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WrongTypeError(f"a float field takes a number, not {type(value).__name__}")
        try:
            self._buf += _F64.pack(value)
        except OverflowError as exc:
            raise InvalidArgumentError(f"{value!r} cannot be encoded as a float") from exc

    def boolean(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise WrongTypeError(f"a flag must be a bool, not {type(value).__name__}")
        self._buf += b"\x01" if value else b"\x00"

    def blob(self, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise WrongTypeError(f"a bytes field takes bytes, not {type(value).__name__}")
        self.u32(len(value))
        self._buf += value

    def text(self, value: str) -> None:
        if not isinstance(value, str):
            raise WrongTypeError(f"a text field takes str, not {type(value).__name__}")
        try:
            encoded = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgumentError(f"text {value!r} is not valid UTF-8") from exc
        self.blob(encoded)

    def opt_u64(self, value: int | None) -> None:
        if value is None:
            self._buf += b"\x00"
        else:
            self._buf += b"\x01"
            self.u64(value)

    def opt_i64(self, value: int | None) -> None:
        if value is None:
            self._buf += b"\x00"
        else:
            self._buf += b"\x01"
            self.i64(value)


class Reader:
    """Reads fields from ``data`` in order; :meth:`end` checks nothing is left over."""

    __slots__ = ("_data", "_pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        if not isinstance(data, bytes):
            raise WrongTypeError(f"{what} must be bytes, not {type(data).__name__}")
        self._data = data
        self._pos = 0
        #: what is being read, for error messages ("command", "result", ...).
        self.what = what

    def fail(self, problem: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"malformed {self.what}: {problem} (at byte {self._pos})")

    def _unpack(self, fmt: struct.Struct) -> int:
        pos = self._pos
        end = pos + fmt.size
        if end > len(self._data):
            raise self.fail("truncated")
        self._pos = end
        value: int = fmt.unpack_from(self._data, pos)[0]
        return value

    def u8(self) -> int:
        return self._unpack(_U8)

    def u16(self) -> int:
        return self._unpack(_U16)

    def u32(self) -> int:
        return self._unpack(_U32)

    def u64(self) -> int:
        return self._unpack(_U64)

    def i64(self) -> int:
        return self._unpack(_I64)

    def f64(self) -> float:
        pos = self._pos
        if pos + 8 > len(self._data):
            raise self.fail("truncated")
        self._pos = pos + 8
        value: float = _F64.unpack_from(self._data, pos)[0]
        return value

    def boolean(self) -> bool:
        flag = self.u8()
        if flag > 1:
            raise self.fail(f"a flag is {flag}, not 0 or 1")
        return flag == 1

    def blob(self) -> bytes:
        size = self.u32()
        pos = self._pos
        end = pos + size
        if end > len(self._data):
            raise self.fail(f"truncated ({size} bytes announced)")
        self._pos = end
        return self._data[pos:end]

    def text(self) -> str:
        raw = self.blob()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"text is not valid UTF-8 ({exc.reason})") from None

    def opt_u64(self) -> int | None:
        return self.u64() if self.boolean() else None

    def opt_i64(self) -> int | None:
        return self.i64() if self.boolean() else None

    def end(self) -> None:
        if self._pos != len(self._data):
            raise self.fail(f"{len(self._data) - self._pos} bytes left over")
