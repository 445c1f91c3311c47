"""The engine is total (issue 7, "what to build" 2): a Hypothesis state machine feeds it every
protocol-valid dispenser message with any field values (u64 and u16 limits, zero, empty strings,
sachet indices past the count, unknown dispense ids, repeats and events out of order), command
outcomes right, wrong and missing, link changes, response-centre inputs valid and not, ticks,
wall-clock jumps, trust changes and restarts through the persisted JSON.

What must hold after every step:
- only a response-centre input may raise, and only EngineInputError (a refusal);
- every command the engine asks for can be encoded on the wire, every event is JSON;
- the shell's store would accept every store action (the ledger's contract: a slot is begun once,
  with a dispense id never used before, presented only while begun and open, and gets one
  outcome), since a refused write fails the daemon safe and restarts it: a crash loop if the
  engine asks for it again;
- at most one Dispense in flight per slot; no Dispense from a roll of another patient, while
  the unit has no binding, or while it is locked down after an unreadable state;
- the state round-trips through its JSON and loads as readable (a restart never locks down on a
  state the engine itself wrote); `next_deadline` is a number or None.
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from test_engine import ALL_FEATURES, OTHER, PATIENT, FakeDispenser, daily

from agent.clock import TimeTrust, VirtualClock
from agent.engine import roll_check
from agent.engine.engine import DoseEngine, EngineState
from agent.engine.state import restore
from agent.engine.types import (
    FROM_RESPONSE_CENTRE,
    ON_SITE,
    PAUSE_REASONS,
    AcknowledgeAlert,
    Action,
    BeginDispense,
    Binding,
    CommandOutcome,
    DiscardUnplanned,
    Emit,
    EndPause,
    EngineConfig,
    EngineInput,
    EngineInputError,
    FromDispenser,
    LinkDown,
    LinkUp,
    PanelPress,
    PauseWindow,
    RecordOutcome,
    RecordPresented,
    SendCommand,
    SetBinding,
    SetSchedule,
    Silence,
    StartPause,
    StateUnreadable,
    Tick,
)
from protocol.messages import (
    AlertPattern,
    BinLevel,
    ButtonId,
    ButtonPressed,
    Capabilities,
    CommandResult,
    Dispense,
    DispenserMessage,
    DosePresented,
    DoseRetained,
    DoseTaken,
    FaultChanged,
    FaultCode,
    LidChanged,
    LowSupply,
    Message,
    PowerChanged,
    ResultCode,
    RollInserted,
    RollRemoved,
    SachetRead,
    Status,
    TimeReport,
    encode_message,
)

U8, U16, U32, U64 = 0xFF, 0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF
OSLO = ZoneInfo("Europe/Oslo")
START = datetime(2026, 3, 2, 5, 0, tzinfo=UTC)
TIMES = ("08:00", "12:00", "16:00", "20:00")
CONFIG = EngineConfig()
CENTRE_INPUTS = (
    SetBinding,
    SetSchedule,
    StartPause,
    EndPause,
    AcknowledgeAlert,
    Silence,
    DiscardUnplanned,
)


def dose_instants(days: int) -> list[datetime]:
    """The schedule's dose times as UTC instants (zoneinfo, not the engine's schedule code)."""
    out: list[datetime] = []
    for day in range(days):
        local = START.astimezone(OSLO).date() + timedelta(days=day)
        for hhmm in TIMES:
            hour, minute = map(int, hhmm.split(":"))
            out.append(datetime(local.year, local.month, local.day, hour, minute, tzinfo=OSLO))
    return [moment.astimezone(UTC) for moment in out]


SACHET_TIMES = dose_instants(10)

# --- values: the limits of each wire type, and ordinary ones -----------------------------------

u8 = st.one_of(st.sampled_from([0, 1, 3, 20, 25, 100, U8]), st.integers(0, U8))
u16 = st.one_of(st.sampled_from([0, 1, 2, 27, 28, U16 - 1, U16]), st.integers(0, U16))
u32 = st.one_of(st.sampled_from([0, 1, 2, U32]), st.integers(0, U32))
texts = st.one_of(st.sampled_from(["", "R1", "R2", PATIENT, OTHER]), st.text(max_size=8))
patients = st.sampled_from([PATIENT, OTHER, "", PATIENT + " "])
FAR_INSTANTS = [
    datetime(1, 1, 2, tzinfo=UTC),
    datetime(1969, 12, 31, tzinfo=UTC),
    datetime(2999, 12, 31, tzinfo=UTC),
    datetime(3500, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 30, tzinfo=UTC),
]
EXTREME_TIMES = [0, 1, U64, 2**63, roll_check.WIRE_TIME_MAX_S, roll_check.WIRE_TIME_MAX_S + 1]


@dataclass
class Slot:
    """The ledger row of one slot, as the store keeps it (agent.store.ledger)."""

    slot_id: str
    dispense_id: int | None = None
    sachet_index: int | None = None
    due_utc: str | None = None
    presented_utc: str | None = None
    outcome: str | None = None


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = VirtualClock(START, trust=TimeTrust.SYNCHRONISED)
        self.engine = DoseEngine(CONFIG, EngineState.initial(), self.clock.now())
        self.dispenser = FakeDispenser(sachet_times=list(SACHET_TIMES))
        self.pending: list[SendCommand] = []  # sent, not answered (also from before a restart)
        self.in_flight: dict[str, int] = {}  # correlation -> dispense id, as the engine sees it
        self.ledger: dict[str, Slot] = {}
        self.used_ids: set[int] = set()
        self.alert_ids: list[str] = []
        self.pause_ids: list[str] = []
        self.schedule_version = 0
        self.told_unreadable = False

    # --- feeding and the checks of every step ---------------------------------------------------

    def feed(self, inp: EngineInput) -> list[Action]:
        try:
            actions = self.engine.step(inp, self.clock.now())
        except EngineInputError:
            assert isinstance(inp, CENTRE_INPUTS), f"{inp!r} raised EngineInputError"
            return []
        if isinstance(inp, LinkDown):
            self.in_flight.clear()  # the engine forgets what was in flight on a link drop
        if isinstance(inp, CommandOutcome):
            self.in_flight.pop(inp.correlation, None)
        self.check_store(actions, inp)
        self.check_commands(actions)
        return actions

    def check_store(self, actions: list[Action], inp: EngineInput) -> None:
        """The ledger would accept each store action (else: a store fault, exit, restart)."""
        now_iso = self.clock.now().utc.isoformat()
        for action in actions:
            match action:
                case BeginDispense(slot_id=slot_id, dispense_id=did):
                    assert slot_id not in self.ledger, f"{slot_id} begun again or after settling"
                    assert 0 <= did <= U32, f"dispense id {did}"
                    assert did not in self.used_ids, f"dispense id {did} used twice"
                    self.used_ids.add(did)
                    self.ledger[slot_id] = Slot(
                        slot_id, did, action.sachet_index, action.due_utc.isoformat()
                    )
                case RecordPresented(slot_id=slot_id):
                    slot = self.ledger.get(slot_id)
                    assert slot is not None, f"{slot_id} presented, never begun"
                    assert slot.dispense_id is not None, f"{slot_id} presented, never begun"
                    assert slot.outcome is None, f"{slot_id} presented after its outcome"
                    slot.presented_utc = slot.presented_utc or now_iso
                case RecordOutcome(slot_id=slot_id, outcome=outcome):
                    slot = self.ledger.setdefault(slot_id, Slot(slot_id))
                    assert slot.outcome is None, f"{slot_id}: second outcome {outcome}"
                    slot.outcome = outcome.value
                case Emit(event=event):
                    json.dumps(event.fields)  # the store writes it as JSON
                    if event.alert_id is not None:
                        self.alert_ids.append(event.alert_id)
                case _:
                    pass

    def check_commands(self, actions: list[Action]) -> None:
        begun = {s.dispense_id: s.slot_id for s in self.ledger.values()}
        for action in actions:
            if not isinstance(action, SendCommand):
                continue
            encode_message(action.command)  # every command fits the wire
            self.pending.append(action)
            command = action.command
            if not isinstance(command, Dispense):
                continue
            state = self.engine.state
            roll, binding = state.roll, state.binding
            assert not self.engine.locked_down, "dispense while locked down"
            assert binding is not None, "dispense without a binding"
            assert roll is not None, "dispense without a roll"
            assert not roll.unverified, "dispense from an unverified roll"
            assert roll.patient_ref == binding.patient_ref, "dispense from a wrong roll"
            slot = begun.get(command.dispense_id)
            assert slot is not None, f"dispense id {command.dispense_id} never begun"
            flying = [begun.get(d) for d in self.in_flight.values()]
            assert slot not in flying, f"a second Dispense in flight for {slot}"
            self.in_flight[action.correlation] = command.dispense_id

    @invariant()
    def state_round_trips_and_deadline_is_a_number(self) -> None:
        state = self.engine.state
        text = state.to_json()
        assert EngineState.from_json(text) == state
        deadline = self.engine.next_deadline(self.clock.now())
        assert deadline is None or math.isfinite(deadline)

    # --- set-up ---------------------------------------------------------------------------------

    @initialize()
    def install(self) -> None:
        """A unit as installed: schedule, binding, link, this patient's roll (the rules then
        take it anywhere: unbound, unlinked, another roll ...)."""
        self.schedule_version = 1
        self.feed(SetSchedule(daily(*TIMES), 1))
        self.feed(SetBinding(Binding(PATIENT)))
        caps = Capabilities(0, 1, "SIM", "SN1", "1.0", True, True, 0, ALL_FEATURES)
        self.feed(LinkUp(caps))
        self.roll_of_this_patient()

    # --- time -----------------------------------------------------------------------------------

    @rule(seconds=st.sampled_from([0.0, 0.5, 5, 30, 61, 300, 1800, 3600, 4 * 3600, 86400]))
    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.feed(Tick())

    @rule()
    def until_deadline(self) -> None:
        now = self.clock.now()
        deadline = self.engine.next_deadline(now)
        if deadline is not None:
            self.clock.advance(min(max(0.0, deadline - now.mono), 2 * 86400))
        self.feed(Tick())

    @rule(hours=st.integers(-30, 30), minutes=st.sampled_from([0, 1, 29, 59]))
    def wall_jump(self, hours: int, minutes: int) -> None:
        self.clock.jump_wall(timedelta(hours=hours, minutes=minutes))
        self.feed(Tick())

    @rule(trust=st.sampled_from(list(TimeTrust)))
    def trust(self, trust: TimeTrust) -> None:
        self.clock.set_trust(trust)
        self.feed(Tick())

    # --- the dispenser --------------------------------------------------------------------------

    def wire_times(self) -> st.SearchStrategy[int]:
        now = int(self.clock.now().utc.timestamp())
        near = st.integers(now - 3 * 86400, now + 30 * 86400)
        return st.one_of(
            st.sampled_from(EXTREME_TIMES),
            near,
            st.sampled_from([int(t.timestamp()) for t in SACHET_TIMES]),
        )

    def dispense_ids(self) -> st.SearchStrategy[int]:
        known = sorted(self.used_ids | set(self.in_flight.values()))
        return st.one_of(st.sampled_from(known), u32) if known else u32

    def dispenser_messages(self) -> dict[type, st.SearchStrategy[Message]]:
        """Every dispenser -> agent message type, any field values (checked to be complete)."""
        times, ids = self.wire_times(), self.dispense_ids()
        return {
            Capabilities: st.builds(
                Capabilities, u16, u8, texts, texts, texts, st.booleans(), st.booleans(), times, u16
            ),
            CommandResult: st.builds(CommandResult, u16, st.sampled_from(list(ResultCode)), texts),
            RollInserted: st.builds(RollInserted, texts, patients, u16, u16, times, times, times),
            RollRemoved: st.builds(RollRemoved, texts),
            SachetRead: st.builds(SachetRead, texts, u16, times, patients),
            DosePresented: st.builds(DosePresented, ids, u16),
            DoseTaken: st.builds(DoseTaken, ids, u16),
            DoseRetained: st.builds(DoseRetained, ids, u16),
            ButtonPressed: st.builds(ButtonPressed, st.sampled_from(list(ButtonId))),
            LidChanged: st.builds(LidChanged, st.booleans()),
            PowerChanged: st.builds(PowerChanged, st.booleans(), u8),
            FaultChanged: st.builds(
                FaultChanged, st.sampled_from(list(FaultCode)), st.booleans(), texts
            ),
            LowSupply: st.builds(LowSupply, texts, u16),
            Status: self.statuses(),
            TimeReport: st.builds(TimeReport, u16, st.booleans(), times),
            BinLevel: st.builds(BinLevel, u16, u16),
        }

    @rule(data=st.data())
    def dispenser_event(self, data: st.DataObject) -> None:
        message = data.draw(st.one_of(*self.dispenser_messages().values()))
        self.feed(FromDispenser(message))

    def statuses(self) -> st.SearchStrategy[Status]:
        return st.builds(
            Status,
            u16,
            st.sampled_from(["", "R1", "R2"]),
            u16,
            u16,
            st.booleans(),
            st.booleans(),
            st.booleans(),
            st.booleans(),
            u8,
            st.sampled_from(list(AlertPattern)),
            st.one_of(st.just(0), st.integers(0, U16)),
        )

    @rule()
    def roll_of_this_patient(self) -> None:
        """The roll the fake dispenser holds, inserted (the realistic path to a dispense)."""
        self.dispenser.loaded = True
        self.feed(FromDispenser(self.dispenser.roll_message()))
        sachet = self.dispenser.sachet()
        if sachet is not None:
            self.feed(FromDispenser(sachet))

    def answer(self, send: SendCommand) -> None:
        """The fake dispenser answers a command as firmware would (and what follows)."""
        reply, follow = self.dispenser.handle(send.command)
        self.feed(CommandOutcome(send.correlation, reply))
        for message in follow:
            self.feed(FromDispenser(message))

    @precondition(lambda self: bool(self.pending))
    @rule(first=st.booleans())
    def dispenser_answers(self, first: bool) -> None:
        self.answer(self.pending.pop(0 if first else -1))

    @rule(steps=st.integers(1, 16), takes=st.booleans())
    def ordinary_hours(self, steps: int, takes: bool) -> None:
        """Time runs from deadline to deadline, the dispenser answering everything as firmware
        would, the patient taking each dose or not (the path on which doses are given)."""
        for _ in range(steps):
            while self.pending:
                self.answer(self.pending.pop(0))
            if takes and self.dispenser.tray is not None:
                self.take_dose()
            now = self.clock.now()
            deadline = self.engine.next_deadline(now)
            wait = 3600.0 if deadline is None else deadline - now.mono
            self.clock.advance(min(max(0.0, wait), 6 * 3600))
            self.feed(Tick())

    @precondition(lambda self: self.dispenser.tray is not None)
    @rule()
    def take_dose(self) -> None:
        dispense_id = self.dispenser.tray
        assert dispense_id is not None
        self.dispenser.tray = None
        self.feed(FromDispenser(DoseTaken(dispense_id, self.dispenser.tray_index)))

    @rule()
    def panel_press(self) -> None:
        """The unit's own take now / help button: at any moment, in any state."""
        self.feed(PanelPress())

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data())
    def answer_anything(self, data: st.DataObject) -> None:
        send = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        reply = data.draw(
            st.one_of(
                st.builds(CommandResult, u16, st.sampled_from(list(ResultCode)), texts),
                self.statuses(),
                st.builds(TimeReport, u16, st.booleans(), self.wire_times()),
                st.none(),
            )
        )
        failure = data.draw(st.sampled_from(["timeout", "link_down", "reply_timeout", ""]))
        self.feed(CommandOutcome(send.correlation, reply, None if reply else failure))

    @rule(correlation=st.sampled_from(["", "dispense:1:1", "dispense:0:99", "get_status:9:9"]))
    def outcome_nobody_asked_for(self, correlation: str) -> None:
        self.feed(CommandOutcome(correlation, CommandResult(0, ResultCode.OK, "")))

    @rule(
        features=st.one_of(st.just(ALL_FEATURES), st.just(0), st.integers(0, U16)),
        rtc=st.sampled_from([0, 1, 1_772_400_000, U64]),
        rtc_valid=st.booleans(),
    )
    def link_up(self, features: int, rtc: int, rtc_valid: bool) -> None:
        caps = Capabilities(0, 1, "SIM", "", "", True, rtc_valid, rtc, features)
        self.feed(LinkUp(caps))

    @rule(reason=st.sampled_from(["eof", "", "timeout"]))
    def link_down(self, reason: str) -> None:
        self.feed(LinkDown(reason))

    # --- the response centre and the shell ------------------------------------------------------

    @rule(binding=st.sampled_from([PATIENT, OTHER, None]))
    def binding(self, binding: str | None) -> None:
        self.feed(SetBinding(None if binding is None else Binding(binding)))

    @rule(times=st.sampled_from([TIMES, ("08:00",), ("07:30", "19:30"), ()]), newer=st.booleans())
    def schedule(self, times: tuple[str, ...], newer: bool) -> None:
        version = self.schedule_version + 1 if newer else max(0, self.schedule_version - 1)
        if self.feed(SetSchedule(daily(*times), version)):
            self.schedule_version = version

    @rule(
        start_h=st.integers(-30, 24 * 20),
        length_h=st.one_of(st.none(), st.integers(-2, 24 * 40)),
        pause_id=st.sampled_from(["pz-1", "pz-2", "", "pz-1"]),
        reason=st.sampled_from([*PAUSE_REASONS, "holiday"]),
        take_along=st.booleans(),
    )
    def pause(
        self, start_h: int, length_h: int | None, pause_id: str, reason: str, take_along: bool
    ) -> None:
        start = self.clock.now().utc + timedelta(hours=start_h)
        end = None if length_h is None else start + timedelta(hours=length_h)
        self.feed(StartPause(PauseWindow(pause_id, start, end, reason, take_along)))

    @rule(
        start=st.sampled_from(FAR_INSTANTS),
        end=st.one_of(st.none(), st.sampled_from(FAR_INSTANTS)),
        pause_id=st.sampled_from(["pz-far", "pz-1"]),
    )
    def pause_far_away(self, start: datetime, end: datetime | None, pause_id: str) -> None:
        """What the command contract lets through: any aware instant datetime can hold (the
        engine refuses one from year 3000 on)."""
        self.feed(StartPause(PauseWindow(pause_id, start, end)))

    @rule(pause_id=st.sampled_from([None, "pz-1", "pz-2", "nope"]))
    def resume(self, pause_id: str | None) -> None:
        self.feed(EndPause(pause_id))

    @rule(data=st.data(), by=st.sampled_from(["nurse-1", ""]))
    def acknowledge(self, data: st.DataObject, by: str) -> None:
        ids = st.sampled_from(self.alert_ids) if self.alert_ids else st.just("alert-999999")
        alert_id = data.draw(st.one_of(ids, st.just("alert-000000")))
        self.feed(AcknowledgeAlert(alert_id, by))

    @rule(
        data=st.data(),
        roll_id=st.sampled_from(["R1", "R2", ""]),
        by=st.sampled_from(["tech-1", ""]),
        source=st.sampled_from([FROM_RESPONSE_CENTRE, ON_SITE]),
    )
    def discard_decision(self, data: st.DataObject, roll_id: str, by: str, source: str) -> None:
        """A person's plan-mismatch decision, fitting what is loaded or not."""
        at_reader = self.dispenser.next_index
        index = data.draw(st.one_of(st.none(), st.just(at_reader), u16))
        self.feed(DiscardUnplanned(roll_id, index, by, source))

    @rule(minutes=st.sampled_from([-5, 0, 1, 30, 120]))
    def silence(self, minutes: int) -> None:
        self.feed(Silence(timedelta(minutes=minutes)))

    @precondition(lambda self: not self.told_unreadable)  # rare: it stops all dispensing
    @rule(binding=st.sampled_from(["kept", "none", "unreadable"]))
    def state_unreadable(self, binding: str) -> None:
        self.told_unreadable = True
        self.feed(StateUnreadable("roll.expiry_utc_s: out of range", binding))

    @rule(reboot=st.booleans())
    def restart(self, reboot: bool) -> None:
        """The daemon restarts (or the Pi reboots: monotonic time starts again near zero): the
        engine comes back from its JSON and the ledger, as the daemon brings it back."""
        if reboot:
            now = self.clock.now()
            self.clock = VirtualClock(now.utc, trust=now.trust, start_mono=5.0)
        open_slots = [s for s in self.ledger.values() if s.dispense_id and s.outcome is None]
        restored = restore(self.engine.state.to_json(), open_slots)
        assert restored.unreadable is None, restored.unreadable
        self.engine = DoseEngine(CONFIG, restored.state, self.clock.now())
        self.in_flight.clear()  # replies meant for the previous process are not its own


