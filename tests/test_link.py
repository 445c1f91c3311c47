"""The sans-IO link layer: stop-and-wait, ACK/NAK, retransmit, duplicate suppression.

Two LinkEndpoints talk through a channel the test controls, on a virtual clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.framing import Frame, FrameDecoder, FrameKind, NakReason
from protocol.link import (
    Delivered,
    Failed,
    LinkConfig,
    LinkEndpoint,
    LinkEvent,
    PeerRestarted,
    Received,
)
from protocol.messages import (
    ButtonId,
    ButtonPressed,
    Direction,
    Dispense,
    DoseTaken,
    GetStatus,
    encode_message,
)

CONFIG = LinkConfig(ack_timeout_s=0.25, max_retransmits=3, max_queue=8)


def split_frames(data: bytes) -> list[bytes]:
    """Split a write into wire frames (each `00 ... 00`)."""
    return [b"\x00" + part + b"\x00" for part in data.split(b"\x00") if part]


@dataclass
class Pair:
    agent: LinkEndpoint = field(
        default_factory=lambda: LinkEndpoint(Direction.TO_DISPENSER, 1, CONFIG)
    )
    dispenser: LinkEndpoint = field(
        default_factory=lambda: LinkEndpoint(Direction.TO_AGENT, 2, CONFIG)
    )
    now: float = 0.0
    # filters decide, frame by frame, whether a frame gets through (index: frames per direction)
    to_dispenser: Callable[[int, bytes], bool] = lambda i, f: True
    to_agent: Callable[[int, bytes], bool] = lambda i, f: True
    sent: dict[str, int] = field(default_factory=lambda: {"a": 0, "d": 0})
    agent_events: list[LinkEvent] = field(default_factory=list)
    dispenser_events: list[LinkEvent] = field(default_factory=list)

    def pump(self) -> None:
        """Move bytes both ways until both are quiet."""
        for _ in range(100):
            a_out, d_out = self.agent.take_outgoing(), self.dispenser.take_outgoing()
            if not a_out and not d_out:
                return
            for frame in split_frames(a_out):
                self.sent["a"] += 1
                if self.to_dispenser(self.sent["a"] - 1, frame):
                    self.dispenser_events += self.dispenser.receive_bytes(frame, self.now)
            for frame in split_frames(d_out):
                self.sent["d"] += 1
                if self.to_agent(self.sent["d"] - 1, frame):
                    self.agent_events += self.agent.receive_bytes(frame, self.now)
        raise AssertionError("link did not settle")

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.agent_events += self.agent.poll(self.now)
        self.dispenser_events += self.dispenser.poll(self.now)
        self.pump()

    def run_until_idle(self, limit_s: float = 10.0) -> None:
        self.pump()
        start = self.now
        while not (self.agent.idle and self.dispenser.idle):
            deadlines = [
                d for d in (self.agent.next_deadline(), self.dispenser.next_deadline()) if d
            ]
            self.advance(max(0.0, min(deadlines) - self.now))
            assert self.now - start <= limit_s, "link never went idle"


def received(events: list[LinkEvent]) -> list[object]:
    return [e.message for e in events if isinstance(e, Received)]


DISPENSE = Dispense(req_id=1, dispense_id=10, sachet_index=0)


def test_message_delivered_once_and_acked() -> None:
    pair = Pair()
    token, events = pair.agent.send(DISPENSE, pair.now)
    assert events == []
    pair.pump()
    assert received(pair.dispenser_events) == [DISPENSE]
    assert [e for e in pair.agent_events if isinstance(e, Delivered)] == [
        Delivered(token, DISPENSE)
    ]
    assert pair.agent.idle


def test_first_frame_from_a_session_reports_peer_restart() -> None:
    pair = Pair()
    pair.agent.send(DISPENSE, pair.now)
    pair.pump()
    assert PeerRestarted(None, 1) in pair.dispenser_events


def test_lost_ack_retransmit_is_acked_but_not_delivered_twice() -> None:
    """A DISPENSE seen twice dispenses once: the retransmit is a duplicate."""
    pair = Pair(to_agent=lambda i, f: i != 0)  # the dispenser's first ACK is lost
    token, _ = pair.agent.send(DISPENSE, pair.now)
    pair.run_until_idle()
    assert received(pair.dispenser_events) == [DISPENSE]
    assert pair.dispenser.stats.duplicates == 1
    assert pair.agent.stats.retransmits == 1
    assert Delivered(token, DISPENSE) in pair.agent_events


def test_lost_data_frame_is_retransmitted_after_the_timeout() -> None:
    pair = Pair(to_dispenser=lambda i, f: i != 0)
    pair.agent.send(DISPENSE, pair.now)
    pair.pump()
    assert received(pair.dispenser_events) == []
    pair.advance(CONFIG.ack_timeout_s - 0.01)
    assert received(pair.dispenser_events) == []  # not before the timeout
    pair.advance(0.01)
    assert received(pair.dispenser_events) == [DISPENSE]


def test_gives_up_after_bounded_retransmits_and_sends_the_next() -> None:
    pair = Pair(to_dispenser=lambda i, f: i > CONFIG.max_retransmits)
    token, _ = pair.agent.send(DISPENSE, pair.now)
    second = GetStatus(req_id=2)
    pair.agent.send(second, pair.now)
    pair.run_until_idle()
    assert Failed(token, DISPENSE, "timeout") in pair.agent_events
    assert pair.agent.stats.retransmits == CONFIG.max_retransmits
    assert received(pair.dispenser_events) == [second]


def test_messages_queue_in_order_stop_and_wait() -> None:
    pair = Pair()
    commands = [GetStatus(req_id=i) for i in range(5)]
    for command in commands:
        pair.agent.send(command, pair.now)
    assert len(split_frames(pair.agent.take_outgoing())) == 1  # one in flight
    pair.agent.abandon_in_flight(pair.now)
    for command in commands:
        pair.agent.send(command, pair.now)
    pair.run_until_idle()
    assert received(pair.dispenser_events) == commands


def test_queue_full_is_reported_not_silent() -> None:
    pair = Pair()
    results = [pair.agent.send(GetStatus(req_id=i), pair.now) for i in range(CONFIG.max_queue + 2)]
    failures = [e for _, events in results for e in events]
    assert len(failures) == 1
    assert isinstance(failures[0], Failed)
    assert failures[0].reason == "queue_full"


def test_unknown_type_is_nakked_and_the_sender_does_not_retry() -> None:
    pair = Pair()
    frame = Frame(FrameKind.DATA, 7, 0, 0x3F, b"")
    pair.dispenser.receive_bytes(frame.encode(), pair.now)
    nak = FrameDecoder().feed(pair.dispenser.take_outgoing())
    assert [(f.kind, f.code) for f in nak] == [(FrameKind.NAK, NakReason.UNKNOWN_TYPE)]
    assert pair.dispenser.stats.naks_sent == 1


def test_nak_fails_the_message_with_the_reason() -> None:
    pair = Pair()
    token, _ = pair.agent.send(DISPENSE, pair.now)
    pair.agent.take_outgoing()
    nak = Frame(FrameKind.NAK, pair.agent.session, 0, int(NakReason.BAD_PAYLOAD))
    events = pair.agent.receive_bytes(nak.encode(), pair.now)
    assert events == [Failed(token, DISPENSE, "BAD_PAYLOAD")]
    assert pair.agent.idle


def test_wrong_direction_is_refused() -> None:
    pair = Pair()
    type_id, payload = encode_message(DISPENSE)  # an agent->dispenser message sent to the agent
    pair.agent.receive_bytes(Frame(FrameKind.DATA, 9, 0, type_id, payload).encode(), pair.now)
    out = FrameDecoder().feed(pair.agent.take_outgoing())
    assert [(f.kind, f.code) for f in out] == [(FrameKind.NAK, NakReason.WRONG_DIRECTION)]


def test_sending_a_message_in_the_wrong_direction_is_an_error() -> None:
    pair = Pair()
    with pytest.raises(ValueError, match="does not travel"):
        pair.agent.send(DoseTaken(dispense_id=1, sachet_index=0), pair.now)


def test_peer_reboot_with_same_seq_is_not_a_duplicate() -> None:
    """After a reboot the peer restarts at seq 0: a new session means new messages."""
    pair = Pair()
    first = ButtonPressed(button=ButtonId.TAKE)
    pair.dispenser.send(first, pair.now)
    pair.pump()
    rebooted = LinkEndpoint(Direction.TO_AGENT, 3, CONFIG)
    pair.dispenser = rebooted
    second = ButtonPressed(button=ButtonId.HELP)
    rebooted.send(second, pair.now)
    pair.pump()
    assert received(pair.agent_events) == [first, second]
    assert PeerRestarted(2, 3) in pair.agent_events


def test_late_ack_is_counted_as_stray() -> None:
    pair = Pair()
    pair.agent.send(DISPENSE, pair.now)
    pair.pump()
    stale_ack = Frame(FrameKind.ACK, pair.agent.session, 0, 0).encode()
    assert pair.agent.receive_bytes(stale_ack, pair.now) == []
    assert pair.agent.stats.stray_acks == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=60), st.integers(1, 12))
def test_lossy_channel_delivers_each_message_at_most_once_in_order(
    losses: list[bool], count: int
) -> None:
    """Whatever frames are lost, nothing is delivered twice or out of order, and every message
    ends either Delivered or Failed (never silently lost on the sender side)."""

    def lossy(i: int, frame: bytes) -> bool:
        return not losses[i % len(losses)]

    pair = Pair(to_dispenser=lossy, to_agent=lambda i, f: not losses[(i * 7) % len(losses)])
    sent = [GetStatus(req_id=i) for i in range(count)]
    tokens = []
    for message in sent:
        token, events = pair.agent.send(message, pair.now)
        tokens.append(token)
        pair.agent_events += events
    pair.run_until_idle(limit_s=60)
    got = received(pair.dispenser_events)
    assert [m for m in sent if m in got] == got  # in order, no duplicates
    settled = {e.token for e in pair.agent_events if isinstance(e, Delivered | Failed)}
    assert settled == set(tokens)
    delivered = {e.message for e in pair.agent_events if isinstance(e, Delivered)}
    assert delivered <= set(got)  # an ACKed message was really received


# --- acknowledge after commit: an ACK the application takes back (SPEC 2.6) ----------------------


def _acks(wire: bytes) -> list[tuple[int, int]]:
    return [(f.session, f.seq) for f in FrameDecoder().feed(wire) if f.kind is FrameKind.ACK]


def test_withdrawn_ack_is_not_sent_and_retransmits_stay_unanswered() -> None:
    agent = LinkEndpoint(Direction.TO_DISPENSER, 1, CONFIG)
    dispenser = LinkEndpoint(Direction.TO_AGENT, 2, CONFIG)
    dispenser.send(ButtonPressed(ButtonId.HELP), 0.0)
    frame = dispenser.take_outgoing()

    events = agent.receive_bytes(frame, 0.0)
    assert events == [PeerRestarted(None, 2), Received(ButtonPressed(ButtonId.HELP))]
    assert agent.withdraw_ack() is True
    assert agent.take_outgoing() == b""
    assert agent.stats.frames_out == 0

    # the dispenser retransmits: not delivered again, not acknowledged either
    dispenser.poll(CONFIG.ack_timeout_s)
    retransmit = dispenser.take_outgoing()
    assert retransmit == frame
    assert agent.receive_bytes(retransmit, 0.3) == []
    assert _acks(agent.take_outgoing()) == []
    assert agent.stats.acks_withheld == 1
    assert agent.stats.duplicates == 1

    # once the dispenser gives up and sends something new, that is taken and acknowledged
    now = 0.3
    gave_up: list[Failed] = []
    while not gave_up:
        now += CONFIG.ack_timeout_s
        gave_up = [e for e in dispenser.poll(now) if isinstance(e, Failed)]
        assert _acks(agent.take_outgoing()) == []
        agent.receive_bytes(dispenser.take_outgoing(), now)
    assert agent.stats.acks_withheld == CONFIG.max_retransmits
    dispenser.send(ButtonPressed(ButtonId.TAKE), now)
    new = dispenser.take_outgoing()
    assert agent.receive_bytes(new, now) == [Received(ButtonPressed(ButtonId.TAKE))]
    assert _acks(agent.take_outgoing()) == [(2, 1)]


def test_an_ack_already_written_out_cannot_be_withdrawn() -> None:
    agent = LinkEndpoint(Direction.TO_DISPENSER, 1, CONFIG)
    dispenser = LinkEndpoint(Direction.TO_AGENT, 2, CONFIG)
    dispenser.send(ButtonPressed(ButtonId.HELP), 0.0)
    agent.receive_bytes(dispenser.take_outgoing(), 0.0)
    assert _acks(agent.take_outgoing()) == [(2, 0)]
    assert agent.withdraw_ack() is False
    assert agent.withdraw_ack() is False  # and nothing else is taken back either
