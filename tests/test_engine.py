"""DoseEngine end to end on a virtual clock with a small scripted dispenser (no I/O, no sleeps).

`Rig` is also used by test_lifecycle.py and test_pause.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import pytest

from agent.clock import TimeTrust, VirtualClock
from agent.engine.engine import DoseEngine, EngineState
from agent.engine.schedule import Schedule, ScheduleRule, parse_time
from agent.engine.types import (
    AcknowledgeAlert,
    Action,
    BeginDispense,
    Binding,
    CommandOutcome,
    Emit,
    EngineConfig,
    EngineEvent,
    EngineInput,
    EngineInputError,
    FromDispenser,
    LinkDown,
    LinkUp,
    Outcome,
    Priority,
    RecordOutcome,
    SendCommand,
    SetBinding,
    SetSchedule,
    Tick,
)
from protocol.messages import (
    AlertPattern,
    Capabilities,
    CommandResult,
    Discard,
    Dispense,
    DosePresented,
    DoseRetained,
    DoseTaken,
    FaultChanged,
    FaultCode,
    Feature,
    GetStatus,
    LidChanged,
    Message,
    PowerChanged,
    ResultCode,
    Retain,
    RollInserted,
    RollRemoved,
    SachetRead,
    SetAlert,
    SetLock,
    Status,
)

PATIENT = "patient-7f3a"
OTHER = "patient-0b21"
ALL_FEATURES = int(
    Feature.RETAIN_BIN
    | Feature.LOCK
    | Feature.TRAY_SENSOR
    | Feature.BATTERY
    | Feature.SACHET_READER
)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


def secs(value: datetime) -> int:
    return int(value.timestamp())


RIG_START = datetime(2026, 3, 2, 5, 0, tzinfo=UTC)


def daily(
    *times: str, start: date = date(2026, 1, 1), min_interval: timedelta | None = None
) -> Schedule:
    rule = ScheduleRule(start, tuple(parse_time(t) for t in times))
    return Schedule.build("Europe/Oslo", [rule], min_interval=min_interval)


@dataclass
class FakeDispenser:
    """Just enough firmware to answer the engine: one roll, a reader, a tray, a bin."""

    sachet_times: list[datetime] = field(default_factory=list)
    roll_id: str = "R1"
    roll_patient: str = PATIENT
    next_index: int = 0
    tray: int | None = None  # dispense id in the tray
    tray_index: int = 0  # sachet index of the dose in the tray
    executed: list[int] = field(default_factory=list)
    dispensed: list[int] = field(default_factory=list)  # sachet indexes presented
    discarded: list[int] = field(default_factory=list)
    forced: dict[type, ResultCode] = field(default_factory=dict)
    locked: bool = False
    alert: AlertPattern = AlertPattern.OFF
    loaded: bool = True
    faults: set[FaultCode] = field(default_factory=set)  # active faults (SPEC 4.3, 4.9)

    def sachet(self) -> SachetRead | None:
        if not self.loaded or self.next_index >= len(self.sachet_times):
            return None
        return SachetRead(
            self.roll_id,
            self.next_index,
            secs(self.sachet_times[self.next_index]),
            self.roll_patient,
        )

    def roll_message(self) -> RollInserted:
        last = self.sachet_times[-1] if self.sachet_times else utc(2030, 1, 1)
        return RollInserted(
            self.roll_id,
            self.roll_patient,
            len(self.sachet_times),
            self.next_index,
            secs(self.sachet_times[0]) if self.sachet_times else 0,
            secs(last),
            secs(last + timedelta(days=30)),
        )

    def status(self) -> Status:
        remaining = max(0, len(self.sachet_times) - self.next_index) if self.loaded else 0
        return Status(
            0,
            self.roll_id if self.loaded else "",
            remaining,
            self.next_index,
            self.tray is not None,
            False,
            self.locked,
            True,
            100,
            self.alert,
            sum(1 << fault for fault in self.faults),
        )

    def handle(self, command: Message) -> tuple[Message, list[Message]]:
        """Reply and the unsolicited messages that follow it."""
        forced = self.forced.get(type(command))
        if forced is not None:
            return CommandResult(0, forced, "forced"), []
        match command:
            case GetStatus():
                return self.status(), []
            case SetAlert(pattern=pattern):
                self.alert = pattern
            case SetLock(locked=locked):
                self.locked = locked
            case Dispense(dispense_id=did, sachet_index=index):
                if did in self.executed:
                    return CommandResult(0, ResultCode.ALREADY_DONE, ""), []
                if self.faults & {FaultCode.JAM, FaultCode.CUTTER}:
                    return CommandResult(0, ResultCode.JAMMED, ""), []
                if self.tray is not None:
                    return CommandResult(0, ResultCode.TRAY_OCCUPIED, ""), []
                if self.locked:
                    return CommandResult(0, ResultCode.LOCKED, ""), []
                if index != self.next_index:
                    return CommandResult(0, ResultCode.WRONG_SACHET, ""), []
                if FaultCode.READER in self.faults:  # the sachet at the reader cannot be read
                    return CommandResult(0, ResultCode.REJECTED, ""), []
                self.executed.append(did)
                self.dispensed.append(index)
                self.tray, self.tray_index = did, index
                self.next_index += 1
                follow: list[Message] = [DosePresented(did, index)]
                nxt = self.sachet()
                if nxt is not None:
                    follow.append(nxt)
                return CommandResult(0, ResultCode.OK, ""), follow
            case Discard(dispense_id=did, sachet_index=index):
                if index != self.next_index:
                    return CommandResult(0, ResultCode.WRONG_SACHET, ""), []
                self.executed.append(did)
                self.discarded.append(index)
                self.next_index += 1
                follow = [DoseRetained(did, index)]
                nxt = self.sachet()
                if nxt is not None:
                    follow.append(nxt)
                return CommandResult(0, ResultCode.OK, ""), follow
            case Retain(dispense_id=did):
                if self.tray != did:
                    return CommandResult(0, ResultCode.NOTHING_PRESENTED, ""), []
                self.tray = None
                return CommandResult(0, ResultCode.OK, ""), [DoseRetained(did, self.tray_index)]
        return CommandResult(0, ResultCode.OK, ""), []


class Rig:
    """Engine + virtual clock + fake dispenser; records every action."""

    def __init__(
        self,
        schedule: Schedule | None = None,
        *,
        start: datetime = RIG_START,
        config: EngineConfig | None = None,
        features: int = ALL_FEATURES,
        sachet_times: list[datetime] | None = None,
        trust: TimeTrust = TimeTrust.SYNCHRONISED,
        state: EngineState | None = None,
    ) -> None:
        self.clock = VirtualClock(start, trust=trust)
        self.config = config or EngineConfig()
        self.engine = DoseEngine(self.config, state or EngineState.initial(), self.clock.now())
        self.caps = Capabilities(0, 1, "SIM", "SN1", "1.0", True, True, 0, features)
        self.dispenser = FakeDispenser(sachet_times=list(sachet_times or []))
        self.actions: list[Action] = []
        self.outbox: list[SendCommand] = []
        self.auto = True  # answer commands at once
        self.schedule = schedule

    # -- feeding ------------------------------------------------------------------------------

    def feed(self, inp: EngineInput) -> list[Action]:
        acts = self.engine.step(inp, self.clock.now())
        self.actions.extend(acts)
        self.outbox.extend(a for a in acts if isinstance(a, SendCommand))
        if self.auto:
            self.pump()
        return acts

    def msg(self, message: Message) -> list[Action]:
        return self.feed(FromDispenser(message))

    def pump(self) -> None:
        while self.auto and self.outbox:
            send = self.outbox.pop(0)
            reply, follow = self.dispenser.handle(send.command)
            self.feed(CommandOutcome(send.correlation, reply))
            for message in follow:
                self.msg(message)

    def install(self, *, roll: bool = True, link: bool = True) -> None:
        self.feed(SetBinding(Binding(PATIENT)))
        if self.schedule is not None:
            self.feed(SetSchedule(self.schedule, 1))
        if link:
            self.feed(LinkUp(self.caps))
        if roll:
            self.insert_roll()

    def insert_roll(self) -> None:
        self.dispenser.loaded = True
        self.msg(self.dispenser.roll_message())
        sachet = self.dispenser.sachet()
        if sachet is not None:
            self.msg(sachet)

    def remove_roll(self) -> None:
        self.dispenser.loaded = False
        self.msg(RollRemoved(self.dispenser.roll_id))

    def take(self) -> None:
        did = self.dispenser.tray
        assert did is not None, "nothing in the tray"
        self.dispenser.tray = None
        self.msg(DoseTaken(did, self.dispenser.tray_index))

    # -- time ---------------------------------------------------------------------------------

    def run_until(self, target: datetime) -> None:
        """Advance to `target` (wall), ticking the engine at every deadline on the way."""
        while True:
            now = self.clock.now()
            remaining = (target - now.utc).total_seconds()
            deadline = self.engine.next_deadline(now)
            if deadline is not None and deadline - now.mono <= remaining:
                self.clock.advance(max(0.0, deadline - now.mono))
                self.feed(Tick())
                if (
                    deadline - now.mono <= 0
                    and self.engine.next_deadline(self.clock.now()) == deadline
                ):
                    raise AssertionError("engine deadline did not move after a tick")
                continue
            self.clock.advance(max(0.0, remaining))
            self.feed(Tick())
            return

    def run_for(self, delta: timedelta) -> None:
        self.run_until(self.clock.now().utc + delta)

    # -- inspection ---------------------------------------------------------------------------

    def events(self, kind: str | None = None) -> list[EngineEvent]:
        return [
            a.event for a in self.actions if isinstance(a, Emit) and kind in (None, a.event.kind)
        ]

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events()]

    def outcomes(self) -> list[RecordOutcome]:
        return [a for a in self.actions if isinstance(a, RecordOutcome)]

    def outcome_of(self, slot_id: str) -> RecordOutcome:
        found = [o for o in self.outcomes() if o.slot_id == slot_id]
        assert len(found) == 1, f"{slot_id}: {found}"
        return found[0]

    def begins(self) -> list[BeginDispense]:
        return [a for a in self.actions if isinstance(a, BeginDispense)]

    def commands(self, kind: type) -> list[Message]:
        return [
            a.command
            for a in self.actions
            if isinstance(a, SendCommand) and isinstance(a.command, kind)
        ]

    def patterns_sent(self) -> list[AlertPattern]:
        return [c.pattern for c in self.commands(SetAlert) if isinstance(c, SetAlert)]

    def sounding(self) -> AlertPattern:
        """The pattern the dispenser shows now."""
        return self.dispenser.alert

    def assert_one_outcome_per_slot(self) -> None:
        recorded = [o.slot_id for o in self.outcomes()]
        published = [e.fields["slot_id"] for e in self.events("slot_outcome")]
        assert len(recorded) == len(set(recorded)), recorded
        assert recorded == published


def morning_rig(**kwargs: object) -> Rig:
    """08:00 daily; roll with sachets for 08:00 on 2026-03-02..08."""
    times = [utc(2026, 3, d, 7, 0) for d in range(2, 9)]  # 08:00 CET
    return Rig(daily("08:00"), sachet_times=times, **kwargs)  # type: ignore[arg-type]


# --- the basics ------------------------------------------------------------------------------


def test_dose_is_dispensed_at_due_time_and_taken() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(utc(2026, 3, 2, 6, 59))
    assert rig.begins() == []
    rig.run_until(utc(2026, 3, 2, 7, 0))
    assert [b.slot_id for b in rig.begins()] == ["2026-03-02T08:00"]
    assert rig.dispenser.dispensed == [0]
    assert rig.commands(SetAlert)[-1] == SetAlert(0, AlertPattern.REMINDER)
    rig.run_for(timedelta(minutes=5))
    rig.take()
    outcome = rig.outcome_of("2026-03-02T08:00")
    assert outcome.outcome is Outcome.TAKEN
    event = rig.events("slot_outcome")[0]
    assert event.fields["outcome"] == "taken"
    assert event.fields["due_local"] == "2026-03-02T08:00:00+01:00"
    assert event.fields["taken_at"] == "2026-03-02T07:05:00Z"
    assert event.fields["sachet_index"] == 0
    assert event.fields["roll_id"] == "R1"
    assert rig.dispenser.alert is AlertPattern.OFF


def test_begin_dispense_comes_before_the_dispense_command_in_one_step() -> None:
    rig = morning_rig()
    rig.install()
    rig.auto = False
    rig.clock.advance((utc(2026, 3, 2, 7, 0) - rig.clock.now().utc).total_seconds())
    acts = rig.engine.step(Tick(), rig.clock.now())
    begin = next(i for i, a in enumerate(acts) if isinstance(a, BeginDispense))
    send = next(
        i
        for i, a in enumerate(acts)
        if isinstance(a, SendCommand) and isinstance(a.command, Dispense)
    )
    assert begin < send
    assert isinstance(acts[send], SendCommand)
    dispense = acts[send].command  # type: ignore[union-attr]
    assert isinstance(dispense, Dispense)
    assert dispense.dispense_id == acts[begin].dispense_id  # type: ignore[union-attr]


def test_tick_between_deadlines_changes_nothing() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(utc(2026, 3, 2, 7, 3))
    before = rig.engine.state.to_json()
    deadline = rig.engine.next_deadline(rig.clock.now())
    assert deadline is not None
    rig.clock.advance((deadline - rig.clock.now().mono) / 2)
    assert rig.engine.step(Tick(), rig.clock.now()) == []
    assert rig.engine.state.to_json() == before


def test_every_slot_gets_exactly_one_outcome_over_a_week() -> None:
    rig = morning_rig()
    rig.install()
    for day in range(2, 8):
        rig.run_until(utc(2026, 3, day, 7, 10))
        if day % 2 == 0:
            rig.take()
        rig.run_until(utc(2026, 3, day, 12, 0))
    rig.run_until(utc(2026, 3, 8, 0, 0))
    rig.assert_one_outcome_per_slot()
    outcomes = {o.slot_id: o.outcome for o in rig.outcomes()}
    assert len(outcomes) == 6
    assert outcomes["2026-03-02T08:00"] is Outcome.TAKEN
    assert outcomes["2026-03-03T08:00"] is Outcome.MISSED
    assert len(rig.begins()) == 6


# --- untrusted clock ---------------------------------------------------------------------------


def test_untrusted_clock_does_not_dispense_and_raises_one_alarm() -> None:
    rig = morning_rig(trust=TimeTrust.UNTRUSTED)
    rig.install()
    rig.run_until(utc(2026, 3, 2, 9, 0))
    assert rig.begins() == []
    alarms = rig.events("clock_untrusted")
    assert len(alarms) == 1
    assert alarms[0].vkp_code == "3.4"
    rig.clock.set_trust(TimeTrust.SYNCHRONISED)
    rig.feed(Tick())
    assert rig.begins() == []
    assert rig.outcome_of("2026-03-02T08:00").outcome is Outcome.REFUSED
    assert rig.outcome_of("2026-03-02T08:00").reason == "clock_untrusted"
    assert len(rig.events("clock_untrusted_cleared")) == 1


def test_untrusted_clock_then_trusted_within_deadline_dispenses() -> None:
    rig = morning_rig(trust=TimeTrust.UNTRUSTED)
    rig.install()
    rig.run_until(utc(2026, 3, 2, 7, 20))
    assert rig.begins() == []
    rig.clock.set_trust(TimeTrust.DISPENSER_RTC)
    rig.feed(Tick())
    assert [b.slot_id for b in rig.begins()] == ["2026-03-02T08:00"]


# --- wall-clock jumps and DST ----------------------------------------------------------------


@pytest.mark.parametrize("jump", [timedelta(hours=1), timedelta(hours=-1)])
def test_wall_jump_during_grace_missed_exactly_grace_after_presentation(jump: timedelta) -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(utc(2026, 3, 2, 7, 0))
    presented_mono = rig.clock.now().mono
    rig.run_for(timedelta(minutes=20))
    rig.clock.jump_wall(jump)
    rig.feed(Tick())
    assert [e.fields["delta_s"] for e in rig.events("clock_jumped")] == [jump.total_seconds()]
    while not rig.outcomes():
        deadline = rig.engine.next_deadline(rig.clock.now())
        assert deadline is not None
        rig.clock.advance(deadline - rig.clock.now().mono)
        rig.feed(Tick())
    missed_at = rig.clock.now().mono
    assert missed_at - presented_mono == rig.config.grace.total_seconds()
    assert rig.outcome_of("2026-03-02T08:00").outcome is Outcome.MISSED
    rig.run_for(timedelta(hours=3))
    assert len(rig.begins()) == 1  # no second dispense for the slot after the jump


def test_backward_jump_after_dose_taken_never_dispenses_the_slot_again() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(utc(2026, 3, 2, 7, 1))
    rig.take()
    rig.clock.jump_wall(timedelta(hours=-2))
    rig.run_for(timedelta(hours=4))
    assert len(rig.begins()) == 1
    rig.assert_one_outcome_per_slot()


def test_forward_jump_past_due_time_makes_the_slot_due_at_once() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(utc(2026, 3, 2, 6, 30))
    rig.clock.jump_wall(timedelta(hours=1))  # wall now 07:30 UTC, due 07:00 passed
    rig.feed(Tick())
    assert [b.slot_id for b in rig.begins()] == ["2026-03-02T08:00"]


@pytest.mark.parametrize(
    ("day", "due"),
    [
        (date(2026, 3, 29), utc(2026, 3, 29, 1, 30)),  # spring forward: 03:30 CEST
        (date(2027, 3, 28), utc(2027, 3, 28, 1, 30)),
        (date(2026, 10, 25), utc(2026, 10, 25, 0, 30)),  # fall back: first 02:30 (CEST)
        (date(2027, 10, 31), utc(2027, 10, 31, 0, 30)),
    ],
)
def test_dst_days_a_0230_dose_is_given_exactly_once_at_the_documented_instant(
    day: date, due: datetime
) -> None:
    times = [due - timedelta(days=1), due, due + timedelta(days=1)]
    rig = Rig(
        daily("02:30", start=day - timedelta(days=2)),
        start=due - timedelta(hours=30),
        sachet_times=times,
    )
    rig.install()
    rig.run_until(due - timedelta(seconds=1))
    assert len(rig.begins()) == 1  # the day before (missed, retained)
    rig.run_until(due)
    assert len(rig.begins()) == 2
    assert rig.begins()[1].slot_id == f"{day.isoformat()}T02:30"
    assert rig.begins()[1].due_utc == due
    rig.run_for(timedelta(minutes=2))
    rig.take()
    rig.run_until(due + timedelta(hours=3))  # past the repeated hour
    assert len(rig.begins()) == 2
    rig.assert_one_outcome_per_slot()


# --- link and technical alarms -----------------------------------------------------------------


def test_link_down_raises_no_contact_after_the_delay_and_clears_on_link_up() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(utc(2026, 3, 2, 5, 10))
    rig.feed(LinkDown("timeout"))
    rig.run_for(rig.config.no_contact_after - timedelta(seconds=1))
    assert rig.events("no_contact") == []
    rig.run_for(timedelta(seconds=1))
    alarms = rig.events("no_contact")
    assert len(alarms) == 1
    assert alarms[0].vkp_code == "3.10"
    rig.run_for(timedelta(minutes=30))
    assert len(rig.events("no_contact")) == 1  # not repeated
    rig.feed(LinkUp(rig.caps))
    assert len(rig.events("no_contact_cleared")) == 1


def test_slot_due_while_link_down_is_missed_with_reason_after_deadline() -> None:
    rig = morning_rig()
    rig.install()
    rig.feed(LinkDown("unplugged"))
    rig.run_until(utc(2026, 3, 2, 8, 0))
    outcome = rig.outcome_of("2026-03-02T08:00")
    assert outcome.outcome is Outcome.MISSED
    assert outcome.reason == "not_dispensed:no_link"
    assert rig.begins() == []


def test_a_dispenser_never_heard_from_is_not_reported_empty() -> None:
    """Before the first Status nothing is known of the roll: a dose held for want of a link is
    held LOW (no link), not the HIGH "dispenser empty" (VKP 3.7) a nurse would drive out for,
    and its missed outcome is the plain missed-dose alarm (VKP 3.3)."""
    rig = morning_rig()
    rig.install(roll=False, link=False)
    rig.run_until(utc(2026, 3, 2, 7, 5))
    [held] = rig.events("dose_held")
    assert (held.priority, held.vkp_code) == (Priority.LOW, None)
    assert held.fields == {"slot_id": "2026-03-02T08:00", "reason": "no_link"}
    rig.run_until(utc(2026, 3, 2, 8, 5))
    [missed] = rig.events("slot_outcome")
    assert (missed.priority, missed.vkp_code) == (Priority.HIGH, "3.3")
    assert missed.fields["reason"] == "not_dispensed:no_link"


def test_slot_held_by_link_down_is_dispensed_when_link_returns_in_time() -> None:
    rig = morning_rig()
    rig.install()
    rig.feed(LinkDown("unplugged"))
    rig.run_until(utc(2026, 3, 2, 7, 30))
    assert [e.fields["reason"] for e in rig.events("dose_held")] == ["no_link"]
    rig.feed(LinkUp(rig.caps))
    assert [b.slot_id for b in rig.begins()] == ["2026-03-02T08:00"]


@pytest.mark.parametrize(
    ("message", "kind", "vkp"),
    [
        (PowerChanged(False, 80), "mains_lost", "3.9"),
        (PowerChanged(True, 15), "battery_low", "3.27"),
        (PowerChanged(False, 2), "battery_empty", "3.17"),
        (FaultChanged(FaultCode.JAM, True, ""), "fault_jam", "3.14"),
        (FaultChanged(FaultCode.READER, True, ""), "fault_reader", "3.16"),
        (FaultChanged(FaultCode.BIN_FULL, True, ""), "fault_bin_full", "3.13"),
        (FaultChanged(FaultCode.TAMPER, True, ""), "fault_tamper", "3.12"),
        (FaultChanged(FaultCode.CUTTER, True, ""), "fault_cutter", "3.4"),
        (FaultChanged(FaultCode.SENSOR, True, ""), "fault_sensor", "3.4"),
    ],
)
def test_dispenser_conditions_raise_once_with_their_vkp_code(
    message: Message, kind: str, vkp: str
) -> None:
    rig = morning_rig()
    rig.install()
    rig.msg(message)
    rig.msg(message)
    raised = rig.events(kind)
    assert len(raised) == 1
    assert raised[0].vkp_code == vkp


def test_mains_restored_and_fault_cleared_send_cleared_events() -> None:
    rig = morning_rig()
    rig.install()
    rig.msg(PowerChanged(False, 90))
    rig.msg(PowerChanged(True, 90))
    rig.msg(FaultChanged(FaultCode.JAM, True, "cutter"))
    rig.msg(FaultChanged(FaultCode.JAM, False, ""))
    assert rig.kinds().count("mains_lost_cleared") == 1
    assert rig.kinds().count("fault_jam_cleared") == 1


def test_jam_holds_the_dose_and_it_is_given_when_the_jam_clears() -> None:
    rig = morning_rig()
    rig.install()
    rig.msg(FaultChanged(FaultCode.JAM, True, ""))
    rig.run_until(utc(2026, 3, 2, 7, 15))
    assert rig.begins() == []
    rig.msg(FaultChanged(FaultCode.JAM, False, ""))
    assert len(rig.begins()) == 1
    assert rig.dispenser.dispensed == [0]


def test_lid_open_is_rate_limited_and_a_lasting_open_is_raised_later() -> None:
    rig = morning_rig()
    rig.install()
    for _ in range(5):
        rig.msg(LidChanged(True))
        rig.run_for(timedelta(seconds=30))
        rig.msg(LidChanged(False))
        rig.run_for(timedelta(seconds=30))
    assert rig.kinds().count("lid_open") == 1
    rig.msg(LidChanged(True))  # stays open
    rig.run_for(rig.config.chatty_min_interval)
    assert rig.kinds().count("lid_open") == 2
    assert rig.events("lid_open")[0].vkp_code == "3.11"


def test_no_schedule_alarm_when_bound_without_schedule() -> None:
    rig = Rig(None)
    rig.feed(SetBinding(Binding(PATIENT)))
    assert [e.vkp_code for e in rig.events("no_schedule")] == ["3.8"]
    rig.feed(SetSchedule(daily("08:00"), 1))
    assert len(rig.events("no_schedule_cleared")) == 1


# --- restart -----------------------------------------------------------------------------------


def test_restart_with_open_slot_never_dispenses_it_again_and_gives_fresh_grace() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(utc(2026, 3, 2, 7, 0))
    assert len(rig.begins()) == 1
    state = EngineState.from_json(rig.engine.state.to_json())
    assert [o.slot_id for o in state.open_slots] == ["2026-03-02T08:00"]
    # the agent restarts 10 minutes later (new monotonic epoch)
    restart_at = utc(2026, 3, 2, 7, 10)
    rig2 = Rig(rig.schedule, start=restart_at, state=state)
    rig2.dispenser = rig.dispenser
    rig2.feed(LinkUp(rig2.caps))
    start_mono = rig2.clock.now().mono
    rig2.run_for(rig2.config.grace - timedelta(seconds=1))
    assert rig2.outcomes() == []
    rig2.run_for(timedelta(seconds=1))
    assert rig2.clock.now().mono - start_mono == rig2.config.grace.total_seconds()
    assert rig2.outcome_of("2026-03-02T08:00").outcome is Outcome.MISSED
    assert rig2.begins() == []
    assert rig2.commands(Dispense) == []
    assert rig2.commands(Retain)  # the dose left in the tray goes into the bin


def test_state_round_trips_through_json() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(utc(2026, 3, 2, 7, 5))
    state = rig.engine.state
    again = EngineState.from_json(state.to_json())
    assert again.to_json() == state.to_json()
    assert again.schedule == state.schedule
    assert again.roll == state.roll


def test_already_done_means_no_second_sachet_for_the_slot() -> None:
    rig = morning_rig()
    rig.install()
    rig.dispenser.forced[Dispense] = ResultCode.ALREADY_DONE
    rig.dispenser.tray = 999  # some dose in the tray; not one this unit cut
    rig.run_until(utc(2026, 3, 2, 7, 0))
    assert len(rig.begins()) == 1
    assert len(rig.commands(Dispense)) == 1
    assert rig.dispenser.dispensed == []  # nothing new cut
    assert (
        "dose_presented" not in rig.kinds()
    )  # never counted as given (tests/test_engine_restart.py)
    rig.run_for(timedelta(hours=2))
    assert len(rig.commands(Dispense)) == 1
    rig.assert_one_outcome_per_slot()


# --- alerts and acknowledgement ----------------------------------------------------------------


def test_missed_dose_latches_until_acknowledged() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(utc(2026, 3, 2, 9, 0))
    event = rig.events("slot_outcome")[0]
    assert event.alert_id is not None
    assert event.vkp_code == "3.3"
    assert event.alert_id in str(rig.engine.status().active_alerts)
    rig.feed(AcknowledgeAlert(event.alert_id, by="operator-12"))
    assert rig.events("alert_acknowledged")[0].fields["by"] == "operator-12"
    assert event.alert_id not in str(rig.engine.status().active_alerts)
    with pytest.raises(EngineInputError):
        rig.feed(AcknowledgeAlert("alert-does-not-exist", by="operator-12"))


def test_wrong_roll_acknowledged_is_not_resolved_until_removed() -> None:
    rig = morning_rig()
    rig.dispenser.roll_patient = OTHER
    rig.install()
    alert = rig.events("wrong_roll")[0]
    assert alert.alert_id is not None
    rig.feed(AcknowledgeAlert(alert.alert_id, by="nurse-3"))
    assert alert.alert_id in str(rig.engine.status().active_alerts)  # acknowledged != resolved
    rig.remove_roll()
    assert alert.alert_id not in str(rig.engine.status().active_alerts)
    assert rig.commands(SetLock)[-1] == SetLock(0, False)


# --- a roll announced again after a (re)connect (SPEC 4.1) ------------------------------------


def reconnect(rig: Rig) -> None:
    """Link blip: LinkDown, LinkUp, then what the dispenser sends after Capabilities."""
    rig.feed(LinkDown("blip"))
    rig.feed(LinkUp(rig.caps))
    rig.insert_roll()  # RollInserted (next_index = the sachet at the reader) + SachetRead


def test_a_known_roll_announced_again_is_checked_quietly_and_still_dispensed() -> None:
    rig = morning_rig()
    rig.install()
    assert len(rig.events("roll_inserted")) == 1
    reconnect(rig)
    reconnect(rig)
    assert len(rig.events("roll_inserted")) == 1  # no news for the response centre
    rig.run_until(utc(2026, 3, 2, 7, 1))
    assert [b.slot_id for b in rig.begins()] == ["2026-03-02T08:00"]
    rig.take()
    reconnect(rig)  # the reader moved on: next_index 1 is consistent with what we know
    assert len(rig.events("roll_inserted")) == 1
    rig.run_until(utc(2026, 3, 3, 7, 1))
    assert rig.dispenser.dispensed == [0, 1]


def test_a_known_roll_announced_after_an_agent_restart_is_quiet() -> None:
    rig = morning_rig()
    rig.install()
    restarted = DoseEngine(rig.config, rig.engine.state, rig.clock.now())
    rig.engine = restarted
    rig.feed(LinkUp(rig.caps))
    rig.insert_roll()
    assert len(rig.events("roll_inserted")) == 1
    rig.run_until(utc(2026, 3, 2, 7, 1))
    assert rig.dispenser.dispensed == [0]  # learned the sachet at the reader again


def test_another_roll_or_a_reader_further_back_is_announced_as_news() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(utc(2026, 3, 2, 7, 1))
    rig.take()  # the engine now expects sachet 1 at the reader
    rig.dispenser.next_index = 0  # announced further back: not the roll as we know it
    rig.insert_roll()
    assert len(rig.events("roll_inserted")) == 2
    rig.dispenser.roll_id = "R2"
    reconnect(rig)
    assert [e.fields["roll_id"] for e in rig.events("roll_inserted")] == ["R1", "R1", "R2"]


def test_a_foreign_roll_announced_again_stays_refused_with_one_latch_and_the_lock() -> None:
    rig = morning_rig()
    rig.dispenser.roll_patient = OTHER
    rig.install()
    assert len(rig.events("wrong_roll")) == 1
    assert rig.dispenser.locked
    for _ in range(3):
        reconnect(rig)
    restarted = DoseEngine(rig.config, rig.engine.state, rig.clock.now())
    rig.engine = restarted
    rig.feed(LinkUp(rig.caps))
    rig.insert_roll()
    assert len(rig.events("wrong_roll")) == 1  # latched once, not again per reconnect
    assert rig.events("roll_inserted") == []
    assert rig.dispenser.locked
    assert rig.commands(SetLock) == [SetLock(0, True)]
    rig.run_until(utc(2026, 3, 2, 9, 0))
    assert rig.begins() == []
    assert rig.outcome_of("2026-03-02T08:00").reason == "foreign_roll"


# --- every timed decision has a deadline ------------------------------------------------------


def test_a_roll_whose_period_passes_while_a_slot_is_held_is_a_deadline() -> None:
    # the roll's last sachet is the 08:00 dose; it counts as passed 30 min (tolerance) later
    rig = Rig(daily("08:00"), sachet_times=[utc(2026, 3, 2, 7, 0)])
    rig.install()
    rig.msg(FaultChanged(FaultCode.JAM, True, ""))
    rig.run_until(utc(2026, 3, 2, 7, 10))
    assert [e.fields["reason"] for e in rig.events("dose_held")] == ["fault_jam"]
    now = rig.clock.now()
    passes = utc(2026, 3, 2, 7, 0) + rig.config.sachet_time_tolerance
    expected = now.mono + (passes - now.utc).total_seconds() + 1e-6
    deadline = rig.engine.next_deadline(now)
    assert deadline is not None
    assert deadline == pytest.approx(expected, abs=1e-5)
    rig.clock.advance(deadline - now.mono)
    acts = rig.feed(Tick())
    held = [a.event.fields["reason"] for a in acts if isinstance(a, Emit)]
    assert held == ["roll_period_passed"]
    next_deadline = rig.engine.next_deadline(rig.clock.now())
    assert next_deadline is not None
    assert next_deadline > rig.clock.now().mono


def test_a_roll_expiring_while_a_slot_is_held_is_a_deadline() -> None:
    rig = morning_rig()
    rig.install(roll=False)
    expiry = utc(2026, 3, 2, 7, 20)
    rig.msg(
        RollInserted(
            "R1", PATIENT, 7, 0, secs(utc(2026, 3, 2, 7)), secs(utc(2026, 3, 8, 7)), secs(expiry)
        )
    )
    rig.msg(FaultChanged(FaultCode.JAM, True, ""))
    rig.run_until(utc(2026, 3, 2, 7, 5))
    now = rig.clock.now()
    deadline = rig.engine.next_deadline(now)
    assert deadline == pytest.approx(now.mono + (expiry - now.utc).total_seconds(), abs=1e-5)


# --- the pharmacy's plan and the schedule disagree (VKP 3.22): tests/test_plan_mismatch.py --------


def test_a_settled_slots_sachet_is_discarded_at_info_without_plan_mismatch() -> None:
    rig = morning_rig()
    rig.install()
    rig.feed(LinkDown("unplugged"))
    rig.run_until(utc(2026, 3, 2, 9, 0))  # 08:00 missed undispensed: its sachet stays
    assert rig.outcome_of("2026-03-02T08:00").outcome is Outcome.MISSED
    rig.feed(LinkUp(rig.caps))
    assert rig.dispenser.discarded == [0]
    assert [e.fields["reason"] for e in rig.events("sachet_discarded")] == ["settled_slot"]
    assert rig.events("plan_mismatch") == []


def test_a_binding_set_or_cleared_is_reported() -> None:
    rig = morning_rig()
    rig.feed(SetBinding(Binding(PATIENT)))
    rig.feed(SetBinding(None))
    assert [(e.priority, e.fields) for e in rig.events("binding_changed")] == [
        (Priority.INFO, {"bound": True}),
        (Priority.INFO, {"bound": False}),
    ]
