"""Conformance kit: plays the agent against a dispenser and reports, per clause of
`protocol/SPEC.md` (v1.1), whether the firmware does what the spec says, with timing.

    python -m hw.conform --device /dev/ttyUSB0 [--baud 115200] [--json] [--slack 1.0]
    python -m hw.conform --ble-address C0:FF:EE:12:34:56 (or --ble-name NAME) [...]
                         [--interactive]

For a bench unit only: it dispenses (and retains or asks for) test doses from the loaded roll and
ends with `FactoryReset`, which forgets the unit's executed dispense ids (SPEC 4.4). Before a run:
a roll of test sachets loaded, tray empty, lid closed, no fault. Clauses that need a physical act
the kit cannot do itself (a reboot, taking a dose) are skipped unless `--interactive` (the kit
asks the operator) or an `Actuator` is passed in (the simulator's, in the test suite).

Timing bounds are the spec's (SPEC 2.8) times `--slack`: a rig on a slow USB adapter, or a test on
a loaded machine, may widen them; a lower bound (a retransmit too early) is never widened.

The transport is a parameter (`ByteLink`: write bytes, read with a timeout); the serial one is
here, another transport only needs those three calls.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import itertools
import json
import os
import queue
import random
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from cobs import cobs

from protocol import PROTOCOL_VERSION
from protocol.errors import DecodeError
from protocol.framing import MAX_PAYLOAD, Frame, FrameDecoder, FrameKind, NakReason
from protocol.messages import (
    FACTORY_RESET_CONFIRM,
    AlertPattern,
    BinLevel,
    Capabilities,
    Command,
    CommandResult,
    Discard,
    Dispense,
    DosePresented,
    DoseRetained,
    DoseTaken,
    FactoryReset,
    FaultChanged,
    FaultCode,
    Feature,
    GetStatus,
    GetTime,
    Hello,
    KeepAlive,
    LowSupply,
    Message,
    ResultCode,
    Retain,
    RollInserted,
    SachetRead,
    SetAlert,
    SetLock,
    SetTime,
    Status,
    TimeReport,
    decode_message,
    encode_message,
)

if TYPE_CHECKING:
    from hw.wire import SimulatorRunner

# SPEC 2.8, the numbers a dispenser is held to
ACK_DEADLINE_S = 0.100  # an intact DATA frame is ACKed (or NAKed) within this
ACK_TIMEOUT_S = 0.250  # a sender retransmits after this without an ACK ...
MAX_RETRANSMITS = 4  # ... this many times, then gives up
RETRANSMIT_MIN_S = 0.200  # a retransmit sooner than this is a storm (never widened by slack)
REPLY_DEADLINE_S = 0.500  # a command's reply is sent within this of its receipt
REQUEST_TIMEOUT_S = 2.0  # the agent gives up waiting for a reply after this
MOVE_DEADLINE_S = 30.0  # DosePresented / DoseRetained after the OK of a cut
LOW_SUPPLY_THRESHOLD = 4  # LowSupply after a cut that leaves this many or fewer
RTC_TOLERANCE_S = 2

REPLY_TYPES = (Capabilities, CommandResult, Status, TimeReport)
KNOWN_FEATURES = 0
for _bit in Feature:
    KNOWN_FEATURES |= int(_bit)


class ByteLink(Protocol):
    """The transport under test: an ordered byte stream."""

    def write(self, data: bytes) -> None: ...

    def read(self, timeout: float) -> bytes:
        """What arrived within `timeout` seconds (b"" if nothing)."""
        ...

    def close(self) -> None: ...


class SerialByteLink:
    """A UART (or a pty: the simulator's `python -m hw.sim pty`)."""

    def __init__(self, device: str, baudrate: int = 115200) -> None:
        import serial

        self._serial = serial.Serial(device, baudrate=baudrate, timeout=0)
        self._fd = self._serial.fileno()

    def write(self, data: bytes) -> None:
        self._serial.write(data)
        self._serial.flush()

    def read(self, timeout: float) -> bytes:
        readable, _, _ = select.select([self._fd], [], [], max(0.0, timeout))
        if not readable:
            return b""
        try:
            return os.read(self._fd, 4096)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        self._serial.close()


class BleByteLink:
    """A dispenser over Bluetooth Low Energy, through the agent's own BLE transport
    (drivers/ble_transport.py: bleak, the SPEC's GATT profile). bleak runs on its own event
    loop in a thread; what arrives is handed over through a queue, so the kit stays synchronous."""

    OPEN_TIMEOUT_S = 30.0
    CALL_TIMEOUT_S = 10.0

    def __init__(
        self,
        address: str | None = None,
        name: str | None = None,
        *,
        scan_timeout_s: float = 4.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        from drivers.ble_transport import BleTarget, BleTransport

        target = BleTarget(
            address=address,
            name=name,
            scan_timeout_s=scan_timeout_s,
            connect_timeout_s=connect_timeout_s,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="conform-ble", daemon=True
        )
        self._thread.start()
        self._inbox: queue.Queue[bytes] = queue.Queue()
        self._transport = BleTransport(target)
        self._pump: concurrent.futures.Future[None] | None = None
        try:
            self._call(self._transport.open(), self.OPEN_TIMEOUT_S)
        except BaseException:  # whatever stopped it: the loop thread is not left running; re-raised
            self._stop_loop()
            raise
        self._pump = asyncio.run_coroutine_threadsafe(self._read_forever(), self._loop)

    def _call(self, coro: object, timeout: float) -> object:
        assert asyncio.iscoroutine(coro)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _read_forever(self) -> None:
        while True:
            self._inbox.put(await self._transport.read())

    async def _write(self, data: bytes) -> None:
        self._transport.write(data)

    def write(self, data: bytes) -> None:
        self._call(self._write(data), self.CALL_TIMEOUT_S)

    def read(self, timeout: float) -> bytes:
        try:
            chunks = [self._inbox.get(timeout=max(0.0, timeout))]
        except queue.Empty:
            return b""
        while True:
            try:
                chunks.append(self._inbox.get_nowait())
            except queue.Empty:
                return b"".join(chunks)

    def close(self) -> None:
        try:
            self._call(self._transport.close(), self.CALL_TIMEOUT_S)
        finally:
            if self._pump is not None:
                self._pump.cancel()
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self.CALL_TIMEOUT_S)


class Actuator(Protocol):
    """Physical acts on the dispenser; each returns False when it cannot be done (skipped)."""

    def reboot(self) -> bool: ...

    def take_dose(self) -> bool: ...


class NoActuator:
    def reboot(self) -> bool:
        return False

    def take_dose(self) -> bool:
        return False


class SimActuator:
    """The simulator's physical side (`hw.wire.SimulatorRunner`), for the test suite."""

    def __init__(self, runner: SimulatorRunner) -> None:
        self.runner = runner

    def reboot(self) -> bool:
        self.runner.reboot()
        return True

    def take_dose(self) -> bool:
        self.runner.call(lambda model: model.take_dose())
        return True


class PromptActuator:
    """Asks the operator at the rig."""

    def _ask(self, what: str) -> bool:
        answer = input(f"{what}, then press Enter (or type 'skip'): ")
        return answer.strip().lower() != "skip"

    def reboot(self) -> bool:
        return self._ask("Restart the dispenser (power cycle it)")

    def take_dose(self) -> bool:
        return self._ask("Take the dose out of the tray")


@dataclass(frozen=True, slots=True)
class ClauseResult:
    clause: str
    title: str
    status: str  # "pass", "fail", "skip"
    detail: str = ""


@dataclass
class Arrival:
    at: float
    frame: Frame
    message: Message | None = None


@dataclass
class Exchange:
    """One request as the kit saw it."""

    command: Command
    sent_at: float
    ack_s: float | None = None  # first ACK after the first transmission
    nak: int | None = None
    reply: Message | None = None
    reply_s: float | None = None
    replies: int = 0


class Blocked(Exception):  # noqa: N818
    """The link is unusable: the remaining clauses cannot run."""


@dataclass
class _Check:
    clause: str
    title: str
    failures: list[str] = field(default_factory=list)
    skipped: str | None = None


class Kit:
    def __init__(
        self,
        link: ByteLink,
        actuator: Actuator | None = None,
        *,
        slack: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if slack < 1.0:
            raise ValueError("slack widens the spec's bounds: 1.0 or more")
        self.link = link
        self.actuator = actuator or NoActuator()
        self.slack = slack
        self.clock = clock
        self.rng = rng or random.Random()
        self._log = log or (lambda text: None)
        self.results: list[ClauseResult] = []
        self._decoder = FrameDecoder()
        self.inbox: list[Arrival] = []  # DATA delivered (new), in order
        self.answers: list[Arrival] = []  # ACK/NAK frames
        self.transmissions: list[Arrival] = []  # every DATA frame, duplicates included
        self.bad_payloads: list[str] = []
        self.exchanges: list[Exchange] = []
        self.withhold_acks = False
        self._withhold_after: int | None = None  # req_id: withhold ACKs after its reply
        self.withheld_from = 0  # index in `transmissions` of the first frame withheld
        self._session = 0
        self._seq = 0
        self._req = 0
        self._peer: tuple[int, int] | None = None  # (session, seq) of the last DATA delivered
        self._ack_broken = False
        self.capabilities: Capabilities | None = None
        self._ids = self.rng.randrange(0xC000_0000, 0xF000_0000)  # far above any agent's

    # --- the agent's side of the link ---------------------------------------------------------

    def new_session(self) -> None:
        old = self._session
        while self._session in (0, old):
            self._session = self.rng.randint(1, 0xFFFF)
        self._seq = 0

    def _pump(self, seconds: float) -> None:
        """Read and process what arrives within `seconds` (at least one read)."""
        end = self.clock() + seconds
        while True:
            data = self.link.read(max(0.0, end - self.clock()))
            if data:
                self._on_bytes(data)
            if self.clock() >= end:
                return

    def _on_bytes(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            now = self.clock()
            if frame.kind is not FrameKind.DATA:
                self.answers.append(Arrival(now, frame))
                continue
            arrival = Arrival(now, frame)
            self.transmissions.append(arrival)
            try:
                arrival.message = decode_message(frame.code, frame.payload)
            except DecodeError as exc:
                self.bad_payloads.append(f"type 0x{frame.code:02x}: {exc}")
                self.link.write(Frame(FrameKind.NAK, frame.session, frame.seq, 3).encode())
                continue
            if self.withhold_acks:
                continue
            self.link.write(Frame(FrameKind.ACK, frame.session, frame.seq, 0).encode())
            if (frame.session, frame.seq) != self._peer:
                self._peer = (frame.session, frame.seq)
                self.inbox.append(arrival)
                self._log(f"IN  {arrival.message}")
                msg = arrival.message
                if isinstance(msg, REPLY_TYPES) and msg.req_id == self._withhold_after:
                    # everything after this reply goes unacknowledged (an agent that died)
                    self.withhold_acks = True
                    self.withheld_from = len(self.transmissions)

    def _write_data(self, code: int, payload: bytes, version: int = PROTOCOL_VERSION) -> bytes:
        wire = Frame(FrameKind.DATA, self._session, self._seq, code, payload, version).encode()
        self._seq = (self._seq + 1) & 0xFF
        self.link.write(wire)
        return wire

    def _answer_to(self, session: int, seq: int, since: int) -> Arrival | None:
        for arrival in self.answers[since:]:
            if (arrival.frame.session, arrival.frame.seq) == (session, seq):
                return arrival
        return None

    def request(self, command: Command, *, wait_s: float | None = None) -> Exchange:
        """Send like the reference agent (retransmits at 250 ms, 4 times) and wait for the reply
        (and for the ACK, up to its bound)."""
        self._req = self._req % 0xFFFF + 1
        stamped = dataclasses.replace(command, req_id=self._req)
        code, payload = encode_message(stamped)
        answers_from, inbox_from = len(self.answers), len(self.inbox)
        session, seq = self._session, self._seq
        sent = self.clock()
        wire = self._write_data(code, payload)
        ex = Exchange(stamped, sent)
        self.exchanges.append(ex)
        self._log(f"OUT {stamped}")
        deadline = sent + (wait_s if wait_s is not None else REQUEST_TIMEOUT_S * self.slack)
        ack_bound = sent + ACK_DEADLINE_S * self.slack
        retransmits = 0
        while True:
            now = self.clock()
            answer = self._answer_to(session, seq, answers_from)
            if answer is not None and ex.ack_s is None and ex.nak is None:
                if answer.frame.kind is FrameKind.NAK:
                    ex.nak = answer.frame.code
                else:
                    ex.ack_s = answer.at - sent
            for arrival in self.inbox[inbox_from:]:
                msg = arrival.message
                if isinstance(msg, REPLY_TYPES) and msg.req_id == self._req:
                    ex.replies += 1
                    if ex.reply is None:
                        ex.reply, ex.reply_s = msg, arrival.at - sent
            inbox_from = len(self.inbox)
            acked = ex.ack_s is not None or ex.nak is not None
            if ex.nak is not None:
                return ex
            if ex.reply is not None and (acked or self._ack_broken or now >= ack_bound):
                if not acked:
                    self._ack_broken = True
                return ex
            if now >= deadline:
                return ex
            due = sent + ACK_TIMEOUT_S * (retransmits + 1)
            if not acked and now >= due and retransmits < MAX_RETRANSMITS:
                retransmits += 1
                self.link.write(wire)
            self._pump(min(0.02, max(0.0, deadline - now)))

    def raw_exchange(self, code: int, payload: bytes, version: int = 1) -> Arrival | None:
        """Send one DATA frame once; the ACK/NAK that answers it, if one comes in time."""
        answers_from = len(self.answers)
        session, seq = self._session, self._seq
        self._write_data(code, payload, version)
        end = self.clock() + REQUEST_TIMEOUT_S * self.slack
        while self.clock() < end:
            found = self._answer_to(session, seq, answers_from)
            if found is not None:
                return found
            self._pump(0.02)
        return None

    def wait_for(
        self, match: Callable[[Message], bool], seconds: float, since: int = 0
    ) -> Arrival | None:
        end = self.clock() + seconds
        while True:
            for arrival in self.inbox[since:]:
                if arrival.message is not None and match(arrival.message):
                    return arrival
            if self.clock() >= end:
                return None
            self._pump(min(0.02, end - self.clock()))

    def settle(self, quiet_s: float) -> None:
        """Process input until nothing has arrived for `quiet_s`."""
        while True:
            before = len(self.transmissions) + len(self.answers)
            self._pump(quiet_s)
            if len(self.transmissions) + len(self.answers) == before:
                return

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    # --- reporting ----------------------------------------------------------------------------

    def _record(self, check: _Check) -> None:
        if check.skipped is not None:
            result = ClauseResult(check.clause, check.title, "skip", check.skipped)
        elif check.failures:
            result = ClauseResult(check.clause, check.title, "fail", "; ".join(check.failures))
        else:
            result = ClauseResult(check.clause, check.title, "pass")
        self.results.append(result)
        self._log(f"{result.status.upper():4} {result.clause} {result.title} {result.detail}")

    def _check(self, clause: str, title: str) -> _Check:
        return _Check(clause, title)

    def _expect_result(
        self, check: _Check, ex: Exchange, wanted: set[ResultCode], what: str
    ) -> ResultCode | None:
        reply = ex.reply
        if ex.nak is not None:
            check.failures.append(f"{what}: NAK {ex.nak}, wanted {_names(wanted)}")
            return None
        if not isinstance(reply, CommandResult):
            check.failures.append(f"{what}: no CommandResult (got {reply!r})")
            return None
        if reply.result not in wanted:
            check.failures.append(f"{what}: {reply.result.name}, wanted {_names(wanted)}")
        return reply.result

    def status(self) -> Status | None:
        reply = self.request(GetStatus(0)).reply
        return reply if isinstance(reply, Status) else None

    # --- the run ------------------------------------------------------------------------------

    def steps(self) -> dict[str, Callable[[], None]]:
        """The checks in the order they run; the handshake always runs first, and the frame and
        timing clauses (1.1, 3.1, 2.3 ACKs, 4.2) are judged at the end over everything seen."""
        return {
            "handshake": self.check_handshake,
            "corrupt": self.check_corrupt_frames_ignored,
            "nak": self.check_naks,
            "duplicates": self.check_duplicates,
            "time": self.check_time,
            "factory_reset": self.check_factory_reset_confirm,
            "keepalive": self.check_keepalive,
            "held": self.check_held_gating,
            "lock": self.check_lock,
            "dispense": self.check_dispense_and_unacked_events,
            "discard": self.check_discard,
            "reboot": self.check_reboot_session,
        }

    def run(self, only: Sequence[str] = ()) -> list[ClauseResult]:
        """Run every step, or the handshake and the steps named in `only`."""
        table = self.steps()
        unknown = set(only) - table.keys()
        if unknown:
            raise ValueError(f"unknown steps {sorted(unknown)}: one of {sorted(table)}")
        steps = [
            fn for name, fn in table.items() if not only or name in only or name == "handshake"
        ]
        try:
            for step in steps:
                step()
        except Blocked as exc:
            self._log(f"blocked: {exc}")
            self.results.append(ClauseResult("-", "remaining clauses", "skip", f"blocked: {exc}"))
        self.check_frames_and_timing()
        self.finish()
        return self.results

    def finish(self) -> None:
        """Leave the unit as a bench unit should be: unlocked, quiet, executed ids forgotten."""
        try:
            self.request(SetAlert(0, AlertPattern.OFF))
            self.request(FactoryReset(0, FACTORY_RESET_CONFIRM))
        except Exception as exc:  # the report matters more than the tidy-up
            self._log(f"tidy-up failed: {exc!r}")

    # --- clauses ------------------------------------------------------------------------------

    def hello(self) -> tuple[Exchange, int]:
        """A new agent session and its Hello; returns the exchange and where in the inbox the
        messages after it start."""
        self.new_session()
        since = len(self.inbox)
        ex = self.request(Hello(0, PROTOCOL_VERSION, "hw.conform"))
        return ex, since

    def check_handshake(self) -> None:
        check = self._check("4.1", "Hello is answered with Capabilities (same req_id, v1)")
        ex, since = self.hello()
        caps = ex.reply
        if not isinstance(caps, Capabilities):
            check.failures.append(f"no Capabilities within {REQUEST_TIMEOUT_S * self.slack} s")
            self._record(check)
            raise Blocked("no handshake")
        self.capabilities = caps
        if caps.protocol_version != PROTOCOL_VERSION:
            check.failures.append(f"protocol_version {caps.protocol_version}")
        self._record(check)
        bits = self._check("3.4", "reserved feature bits are sent as 0")
        if caps.features & ~KNOWN_FEATURES:
            bits.failures.append(f"features 0x{caps.features:04x} has reserved bits")
        self._record(bits)
        self.check_announcement(since)

    def check_announcement(self, since: int) -> None:
        check = self._check("4.1", "after Capabilities: the loaded roll, the sachet, the bin level")
        status = self.status()
        caps = self.capabilities
        assert caps is not None
        if status is None:
            check.failures.append("GetStatus got no Status")
        elif status.roll_id:
            roll = self.wait_for(
                lambda m: isinstance(m, RollInserted) and m.roll_id == status.roll_id,
                REPLY_DEADLINE_S * self.slack,
                since,
            )
            if roll is None:
                check.failures.append(f"no RollInserted for the loaded roll {status.roll_id}")
            if caps.features & Feature.SACHET_READER and status.remaining:
                read = self.wait_for(
                    lambda m: (
                        isinstance(m, SachetRead)
                        or (isinstance(m, FaultChanged) and m.fault is FaultCode.READER)
                    ),
                    REPLY_DEADLINE_S * self.slack,
                    since,
                )
                if read is None:
                    check.failures.append("no SachetRead (nor FaultChanged READER) after Hello")
        if caps.features & Feature.BIN_LEVEL:
            level = self.wait_for(
                lambda m: isinstance(m, BinLevel), REPLY_DEADLINE_S * self.slack, since
            )
            if level is None:
                check.failures.append("BIN_LEVEL announced but no BinLevel after Hello")
        self._record(check)

    def check_corrupt_frames_ignored(self) -> None:
        check = self._check("1.3", "corrupt frames are dropped, never answered, link carries on")
        raw = Frame(FrameKind.DATA, self._session, 0x77, 0x07, b"\x00\x07").encode_raw()
        bad_crc: bytes = cobs.encode(raw[:-1] + bytes([raw[-1] ^ 0x01]))
        corrupt = [
            b"\x00" + bad_crc + b"\x00",  # CRC wrong, COBS intact
            b"\x00\xff\x01\x00",  # bad COBS
            b"\x00" + b"\x05" * 300 + b"\x00",  # oversize run
            b"\x13\x37garbage",  # noise, then the next frame's delimiter
        ]
        answers_from = len(self.answers)
        for wire in corrupt:
            self.link.write(wire)
        self._pump(ACK_DEADLINE_S * self.slack)
        stray = [a for a in self.answers[answers_from:] if a.frame.seq == 0x77]
        if stray:
            check.failures.append(f"{len(stray)} answer(s) to corrupt frames")
        if self.status() is None:
            check.failures.append("no Status after the corrupt frames")
        self._record(check)

    def check_naks(self) -> None:
        check = self._check("2.4", "intact but unacceptable frames are NAKed with the reason")
        before = self.status()
        cases: list[tuple[str, int, bytes, int, int]] = [
            ("unknown type 0x3F", 0x3F, b"\x00\x01", 1, NakReason.UNKNOWN_TYPE),
            ("wrong direction (0x41)", 0x41, b"\x00\x01\x00\x00", 1, NakReason.WRONG_DIRECTION),
            ("version 2", 0x07, b"\x00\x01", 2, NakReason.UNSUPPORTED_VERSION),
            ("SetLock bool 2", 0x06, b"\x00\x01\x02", 1, NakReason.BAD_PAYLOAD),
            ("SetAlert pattern 9", 0x05, b"\x00\x01\x09", 1, NakReason.BAD_PAYLOAD),
            ("GetStatus + leftover byte", 0x07, b"\x00\x01\x00", 1, NakReason.BAD_PAYLOAD),
            ("Dispense truncated", 0x02, b"\x00\x01\x00", 1, NakReason.BAD_PAYLOAD),
        ]
        for name, code, payload, version, reason in cases:
            answer = self.raw_exchange(code, payload, version)
            if answer is None:
                check.failures.append(f"{name}: no answer")
            elif answer.frame.kind is not FrameKind.NAK or answer.frame.code != reason:
                got = f"{answer.frame.kind.name} {answer.frame.code}"
                check.failures.append(f"{name}: {got}, wanted NAK {int(reason)}")
        after = self.status()
        if before is not None and after is not None and before.locked != after.locked:
            check.failures.append("a NAKed SetLock changed the lock")
        self._record(check)

    def check_duplicates(self) -> None:
        check = self._check("2.5", "a retransmitted frame is ACKed again, executed once")
        self._req += 1
        code, payload = encode_message(GetStatus(self._req))
        session, seq = self._session, self._seq
        answers_from, inbox_from = len(self.answers), len(self.inbox)
        wire = self._write_data(code, payload)
        self._pump(ACK_DEADLINE_S * self.slack)
        self.link.write(wire)

        def seen() -> tuple[list[Arrival], list[Arrival]]:
            acks = [
                a
                for a in self.answers[answers_from:]
                if (a.frame.session, a.frame.seq) == (session, seq)
                and a.frame.kind is FrameKind.ACK
            ]
            replies = [
                a
                for a in self.inbox[inbox_from:]
                if isinstance(a.message, Status) and a.message.req_id == self._req
            ]
            return acks, replies

        end = self.clock() + REPLY_DEADLINE_S * self.slack
        while self.clock() < end:
            acks, replies = seen()
            if len(acks) >= 2 and replies:
                self._pump(ACK_TIMEOUT_S)  # time for a wrong second reply to show
                break
            self._pump(0.02)
        acks, replies = seen()
        if len(acks) != 2:
            check.failures.append(f"{len(acks)} ACKs for two copies, wanted 2")
        if len(replies) != 1:
            check.failures.append(f"{len(replies)} Status replies, wanted exactly 1")
        self._record(check)

    def check_time(self) -> None:
        check = self._check("4.5", "SetTime / GetTime (SetTime(0) refused)")
        caps = self.capabilities
        assert caps is not None
        now = int(time.time())
        ex = self.request(SetTime(0, now))
        if not caps.has_rtc:
            self._expect_result(check, ex, {ResultCode.UNSUPPORTED}, "SetTime without RTC")
            self._record(check)
            return
        self._expect_result(check, ex, {ResultCode.OK}, "SetTime(now)")
        report = self.request(GetTime(0)).reply
        if not isinstance(report, TimeReport):
            check.failures.append("GetTime got no TimeReport")
        elif not report.rtc_valid or abs(report.utc_s - now) > RTC_TOLERANCE_S:
            check.failures.append(f"GetTime after SetTime({now}): {report}")
        zero = self.request(SetTime(0, 0))
        self._expect_result(check, zero, {ResultCode.BAD_ARGUMENT}, "SetTime(0)")
        self._record(check)

    def check_factory_reset_confirm(self) -> None:
        check = self._check("4.5", "FactoryReset with a wrong confirm is BAD_ARGUMENT")
        ex = self.request(FactoryReset(0, 0x12345678))
        self._expect_result(check, ex, {ResultCode.BAD_ARGUMENT}, "FactoryReset(0x12345678)")
        self._record(check)

    def check_keepalive(self) -> None:
        check = self._check("4.7", "KeepAlive: 0 or 30..3600, else BAD_ARGUMENT")
        caps = self.capabilities
        assert caps is not None
        if not caps.features & Feature.AGENT_WATCHDOG:
            ex = self.request(KeepAlive(0, 300))
            if ex.nak != NakReason.UNKNOWN_TYPE:
                self._expect_result(check, ex, {ResultCode.UNSUPPORTED}, "KeepAlive, no feature")
            self._record(check)
            return
        for value, wanted in (
            (29, ResultCode.BAD_ARGUMENT),
            (3601, ResultCode.BAD_ARGUMENT),
            (30, ResultCode.OK),
            (3600, ResultCode.OK),
            (0, ResultCode.OK),
        ):
            self._expect_result(check, self.request(KeepAlive(0, value)), {wanted}, f"{value}")
        self._record(check)

    def check_held_gating(self) -> None:
        check = self._check("3.4", "HELD only with HELD_PATTERN; refused changes nothing")
        caps = self.capabilities
        assert caps is not None
        self.request(SetAlert(0, AlertPattern.REMINDER))
        ex = self.request(SetAlert(0, AlertPattern.HELD))
        status = self.status()
        if caps.features & Feature.HELD_PATTERN:
            self._expect_result(check, ex, {ResultCode.OK}, "SetAlert(HELD)")
            if status is not None and status.alert is not AlertPattern.HELD:
                check.failures.append(f"Status.alert {status.alert.name} after HELD")
        else:
            if ex.nak != NakReason.BAD_PAYLOAD:
                self._expect_result(check, ex, {ResultCode.UNSUPPORTED}, "SetAlert(HELD)")
            if status is not None and status.alert is not AlertPattern.REMINDER:
                check.failures.append(f"refused HELD changed the pattern to {status.alert.name}")
        self.request(SetAlert(0, AlertPattern.OFF))
        self._record(check)

    def check_lock(self) -> None:
        check = self._check("4.5", "SetLock locks and unlocks (Status.locked)")
        caps = self.capabilities
        assert caps is not None
        if not caps.features & Feature.LOCK:
            self._expect_result(
                check, self.request(SetLock(0, True)), {ResultCode.UNSUPPORTED}, "SetLock"
            )
            self._record(check)
            return
        for locked in (True, False):
            self._expect_result(check, self.request(SetLock(0, locked)), {ResultCode.OK}, "lock")
            status = self.status()
            if status is None or status.locked is not locked:
                check.failures.append(f"Status.locked is not {locked}")
        self._record(check)

    def _ready_to_cut(self) -> Status | str:
        status = self.status()
        if status is None:
            return "no Status"
        if not status.roll_id or status.remaining == 0:
            return "needs a loaded roll with sachets left"
        if status.tray_occupied or status.lid_open or status.active_faults or status.locked:
            return "needs an empty tray, the lid closed, no fault, unlocked"
        return status

    def check_dispense_and_unacked_events(self) -> None:
        caps = self.capabilities
        assert caps is not None
        titles = [
            ("4.2", "Dispense: CommandResult OK at acceptance, within the reply deadline"),
            ("4.3", "Dispense: DosePresented, then the next sachet, LowSupply at <= 4 left"),
            ("2.3", "an unacknowledged frame is resent 4 times, same bytes, >= 200 ms apart"),
            ("2.7", "events never acknowledged are sent again after the next Capabilities"),
            ("4.4", "a dispense_id executed before is ALREADY_DONE, checked before all else"),
            ("4.9", "refusal order: WRONG_SACHET, TRAY_OCCUPIED, LOCKED; nothing moves"),
            ("4.3", "Retain moves the presented dose to the bin (DoseRetained, BinLevel)"),
        ]
        ready = self._ready_to_cut()
        if isinstance(ready, str):
            for clause, title in titles:
                self._record(_Check(clause, title, skipped=ready))
            return
        reply_check = self._check(*titles[0])
        flow = self._check(*titles[1])
        retransmit = self._check(*titles[2])
        resend = self._check(*titles[3])
        dispense_id, index = self.next_id(), ready.next_index
        # Acknowledge the reply only: the events after it are withheld until the dispenser gives
        # up on them (an agent that died after the OK)
        self._withhold_after = self._req % 0xFFFF + 1  # the req_id request() gives it
        tx_before = len(self.transmissions)
        ex = self.request(Dispense(0, dispense_id, index), wait_s=REQUEST_TIMEOUT_S * self.slack)
        self._withhold_after = None
        result = self._expect_result(reply_check, ex, {ResultCode.OK}, "Dispense")
        if ex.reply_s is not None and ex.reply_s > REPLY_DEADLINE_S * self.slack:
            reply_check.failures.append(
                f"reply after {ex.reply_s:.2f} s (bound {REPLY_DEADLINE_S * self.slack:.2f} s)"
            )
        self._record(reply_check)
        if result is not ResultCode.OK:
            self.withhold_acks = False
            for clause, title in titles[1:]:
                self._record(_Check(clause, title, skipped="Dispense not executed"))
            return
        first_tx = self.withheld_from if self.withhold_acks else len(self.transmissions)
        self.withhold_acks = True
        presented = self._wait_tx(
            lambda m: isinstance(m, DosePresented) and m.dispense_id == dispense_id,
            MOVE_DEADLINE_S * self.slack,
            tx_before,
        )
        if presented is None:
            flow.failures.append("no DosePresented")
        # retransmits of the first withheld frame (DosePresented, or whatever came first): all
        # of them, then one more ACK timeout in which a sixth copy would show
        head = self.transmissions[first_tx].frame if len(self.transmissions) > first_tx else None
        end = self.clock() + ACK_TIMEOUT_S * (MAX_RETRANSMITS + 2) * self.slack
        while head is not None and self.clock() < end:
            copies = [a for a in self.transmissions[first_tx:] if a.frame == head]
            if len(copies) >= MAX_RETRANSMITS + 1:
                self._pump(ACK_TIMEOUT_S * 1.5)
                break
            self._pump(0.02)
        withheld = self.transmissions[first_tx:]
        if head is not None:
            copies = [a for a in withheld if a.frame == head]
            gaps = [b.at - a.at for a, b in itertools.pairwise(copies)]
            if len(copies) != MAX_RETRANSMITS + 1:
                retransmit.failures.append(f"{len(copies)} transmissions, wanted 5")
            if any(gap < RETRANSMIT_MIN_S for gap in gaps):
                retransmit.failures.append(f"retransmits {min(gaps):.3f} s apart")
            if any(gap > ACK_TIMEOUT_S * self.slack * 2 for gap in gaps):
                retransmit.failures.append(f"retransmits {max(gaps):.3f} s apart")
        else:
            retransmit.failures.append("nothing sent after the OK")
        self._record(retransmit)
        # then a new agent (what else the dispenser had queued is in flight or kept by now)
        self.withhold_acks = False
        hello, after = self.hello()
        if presented is not None:
            wanted = presented.message
            self.wait_for(lambda m: m == wanted, REPLY_DEADLINE_S * self.slack, after)
        self.settle(ACK_TIMEOUT_S * 2)
        messages = [a.message for a in self.transmissions[tx_before:] if a.message is not None]
        again = [a.message for a in self.inbox[after:]]
        if not isinstance(hello.reply, Capabilities):
            resend.failures.append("no Capabilities to the new Hello")
        elif presented is not None and presented.message not in again:
            resend.failures.append(f"{presented.message} was not sent again after Hello")
        elif presented is not None:
            caps_at = next(i for i, m in enumerate(again) if isinstance(m, Capabilities))
            at = again.index(presented.message)
            rolls = [i for i, m in enumerate(again) if isinstance(m, RollInserted)]
            if at < caps_at or (rolls and rolls[0] < at):
                resend.failures.append("re-sent events must come right after Capabilities")
        self._record(resend)
        # the flow after the cut, from what was sent (withheld or not)
        status = self.status()
        sent_after = messages + again
        reader = caps.features & Feature.SACHET_READER
        if (
            status is not None
            and status.remaining
            and reader
            and not any(
                (isinstance(m, SachetRead) and m.index == index + 1)
                or (isinstance(m, FaultChanged) and m.fault is FaultCode.READER)
                for m in sent_after
            )
        ):
            flow.failures.append(f"no SachetRead for sachet {index + 1} after the cut")
        low = status is not None and status.remaining <= LOW_SUPPLY_THRESHOLD
        if low and not any(isinstance(m, LowSupply) for m in sent_after):
            assert status is not None
            flow.failures.append(f"{status.remaining} left and no LowSupply")
        if status is not None and not status.tray_occupied:
            flow.failures.append("Status.tray_occupied false after DosePresented")
        self._record(flow)
        self._check_refusals(dispense_id, index, status)
        self._clear_tray(dispense_id, index)

    def _wait_tx(
        self, match: Callable[[Message], bool], seconds: float, since: int
    ) -> Arrival | None:
        end = self.clock() + seconds
        while True:
            for arrival in self.transmissions[since:]:
                if arrival.message is not None and match(arrival.message):
                    return arrival
            if self.clock() >= end:
                return None
            self._pump(min(0.02, end - self.clock()))

    def _check_refusals(self, done_id: int, index: int, status: Status | None) -> None:
        caps = self.capabilities
        assert caps is not None
        idem = self._check("4.4", "a dispense_id executed before is ALREADY_DONE, checked first")
        refusals = self._check(
            "4.9", "refusal order: WRONG_SACHET, TRAY_OCCUPIED, LOCKED; nothing moves"
        )
        self._expect_result(
            idem, self.request(Dispense(0, done_id, index)), {ResultCode.ALREADY_DONE}, "repeat"
        )
        fresh = self.next_id()
        next_index = status.next_index if status is not None else index + 1
        if status is not None and status.remaining:
            self._expect_result(
                refusals,
                self.request(Dispense(0, fresh, next_index)),
                {ResultCode.TRAY_OCCUPIED},
                "Dispense with the tray occupied",
            )
            self._expect_result(
                refusals,
                self.request(Dispense(0, fresh, next_index + 7)),
                {ResultCode.WRONG_SACHET},
                "Dispense of a sachet not at the reader",
            )
        if caps.features & Feature.LOCK:
            self.request(SetLock(0, True))
            self._expect_result(
                idem,
                self.request(Dispense(0, done_id, index)),
                {ResultCode.ALREADY_DONE},
                "repeat while locked (ALREADY_DONE before LOCKED)",
            )
            self._expect_result(
                refusals,
                self.request(Dispense(0, fresh, next_index)),
                {ResultCode.LOCKED},
                "new id while locked (LOCKED before TRAY_OCCUPIED)",
            )
            self.request(SetLock(0, False))
        after = self.status()
        if status is not None and after is not None and after.next_index != status.next_index:
            refusals.failures.append("a refused Dispense moved the roll")
        self._record(idem)
        self._record(refusals)

    def _clear_tray(self, dispense_id: int, index: int) -> None:
        caps = self.capabilities
        assert caps is not None
        check = self._check("4.3", "Retain moves the presented dose to the bin (DoseRetained)")
        if not caps.features & Feature.RETAIN_BIN:
            since = len(self.inbox)
            if self.actuator.take_dose():
                if self.wait_for(lambda m: isinstance(m, DoseTaken), 30.0, since) is None:
                    check.failures.append("no DoseTaken after the dose was taken")
                self._record(check)
            else:
                check.skipped = "no RETAIN_BIN and nobody to take the dose"
                self._record(check)
            return
        since = len(self.inbox)
        ex = self.request(Retain(0, dispense_id))
        self._expect_result(check, ex, {ResultCode.OK}, "Retain")
        retained = self.wait_for(
            lambda m: isinstance(m, DoseRetained) and m.dispense_id == dispense_id,
            MOVE_DEADLINE_S * self.slack,
            since,
        )
        if retained is None:
            check.failures.append("no DoseRetained after Retain")
        elif (
            caps.features & Feature.BIN_LEVEL
            and self.wait_for(lambda m: isinstance(m, BinLevel), 1.0 * self.slack, since) is None
        ):
            check.failures.append("no BinLevel after DoseRetained")
        self._expect_result(
            check, self.request(Retain(0, dispense_id)), {ResultCode.ALREADY_DONE}, "Retain again"
        )
        self._expect_result(
            check,
            self.request(Retain(0, self.next_id())),
            {ResultCode.NOTHING_PRESENTED},
            "Retain of a dose not in the tray",
        )
        self._record(check)

    def check_discard(self) -> None:
        check = self._check("4.3", "Discard cuts into the bin: DoseRetained, then the next sachet")
        caps = self.capabilities
        assert caps is not None
        if not caps.features & Feature.RETAIN_BIN:
            check.skipped = "no RETAIN_BIN"
            self._record(check)
            return
        ready = self._ready_to_cut()
        if isinstance(ready, str):
            check.skipped = ready
            self._record(check)
            return
        discard_id = self.next_id()
        since = len(self.inbox)
        ex = self.request(Discard(0, discard_id, ready.next_index))
        if self._expect_result(check, ex, {ResultCode.OK}, "Discard") is ResultCode.OK:
            bound = MOVE_DEADLINE_S * self.slack
            if self.wait_for(lambda m: isinstance(m, DoseRetained), bound, since) is None:
                check.failures.append("no DoseRetained after Discard")
            if ready.remaining > 1 and caps.features & Feature.SACHET_READER:
                nxt = self.wait_for(
                    lambda m: (
                        (isinstance(m, SachetRead) and m.index == ready.next_index + 1)
                        or (isinstance(m, FaultChanged) and m.fault is FaultCode.READER)
                    ),
                    REPLY_DEADLINE_S * self.slack * 2,
                    since,
                )
                if nxt is None:
                    check.failures.append("no SachetRead for the next sachet after Discard")
            self._expect_result(
                check,
                self.request(Discard(0, discard_id, ready.next_index + 1)),
                {ResultCode.ALREADY_DONE},
                "Discard again",
            )
        self._record(check)

    def check_reboot_session(self) -> None:
        check = self._check("2.1", "after a restart the dispenser's link session is a new one")
        before = self._peer
        if before is None or not self.actuator.reboot():
            check.skipped = "needs a restart of the dispenser (--interactive)"
            self._record(check)
            return
        ex, _ = self.hello()
        if not isinstance(ex.reply, Capabilities):
            check.failures.append("no Capabilities after the restart")
        elif self._peer is not None and self._peer[0] == before[0]:
            check.failures.append(f"session {before[0]:04x} used again after the restart")
        self._record(check)

    def check_frames_and_timing(self) -> None:
        frames = self._check("1.1", "every frame from the dispenser is intact and within 240 bytes")
        if self._decoder.rejected:
            frames.failures.append(f"rejected: {dict(self._decoder.rejected)}")
        big = [a for a in self.transmissions if len(a.frame.payload) > MAX_PAYLOAD]
        if big:
            frames.failures.append(f"{len(big)} payloads above {MAX_PAYLOAD} bytes")
        self._record(frames)
        payloads = self._check("3.1", "every payload from the dispenser is a valid message")
        if self.bad_payloads:
            payloads.failures.extend(self.bad_payloads[:3])
        self._record(payloads)
        acks = self._check(
            "2.3", f"every DATA frame is ACKed within {ACK_DEADLINE_S * 1000:.0f} ms"
        )
        bound = ACK_DEADLINE_S * self.slack
        late = [e for e in self.exchanges if e.nak is None and (e.ack_s is None or e.ack_s > bound)]
        if late:
            seen = [e.ack_s for e in late if e.ack_s is not None]
            worst = f"worst {max(seen):.2f} s" if seen else "none seen within the wait"
            acks.failures.append(
                f"{len(late)} of {len(self.exchanges)} ACKs later than {bound:.2f} s "
                f"({worst}), e.g. {type(late[0].command).__name__}"
            )
        self._record(acks)
        replies = self._check("4.2", "every command gets exactly one reply, in time, req_id echoed")
        rbound = REPLY_DEADLINE_S * self.slack
        for ex in self.exchanges:
            name = type(ex.command).__name__
            if ex.nak is not None:
                continue
            if ex.reply is None:
                replies.failures.append(f"{name}: no reply")
            elif ex.replies != 1:
                replies.failures.append(f"{name}: {ex.replies} replies")
            elif ex.reply_s is not None and ex.reply_s > rbound:
                replies.failures.append(f"{name}: reply after {ex.reply_s:.2f} s (> {rbound:.2f})")
        self._record(replies)


def _names(codes: set[ResultCode]) -> str:
    return "/".join(sorted(code.name for code in codes))


def failed_clauses(results: Sequence[ClauseResult]) -> set[str]:
    return {r.clause for r in results if r.status == "fail"}


def format_report(results: Sequence[ClauseResult]) -> Iterator[str]:
    for r in sorted(results, key=lambda r: _clause_key(r.clause)):
        detail = f" — {r.detail}" if r.detail else ""
        yield f"{r.status.upper():4}  §{r.clause:4} {r.title}{detail}"
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip")}
    verdict = "CONFORMS" if not counts["fail"] else "DOES NOT CONFORM"
    yield f"{verdict}: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"


def _clause_key(clause: str) -> tuple[int, ...]:
    return tuple(int(p) for p in clause.split(".") if p.isdigit()) or (99,)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hw.conform", description=__doc__.split("\n")[0]
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--device", help="serial device of the dispenser")
    where.add_argument("--ble-address", help="a BLE dispenser by its address (BlueZ: MAC)")
    where.add_argument("--ble-name", help="a BLE dispenser by its advertised name")
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--slack", type=float, default=1.0, help="widen timing bounds (>= 1)")
    parser.add_argument("--interactive", action="store_true", help="ask for physical acts")
    parser.add_argument("--verbose", action="store_true", help="log every message")
    parser.add_argument(
        "--only", default="", help="comma-separated steps to run after the handshake"
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    link: ByteLink = (
        SerialByteLink(args.device, args.baud)
        if args.device
        else BleByteLink(address=args.ble_address, name=args.ble_name)
    )
    actuator: Actuator = PromptActuator() if args.interactive else NoActuator()
    log = (lambda text: print(text, file=sys.stderr)) if args.verbose else None
    try:
        only = [name for name in args.only.split(",") if name]
        results = Kit(link, actuator, slack=args.slack, log=log).run(only)
    finally:
        link.close()
    if args.json:
        print(json.dumps([_as_dict(r) for r in results], indent=1))
    else:
        for line in format_report(results):
            print(line)
    return 1 if failed_clauses(results) else 0


def _as_dict(result: ClauseResult) -> dict[str, str]:
    return {
        "clause": result.clause,
        "title": result.title,
        "status": result.status,
        "detail": result.detail,
    }


if __name__ == "__main__":
    sys.exit(main())
