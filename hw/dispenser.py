"""The dispenser firmware, modelled: what it does with each command and each physical event.

No I/O and no clock of its own: the RTC is a callable passed in, and every method returns the
messages the firmware would emit, in order. `hw.wire` runs this model behind a real link.

State is split the way the hardware splits it (protocol SPEC 4.4):
- physical (survives anything): the roll and its position, the tray, the bin, lid, power, faults;
- non-volatile (survives `reboot()`): executed dispense ids, the lock, the RTC offset, the agent
  watchdog's timeout;
- volatile (lost on `reboot()`): the alert pattern, the silence timer and alarm.

The lock is kept across a reboot on purpose: a power blip must not silently unlock a unit the
agent paused. So is the armed watchdog (SPEC 4.7): its timer starts again at boot.

The agent watchdog (SPEC 4.7) runs on a monotonic time the caller passes in (seconds, any
origin): the runner calls `note_agent_frame(now)` for every DATA frame from the agent it ACKs,
before `handle()` of its message, sleeps until `agent_silence_deadline()`, and calls
`check_agent_silence(now)` when it wakes. A caller that never notes frames (the in-process
simulation) sees exactly the firmware it saw before: the watchdog is armed only by `KeepAlive`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from protocol import PROTOCOL_VERSION
from protocol.messages import (
    FACTORY_RESET_CONFIRM,
    KEEPALIVE_MAX_S,
    KEEPALIVE_MIN_S,
    AlertPattern,
    BinLevel,
    ButtonId,
    ButtonPressed,
    Capabilities,
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
    LidChanged,
    LowSupply,
    Message,
    PowerChanged,
    ResultCode,
    Retain,
    RollInserted,
    RollRemoved,
    SachetRead,
    SetAlert,
    SetLock,
    SetTime,
    Status,
    TimeReport,
)

DEFAULT_FEATURES = int(
    Feature.RETAIN_BIN
    | Feature.LOCK
    | Feature.TRAY_SENSOR
    | Feature.BATTERY
    | Feature.SACHET_READER
    | Feature.HELD_PATTERN
    | Feature.AGENT_WATCHDOG
    | Feature.BIN_LEVEL
)
# Faults that stop the cutter: Dispense/Discard are refused with JAMMED while one is active.
CUTTER_FAULTS = frozenset({FaultCode.JAM, FaultCode.CUTTER})


@dataclass(frozen=True, slots=True)
class SimSachet:
    """One sealed sachet as printed by the pharmacy."""

    index: int
    intended_utc_s: int
    patient_ref: str
    readable: bool = True


@dataclass(frozen=True, slots=True)
class SimRoll:
    """A multidose roll: a leader label and a strip of sachets. `next_index`: the sachet at the
    reader when the roll is loaded (a roll may be re-inserted part used)."""

    roll_id: str
    patient_ref: str
    sachets: tuple[SimSachet, ...]
    expiry_utc_s: int
    next_index: int = 0

    def __post_init__(self) -> None:
        for position, sachet in enumerate(self.sachets):
            if sachet.index != position:
                raise ValueError(f"sachet at position {position} has index {sachet.index}")
        if not 0 <= self.next_index <= len(self.sachets):
            raise ValueError(f"next_index {self.next_index} outside 0..{len(self.sachets)}")

    @property
    def first_dose_utc_s(self) -> int:
        return self.sachets[0].intended_utc_s if self.sachets else 0

    @property
    def last_dose_utc_s(self) -> int:
        return self.sachets[-1].intended_utc_s if self.sachets else 0


def roll_from_dose_times(
    roll_id: str,
    patient_ref: str,
    dose_times_utc_s: Sequence[int],
    expiry_utc_s: int,
    *,
    next_index: int = 0,
    unreadable: Sequence[int] = (),
) -> SimRoll:
    """A roll with one sachet per given dose time (in order)."""
    sachets = tuple(
        SimSachet(index, when, patient_ref, readable=index not in unreadable)
        for index, when in enumerate(dose_times_utc_s)
    )
    return SimRoll(roll_id, patient_ref, sachets, expiry_utc_s, next_index)


def make_roll(
    roll_id: str,
    patient_ref: str,
    first_dose_utc_s: int,
    interval_s: int = 12 * 3600,
    count: int = 28,
    expiry_utc_s: int | None = None,
    *,
    next_index: int = 0,
    unreadable: Sequence[int] = (),
) -> SimRoll:
    """A roll of `count` sachets every `interval_s` from `first_dose_utc_s`.

    Expiry defaults to 30 days after the last dose.
    """
    if count < 0 or interval_s < 0:
        raise ValueError("count and interval_s must not be negative")
    times = [first_dose_utc_s + i * interval_s for i in range(count)]
    if expiry_utc_s is None:
        expiry_utc_s = (times[-1] if times else first_dose_utc_s) + 30 * 86400
    return roll_from_dose_times(
        roll_id, patient_ref, times, expiry_utc_s, next_index=next_index, unreadable=unreadable
    )


@dataclass
class DispenserIdentity:
    model: str = "SIM-100"
    serial_number: str = "SIM0001"
    firmware_version: str = "1.0.0"
    has_rtc: bool = True
    features: int = DEFAULT_FEATURES
    bin_capacity: int = 30
    low_supply_threshold: int = 4


@dataclass(frozen=True, slots=True)
class TrayDose:
    dispense_id: int
    sachet_index: int


@dataclass(frozen=True, slots=True)
class BinEntry:
    dispense_id: int
    sachet_index: int
    how: str  # "discard" (cut straight into the bin) or "retain" (moved from the tray)


@dataclass(frozen=True, slots=True)
class ModelSnapshot:
    """A copy of the observable state, safe to hand to another thread."""

    roll_id: str | None
    position: int | None
    remaining: int
    tray: TrayDose | None
    bin: tuple[BinEntry, ...]
    dispensed: tuple[tuple[int, int], ...]
    discarded: tuple[tuple[int, int], ...]
    executed_ids: frozenset[int]
    locked: bool
    alert: AlertPattern  # the pattern the agent last set (see `shown`)
    lid_open: bool
    mains: bool
    battery_pct: int
    faults: frozenset[FaultCode]
    rtc_valid: bool
    boot_count: int
    shown: AlertPattern  # the pattern the unit shows: FAULT during a silence alarm, else `alert`
    silence_alarm: bool  # the agent has been silent for the watchdog's timeout (SPEC 4.7)
    silence_alarm_s: float | None  # monotonic time the silence alarm went off; None while off
    silence_alarms: int  # how often the silence alarm went off since the model was made
    watchdog_s: int  # the armed KeepAlive timeout, 0: disarmed
    agent_heard_s: float | None  # monotonic time of the last frame heard from the agent


class DispenserModel:
    def __init__(self, identity: DispenserIdentity, rtc_utc_s: Callable[[], int]) -> None:
        self.identity = identity
        self.rtc_utc_s = rtc_utc_s
        # physical
        self.roll: SimRoll | None = None
        self.position = 0  # index of the sachet at the reader
        self.tray: TrayDose | None = None
        self.bin: list[BinEntry] = []
        self.lid_open = False
        self.mains = True
        self.battery_pct = 100
        self.faults: dict[FaultCode, str] = {}
        self.last_removed_roll: SimRoll | None = None  # next_index = where it was taken out
        # non-volatile
        self.executed_ids: set[int] = set()
        self.retained_ids: set[int] = set()
        self.locked = False
        self.rtc_offset_s = 0
        self.rtc_valid = identity.has_rtc
        self.watchdog_s = 0  # agent watchdog timeout (SPEC 4.7); 0: disarmed
        # volatile
        self.alert = AlertPattern.OFF  # the pattern the agent last set
        self.agent_heard_s: float | None = None  # monotonic; None: silence timer not started
        self.silence_alarm = False
        self.silence_alarm_s: float | None = None
        # observation: cuts in physical order, into the tray / straight into the bin
        self.dispensed: list[tuple[int, int]] = []
        self.discarded: list[tuple[int, int]] = []
        self.silence_alarms = 0  # silence alarms gone off (a test's "never while the agent runs")
        self.boot_count = 1
        self.defects: frozenset[str] = frozenset()  # deliberately broken firmware (hw.wire)

    # --- observation --------------------------------------------------------------------------

    @property
    def remaining(self) -> int:
        return len(self.roll.sachets) - self.position if self.roll else 0

    def has(self, feature: Feature) -> bool:
        # `int()`: a plain int test (IntFlag's own `&` builds a flag through the enum machinery)
        return bool(self.identity.features & int(feature))

    def now_utc_s(self) -> int:
        """What the RTC reads; 0 (unknown) without a valid RTC."""
        if not (self.identity.has_rtc and self.rtc_valid):
            return 0
        return self.rtc_utc_s() + self.rtc_offset_s

    @property
    def shown(self) -> AlertPattern:
        """The pattern the unit shows: FAULT while the silence alarm is on (SPEC 4.7)."""
        return AlertPattern.FAULT if self.silence_alarm else self.alert

    def snapshot(self) -> ModelSnapshot:
        return ModelSnapshot(
            roll_id=self.roll.roll_id if self.roll else None,
            position=self.position if self.roll else None,
            remaining=self.remaining,
            tray=self.tray,
            bin=tuple(self.bin),
            dispensed=tuple(self.dispensed),
            discarded=tuple(self.discarded),
            executed_ids=frozenset(self.executed_ids),
            locked=self.locked,
            alert=self.alert,
            lid_open=self.lid_open,
            mains=self.mains,
            battery_pct=self.battery_pct,
            faults=frozenset(self.faults),
            rtc_valid=self.rtc_valid,
            boot_count=self.boot_count,
            shown=self.shown,
            silence_alarm=self.silence_alarm,
            silence_alarm_s=self.silence_alarm_s,
            silence_alarms=self.silence_alarms,
            watchdog_s=self.watchdog_s,
            agent_heard_s=self.agent_heard_s,
        )

    # --- agent watchdog (SPEC 4.7) ------------------------------------------------------------

    def note_agent_frame(self, now_s: float) -> None:
        """An intact DATA frame from the agent was ACKed at monotonic `now_s` (a retransmitted
        duplicate too). Ends a silence alarm (the agent's pattern shows again) and restarts the
        silence timer. Call it before `handle()` of the frame's message."""
        self.agent_heard_s = now_s
        self.silence_alarm = False
        self.silence_alarm_s = None

    def agent_silence_deadline(self) -> float | None:
        """When the silence alarm goes off if nothing is heard before: None while disarmed,
        while the alarm is already on, or before the timer has started."""
        if not self.watchdog_s or self.silence_alarm or self.agent_heard_s is None:
            return None
        return self.agent_heard_s + self.watchdog_s

    def check_agent_silence(self, now_s: float) -> bool:
        """Raise the silence alarm if the deadline has passed (at exactly the deadline too);
        returns whether it is on. Armed without a start (after `reboot()`, or a `KeepAlive`
        handled with no frame noted), the timer starts at `now_s`."""
        if self.watchdog_s and self.agent_heard_s is None:
            self.agent_heard_s = now_s
        deadline = self.agent_silence_deadline()
        if deadline is not None and now_s >= deadline:
            self.silence_alarm = True
            self.silence_alarm_s = now_s
            self.silence_alarms += 1
        return self.silence_alarm

    # --- protocol side ------------------------------------------------------------------------

    def handle(self, message: Message) -> list[Message]:
        """A command from the agent: exactly one reply first, then any events it causes."""
        match message:
            case Hello(req_id=req_id):
                self.watchdog_s = 0  # SPEC 4.7: a new agent arms with its own KeepAlive
                # SPEC 4.1: a loaded roll is announced again, so a (re)started agent verifies it;
                # SPEC 4.8: then how full the bin is.
                return [self._capabilities(req_id), *self._announce_roll(), *self._bin_level()]
            case Dispense():
                return self._dispense(message)
            case Discard():
                return self._discard(message)
            case Retain():
                return self._retain(message)
            case SetAlert(req_id=req_id, pattern=pattern):
                if pattern is AlertPattern.HELD and not self.has(Feature.HELD_PATTERN):
                    return [_result(req_id, ResultCode.UNSUPPORTED, "no HELD pattern")]
                self.alert = pattern
                return [_ok(req_id)]
            case KeepAlive(req_id=req_id, timeout_s=timeout_s):
                if not self.has(Feature.AGENT_WATCHDOG):
                    return [_result(req_id, ResultCode.UNSUPPORTED, "no agent watchdog")]
                if timeout_s and not KEEPALIVE_MIN_S <= timeout_s <= KEEPALIVE_MAX_S:
                    detail = f"timeout_s {timeout_s}: 0 or {KEEPALIVE_MIN_S}..{KEEPALIVE_MAX_S}"
                    return [_result(req_id, ResultCode.BAD_ARGUMENT, detail)]
                self.watchdog_s = timeout_s
                return [_ok(req_id)]
            case SetLock(req_id=req_id, locked=locked):
                if not self.has(Feature.LOCK):
                    return [_result(req_id, ResultCode.UNSUPPORTED, "no lock")]
                self.locked = locked
                return [_ok(req_id)]
            case GetStatus(req_id=req_id):
                return [self._status(req_id)]
            case GetTime(req_id=req_id):
                return [
                    TimeReport(req_id, self.identity.has_rtc and self.rtc_valid, self.now_utc_s())
                ]
            case SetTime():
                return self._set_time(message)
            case FactoryReset(req_id=req_id, confirm=confirm):
                if confirm != FACTORY_RESET_CONFIRM:
                    return [_result(req_id, ResultCode.BAD_ARGUMENT, "confirm value wrong")]
                self.executed_ids.clear()
                self.retained_ids.clear()
                self.locked = False
                self.alert = AlertPattern.OFF
                self.watchdog_s = 0
                return [_ok(req_id)]
            case _:
                # A dispenser -> agent message cannot reach here through a LinkEndpoint (it NAKs
                # wrong-direction frames); refuse loudly for direct callers.
                raise ValueError(f"{type(message).__name__} is not a command")

    def _capabilities(self, req_id: int) -> Capabilities:
        return Capabilities(
            req_id=req_id,
            protocol_version=PROTOCOL_VERSION,
            model=self.identity.model,
            serial_number=self.identity.serial_number,
            firmware_version=self.identity.firmware_version,
            has_rtc=self.identity.has_rtc,
            rtc_valid=self.identity.has_rtc and self.rtc_valid,
            rtc_utc_s=self.now_utc_s(),
            features=self.identity.features,
        )

    def _status(self, req_id: int) -> Status:
        faults = 0
        for fault in self.faults:
            faults |= 1 << int(fault)
        return Status(
            req_id=req_id,
            roll_id=self.roll.roll_id if self.roll else "",
            remaining=self.remaining,
            next_index=self.position if self.roll else 0,
            tray_occupied=self.tray is not None,
            lid_open=self.lid_open,
            locked=self.locked,
            mains=self.mains,
            battery_pct=self.battery_pct,
            alert=self.shown,
            active_faults=faults,
        )

    def _set_time(self, message: SetTime) -> list[Message]:
        if not self.identity.has_rtc:
            return [_result(message.req_id, ResultCode.UNSUPPORTED, "no RTC")]
        if message.utc_s == 0:
            return [_result(message.req_id, ResultCode.BAD_ARGUMENT, "time 0 means unknown")]
        self.rtc_offset_s = message.utc_s - self.rtc_utc_s()
        self.rtc_valid = True
        return [_ok(message.req_id)]

    def _refuse_cut(self, req_id: int, dispense_id: int, sachet_index: int) -> CommandResult | None:
        """Checks shared by Dispense and Discard; idempotency first, so a repeat of a command
        that succeeded is ALREADY_DONE even though the tray is now occupied."""
        if dispense_id in self.executed_ids:
            return _result(req_id, ResultCode.ALREADY_DONE, f"dispense {dispense_id} done")
        active = CUTTER_FAULTS & self.faults.keys()
        if active:
            names = ",".join(sorted(f.name for f in active))
            return _result(req_id, ResultCode.JAMMED, f"fault {names}")
        if self.lid_open:
            return _result(req_id, ResultCode.BUSY, "lid open")
        if self.roll is None:
            return _result(req_id, ResultCode.NO_ROLL, "")
        if self.remaining == 0:
            return _result(req_id, ResultCode.EMPTY, f"roll {self.roll.roll_id} used up")
        if sachet_index != self.position:
            return _result(
                req_id, ResultCode.WRONG_SACHET, f"sachet {self.position} is at the reader"
            )
        return None

    def _dispense(self, message: Dispense) -> list[Message]:
        req_id, dispense_id, index = message.req_id, message.dispense_id, message.sachet_index
        if self.locked and "wrong_precedence" in self.defects:
            return [_result(req_id, ResultCode.LOCKED, "dispensing locked")]
        if dispense_id in self.executed_ids:
            return [_result(req_id, ResultCode.ALREADY_DONE, f"dispense {dispense_id} done")]
        if self.locked:
            return [_result(req_id, ResultCode.LOCKED, "dispensing locked")]
        refusal = self._refuse_cut(req_id, dispense_id, index)
        if refusal is not None:
            return [refusal]
        if self.tray is not None:
            return [_result(req_id, ResultCode.TRAY_OCCUPIED, f"sachet {self.tray.sachet_index}")]
        if FaultCode.READER in self.faults:
            return [_result(req_id, ResultCode.REJECTED, "sachet at the reader is unreadable")]
        self.executed_ids.add(dispense_id)
        self.tray = TrayDose(dispense_id, index)
        self.dispensed.append((dispense_id, index))
        return [_ok(req_id), DosePresented(dispense_id, index), *self._advance()]

    def _discard(self, message: Discard) -> list[Message]:
        req_id, dispense_id, index = message.req_id, message.dispense_id, message.sachet_index
        if not self.has(Feature.RETAIN_BIN):
            return [_result(req_id, ResultCode.UNSUPPORTED, "no retain bin")]
        refusal = self._refuse_cut(req_id, dispense_id, index)
        if refusal is not None:
            return [refusal]
        if self._bin_full():
            return [_result(req_id, ResultCode.BIN_FULL, f"{len(self.bin)} in bin")]
        # An unreadable sachet may be discarded: that is how it leaves the reader.
        self.executed_ids.add(dispense_id)
        self.discarded.append((dispense_id, index))
        events: list[Message] = [_ok(req_id)]
        events += self._into_bin(BinEntry(dispense_id, index, "discard"))
        events += self._advance()
        return events

    def _retain(self, message: Retain) -> list[Message]:
        req_id, dispense_id = message.req_id, message.dispense_id
        if not self.has(Feature.RETAIN_BIN):
            return [_result(req_id, ResultCode.UNSUPPORTED, "no retain bin")]
        if dispense_id in self.retained_ids:
            return [_result(req_id, ResultCode.ALREADY_DONE, f"dispense {dispense_id} retained")]
        if self.tray is None or self.tray.dispense_id != dispense_id:
            return [_result(req_id, ResultCode.NOTHING_PRESENTED, "")]
        if self._bin_full():
            return [_result(req_id, ResultCode.BIN_FULL, f"{len(self.bin)} in bin")]
        tray, self.tray = self.tray, None
        self.retained_ids.add(dispense_id)
        return [_ok(req_id), *self._into_bin(BinEntry(dispense_id, tray.sachet_index, "retain"))]

    def _bin_full(self) -> bool:
        return len(self.bin) >= self.identity.bin_capacity

    def _bin_level(self) -> list[Message]:
        """SPEC 4.8: the bin's capacity and fill, only from a dispenser with BIN_LEVEL."""
        if not self.has(Feature.BIN_LEVEL):
            return []
        return [BinLevel(self.identity.bin_capacity, len(self.bin))]

    def _into_bin(self, entry: BinEntry) -> list[Message]:
        self.bin.append(entry)
        events: list[Message] = [DoseRetained(entry.dispense_id, entry.sachet_index)]
        events += self._bin_level()
        if self._bin_full():
            events += self.set_fault(FaultCode.BIN_FULL, True, f"{len(self.bin)} doses in bin")
        return events

    def _advance(self) -> list[Message]:
        """After a cut: the next sachet moves to the reader."""
        assert self.roll is not None
        self.position += 1
        events = self._read_sachet()
        if self.remaining <= self.identity.low_supply_threshold:
            events.append(LowSupply(self.roll.roll_id, self.remaining))
        return events

    def _read_sachet(self) -> list[Message]:
        """Read the sachet now at the reader (nothing when the roll is used up)."""
        assert self.roll is not None
        if self.remaining == 0:
            return self.set_fault(FaultCode.READER, False)
        sachet = self.roll.sachets[self.position]
        if not sachet.readable:
            return self.set_fault(FaultCode.READER, True, f"sachet {sachet.index} unreadable")
        events = self.set_fault(FaultCode.READER, False)
        events.append(
            SachetRead(self.roll.roll_id, sachet.index, sachet.intended_utc_s, sachet.patient_ref)
        )
        return events

    # --- physical side ------------------------------------------------------------------------

    def insert_roll(self, roll: SimRoll) -> list[Message]:
        """Load a roll (one already loaded is taken out first)."""
        events = self.remove_roll()
        self.roll = roll
        self.position = roll.next_index
        return events + self._announce_roll()

    def _announce_roll(self) -> list[Message]:
        """RollInserted for the loaded roll (at its position now) and the sachet at the reader."""
        roll = self.roll
        if roll is None:
            return []
        announce: list[Message] = [
            RollInserted(
                roll_id=roll.roll_id,
                patient_ref=roll.patient_ref,
                sachet_count=len(roll.sachets),
                next_index=self.position,
                first_dose_utc_s=roll.first_dose_utc_s,
                last_dose_utc_s=roll.last_dose_utc_s,
                expiry_utc_s=roll.expiry_utc_s,
            )
        ]
        return announce + self._read_sachet()

    def remove_roll(self) -> list[Message]:
        if self.roll is None:
            return []
        roll, self.roll = self.roll, None
        self.last_removed_roll = replace(roll, next_index=self.position)
        self.position = 0
        return [RollRemoved(roll.roll_id), *self.set_fault(FaultCode.READER, False)]

    def take_dose(self) -> list[Message]:
        """The patient lifts the dose out of the tray."""
        if self.tray is None:
            return []
        tray, self.tray = self.tray, None
        return [DoseTaken(tray.dispense_id, tray.sachet_index)]

    def press_button(self, button: ButtonId = ButtonId.TAKE) -> list[Message]:
        return [ButtonPressed(button)]

    def set_lid(self, open: bool) -> list[Message]:
        if open == self.lid_open:
            return []
        self.lid_open = open
        return [LidChanged(open)]

    def set_power(self, mains: bool, battery_pct: int | None = None) -> list[Message]:
        if battery_pct is not None and not 0 <= battery_pct <= 100:
            raise ValueError(f"battery_pct {battery_pct} outside 0..100")
        self.mains = mains
        if battery_pct is not None:
            self.battery_pct = battery_pct
        return [PowerChanged(self.mains, self.battery_pct)]

    def set_fault(self, fault: FaultCode, active: bool, detail: str = "") -> list[Message]:
        """Raise or clear a fault; only a change is reported."""
        if active == (fault in self.faults):
            return []
        if active:
            self.faults[fault] = detail
        else:
            del self.faults[fault]
        return [FaultChanged(fault, active, detail)]

    def empty_bin(self) -> list[Message]:
        """A nurse empties the locked bin."""
        had = bool(self.bin)
        self.bin.clear()
        level = self._bin_level() if had else []
        return level + self.set_fault(FaultCode.BIN_FULL, False, "bin emptied")

    def rtc_battery_died(self) -> None:
        """The RTC lost power: its time is unknown until the agent sets it."""
        self.rtc_valid = False
        self.rtc_offset_s = 0

    def reboot(self) -> None:
        """The firmware restarts: volatile state lost; the physical world and NVM stay. An armed
        watchdog's timer starts again at the next `check_agent_silence()` (boot)."""
        self.alert = AlertPattern.OFF
        self.agent_heard_s = None
        self.silence_alarm = False
        self.silence_alarm_s = None
        self.boot_count += 1


def _ok(req_id: int) -> CommandResult:
    return CommandResult(req_id, ResultCode.OK, "")


def _result(req_id: int, result: ResultCode, detail: str) -> CommandResult:
    return CommandResult(req_id, result, detail)