TestEngineTotality = EngineMachine.TestCase
TestEngineTotality.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_an_open_ended_pause_starting_in_year_9999_never_raises() -> None:
    machine = EngineMachine()
    machine.install()
    # refused at the boundary (EngineInputError, which the command path answers as
    # invalid_command): the engine never holds a time it cannot add a reminder period to
    with pytest.raises(EngineInputError, match="not before year 3000"):
        machine.engine.step(
            StartPause(PauseWindow("pz-far", datetime(9999, 12, 30, tzinfo=UTC), None)),
            machine.clock.now(),
        )
    with pytest.raises(EngineInputError, match="not before year 3000"):
        machine.engine.step(
            StartPause(PauseWindow("pz-3000", datetime(3000, 1, 1, tzinfo=UTC), None)),
            machine.clock.now(),
        )
    machine.feed(StartPause(PauseWindow("pz-2999", datetime(2999, 12, 31, tzinfo=UTC), None)))
    machine.engine.next_deadline(machine.clock.now())


def test_every_dispenser_message_type_is_generated() -> None:
    """The state machine's message strategies cover the protocol's whole dispenser direction."""
    assert set(EngineMachine().dispenser_messages()) == set(typing.get_args(DispenserMessage))


# Found by this machine: schedule A (08:00), then one without doses (the 08:00 sachet is held as
# a plan mismatch), then A again settled the 08:00 slot a second time; the ledger refused it (a
# store fault, the command redelivered after every restart). Settled records are now kept.
def test_a_slot_settled_before_two_schedule_updates_is_not_settled_again() -> None:
    machine = EngineMachine()
    machine.install()
    machine.resume(None)  # refused: no pause
    machine.tick(4 * 3600)  # the 08:00 slot ends (the fake dispenser was never asked)
    machine.schedule(times=(), newer=True)
    machine.schedule(times=TIMES, newer=True)


