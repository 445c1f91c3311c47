"""Wire encodings of single fields.

All integers are unsigned big-endian. Booleans are one byte, exactly 0 or 1. Strings are UTF-8
with a one-byte length prefix. Enums are one unsigned byte whose value must be a known member.
Each codec writes into a bytearray and reads from a bytes object at an offset, returning the new
offset, so a message is encoded and decoded by walking its fields in declaration order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol

from protocol.errors import EncodeError, MessageDecodeError


class FieldCodec(Protocol):
    """Encodes one Python value to bytes and back."""

    name: str

    def encode(self, value: Any, out: bytearray) -> None: ...

    def decode(self, data: bytes, offset: int) -> tuple[Any, int]: ...


def _need(data: bytes, offset: int, size: int, what: str) -> None:
    if offset + size > len(data):
        raise MessageDecodeError("truncated", f"{what} needs {size} bytes at offset {offset}")


@dataclass(frozen=True, slots=True)
class UInt:
    size: int

    @property
    def name(self) -> str:
        return f"u{self.size * 8}"

    def encode(self, value: Any, out: bytearray) -> None:
        if type(value) is not int:
            raise EncodeError(f"{self.name} needs an int, got {type(value).__name__}")
        if not 0 <= value < 1 << (self.size * 8):
            raise EncodeError(f"{value} does not fit in {self.name}")
        out += value.to_bytes(self.size, "big")

    def decode(self, data: bytes, offset: int) -> tuple[int, int]:
        _need(data, offset, self.size, self.name)
        end = offset + self.size
        return int.from_bytes(data[offset:end], "big"), end


@dataclass(frozen=True, slots=True)
class Bool:
    name: str = "bool"

    def encode(self, value: Any, out: bytearray) -> None:
        if type(value) is not bool:
            raise EncodeError(f"bool needs a bool, got {type(value).__name__}")
        out.append(1 if value else 0)

    def decode(self, data: bytes, offset: int) -> tuple[bool, int]:
        _need(data, offset, 1, "bool")
        raw = data[offset]
        if raw > 1:
            raise MessageDecodeError("bad_field", f"bool must be 0 or 1, got {raw}")
        return raw == 1, offset + 1


@dataclass(frozen=True, slots=True)
class Str:
    max_bytes: int = 64

    @property
    def name(self) -> str:
        return f"str{self.max_bytes}"

    def encode(self, value: Any, out: bytearray) -> None:
        if type(value) is not str:
            raise EncodeError(f"string field needs a str, got {type(value).__name__}")
        raw = value.encode("utf-8")
        if len(raw) > self.max_bytes:
            raise EncodeError(f"string of {len(raw)} bytes exceeds {self.max_bytes}")
        out.append(len(raw))
        out += raw

    def decode(self, data: bytes, offset: int) -> tuple[str, int]:
        _need(data, offset, 1, "string length")
        length = data[offset]
        if length > self.max_bytes:
            raise MessageDecodeError("bad_field", f"string length {length} > {self.max_bytes}")
        _need(data, offset + 1, length, "string")
        end = offset + 1 + length
        try:
            return data[offset + 1 : end].decode("utf-8"), end
        except UnicodeDecodeError as exc:
            raise MessageDecodeError("bad_field", f"string is not UTF-8: {exc}") from None


@dataclass(frozen=True, slots=True)
class Enum8:
    enum_type: type[enum.IntEnum]

    @property
    def name(self) -> str:
        return self.enum_type.__name__

    def encode(self, value: Any, out: bytearray) -> None:
        if not isinstance(value, self.enum_type):
            raise EncodeError(f"{self.name} field needs a {self.name}, got {value!r}")
        out.append(int(value))

    def decode(self, data: bytes, offset: int) -> tuple[enum.IntEnum, int]:
        _need(data, offset, 1, self.name)
        raw = data[offset]
        try:
            return self.enum_type(raw), offset + 1
        except ValueError:
            raise MessageDecodeError("bad_field", f"{raw} is not a {self.name}") from None


U8 = UInt(1)
U16 = UInt(2)
U32 = UInt(4)
U64 = UInt(8)
BOOL = Bool()
STR = Str(64)
