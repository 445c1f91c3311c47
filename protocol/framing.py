"""Frames: header, payload and CRC, byte-stuffed with COBS and delimited by 0x00.

Layout of a frame before stuffing (all integers big-endian):

    version u8 | kind u8 | session u16 | seq u8 | code u8 | length u8 | payload | crc16 u16

On the wire a frame is `0x00 + COBS(frame) + 0x00`: COBS guarantees no 0x00 inside, so a receiver
that lost its place resynchronises at the next 0x00, and the leading 0x00 flushes any line
noise that came before. The CRC is CRC-16/CCITT-FALSE over everything before it.
"""

from __future__ import annotations

import binascii
import enum
import logging
from collections import Counter
from dataclasses import dataclass, field

from cobs import cobs

from protocol import PROTOCOL_VERSION
from protocol.errors import DecodeError, EncodeError, FrameError
from protocol.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

HEADER_SIZE = 7
CRC_SIZE = 2
# v1.1: 240 (v1 said 200, less than a Capabilities with its strings at full width: 210)
MAX_PAYLOAD = 240
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
# COBS adds one byte per 254; anything longer than this between delimiters is not a frame.
MAX_STUFFED = MAX_FRAME + MAX_FRAME // 254 + 1
DELIMITER = b"\x00"


class FrameKind(enum.IntEnum):
    DATA = 1
    ACK = 2
    NAK = 3


class NakReason(enum.IntEnum):
    """Why a receiver refused an intact DATA frame. A NAK is final: the sender does not retry."""

    UNSUPPORTED_VERSION = 1
    UNKNOWN_TYPE = 2
    BAD_PAYLOAD = 3
    WRONG_DIRECTION = 4


@dataclass(frozen=True, slots=True)
class Frame:
    """One link-layer frame.

    DATA: `session`/`seq` are the sender's, `code` is the message type id.
    ACK/NAK: `session`/`seq` echo the DATA frame answered; `code` is 0 for ACK, a NakReason for NAK.
    """

    kind: FrameKind
    session: int
    seq: int
    code: int
    payload: bytes = b""
    version: int = PROTOCOL_VERSION

    def encode(self) -> bytes:
        """The frame as it goes on the wire, delimiters included."""
        stuffed: bytes = cobs.encode(self.encode_raw())
        return DELIMITER + stuffed + DELIMITER

    def encode_raw(self) -> bytes:
        """The frame before byte stuffing (header, payload, CRC)."""
        if len(self.payload) > MAX_PAYLOAD:
            raise EncodeError(f"payload of {len(self.payload)} bytes exceeds {MAX_PAYLOAD}")
        for name, value, limit in (
            ("version", self.version, 0xFF),
            ("session", self.session, 0xFFFF),
            ("seq", self.seq, 0xFF),
            ("code", self.code, 0xFF),
        ):
            if not 0 <= value <= limit:
                raise EncodeError(f"frame {name} {value} out of range 0..{limit}")
        header = bytes(
            (
                self.version,
                int(self.kind),
                self.session >> 8,
                self.session & 0xFF,
                self.seq,
                self.code,
                len(self.payload),
            )
        )
        body = header + self.payload
        return body + crc16(body).to_bytes(2, "big")


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final xor."""
    return binascii.crc_hqx(data, 0xFFFF)


def decode_raw(raw: bytes) -> Frame:
    """Parse an unstuffed frame. Raises FrameError (and nothing else) on any bad input."""
    if len(raw) < HEADER_SIZE + CRC_SIZE:
        raise FrameError("short", f"{len(raw)} bytes is shorter than a header and CRC")
    if len(raw) > MAX_FRAME:
        raise FrameError("oversize", f"{len(raw)} bytes exceeds {MAX_FRAME}")
    body, received_crc = raw[:-CRC_SIZE], int.from_bytes(raw[-CRC_SIZE:], "big")
    if crc16(body) != received_crc:
        raise FrameError("bad_crc", f"crc 0x{received_crc:04x} != 0x{crc16(body):04x}")
    version, kind, session_hi, session_lo, seq, code, length = body[:HEADER_SIZE]
    if length > MAX_PAYLOAD:
        raise FrameError("oversize_length", f"length field {length} exceeds {MAX_PAYLOAD}")
    if length != len(body) - HEADER_SIZE:
        raise FrameError("bad_length", f"length field {length} != {len(body) - HEADER_SIZE}")
    try:
        frame_kind = FrameKind(kind)
    except ValueError:
        raise FrameError("bad_kind", f"unknown frame kind {kind}") from None
    return Frame(
        kind=frame_kind,
        session=(session_hi << 8) | session_lo,
        seq=seq,
        code=code,
        payload=bytes(body[HEADER_SIZE:]),
        version=version,
    )


def decode_stuffed(stuffed: bytes) -> Frame:
    """Parse the bytes between two delimiters. Raises FrameError (and nothing else)."""
    if len(stuffed) > MAX_STUFFED:
        raise FrameError("oversize", f"{len(stuffed)} stuffed bytes exceeds {MAX_STUFFED}")
    try:
        raw: bytes = cobs.decode(stuffed)
    except cobs.DecodeError as exc:
        raise FrameError("bad_cobs", str(exc)) from None
    return decode_raw(raw)


@dataclass
class FrameDecoder:
    """Turns a byte stream into frames; never raises, never grows without bound.

    Bad input is dropped, counted in `rejected` by reason, and logged (at most one line a minute
    per reason, with the count); decoding carries on from the next delimiter.
    """

    rejected: Counter[str] = field(default_factory=Counter)
    frames_ok: int = 0
    _buffer: bytearray = field(default_factory=bytearray)
    _discarding: bool = False  # inside an oversize run: skip to the next delimiter
    _reject_log: RateLimitedLog = field(
        default_factory=lambda: RateLimitedLog(log), repr=False, compare=False
    )

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        start = 0
        while start < len(data):
            end = data.find(0, start)
            chunk = data[start:] if end < 0 else data[start:end]
            if not self._discarding:
                self._buffer += chunk
                if len(self._buffer) > MAX_STUFFED:
                    self._reject("oversize", f"more than {MAX_STUFFED} bytes without a delimiter")
                    self._buffer.clear()
                    self._discarding = True
            if end < 0:
                break
            if not self._discarding and self._buffer:
                frame = self._decode_buffer()
                if frame is not None:
                    frames.append(frame)
            self._buffer.clear()
            self._discarding = False
            start = end + 1
        return frames

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)

    def reset(self) -> None:
        """Forget a partial frame (the transport was reopened)."""
        self._buffer.clear()
        self._discarding = False

    def _decode_buffer(self) -> Frame | None:
        try:
            frame = decode_stuffed(bytes(self._buffer))
        except DecodeError as exc:
            self._reject(exc.reason, exc.detail)
            return None
        self.frames_ok += 1
        return frame

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        # A noisy line rejects frames without end: one line a minute per reason, with counts.
        self._reject_log.warning(reason, "frame rejected (%s): %s", reason, detail)