# Found by this machine too: the same, but the slots of A were settled more than two days before
# the schedule without doses came (their records pruned by then). The sachet at the reader, for
# the first of them, is held from that moment; A again settled every slot of A from its time on
# a second time. Only slots that passed while the sachet was held are settled by a schedule update.
def test_a_slot_settled_days_before_a_plan_hold_is_not_settled_again() -> None:
    machine = EngineMachine()
    machine.install()
    machine.link_down(reason="eof")  # no dose is given: the sachet for 2 March stays at the reader
    machine.ordinary_hours(steps=16, takes=False)  # slots settle for two days and more
    machine.ordinary_hours(steps=16, takes=False)
    machine.schedule(times=(), newer=True)  # the 2 March 08:00 sachet: held, a plan mismatch
    machine.schedule(times=TIMES, newer=True)


def test_a_slot_settled_long_ago_is_not_settled_again_by_a_schedule_update_in_a_plan_hold() -> None:
    """Found by the machine above: an open pause settles the first days (skipped_paused); their
    records are pruned two days behind the horizon; an empty schedule then makes the roll's
    sachets unplanned (a plan hold back to the first sachet's time), and the schedule of before
    settled the first 08:00 slot a second time (a store fault in the daemon)."""
    machine = EngineMachine()
    machine.install()
    machine.link_down(reason="eof")
    machine.feed(FromDispenser(RollRemoved("")))
    machine.pause(start_h=0, length_h=None, pause_id="pz-1", reason="hospital", take_along=False)
    machine.ordinary_hours(steps=10, takes=False)
    assert machine.ledger["2026-03-02T08:00"].outcome == "skipped_paused"
    machine.roll_of_this_patient()
    machine.until_deadline()
    machine.schedule(times=(), newer=True)
    machine.roll_of_this_patient()
    machine.schedule(times=TIMES, newer=True)  # the ledger check raises on a second outcome
    assert machine.ledger["2026-03-02T08:00"].outcome == "skipped_paused"
