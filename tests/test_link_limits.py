"""The link layer at its limits, with the numbers taken from `protocol/SPEC.md` §1.1 and §2 (written
out here, not read from `protocol.link`): ACK timeout 250 ms, 4 retransmits, a queue of 64 behind
the frame in flight, sessions 1..65535, seq mod 256, ACK code 0, NAK reasons 1 and 3. Also what the
link reports and counts when a send cannot go out, when the transport goes down, and when a frame
is refused. Time is injected: every `now` is an explicit number, nothing sleeps."""

from __future__ import annotations

from collections import Counter

import pytest

from protocol.errors import EncodeError
from protocol.framing import Frame, FrameDecoder, FrameKind
from protocol.link import (
    Delivered,
    Failed,
    LinkConfig,
    LinkEndpoint,
    PeerRestarted,
    Received,
)
from protocol.messages import ButtonId, ButtonPressed, Direction, GetStatus

SPEC_ACK_TIMEOUT_S = 0.25  # §2.3, reference implementation
SPEC_MAX_RETRANSMITS = 4  # §2.3
SPEC_MAX_QUEUE = 64  # §2.2, behind the one frame in flight

TAKE = ButtonPressed(ButtonId.TAKE)
TAKE_PAYLOAD = b"\x01"  # ButtonId TAKE (§3.4)
BUTTON_PRESSED = 0x48  # §3.3


def agent(session: int = 1) -> LinkEndpoint:
    """The agent's side with the default configuration: the defaults are what is under test."""
    return LinkEndpoint(Direction.TO_DISPENSER, session)


def frames(wire: bytes) -> list[tuple[FrameKind, int, int, int, bytes]]:
    return [(f.kind, f.session, f.seq, f.code, f.payload) for f in FrameDecoder().feed(wire)]


def button_frame(seq: int, session: int = 7) -> bytes:
    return Frame(FrameKind.DATA, session, seq, BUTTON_PRESSED, TAKE_PAYLOAD).encode()


# --- the defaults of SPEC §2.2 and §2.3 ----------------------------------------------------------


def test_the_default_configuration_is_the_spec_reference() -> None:
    config = LinkConfig()
    assert (config.ack_timeout_s, config.max_retransmits, config.max_queue) == (0.25, 4, 64)


def test_default_link_resends_the_same_bytes_every_250_ms_four_times_then_fails() -> None:
    link = agent()
    message = GetStatus(req_id=1)
    token, events = link.send(message, 0.0)
    assert events == []
    first = link.take_outgoing()
    assert link.next_deadline() == SPEC_ACK_TIMEOUT_S

    assert link.poll(0.2499) == []  # not before the timeout
    assert link.take_outgoing() == b""
    for n in range(1, SPEC_MAX_RETRANSMITS + 1):
        assert link.poll(n * SPEC_ACK_TIMEOUT_S) == []
        assert link.take_outgoing() == first  # same session, same seq, same bytes
    assert link.stats.retransmits == 4

    gave_up = link.poll((SPEC_MAX_RETRANSMITS + 1) * SPEC_ACK_TIMEOUT_S)
    assert gave_up == [Failed(token, message, "timeout")]
    assert link.take_outgoing() == b""
    assert link.stats.failures == 1
    assert link.idle


def test_default_queue_holds_64_behind_the_frame_in_flight_and_the_next_fails_visibly() -> None:
    link = agent()
    for req_id in range(1 + SPEC_MAX_QUEUE):
        assert link.send(GetStatus(req_id), 0.0)[1] == []
    one_too_many = GetStatus(req_id=999)
    token, events = link.send(one_too_many, 0.0)
    assert events == [Failed(token, one_too_many, "queue_full")]
    assert link.stats.failures == 1


# --- sessions 1..65535 (SPEC §2.1) -------------------------------------------------------------


@pytest.mark.parametrize("session", [1, 65535])
def test_sessions_at_both_ends_of_the_range_are_used_on_the_wire(session: int) -> None:
    link = agent(session)
    link.send(GetStatus(req_id=1), 0.0)
    assert [(kind, s, seq) for kind, s, seq, _, _ in frames(link.take_outgoing())] == [
        (FrameKind.DATA, session, 0)
    ]


@pytest.mark.parametrize("session", [0, 65536, -1])
def test_a_session_outside_1_to_65535_is_refused(session: int) -> None:
    with pytest.raises(ValueError, match=r"session must be 1\.\.65535"):
        agent(session)


# --- a message that cannot be encoded ----------------------------------------------------------


def test_a_message_that_cannot_be_encoded_fails_in_send_even_behind_a_frame_in_flight() -> None:
    """Not later, inside receive_bytes() or poll() when its turn comes: there the error would hit
    whoever pumps the link, not the caller who sent the value."""
    link = agent()
    first = GetStatus(req_id=1)
    token, _ = link.send(first, 0.0)
    assert frames(link.take_outgoing())[0][:3] == (FrameKind.DATA, 1, 0)
    with pytest.raises(EncodeError, match="req_id"):
        link.send(GetStatus(req_id=65536), 0.0)  # u16 (§3.1)

    ack = Frame(FrameKind.ACK, 1, 0, 0).encode()
    assert link.receive_bytes(ack, 0.1) == [Delivered(token, first)]
    assert link.take_outgoing() == b""  # nothing was queued behind it
    assert link.idle
    assert link.poll(10.0) == []


# --- the transport goes down -------------------------------------------------------------------


