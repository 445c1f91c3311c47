"""Framing at its limits, with the numbers taken from `protocol/SPEC.md` §1 and §2.4 (written out
here, not read from `protocol.framing`): payload 0..240 (v1.1; v1 said 200, too small for a
`Capabilities` with its strings at full width), a frame 9..249 bytes, at most 250 stuffed bytes
between delimiters (249 + one COBS byte per 254), NAK reasons 1..4, header fields within their
widths."""

from __future__ import annotations

import pytest
from cobs import cobs

from protocol.errors import EncodeError, FrameError
from protocol.framing import (
    Frame,
    FrameDecoder,
    FrameKind,
    NakReason,
    crc16,
    decode_raw,
    decode_stuffed,
)
from protocol.link import LinkEndpoint, Received
from protocol.messages import Capabilities, Direction, encode_message

SPEC_MAX_PAYLOAD = 240
SPEC_MAX_FRAME = 249  # 7 header + 240 payload + 2 CRC
SPEC_MAX_STUFFED = 250
# SPEC §3.1: the largest message, Capabilities with model, serial and firmware at 64 bytes each
SPEC_LARGEST_MESSAGE = 2 + 1 + 3 * 65 + 1 + 1 + 8 + 2


def raw_frame(length_field: int, payload: bytes, kind: int = 1) -> bytes:
    """A frame built by hand: header, payload, CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF)."""
    body = bytes((1, kind, 0x12, 0x34, 7, 1, length_field)) + payload
    return body + crc16(body).to_bytes(2, "big")


def test_nak_reasons_are_the_numbers_of_spec_2_4() -> None:
    assert {r.name: r.value for r in NakReason} == {
        "UNSUPPORTED_VERSION": 1,
        "UNKNOWN_TYPE": 2,
        "BAD_PAYLOAD": 3,
        "WRONG_DIRECTION": 4,
    }


def test_a_full_payload_encodes_and_one_byte_more_is_refused() -> None:
    full = Frame(FrameKind.DATA, 0x1234, 7, 1, b"\x01" * SPEC_MAX_PAYLOAD)
    assert len(full.encode_raw()) == SPEC_MAX_FRAME
    assert decode_stuffed(full.encode()[1:-1]) == full
    with pytest.raises(EncodeError, match="exceeds 240"):
        Frame(FrameKind.DATA, 0x1234, 7, 1, b"\x01" * (SPEC_MAX_PAYLOAD + 1)).encode_raw()


@pytest.mark.parametrize(
    ("field", "top"), [("version", 0xFF), ("session", 0xFFFF), ("seq", 0xFF), ("code", 0xFF)]
)
def test_header_fields_take_their_full_width_and_no_more(field: str, top: int) -> None:
    values = {"version": 1, "session": 1, "seq": 0, "code": 1} | {field: top}
    at_top = Frame(
        FrameKind.DATA, values["session"], values["seq"], values["code"], b"", values["version"]
    )
    assert decode_raw(at_top.encode_raw()) == at_top
    for bad in (top + 1, -1):
        over = values | {field: bad}
        with pytest.raises(EncodeError, match=field):
            Frame(
                FrameKind.DATA, over["session"], over["seq"], over["code"], b"", over["version"]
            ).encode_raw()


def test_decode_raw_limits() -> None:
    assert decode_raw(raw_frame(0, b"")).payload == b""  # 9 bytes: the shortest frame
    with pytest.raises(FrameError) as short:
        decode_raw(raw_frame(0, b"")[:-1])
    assert short.value.reason == "short"
    at_max = raw_frame(SPEC_MAX_PAYLOAD, b"\x05" * SPEC_MAX_PAYLOAD)
    assert len(at_max) == SPEC_MAX_FRAME
    assert len(decode_raw(at_max).payload) == SPEC_MAX_PAYLOAD
    with pytest.raises(FrameError) as oversize:
        decode_raw(raw_frame(SPEC_MAX_PAYLOAD, b"\x05" * (SPEC_MAX_PAYLOAD + 1)))
    assert oversize.value.reason == "oversize"


