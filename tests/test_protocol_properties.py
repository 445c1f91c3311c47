"""Property tests: the codec is symmetric, and decoders raise only their own error type."""

from __future__ import annotations

import contextlib
import dataclasses
import enum

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import FrameError, MessageDecodeError
from protocol.fields import Bool, Enum8, Str, UInt
from protocol.framing import (
    MAX_PAYLOAD,
    MAX_STUFFED,
    Frame,
    FrameDecoder,
    FrameKind,
    decode_raw,
    decode_stuffed,
)
from protocol.messages import ALL_MESSAGES, MESSAGE_TABLE, Message, decode_message, encode_message


def _strategy_for(codec: object) -> st.SearchStrategy[object]:
    if isinstance(codec, UInt):
        return st.integers(0, (1 << (codec.size * 8)) - 1)
    if isinstance(codec, Bool):
        return st.booleans()
    if isinstance(codec, Str):
        return st.text(max_size=codec.max_bytes).filter(
            lambda s: len(s.encode("utf-8")) <= codec.max_bytes
        )
    if isinstance(codec, Enum8):
        members: list[enum.IntEnum] = list(codec.enum_type)
        return st.sampled_from(members)
    raise AssertionError(f"no strategy for {codec!r}")


def _message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    layout = MESSAGE_TABLE[cls.TYPE_ID]
    kwargs = {
        name: _strategy_for(codec)
        for name, codec in zip(layout.field_names, layout.codecs, strict=True)
    }
    return st.builds(cls, **kwargs)


messages = st.one_of([_message_strategy(cls) for cls in ALL_MESSAGES])


@given(messages)
def test_decode_encode_roundtrip(message: Message) -> None:
    type_id, payload = encode_message(message)
    assert len(payload) <= MAX_PAYLOAD
    assert decode_message(type_id, payload) == message


@given(messages, st.integers(1, 0xFFFF), st.integers(0, 0xFF))
def test_frame_roundtrip(message: Message, session: int, seq: int) -> None:
    type_id, payload = encode_message(message)
    frame = Frame(FrameKind.DATA, session, seq, type_id, payload)
    wire = frame.encode()
    assert len(wire) <= MAX_STUFFED + 2
    assert wire.count(0) == 2  # only the delimiters
    assert FrameDecoder().feed(wire) == [frame]


@given(st.integers(0, 0xFF), st.binary(max_size=300))
def test_decode_message_raises_only_its_own_error(type_id: int, payload: bytes) -> None:
    with contextlib.suppress(MessageDecodeError):
        decode_message(type_id, payload)


@given(st.binary(max_size=400))
def test_decode_frame_raises_only_its_own_error(data: bytes) -> None:
    for decode in (decode_raw, decode_stuffed):
        with contextlib.suppress(FrameError):
            decode(data.replace(b"\x00", b"\x01") if decode is decode_stuffed else data)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=500), max_size=8))
def test_stream_decoder_never_raises_and_stays_bounded(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    for chunk in chunks:
        decoder.feed(chunk)
        assert decoder.pending_bytes <= MAX_STUFFED


@given(messages, st.binary(min_size=1, max_size=64), st.integers(0, 10_000))
def test_single_corruption_is_detected(message: Message, noise: bytes, where: int) -> None:
    """Any one flipped byte inside a frame is rejected, never decoded as another message."""
    type_id, payload = encode_message(message)
    raw = bytearray(Frame(FrameKind.DATA, 1, 0, type_id, payload).encode_raw())
    position = where % len(raw)
    flip = noise[0] or 1
    raw[position] ^= flip
    try:
        frame = decode_raw(bytes(raw))
    except FrameError:
        return
    raise AssertionError(f"corruption at {position} went undetected: {frame}")


def test_encoder_rejects_values_that_do_not_fit() -> None:
    from protocol.errors import EncodeError
    from protocol.messages import Dispense, RollRemoved

    bad: list[Message] = [
        Dispense(req_id=-1, dispense_id=1, sachet_index=0),
        Dispense(req_id=1, dispense_id=1 << 32, sachet_index=0),
        RollRemoved(roll_id="x" * 65),
        dataclasses.replace(Dispense(req_id=1, dispense_id=1, sachet_index=0), sachet_index=True),
    ]
    for message in bad:
        try:
            encode_message(message)
        except EncodeError:
            continue
        raise AssertionError(f"{message} was encoded")