def test_link_down_reports_the_frame_in_flight_and_every_queued_message_as_failed() -> None:
    """A command lost silently would leave its sender waiting for an answer that never comes."""
    link = agent()
    messages = [GetStatus(req_id=n) for n in (1, 2, 3)]
    tokens = [link.send(m, 0.0)[0] for m in messages]
    link.take_outgoing()

    events = link.abandon_in_flight(0.1)
    assert events == [Failed(t, m, "link_down") for t, m in zip(tokens, messages, strict=True)]
    assert link.stats.failures == 3
    assert link.idle
    assert link.next_deadline() is None
    assert link.poll(10.0) == []  # nothing is retransmitted or reported a second time
    assert link.take_outgoing() == b""
    late_ack = Frame(FrameKind.ACK, 1, 0, 0).encode()
    assert link.receive_bytes(late_ack, 0.2) == []  # failed stays failed: never also delivered
    assert link.stats.stray_acks == 1


def test_link_down_with_nothing_pending_reports_nothing() -> None:
    link = agent()
    assert link.abandon_in_flight(0.0) == []
    assert link.stats.failures == 0


def test_link_down_forgets_a_partial_frame_so_it_is_not_completed_by_the_next_transport() -> None:
    link = agent()
    wire = button_frame(0)
    assert link.receive_bytes(wire[:-3], 0.0) == []  # the transport drops mid-frame
    link.abandon_in_flight(0.0)
    # the next transport's first bytes happen to complete it: a frame spliced from two
    # connections is not delivered
    assert link.receive_bytes(wire[-3:], 0.1) == []
    assert link.stats.frames_in == 0
    assert link.take_outgoing() == b""
    # and a whole frame on the new transport is taken as usual
    assert link.receive_bytes(wire, 0.2) == [PeerRestarted(None, 7), Received(TAKE)]


# --- counting frames in and answering them -----------------------------------------------------


def test_frames_in_counts_every_intact_frame_and_no_corrupt_one() -> None:
    link = agent()
    assert link.stats.frames_in == 0
    link.receive_bytes(button_frame(0), 0.0)
    assert link.stats.frames_in == 1
    link.send(GetStatus(req_id=1), 0.0)
    link.take_outgoing()
    link.receive_bytes(Frame(FrameKind.ACK, 1, 0, 0).encode(), 0.0)
    assert link.stats.frames_in == 2
    corrupt = bytearray(button_frame(1))
    corrupt[-2] ^= 0xFF  # the CRC: §1.3 drops it unanswered
    assert link.receive_bytes(bytes(corrupt), 0.0) == []
    assert link.stats.frames_in == 2


def test_ack_carries_session_seq_and_code_0() -> None:
    link = agent()
    link.receive_bytes(button_frame(5, session=0xBEEF), 0.0)
    assert frames(link.take_outgoing()) == [(FrameKind.ACK, 0xBEEF, 5, 0, b"")]


def test_data_of_an_unsupported_version_is_nakked_with_reason_1_and_not_taken() -> None:
    link = agent()
    v2 = Frame(FrameKind.DATA, 7, 0, BUTTON_PRESSED, TAKE_PAYLOAD, version=2).encode()
    assert link.receive_bytes(v2, 0.0) == []
    assert frames(link.take_outgoing()) == [(FrameKind.NAK, 7, 0, 1, b"")]
    assert link.stats.naks_sent == 1


def test_a_malformed_payload_is_nakked_with_reason_3_and_counted_by_reason() -> None:
    link = agent()
    bad_button = Frame(FrameKind.DATA, 7, 0, BUTTON_PRESSED, b"\x09").encode()  # 9: no ButtonId
    assert link.receive_bytes(bad_button, 0.0) == [PeerRestarted(None, 7)]
    assert frames(link.take_outgoing()) == [(FrameKind.NAK, 7, 0, 3, b"")]
    assert link.stats.naks_sent == 1
    assert link.stats.rejected == Counter({"bad_field": 1})


def test_a_nak_received_fails_the_message_and_is_counted_once() -> None:
    link = agent()
    message = GetStatus(req_id=1)
    token, _ = link.send(message, 0.0)
    link.take_outgoing()
    nak = Frame(FrameKind.NAK, 1, 0, 2).encode()  # 2: unknown message type
    assert link.receive_bytes(nak, 0.0) == [Failed(token, message, "UNKNOWN_TYPE")]
    assert link.stats.naks_received == 1
    assert link.stats.failures == 1
    assert link.poll(10.0) == []  # final: no retransmit (§2.4)
    assert link.take_outgoing() == b""


# --- sequence gaps (SPEC §2.5) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("seqs", "gaps"),
    [
        ([0, 1, 2, 3], 0),
        ([254, 255, 0, 1], 0),  # mod 256: 255 -> 0 is the next frame
        ([0, 1, 3], 1),
        ([0, 2, 3, 5], 2),
        ([254, 255, 1], 1),  # skipped 0 across the wrap
        ([255, 0, 255], 1),
    ],
)
def test_a_seq_that_skips_ahead_is_taken_and_counted_as_a_gap(seqs: list[int], gaps: int) -> None:
    link = agent()
    got = []
    for seq in seqs:
        got += [e for e in link.receive_bytes(button_frame(seq), 0.0) if isinstance(e, Received)]
    assert got == [Received(TAKE)] * len(seqs)  # every frame is delivered, gap or not
    assert link.stats.seq_gaps == gaps
    assert link.stats.duplicates == 0