@pytest.mark.parametrize(
    ("length_field", "payload", "reason"),
    [
        (241, b"\x05" * 199, "oversize_length"),  # above 240 whatever is present
        (4, b"\x05" * 3, "bad_length"),
        (2, b"\x05" * 3, "bad_length"),
    ],
)
def test_length_field_checks(length_field: int, payload: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as error:
        decode_raw(raw_frame(length_field, payload))
    assert error.value.reason == reason


def test_unknown_kind_is_bad_kind() -> None:
    with pytest.raises(FrameError) as error:
        decode_raw(raw_frame(0, b"", kind=4))
    assert error.value.reason == "bad_kind"


def test_stuffed_limit_is_250_bytes() -> None:
    # 250 stuffed bytes (249 of data) pass the size checks and are decoded (here: a bad CRC);
    # 251 are oversize before any decoding
    at_limit = cobs.encode(b"\x05" * (SPEC_MAX_STUFFED - 1))
    assert len(at_limit) == SPEC_MAX_STUFFED
    with pytest.raises(FrameError) as decoded:
        decode_stuffed(at_limit)
    assert decoded.value.reason == "bad_crc"
    over = cobs.encode(b"\x05" * SPEC_MAX_STUFFED)
    assert len(over) == SPEC_MAX_STUFFED + 1
    with pytest.raises(FrameError) as early:
        decode_stuffed(over)
    assert early.value.reason == "oversize"
    assert "stuffed" in early.value.detail


def test_decoder_buffers_at_most_250_bytes_and_recovers_at_the_next_delimiter() -> None:
    good = Frame(FrameKind.DATA, 0x1234, 1, 2, b"hello")
    decoder = FrameDecoder()
    decoder.feed(b"\x00" + b"\x05" * SPEC_MAX_STUFFED)  # exactly the limit: still collecting
    assert decoder.pending_bytes == SPEC_MAX_STUFFED
    assert decoder.rejected["oversize"] == 0
    decoder.feed(b"\x05")  # one more: dropped, and nothing is kept until the next delimiter
    assert decoder.rejected["oversize"] == 1
    assert decoder.pending_bytes == 0
    decoder.feed(b"\x05" * 50)
    assert decoder.pending_bytes == 0
    assert decoder.feed(good.encode()) == [good]  # its leading 0x00 ends the oversize run
    assert decoder.frames_ok == 1
    assert decoder.feed(good.encode() + good.encode()) == [good, good]
    assert decoder.frames_ok == 3


def test_decoder_reset_forgets_a_partial_frame() -> None:
    good = Frame(FrameKind.DATA, 0x1234, 1, 2, b"hello")
    wire = good.encode()
    decoder = FrameDecoder()
    decoder.feed(wire[:5])
    assert decoder.pending_bytes > 0
    decoder.reset()
    assert decoder.pending_bytes == 0
    assert decoder.feed(wire) == [good]
    assert dict(decoder.rejected) == {}
    decoder.feed(b"\x05" * (SPEC_MAX_STUFFED + 1))  # an oversize run: skipping to a delimiter
    decoder.reset()  # the transport was reopened: the skipping ends too
    assert decoder.feed(wire[1:]) == [good]  # no leading delimiter needed after a reset


def test_capabilities_at_full_string_width_fits_a_frame_and_crosses_a_link() -> None:
    """v1 capped payloads at 200 bytes: a dispenser using its three strings' full width (210
    bytes) could never answer Hello, and the agent reconnected for ever."""
    caps = Capabilities(1, 1, "m" * 64, "s" * 64, "f" * 64, True, True, 1_790_000_000, 0x00FF)
    _, payload = encode_message(caps)
    assert len(payload) == SPEC_LARGEST_MESSAGE <= SPEC_MAX_PAYLOAD
    dispenser = LinkEndpoint(Direction.TO_AGENT, 0x0101)
    agent = LinkEndpoint(Direction.TO_DISPENSER, 0x0202)
    dispenser.send(caps, 0.0)
    events = agent.receive_bytes(dispenser.take_outgoing(), 0.0)
    assert [e.message for e in events if isinstance(e, Received)] == [caps]
    assert dispenser.receive_bytes(agent.take_outgoing(), 0.0)  # ACKed: Delivered
