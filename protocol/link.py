"""The link layer of protocol v1, sans-IO: sequence numbers, ACK/NAK, retransmit, duplicates.

One `LinkEndpoint` per side. It is pure: the caller feeds it received bytes and the current
monotonic time, writes out whatever `take_outgoing()` returns, and calls `poll()` at
`next_deadline()`. Both the agent's drivers and the dispenser simulator use this same class.

Rules (SPEC.md, "Link layer"):
- Each sender numbers its DATA frames with an 8-bit seq and a 16-bit session chosen at start-up.
- Stop-and-wait: one DATA frame in flight per direction; others queue in order.
- The receiver ACKs every intact DATA frame, including duplicates. A frame with the same session and
  seq as the last one accepted is a retransmit: ACKed again, never delivered twice.
- No ACK within `ack_timeout_s`: resend the same bytes, at most `max_retransmits` times, then report
  the message as failed. A NAK is final: the message is reported as refused.
- Corrupt frames are dropped and counted, never answered: the sender's timeout recovers.
- Acknowledge after commit (SPEC 2.6): the application may `withdraw_ack()` the frame it was just
  given (not stored): that ACK is taken back and no retransmit of the frame is ACKed.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, field

from protocol import PROTOCOL_VERSION
from protocol.errors import DecodeError
from protocol.framing import Frame, FrameDecoder, FrameKind, NakReason
from protocol.messages import MESSAGE_TABLE, Direction, Message, decode_message, encode_message
from protocol.ratelog import RateLimitedLog

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LinkConfig:
    ack_timeout_s: float = 0.25
    max_retransmits: int = 4
    max_queue: int = 64


@dataclass(frozen=True, slots=True)
class Received:
    """A new message from the peer, delivered exactly once."""

    message: Message


@dataclass(frozen=True, slots=True)
class Delivered:
    """The peer acknowledged our message."""

    token: int
    message: Message


@dataclass(frozen=True, slots=True)
class Failed:
    """Our message was not acknowledged.

    `reason`: "timeout", "queue_full", "link_down", or a NakReason name.
    """

    token: int
    message: Message
    reason: str


@dataclass(frozen=True, slots=True)
class PeerRestarted:
    """DATA arrived from a new peer session: the peer rebooted or reconnected."""

    old_session: int | None
    new_session: int


LinkEvent = Received | Delivered | Failed | PeerRestarted


@dataclass
class FrameLinkStats:
    frames_in: int = 0
    frames_out: int = 0
    retransmits: int = 0
    duplicates: int = 0
    naks_sent: int = 0
    naks_received: int = 0
    failures: int = 0
    seq_gaps: int = 0
    stray_acks: int = 0
    acks_withheld: int = 0  # retransmits of a withdrawn frame, left unanswered
    rejected: Counter[str] = field(default_factory=Counter)


@dataclass
class _InFlight:
    token: int
    message: Message
    wire: bytes
    deadline: float
    retransmits: int = 0


class LinkEndpoint:
    def __init__(self, sends: Direction, session: int, config: LinkConfig | None = None) -> None:
        if not 1 <= session <= 0xFFFF:
            raise ValueError(f"session must be 1..65535, got {session}")
        self.sends = sends
        self.session = session
        self.config = config or LinkConfig()
        self.stats = FrameLinkStats()
        self._decoder = FrameDecoder(rejected=self.stats.rejected)
        self._fault_log = RateLimitedLog(log)  # a peer that keeps sending junk: counted lines
        self._outgoing = bytearray()
        self._queue: deque[tuple[int, Message]] = deque()
        self._in_flight: _InFlight | None = None
        self._next_seq = 0
        self._next_token = 1
        self._peer_session: int | None = None
        self._last_rx_seq: int | None = None
        # where in `_outgoing` the ACK of the last delivered frame stands (until taken), and the
        # frame whose ACK was withdrawn: its retransmits are duplicates that get no ACK either
        self._last_ack: tuple[int, int, tuple[int, int]] | None = None
        self._withdrawn: tuple[int, int] | None = None

    # --- sending ----------------------------------------------------------------------------

    def send(self, message: Message, now: float) -> tuple[int, list[LinkEvent]]:
        """Queue a message; returns its token and any events (a `Failed` if the queue is full)."""
        if message.DIRECTION is not self.sends:
            raise ValueError(f"{type(message).__name__} does not travel {self.sends.value}")
        encode_message(message)  # fail now, in the caller, on a value that cannot be sent
        token = self._next_token
        self._next_token += 1
        if len(self._queue) >= self.config.max_queue:
            self.stats.failures += 1
            return token, [Failed(token, message, "queue_full")]
        self._queue.append((token, message))
        self._start_next(now)
        return token, []

    def take_outgoing(self) -> bytes:
        out = bytes(self._outgoing)
        self._outgoing.clear()
        self._last_ack = None  # written out: it can no longer be taken back
        return out

    def withdraw_ack(self) -> bool:
        """The message last delivered was not stored: take back its ACK (still in the output)
        and never ACK its retransmits, so the peer keeps it as undelivered (SPEC 2.6). It is not
        delivered again on this link session. False when there is no such ACK to take back."""
        if self._last_ack is None:
            return False
        start, end, key = self._last_ack
        del self._outgoing[start:end]
        self.stats.frames_out -= 1
        self._last_ack = None
        self._withdrawn = key
        return True

    def next_deadline(self) -> float | None:
        return self._in_flight.deadline if self._in_flight else None

    @property
    def idle(self) -> bool:
        """Nothing in flight and nothing queued."""
        return self._in_flight is None and not self._queue

    def poll(self, now: float) -> list[LinkEvent]:
        """Retransmit or give up on the frame in flight if its deadline has passed."""
        events: list[LinkEvent] = []
        flight = self._in_flight
        if flight is None or now < flight.deadline:
            return events
        if flight.retransmits >= self.config.max_retransmits:
            log.warning("giving up on %s after %d retransmits", flight.message, flight.retransmits)
            self.stats.failures += 1
            events.append(Failed(flight.token, flight.message, "timeout"))
            self._in_flight = None
            self._start_next(now)
            return events
        flight.retransmits += 1
        flight.deadline = now + self.config.ack_timeout_s
        self.stats.retransmits += 1
        self._write(flight.wire)
        return events

    def abandon_in_flight(self, now: float) -> list[LinkEvent]:
        """The transport went down: report everything unsent as failed (the caller decides)."""
        events: list[LinkEvent] = []
        if self._in_flight is not None:
            events.append(Failed(self._in_flight.token, self._in_flight.message, "link_down"))
            self._in_flight = None
        while self._queue:
            token, message = self._queue.popleft()
            events.append(Failed(token, message, "link_down"))
        self.stats.failures += len(events)
        self._decoder.reset()
        return events

    def _start_next(self, now: float) -> None:
        if self._in_flight is not None or not self._queue:
            return
        token, message = self._queue.popleft()
        type_id, payload = encode_message(message)
        frame = Frame(FrameKind.DATA, self.session, self._next_seq, type_id, payload)
        self._next_seq = (self._next_seq + 1) & 0xFF
        wire = frame.encode()
        self._in_flight = _InFlight(token, message, wire, now + self.config.ack_timeout_s)
        self._write(wire)

    def _write(self, wire: bytes) -> None:
        self.stats.frames_out += 1
        self._outgoing += wire

    # --- receiving --------------------------------------------------------------------------

    def receive_bytes(self, data: bytes, now: float) -> list[LinkEvent]:
        events: list[LinkEvent] = []
        for frame in self._decoder.feed(data):
            self.stats.frames_in += 1
            if frame.kind is FrameKind.DATA:
                events.extend(self._on_data(frame))
            else:
                events.extend(self._on_answer(frame, now))
        return events

    def _on_data(self, frame: Frame) -> list[LinkEvent]:
        events: list[LinkEvent] = []
        if frame.version != PROTOCOL_VERSION:
            self._nak(frame, NakReason.UNSUPPORTED_VERSION)
            return events
        if frame.session != self._peer_session:
            events.append(PeerRestarted(self._peer_session, frame.session))
            self._peer_session = frame.session
            self._last_rx_seq = None
        elif frame.seq == self._last_rx_seq:
            self.stats.duplicates += 1
            if (frame.session, frame.seq) == self._withdrawn:
                self.stats.acks_withheld += 1
            else:
                self._ack(frame)
            return events
        layout = MESSAGE_TABLE.get(frame.code)
        if layout is None:
            self._nak(frame, NakReason.UNKNOWN_TYPE)
            return events
        if layout.cls.DIRECTION is self.sends:
            self._nak(frame, NakReason.WRONG_DIRECTION)
            return events
        try:
            message = decode_message(frame.code, frame.payload)
        except DecodeError as exc:
            self.stats.rejected[exc.reason] += 1
            self._fault_log.warning(f"payload-{exc.reason}", "refusing payload: %s", exc)
            self._nak(frame, NakReason.BAD_PAYLOAD)
            return events
        if self._last_rx_seq is not None and frame.seq != (self._last_rx_seq + 1) & 0xFF:
            self.stats.seq_gaps += 1
        self._last_rx_seq = frame.seq
        self._withdrawn = None  # a new frame was taken: the peer has moved on
        start = len(self._outgoing)
        self._ack(frame)
        self._last_ack = (start, len(self._outgoing), (frame.session, frame.seq))
        events.append(Received(message))
        return events

    def _on_answer(self, frame: Frame, now: float) -> list[LinkEvent]:
        flight = self._in_flight
        if (
            flight is None
            or frame.session != self.session
            or frame.seq != (self._next_seq - 1) & 0xFF
        ):
            self.stats.stray_acks += 1  # late ACK of a retransmit already answered: harmless
            return []
        self._in_flight = None
        event: LinkEvent
        if frame.kind is FrameKind.ACK:
            event = Delivered(flight.token, flight.message)
        else:
            self.stats.naks_received += 1
            self.stats.failures += 1
            reason = NakReason(frame.code).name if frame.code in set(NakReason) else "nak"
            event = Failed(flight.token, flight.message, reason)
        self._start_next(now)
        return [event]

    def _ack(self, frame: Frame) -> None:
        self._write(Frame(FrameKind.ACK, frame.session, frame.seq, 0).encode())

    def _nak(self, frame: Frame, reason: NakReason) -> None:
        self.stats.naks_sent += 1
        self._fault_log.warning(
            f"nak-{reason.name}", "NAK seq %d type 0x%02x: %s", frame.seq, frame.code, reason.name
        )
        self._write(Frame(FrameKind.NAK, frame.session, frame.seq, int(reason)).encode())
