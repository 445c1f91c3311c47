"""Protocol v1 byte vectors: our codec must produce and accept exactly the bytes in vectors.json."""

from __future__ import annotations

import pytest

from protocol.errors import MessageDecodeError
from protocol.framing import Frame, FrameDecoder, FrameKind, NakReason, decode_stuffed
from protocol.link import LinkEndpoint, Received
from protocol.messages import (
    ALL_MESSAGES,
    MESSAGE_TABLE,
    Direction,
    decode_message,
    encode_message,
)
from protocol.vectors import (
    SAMPLES,
    ControlVector,
    InvalidVector,
    MalformedVector,
    ValidVector,
    load_malformed,
    load_vectors,
)

VALID, CONTROL, INVALID = load_vectors()


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v.name)
def test_encoder_produces_the_vector_bytes(vector: ValidVector) -> None:
    type_id, payload = encode_message(vector.message)
    frame = Frame(FrameKind.DATA, vector.session, vector.seq, type_id, payload)
    assert frame.encode() == vector.wire


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v.name)
def test_decoder_reads_the_vector_back(vector: ValidVector) -> None:
    frame = decode_stuffed(vector.wire[1:-1])
    assert (frame.kind, frame.session, frame.seq) == (FrameKind.DATA, vector.session, vector.seq)
    assert decode_message(frame.code, frame.payload) == vector.message


@pytest.mark.parametrize("vector", CONTROL, ids=lambda v: v.name)
def test_control_frames(vector: ControlVector) -> None:
    assert vector.frame.encode() == vector.wire
    assert decode_stuffed(vector.wire[1:-1]) == vector.frame


@pytest.mark.parametrize("vector", INVALID, ids=lambda v: v.name)
def test_invalid_vectors_are_counted_not_raised(vector: InvalidVector) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(vector.wire) == []
    assert decoder.rejected == {vector.reason: 1}


def test_every_message_type_has_a_vector() -> None:
    covered = {type(v.message) for v in VALID}
    assert covered == set(ALL_MESSAGES)
    assert [v.message for v in VALID] == list(SAMPLES)


def test_message_table_is_consistent() -> None:
    ids = [cls.TYPE_ID for cls in ALL_MESSAGES]
    assert len(ids) == len(set(ids)), "duplicate type ids"
    for type_id, layout in MESSAGE_TABLE.items():
        assert type_id == layout.cls.TYPE_ID
        assert layout.field_names, f"{layout.cls.__name__} has no fields"


def test_decoder_resynchronises_after_garbage_byte_by_byte() -> None:
    """Feed garbage and every vector one byte at a time: every frame comes out, in order."""
    stream = b"\x13\x37garbage\xff" + b"".join(v.wire for v in VALID) + b"\x01\x02"
    decoder = FrameDecoder()
    frames = []
    for byte in stream:
        frames.extend(decoder.feed(bytes([byte])))
    messages = [decode_message(f.code, f.payload) for f in frames]
    assert messages == [v.message for v in VALID]
    assert decoder.rejected["bad_cobs"] + decoder.rejected["short"] >= 1
    assert decoder.pending_bytes == 2  # trailing noise waits for a delimiter, bounded


def test_truncated_frame_followed_by_good_frame() -> None:
    good = VALID[1].wire
    decoder = FrameDecoder()
    frames = decoder.feed(good[: len(good) // 2] + good)
    assert [decode_message(f.code, f.payload) for f in frames] == [VALID[1].message]
    assert sum(decoder.rejected.values()) == 1


MALFORMED = load_malformed()


def test_the_v1_1_rejection_vectors_are_all_there() -> None:
    """SPEC §5: a vector for every rejection a receiver counts or NAKs."""
    assert {v.reason for v in INVALID} >= {
        "bad_crc",
        "bad_cobs",
        "short",
        "oversize",
        "oversize_length",
        "bad_length",
        "bad_kind",
    }
    assert {v.nak for v in MALFORMED} == {int(r) for r in NakReason}
    assert {v.reason for v in MALFORMED} >= {"bad_field", "trailing_bytes", "truncated"}
    assert {c.frame.kind for c in CONTROL} == {FrameKind.ACK, FrameKind.NAK}
    assert sum(c.frame.kind is FrameKind.ACK for c in CONTROL) > 1
    assert sum(c.frame.kind is FrameKind.NAK for c in CONTROL) > 1


@pytest.mark.parametrize("vector", MALFORMED, ids=lambda v: v.name)
def test_malformed_payloads_are_refused_with_the_vector_nak(vector: MalformedVector) -> None:
    """An intact frame with a bad payload is NAKed with exactly the vector's bytes and never
    delivered: a receiver that accepts it fails here."""
    sends = Direction.TO_AGENT if vector.receiver == "dispenser" else Direction.TO_DISPENSER
    receiver = LinkEndpoint(sends, 0x0777)
    events = receiver.receive_bytes(vector.wire, 0.0)
    assert not [e for e in events if isinstance(e, Received)]
    assert receiver.take_outgoing() == vector.nak_wire
    frame = decode_stuffed(vector.wire[1:-1])
    if vector.reason is not None:
        with pytest.raises(MessageDecodeError) as refused:
            decode_message(frame.code, frame.payload)
        assert refused.value.reason == vector.reason


@pytest.mark.parametrize("vector", INVALID, ids=lambda v: v.name)
def test_corrupt_frames_are_never_answered(vector: InvalidVector) -> None:
    """SPEC §1.3: no ACK, no NAK, nothing delivered, for any corrupt frame."""
    receiver = LinkEndpoint(Direction.TO_AGENT, 0x0777)
    assert receiver.receive_bytes(vector.wire, 0.0) == []
    assert receiver.take_outgoing() == b""
    assert receiver.stats.rejected == {vector.reason: 1}
