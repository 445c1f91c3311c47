"""The simulation loop: the harness plays the agent's shell around the dose engine.

One run = one seed. The harness owns a `VirtualClock`, a `DispenserModel` (called in-process, no
pty), a seeded patient, nurse and fault plan, and an agenda of what they do when. It advances the
virtual clock to the earlier of the engine's next deadline and the next agenda item, feeds the
engine a `Tick` or what the dispenser emitted, carries out the engine's actions (commands go to the
model, whose reply comes back as a `CommandOutcome` and whose other messages come back as
`FromDispenser`), publishes events with a sequence number like the outbox, and checks the
invariants (`agent.simulation.invariants`) after every engine step. Beside them the independent
judge (`agent.simulation.judge`, which does not import the engine) is shown what the dispenser
physically did, the physical state, the pauses and the published events, all in true time.

Three times are kept apart: *true* time (what the patient's watch says; seconds since the
start), the agent's wall clock (`Now.utc`, which faults may step or distrust) and the agent's
monotonic clock (`Now.mono`, which restarts from a small number when the Pi reboots).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from typing import Any, Protocol, cast
from zoneinfo import ZoneInfo

from agent.clock import DEFAULT_ZONE, Now, TimeTrust, VirtualClock
from agent.engine.schedule import Schedule, ScheduleError, ScheduleRule, parse_time
from agent.engine.types import (
    FROM_RESPONSE_CENTRE,
    ON_SITE,
    AcknowledgeAlert,
    Action,
    Binding,
    CommandOutcome,
    DiscardUnplanned,
    Emit,
    EndPause,
    EngineConfig,
    EngineEvent,
    EngineInput,
    EngineInputError,
    FromDispenser,
    LinkDown,
    LinkUp,
    PanelPress,
    PauseWindow,
    Priority,
    SendCommand,
    SetBinding,
    SetSchedule,
    Silence,
    StartPause,
    StateUnreadable,
    Tick,
)
from agent.simulation.faults import Fault, FaultKind, FaultRates, plan_faults
from agent.simulation.invariants import InvariantChecker, InvariantViolation, PhysicalDispense
from agent.simulation.judge import (
    HOLDING_RULES,
    Judge,
    JudgeConfig,
    SachetLabel,
    World,
    reference_min_interval,
    reference_min_interval_of_rules,
)
from agent.simulation.mishaps import (
    U16_MAX,
    U64_MAX,
    MishapRates,
    Phantom,
    PhantomKind,
    RollDefect,
    TimeMove,
    plan_phantoms,
    plan_roll_defects,
    plan_state_damage,
    plan_store_faults,
    plan_time_moves,
    repeat_delay_s,
    state_damage_parts,
)
from agent.simulation.patient import (
    Decider,
    Habit,
    Nurse,
    NurseVisit,
    Patient,
    PatientTraits,
    Pharmacy,
    PlanChange,
    PlanChangeKind,
    RollMistake,
    RollPeriod,
)
from hw.dispenser import DispenserIdentity, DispenserModel, SimRoll, SimSachet
from protocol import PROTOCOL_VERSION
from protocol.messages import (
    AlertPattern,
    ButtonId,
    Capabilities,
    CommandResult,
    Discard,
    Dispense,
    DosePresented,
    DoseRetained,
    DoseTaken,
    FaultCode,
    Feature,
    Hello,
    LowSupply,
    Message,
    ResultCode,
    Retain,
    SetAlert,
    SetLock,
    Status,
    TimeReport,
)

OSLO = ZoneInfo(DEFAULT_ZONE)
PATIENT_REF = "p-sim-0001"
FOREIGN_REF = "p-sim-9999"
# Dose-time templates; the seed picks one. 02:30 falls in the spring-forward gap and in the
# repeated autumn hour of Europe/Oslo, so those seeds exercise both DST rules.
SCHEDULE_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("08:00", "20:00"),
    ("08:00", "14:00", "20:00"),
    ("02:30", "09:00", "15:00", "21:00"),
    ("07:30", "12:00", "17:00", "22:00"),
    ("09:00",),
)
PLAN_PERIOD_DAYS = 14  # the nurse's refill period (patient.Nurse)
PLAN_OPERATOR = "operator-sim"
PLAN_TECHNICIAN = "tech-sim"
GARBLED_REF = "p-sim-0O01"  # a misprint of PATIENT_REF: another patient's reference to the agent
# Latest wire time the world reads as a date (9999-12-31T23:59:59Z); the judge's own bound, not
# the engine's: a leader time past it, or 0, is a field nobody can read as a date.
WIRE_DATE_MAX_S = 253_402_300_799
# What the centre's people (and their inputs) are called in the simulated world
CENTRE_OPERATOR = "operator-sim"
# Inputs only the response centre (or a person on site) gives: the engine may refuse them
_CENTRE_INPUTS = (
    SetBinding,
    SetSchedule,
    StartPause,
    EndPause,
    AcknowledgeAlert,
    Silence,
    DiscardUnplanned,
)
# Commands the documented rules refuse, each sent once a run (`Simulation._bad_command`)
BAD_COMMANDS = (
    "silence_zero",
    "pause_backwards",
    "pause_year_3000",
    "pause_too_long",
    "schedule_time_twice",
    "schedule_13_doses",
    "schedule_time_24_00",
    "schedule_old_version",
    "discard_unknown_roll",
    "acknowledge_unknown_alert",
    # appended, so the draws of the ones above stay what they were
    "pause_no_id",
    "pause_unknown_reason",
    "pause_take_along_hospital",
    "pause_take_along_open",
    "pause_with_bookkeeping",
    "pause_id_twice",
    "schedule_doses_too_close",
    "schedule_interval_too_short",
    "schedule_interval_too_long",
    "schedule_version_jump",
    "discard_nobody",
    "discard_sachet_not_at_reader",
    "acknowledge_nobody",
)
# A power loss's battery levels with `battery_walk`: each threshold of docs/engine.md (battery_low
# at <= 20 %, cleared at >= 25 %; battery_empty at <= 3 %, cleared at >= 5 %) and the levels
# beside it, going down (the empty ones only on a loss of more than 12 h) and charging back up
# (from the lowest reached); a step lasts longer than the judge's bound (R21 sees a late report)
BATTERY_DRAIN_LOW = (26, 25, 21, 20, 19)
BATTERY_DRAIN_EMPTY = (6, 5, 4, 3, 2)
BATTERY_CHARGE = (3, 4, 5, 6, 24, 25, 26)
BATTERY_STEP_S = 20 * 60.0
# R23: results that are no refusal to tell (BUSY: the agent tries again)
TOLD_RESULTS = frozenset({ResultCode.OK, ResultCode.ALREADY_DONE, ResultCode.BUSY})
PANEL_PRESSES_PER_DAY = 0.3  # the unit's own button, on the seeds with `double_press` (R20)
MAX_INPUTS_PER_INSTANT = 2000  # more than this at one instant is a livelock, not a busy moment
SETTLE_MARGIN = timedelta(days=1)  # the last day's slots may still be open when the run stops
TIMER_LATENCY_S = 0.001  # a timer wakes the shell this long after the engine's deadline
# the published stream's record form (what the event hash is over): one encoder for the run, as
# json.dumps builds a new one on every call with these options
_RECORD_JSON = json.JSONEncoder(sort_keys=True, default=str, separators=(",", ":"))


class EngineLike(Protocol):
    def step(self, inp: EngineInput, now: Now) -> list[Action]: ...

    def next_deadline(self, now: Now) -> float | None: ...


class EngineFactory(Protocol):
    """How the harness gets an engine at installation and after an agent restart."""

    def create(self, config: EngineConfig, now: Now) -> EngineLike: ...

    def restart(self, engine: EngineLike, config: EngineConfig, now: Now) -> EngineLike: ...


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    seed: int
    days: int = 365
    start_utc: datetime | None = None  # default: derived from the seed (see default_start)
    engine: EngineConfig = field(default_factory=EngineConfig)
    faults: FaultRates = field(default_factory=FaultRates)
    patient_ref: str = PATIENT_REF
    recent: int = 40  # inputs/actions kept for a violation report
    idle_tick_chance: float = 0.15  # per gap: Tick before the deadline, must change nothing
    require_outcomes: bool = True  # False only for the no-op baseline engine
    judge: bool = True  # the independent judge (agent.simulation.judge) watches the run
    # judge rules whose violation stops the run; the others are recorded in the result
    # (without require_outcomes nothing is enforced: a baseline engine does nothing at all)
    judge_enforce: frozenset[str] = HOLDING_RULES
    # opt-in scenarios (off by default, so a seed's run stays what it was):
    times: tuple[str, ...] | None = None  # dose times instead of the seed's template
    # the schedule's minimum interval between two intakes; None: the schedule's default (the
    # judge then uses its own reference of that default, never the engine's value)
    min_interval: timedelta | None = None
    pauses_per_year: float = 0.0  # temporary stops ordered by the response centre
    # the pharmacy packs a dose time the schedule lacks (a new prescription, or its error)
    plan_changes_per_year: float = 0.0
    # the print, phantom frames, the centre's habits, store faults (agent.simulation.mishaps)
    mishaps: MishapRates = field(default_factory=MishapRates)
    # with pauses: a trip in the first three weeks (the fault mix: a short run packs one too)
    early_trip: bool = False
    # the dispenser model's feature bits (SPEC 3, protocol.messages.Feature); None: every one
    features: int | None = None
    # the dispenser's bin holds this many sachets (None: the model's 30); a small one fills
    # between the nurse's visits (judge R6, R8.bin_full, R18)
    bin_capacity: int | None = None
    # the second roll printed exactly the sachet tolerance off each slot (early, late, in turn);
    # only for dose times at least four tolerances apart and no extra sachets (plan changes)
    edge_prints: bool = False
    # a power loss of more than 4 h walks the battery down through the levels at and beside
    # the battery thresholds (BATTERY_DRAIN) and, mains back, up through them (BATTERY_CHARGE),
    # a level every BATTERY_STEP_S (judge R21); off: 15 %, after 12 h 2 %, charged 100 %
    battery_walk: bool = False
    # the chance that the patient presses a stray TAKE or HELP again within a minute (R20)
    double_press: float = 0.0


@dataclass(frozen=True, slots=True)
class SimulationResult:
    seed: int
    days: int
    start_utc: str
    schedule: tuple[str, ...]
    steps: int
    events: int
    event_hash: str  # sha256 over the published event stream: same seed, same hash
    slots_expected: int
    outcomes: dict[str, int]
    physical_dispenses: int
    discards: int
    faults_planned: int
    dropped_messages: int  # dispenser messages lost while the link or the agent was down
    judge_findings: dict[str, int] = field(default_factory=dict)  # rule -> violations recorded
    judge_first: dict[str, str] = field(default_factory=dict)  # rule -> its first violation
    plan_changes: int = 0  # pharmacy plan changes planned (opt-in scenario)
    plan_decisions: int = 0  # people's decisions on plan mismatches the unit accepted
    mishaps: dict[str, int] = field(default_factory=dict)  # what happened -> how often


def default_start(seed: int) -> datetime:
    """A local 00:07 in 2026 chosen by the seed; a year from any of them crosses both DST changes
    (and starts late in 2026 reach the 2027 changes)."""
    day = date(2026, 1, 5) + timedelta(days=(seed * 53) % 360)
    return datetime.combine(day, time(0, 7), tzinfo=OSLO).astimezone(UTC)


def schedule_for(
    seed: int,
    start_utc: datetime,
    times: tuple[str, ...] | None = None,
    min_interval: timedelta | None = None,
) -> tuple[Schedule, tuple[str, ...]]:
    times = times or SCHEDULE_TEMPLATES[seed % len(SCHEDULE_TEMPLATES)]
    local_day = start_utc.astimezone(OSLO).date()
    rule = ScheduleRule(effective_from=local_day, times=tuple(parse_time(t) for t in times))
    return Schedule.build(DEFAULT_ZONE, [rule], min_interval), times


@dataclass(frozen=True, slots=True)
class _PlannedPause:
    pause_id: str
    kind: str  # hospital (with an end) | open (ended by a resume command) | travel
    start_s: float  # true seconds since the start of the run
    end_s: float  # for "open": when the resume command is sent


@dataclass(frozen=True, slots=True)
class _Item:
    at_s: float
    order: int
    run: Callable[[], object]
    label: str


# the agenda's heap entries: (at_s, order, item), compared as plain tuples (order is unique, so
# the item itself is never compared); a dataclass's generated `<` ran ~20,000 times a year
_Entry = tuple[float, int, _Item]


class Simulation:
    """One seeded run. `run()` returns a summary or raises `InvariantViolation`."""

    def __init__(self, config: SimulationConfig, factory: EngineFactory | None = None) -> None:
        self.config = config
        self._factory = factory if factory is not None else _default_factory()
        self._start = config.start_utc or default_start(config.seed)
        self._duration_s = config.days * 86400.0
        self._schedule, self._times = schedule_for(
            config.seed, self._start, config.times, config.min_interval
        )
        # independent streams, so adding a check never changes the patient's behaviour
        root = random.Random(config.seed)
        self._rng_patient = random.Random(root.getrandbits(64))
        self._rng_nurse = random.Random(root.getrandbits(64))
        self._rng_faults = random.Random(root.getrandbits(64))
        self._rng_checks = random.Random(root.getrandbits(64))
        self._rng_pauses = random.Random(root.getrandbits(64))
        self._rng_plans = random.Random(root.getrandbits(64))
        self._rng_world = random.Random(root.getrandbits(64))  # agent.simulation.mishaps
        # a stream of its own: the repeats of dose events leave the other draws as they were
        self._rng_repeats = random.Random(f"repeats/{config.seed}")

        self._elapsed = 0.0  # true seconds since start
        self._true_memo: tuple[float, datetime] = (0.0, self._start)
        self._clock = VirtualClock(self._start, TimeTrust.SYNCHRONISED, start_mono=1000.0)
        self._mono_base = 1000.0  # clock.mono - elapsed
        identity = (
            DispenserIdentity()
            if config.features is None
            else DispenserIdentity(features=config.features)
        )
        if config.bin_capacity is not None:
            identity = replace(identity, bin_capacity=config.bin_capacity)
        self._model = DispenserModel(identity, self._rtc_utc_s)
        self._engine: EngineLike | None = None
        self._saved: EngineLike | None = None  # the engine of a Pi that is down
        self._link_downs = 0  # overlapping link-down periods
        self._req_id = 0
        self._step = 0
        self._checker = InvariantChecker(config.patient_ref, config.engine.sachet_time_tolerance)
        self._recent: deque[tuple[int, float, str, object, object]] = deque(maxlen=config.recent)
        self._agenda: list[_Entry] = []
        self._order = 0
        self._seq = 0
        self._hash = hashlib.sha256()
        self._outcome_counts: Counter[str] = Counter()
        self._dropped = 0
        self._eager_until = -1.0  # the patient pressed TAKE: takes a dose presented before then
        self._pauses_planned: list[_PlannedPause] = []
        self._pauses_ordered: set[str] = set()  # reached the agent
        self._packing: tuple[float, float] | None = None  # a trip being packed: true-time span
        self._backlog_visit = False  # a nurse is on the way for a backlog at the reader

        ec = config.engine
        end_utc = self._start + timedelta(seconds=self._duration_s)
        rates = config.mishaps
        self._mishap_counts: Counter[str] = Counter()
        first_day = self._start.astimezone(OSLO).date()
        self._moves = plan_time_moves(
            self._rng_world,
            rates.time_moves,
            first_day,
            config.days,
            SCHEDULE_TEMPLATES,
            self._times,
        )
        # the schedule as it will be: the pharmacy packs its rolls for the moved times too
        planned = self._schedule
        if self._moves:
            rules = [
                *self._schedule.rules,
                *(
                    ScheduleRule(m.effective_from, tuple(parse_time(t) for t in m.times))
                    for m in self._moves
                ),
            ]
            planned = Schedule.build(DEFAULT_ZONE, rules, config.min_interval)
        self._slots = list(planned.slots_between(self._start, end_utc))
        self._slot_dues = [(s.due_utc - self._start).total_seconds() for s in self._slots]
        self._expected = [s.slot_id for s in self._slots if s.due_utc < end_utc - SETTLE_MARGIN]
        self._patient = Patient(
            self._rng_patient, PatientTraits.drawn(self._rng_patient), ec.grace, ec.early_window
        )
        self._habits = [self._patient.habit_for_slot() for _ in self._slots]
        self._periods, visits = Nurse(self._rng_nurse).plan(
            self._slots,
            self._start,
            self._duration_s,
            quiet_before_s=ec.early_window.total_seconds() + 600.0,
            quiet_after_s=(ec.grace + ec.undispensed_deadline).total_seconds() + 600.0,
        )
        self._faults = plan_faults(self._rng_faults, self._duration_s, config.faults)
        self._pharmacy = Pharmacy(self._rng_plans)
        self._rules = list(self._schedule.rules)  # as the response centre last sent them
        self._schedule_version = 1
        self._plan_changes = self._pharmacy.plan(
            len(self._periods),
            config.plan_changes_per_year,
            PLAN_PERIOD_DAYS,
            [parse_time(t) for t in self._times],
        )
        self._applied: set[int] = set()  # NEW_TIME changes the schedule has taken up
        self._plan_decisions = 0
        self._period_of_roll = {p.roll_id: k for k, p in enumerate(self._periods)}
        # the pharmacy prints the second roll's times exactly the sachet tolerance off (early,
        # late, in turn): every sachet still belongs to its slot, at the boundary (R4, R16)
        self._edge_roll = (
            self._periods[1].roll_id if config.edge_prints and len(self._periods) > 1 else None
        )
        self._pack_plan_changes()
        self._defects = plan_roll_defects(self._rng_world, len(self._periods), rates.roll_defect)
        self._phantoms = plan_phantoms(
            self._rng_world, self._duration_s, rates.phantoms, self._slot_dues
        )
        self._store_faults = plan_store_faults(
            self._rng_world, self._duration_s, rates.store_faults
        )
        self._store_fault_armed = False
        self._state_damages = plan_state_damage(
            config.seed, self._duration_s, rates.state_damage, rates.early_state_damage
        )
        self._held_frames: list[Message] = []  # not ACKed by an agent that failed to store them
        self._fixer_on_the_way = False  # a nurse is on the way for an unusable roll or sachet
        self._acknowledging: set[str] = set()  # alert ids the centre acknowledges (once each)
        self._last_alert_id: str | None = None  # the last alert id published
        self._asked: set[int] = set()  # dispense ids whose first Dispense lost its reply
        self._reader_memo: tuple[object, int, SachetLabel | None] | None = None
        self._lag_memo: tuple[Now, float, timedelta, timedelta] | None = None
        self._deadline_memo: tuple[EngineLike, int, Now, float | None] | None = None
        self._plan(visits)
        self._plan_pauses(config.pauses_per_year)
        self._plan_mishaps()
        self._bad_commands: list[tuple[float, str]] = []  # (true time s, kind), in time order
        self._centre_habits = config.mishaps.any  # (a property of the frozen config: once)
        if self._centre_habits:
            self._plan_bad_commands()
        self._judge: Judge | None = None
        self._world: World | None = None
        self._world_key: tuple[object, ...] = ()
        if config.judge:
            self._judge = Judge(
                JudgeConfig(
                    patient_ref=config.patient_ref,
                    zone=DEFAULT_ZONE,
                    times=self._times,
                    effective_from=self._start.astimezone(OSLO).date(),
                    installed_utc=self._start,
                    expect_until_utc=end_utc - SETTLE_MARGIN,
                    sachet_time_tolerance=ec.sachet_time_tolerance,
                    min_intake_interval=config.min_interval or reference_min_interval(self._times),
                    phantom_report_interval=ec.chatty_min_interval,
                    chatty_interval=ec.chatty_min_interval,
                    pause_max=ec.pause_max,
                    dose_window=ec.undispensed_deadline,
                    roll_expired_margin=ec.roll_expired_margin,
                    low_supply_threshold=ec.low_supply_threshold,
                    early_window=ec.early_window,
                    escalate_after=(
                        ec.escalation[0].after
                        if ec.escalation and ec.escalation[0].pattern is AlertPattern.URGENT
                        else None
                    ),
                    enforce=config.judge_enforce if config.require_outcomes else frozenset(),
                    seed=config.seed,
                )
            )
            self._judge.advance(self._start)

    @property
    def expected_slot_ids(self) -> tuple[str, ...]:
        """Slots that must each have exactly one outcome when the run ends."""
        return tuple(self._expected)

    # --- time ---------------------------------------------------------------------------------

    def _true_utc(self) -> datetime:
        # memoised on the elapsed seconds (asked several times per instant: the world, the
        # judge, the RTC)
        memo = self._true_memo
        if memo[0] != self._elapsed:
            memo = self._true_memo = (self._elapsed, self._start + timedelta(seconds=self._elapsed))
        return memo[1]

    def _rtc_utc_s(self) -> int:
        return int(self._true_utc().timestamp())

    def _advance_to(self, target_s: float) -> None:
        if target_s > self._elapsed:
            self._clock.advance(target_s - self._elapsed)
            self._elapsed = target_s
            if self._judge is not None:
                self._judge.advance(self._true_utc())

    def _advance_to_mono(self, deadline: float) -> None:
        """Wake for a deadline the way a real timer does: never early, a little late.

        The wall clock has microsecond resolution and the monotonic clock is a float, so waking
        exactly at the deadline could land a hair short of it on one clock or the other.
        """
        self._advance_to(max(self._elapsed, deadline - self._mono_base + TIMER_LATENCY_S))
        while self._clock.now().mono < deadline:  # float rounding: never wake early
            self._clock.advance(TIMER_LATENCY_S)
            self._elapsed += TIMER_LATENCY_S
            if self._judge is not None:
                self._judge.advance(self._true_utc())

    # --- the agenda ---------------------------------------------------------------------------

    def _at(self, at_s: float, label: str, run: Callable[[], object]) -> None:
        self._order += 1
        heapq.heappush(self._agenda, (at_s, self._order, _Item(at_s, self._order, run, label)))

    def _plan(self, visits: Sequence[NurseVisit]) -> None:
        p = self._patient
        for due, habit in zip(self._slot_dues, self._habits, strict=True):
            if habit is Habit.EARLY:
                self._at(due - p.early_press_lead_s(), "press TAKE (early)", self._early_press)
        # a stream of its own: the rest of the seed's world stays what it was without it
        again = random.Random(f"double press {self.config.seed}")
        for at in p.stray_press_times_s(self._duration_s):
            button = ButtonId.TAKE if p.pick_button_is_take() else ButtonId.HELP
            self._at(
                at,
                f"press {button.name}",
                partial(self._press, button),
            )
            if self.config.double_press and again.random() < self.config.double_press:
                # nothing seemed to happen: pressed again (R20: told at most once per interval)
                later = at + again.uniform(5.0, 50.0)
                self._at(later, f"press {button.name} again", partial(self._press_again, button))
        if self.config.double_press:
            # the unit's own panel button too (its own stream: the rest stays as it was), now
            # and then twice within a minute (R20: never silently lost, told once per interval)
            panel, at = random.Random(f"panel press {self.config.seed}"), 0.0
            while (
                at := at + panel.expovariate(PANEL_PRESSES_PER_DAY / 86400.0)
            ) < self._duration_s:
                self._at(at, "press the panel", self._panel_press)
                if panel.random() < self.config.double_press:
                    self._at(
                        at + panel.uniform(5.0, 50.0), "press the panel again", self._panel_press
                    )
        for at, after in p.lid_open_times_s(self._duration_s):
            self._at(at, "lid open", lambda: self._physical(self._model.set_lid(True)))
            self._at(at + after, "lid closed", lambda: self._physical(self._model.set_lid(False)))
        for at, after in p.roll_removal_times_s(self._duration_s):
            self._at(at, "patient removes roll", self._patient_removes_roll)
            self._at(at + after, "roll put back", self._roll_put_back)
        for visit in visits:
            self._at(
                visit.at_s,
                f"nurse visit {visit.period} ({visit.mistake})",
                partial(self._nurse_visit, visit),
            )
        for fault in self._faults:
            self._at(fault.at_s, f"fault {fault.kind}", partial(self._fault, fault))

    def _plan_pauses(self, per_year: float) -> None:
        """Temporary stops ordered hours ahead, one at a time, none in the last days of the run:
        a hospital stay with an end (hours to three weeks), an open-ended one ended by a resume
        command (up to 40 days: some run past the maximum), or a trip (with an end, its sachets
        dispensed to take along at its start). With `early_trip` a trip of one to four days starts
        in the first three weeks (drawn from the mishaps' stream), and the others follow it."""
        rng, at = self._rng_pauses, 0.0
        if per_year <= 0:
            return
        if self.config.early_trip:
            world = self._rng_world
            start = world.uniform(3 * 86400.0, 20 * 86400.0)
            ordered = start - world.uniform(3600.0, 6 * 3600.0)
            at = start + world.uniform(86400.0, 4 * 86400.0)
            self._add_pause(_PlannedPause("pause-1", "travel", start, at), ordered)
        while True:
            at += rng.expovariate(per_year / (365 * 86400.0))
            lead = rng.uniform(0.0, 6 * 3600.0)
            kind = rng.choice(("hospital", "open", "travel"))
            if kind == "open":
                length = rng.uniform(3600.0, 40 * 86400.0)
            else:
                length = rng.choice(
                    (rng.uniform(3600.0, 86400.0), rng.uniform(86400.0, 21 * 86400.0))
                )
            if at + lead + length > self._duration_s - 3 * 86400.0:
                return
            n = len(self._pauses_planned) + 1
            self._add_pause(_PlannedPause(f"pause-{n}", kind, at + lead, at + lead + length), at)
            at += lead + length

    def _add_pause(self, planned: _PlannedPause, ordered_s: float) -> None:
        pause_id, kind = planned.pause_id, planned.kind
        self._pauses_planned.append(planned)
        self._at(ordered_s, f"{pause_id} ordered ({kind})", partial(self._order_pause, planned))
        if kind == "open":
            self._at(planned.end_s, f"{pause_id} resumed", partial(self._resume, planned))
        if kind == "travel":
            # ready a moment before the trip starts: its first sachet comes out at once
            self._at(planned.start_s - 1.0, f"{pause_id} packing", partial(self._pack, planned))

    def _order_pause(self, planned: _PlannedPause) -> None:
        """The response centre's command reaches the agent (it waits while the Pi is down)."""
        pause_id = planned.pause_id
        if self._engine is None:
            self._at(
                self._elapsed + 600.0,
                f"{pause_id} ordered again",
                partial(self._order_pause, planned),
            )
            return
        start = self._start + timedelta(seconds=planned.start_s)
        end = self._start + timedelta(seconds=planned.end_s)
        travel = planned.kind == "travel"
        window = PauseWindow(
            pause_id,
            start,
            None if planned.kind == "open" else end,
            reason="travel" if travel else "hospital",
            take_along=travel,
        )
        if self._judge is not None:
            self._judge.pause(pause_id, start, window.end_utc, take_along=travel)
            self._judge.centre_command("pause", pause_id)
        self._pauses_ordered.add(pause_id)
        self._feed([StartPause(window)])

    def _resume(self, planned: _PlannedPause) -> None:
        """The response centre resumes an open-ended pause (after its order, once the Pi is up)."""
        if self._engine is None or planned.pause_id not in self._pauses_ordered:
            self._at(
                self._elapsed + 600.0,
                f"{planned.pause_id} resumed again",
                partial(self._resume, planned),
            )
            return
        if self._judge is not None:
            self._judge.pause_ended(planned.pause_id)
            self._judge.centre_command("resume", planned.pause_id)
        self._feed([EndPause(planned.pause_id)])

    def _pack(self, planned: _PlannedPause) -> None:
        """A trip begins: for two hours (or until a shorter trip is over) someone lifts out
        whatever the dispenser presents, to take along (the patient is away from then on)."""
        self._packing = (self._elapsed, min(self._elapsed + 2 * 3600.0, planned.end_s))

    def _packer_takes(self) -> None:
        self._lift_out(travel=True)

    def _lift_out(self, *, travel: bool = False) -> None:
        """Someone lifts the dose out of the tray (to take along on a trip, or a carer's)."""
        messages = self._model.take_dose()
        if self._judge is not None:
            tell = self._judge.taken_for_travel if travel else self._judge.taken
            for message in messages:
                if isinstance(message, DoseTaken):
                    tell(message.dispense_id)
        self._physical(messages)

    def _nurse_clears_backlog(self) -> None:
        """A nurse answers backlog_needs_nurse: takes the sachets for past dose times off the
        roll by hand, empties the bin and puts the roll back."""
        self._backlog_visit = False
        roll = self._model.roll
        if roll is None:
            return
        keep_from = int((self._true_utc() - timedelta(hours=1)).timestamp())
        position = self._model.position
        while position < len(roll.sachets) and roll.sachets[position].intended_utc_s < keep_from:
            position += 1
        self._physical(
            self._model.remove_roll()
            + self._model.empty_bin()
            + self._model.insert_roll(replace(roll, next_index=position))
        )

    # --- what people and the world do ---------------------------------------------------------

    def _physical(self, messages: list[Message]) -> None:
        self._observe_world()  # the world has changed before anyone hears of it
        self._from_dispenser(messages)

    def _press(self, button: ButtonId) -> None:
        if self._judge is not None and button is ButtonId.HELP:
            self._judge.help_pressed()  # R20: a call for help is told
        self._physical(self._model.press_button(button))

    def _panel_press(self) -> None:
        """The unit's own take now / help button (the Pi's GPIO): dead while the Pi is down."""
        if self._engine is None:
            return
        self._mishap_counts["panel_press"] += 1
        self._observe_world()
        if self._judge is not None:
            self._judge.panel_pressed()
        self._feed([PanelPress()])

    def _press_again(self, button: ButtonId) -> None:
        self._mishap_counts["press_again"] += 1
        self._press(button)

    def _early_press(self) -> None:
        self._eager_until = self._elapsed + 600.0
        self._physical(self._model.press_button(ButtonId.TAKE))

    def _patient_removes_roll(self) -> None:
        self._physical(self._model.remove_roll())

    def _roll_put_back(self) -> None:
        removed = self._model.last_removed_roll
        if self._model.roll is None and removed is not None:
            self._physical(self._model.insert_roll(removed))

    def _roll(
        self,
        period: RollPeriod,
        patient_ref: str,
        sachet_ref: str,
        expiry: datetime,
        roll_id: str | None = None,
    ) -> SimRoll:
        sachets = tuple(
            SimSachet(i, int(t.timestamp()), sachet_ref) for i, t in enumerate(period.sachet_times)
        )
        if period.roll_id == self._edge_roll:
            off = int(self.config.engine.sachet_time_tolerance.total_seconds())
            sachets = tuple(
                replace(s, intended_utc_s=s.intended_utc_s + (off if s.index % 2 else -off))
                for s in sachets
            )
        return SimRoll(roll_id or period.roll_id, patient_ref, sachets, int(expiry.timestamp()))

    def _nurse_visit(self, visit: NurseVisit) -> None:
        period = self._periods[visit.period]
        ref = self.config.patient_ref
        good = self._misprinted(
            self._roll(period, ref, ref, self._true_utc() + timedelta(days=60)), visit.period
        )
        roll = good
        match visit.mistake:
            case RollMistake.FOREIGN:
                roll = self._roll(
                    period,
                    FOREIGN_REF,
                    FOREIGN_REF,
                    self._true_utc() + timedelta(days=60),
                    f"X{period.roll_id}",
                )
            case RollMistake.FOREIGN_SACHETS_CLAIM_PATIENT:
                roll = self._roll(
                    period,
                    FOREIGN_REF,
                    ref,
                    self._true_utc() + timedelta(days=60),
                    f"Y{period.roll_id}",
                )
            case RollMistake.EXPIRED:
                roll = self._roll(period, ref, ref, self._true_utc() - timedelta(days=1))
            case RollMistake.PERIOD_PASSED if visit.period >= 2:
                roll = self._roll(
                    self._periods[visit.period - 2], ref, ref, self._true_utc() + timedelta(days=60)
                )
            case _:
                pass
        self._physical(
            self._model.remove_roll() + self._model.empty_bin() + self._model.insert_roll(roll)
        )
        if roll is not good:
            self._at(
                self._elapsed + visit.correction_after_s,
                f"nurse corrects roll {visit.period}",
                lambda: self._physical(self._model.remove_roll() + self._model.insert_roll(good)),
            )

    def _take_dose(self) -> None:
        if self._away():
            return  # left before getting to it (a trip's sachets are the packer's)
        messages = self._model.take_dose()
        if self._judge is not None:
            for message in messages:
                if isinstance(message, DoseTaken):
                    self._judge.taken(message.dispense_id)
        self._physical(messages)

    def _carer_empties_tray(self, dispense_id: object) -> None:
        tray = self._model.tray
        if tray is None or tray.dispense_id != dispense_id:
            return  # taken already (or back in a bin)
        self._mishap_counts["carer_empties_tray"] += 1
        self._lift_out()

    def _away(self) -> bool:
        """The patient is away: a pause is in force now (as planned)."""
        return any(p.start_s <= self._elapsed < p.end_s for p in self._pauses_planned)

    def _on_presented(self) -> None:
        """The dose is in the tray: packed for a trip while one is being packed, else the
        patient's habit for the nearest slot decides."""
        if self._packing is not None and self._packing[0] <= self._elapsed < self._packing[1]:
            self._at(self._elapsed + 30.0, "packed for the trip", self._packer_takes)
            return
        if self._away():
            return  # the patient is away: nobody takes it
        if self._elapsed <= self._eager_until:
            habit = Habit.EARLY
        else:
            i = bisect_left(self._slot_dues, self._elapsed)
            candidates = [j for j in (i - 1, i) if 0 <= j < len(self._slots)]
            j = min(candidates, key=lambda k: abs(self._slot_dues[k] - self._elapsed), default=None)
            habit = self._habits[j] if j is not None else Habit.ON_TIME
            if habit is Habit.EARLY:
                habit = Habit.ON_TIME
        delay = self._patient.take_delay_s(habit)
        if delay is not None:
            self._at(self._elapsed + delay, "patient takes dose", self._take_dose)

    def _fault(self, fault: Fault) -> None:
        m = self._model
        match fault.kind:
            case FaultKind.JAM:
                self._physical(m.set_fault(FaultCode.JAM, True, "sim jam"))
                self._at(fault.at_s + fault.duration_s, "jam cleared", self._jam_cleared)
            case FaultKind.POWER_LOSS:
                self._power(False, int(fault.amount))
                self._plan_battery(fault)
            case FaultKind.DISPENSER_REBOOT:
                m.reboot()
                if self._link_downs == 0:
                    self._feed([LinkDown("dispenser_restarted")])
                    self._link_up()
            case FaultKind.LINK_DOWN:
                self._link_downs += 1
                if self._link_downs == 1:
                    self._feed([LinkDown("sim_link_down")])
                self._at(fault.at_s + fault.duration_s, "link back", self._link_back)
            case FaultKind.WALL_JUMP:
                self._clock.jump_wall(timedelta(seconds=fault.amount))
                self._observe_world()  # the judge reads the agent's clock as the Tick finds it
                self._feed([Tick()])  # like timerfd's cancel-on-set: the shell wakes at once
                self._at(
                    fault.at_s + fault.duration_s, "NTP corrects the wall clock", self._ntp_sync
                )
            case FaultKind.PI_REBOOT:
                if self._engine is None:
                    return  # already down
                # down: nothing is processed, dispenser messages are lost; what was persisted
                # (the engine's state after its last step) is what the next boot starts from
                self._saved, self._engine = self._engine, None
                self._at(fault.at_s + fault.amount, "Pi boots", lambda: self._pi_boots(fault))
            case FaultKind.AGENT_RESTART:
                self._restart_engine()

    def _jam_cleared(self) -> None:
        """A nurse frees the cutter; now and then badly, and it jams again within minutes (a
        flapping condition: its second raise may fall in the alert's rate-limit interval)."""
        m = self._model
        self._physical(m.set_fault(FaultCode.JAM, False))
        chance = self.config.mishaps.flapping
        if chance and self._rng_world.random() < chance:
            again = self._elapsed + self._rng_world.uniform(30.0, 600.0)
            lasts = self._rng_world.uniform(1200.0, 3 * 3600.0)
            self._mishap_counts["jam_again"] += 1
            self._at(
                again,
                "jam again",
                lambda: self._physical(m.set_fault(FaultCode.JAM, True, "sim jam again")),
            )
            self._at(
                again + lasts,
                "jam cleared again",
                lambda: self._physical(m.set_fault(FaultCode.JAM, False)),
            )

    def _plan_battery(self, fault: Fault) -> None:
        m = self._model
        end = fault.at_s + fault.duration_s
        if self.config.battery_walk and fault.duration_s > 4 * 3600:
            self._walk_battery(fault)
            return
        if fault.duration_s > 4 * 3600:
            self._at(
                fault.at_s + 3 * 3600,
                "battery 15 %",
                lambda: self._power(False, min(m.battery_pct, 15)),
            )
        if fault.duration_s > 12 * 3600:
            self._at(
                fault.at_s + 11 * 3600,
                "battery 2 %",
                lambda: self._power(False, min(m.battery_pct, 2)),
            )
        self._at(end, "mains back", lambda: self._physical(m.set_power(True)))
        self._at(end + 2 * 3600, "battery charged", lambda: self._power(True, 100))

    def _walk_battery(self, fault: Fault) -> None:
        """A long power loss (`battery_walk`): the battery drains through the levels at and
        beside the low thresholds from 2 h 20 min in (the empty ones from 10 h on a loss of more
        than 12 h), and once the mains are back charges up through them, then to full."""
        end = fault.at_s + fault.duration_s
        empty = fault.duration_s > 12 * 3600
        self._mishap_counts["battery_walk"] += 1
        for k, pct in enumerate(BATTERY_DRAIN_LOW):
            at = fault.at_s + 2 * 3600 + 20 * 60 + k * BATTERY_STEP_S
            self._at(at, f"battery {pct} %", partial(self._drain, pct))
        for k, pct in enumerate(BATTERY_DRAIN_EMPTY if empty else ()):
            at = fault.at_s + 10 * 3600 + k * BATTERY_STEP_S
            self._at(at, f"battery {pct} %", partial(self._drain, pct))
        self._at(end, "mains back", lambda: self._physical(self._model.set_power(True)))
        # from 2 %: 3, 4, 5, 6, 24, 25, 26; from 19 %: 24, 25, 26; then full
        charge = (*(BATTERY_CHARGE if empty else BATTERY_CHARGE[4:]), 100)
        for k, pct in enumerate(charge, 1):
            at = end + k * BATTERY_STEP_S
            self._at(at, f"battery charging {pct} %", partial(self._charge, pct))

    def _drain(self, pct: int) -> None:
        if not self._model.mains:  # not when the mains came back meanwhile (overlapping losses)
            self._power(False, min(self._model.battery_pct, pct))

    def _charge(self, pct: int) -> None:
        if self._model.mains:  # not while another power loss is on
            self._power(True, max(self._model.battery_pct, pct))

    def _power(self, mains: bool, pct: int) -> None:
        """The mains on or off and the battery at `pct` (the judge sees the level first)."""
        if self._judge is not None:
            self._judge.battery(pct)
        self._physical(self._model.set_power(mains, pct))

    def _link_back(self) -> None:
        self._link_downs -= 1
        if self._link_downs == 0:
            self._link_up()

    def _ntp_sync(self) -> None:
        offset = self._clock.now().utc - self._true_utc()
        if offset:
            self._clock.jump_wall(-offset)
        self._clock.set_trust(TimeTrust.SYNCHRONISED)
        self._observe_world()  # the clock is trusted before the agent's next step hears of it
        self._feed([Tick()])

    def _pi_boots(self, fault: Fault) -> None:
        """Fresh boot: new monotonic epoch, wall clock a saved guess (or the dispenser's RTC)."""
        error = timedelta(seconds=fault.wall_error_s)
        trust = TimeTrust.DISPENSER_RTC if not error else TimeTrust.UNTRUSTED
        start_mono = 5.0 + fault.amount / 100.0
        self._clock = VirtualClock(self._true_utc() + error, trust, start_mono=start_mono)
        self._mono_base = start_mono - self._elapsed
        saved, self._saved = self._saved, None
        if saved is None:
            return
        self._engine = self._factory.restart(saved, self.config.engine, self._clock.now())
        if self._judge is not None:
            self._judge.agent_restarted(
                clock_trusted=self._clock.now().trust is not TimeTrust.UNTRUSTED
            )
        self._observe_world()  # booted with this clock before the link's first step
        if self._link_downs == 0:
            self._link_up()
        self._at(self._elapsed + fault.duration_s, "NTP sync after boot", self._ntp_sync)

    # --- the pharmacy's plan and the response centre's decisions --------------------------------

    def _pack_plan_changes(self) -> None:
        """Each change adds a daily sachet at its extra time to the rolls it concerns."""
        end_s = self._duration_s + 2 * PLAN_PERIOD_DAYS * 86400.0
        first_day = self._start.astimezone(OSLO).date()
        for change in self._plan_changes:
            last = (
                change.period + 1
                if change.kind is PlanChangeKind.PHARMACY_ERROR
                else len(self._periods)
            )
            for k in range(change.period, last):
                begin = self._periods[k].planned_visit_s
                until = (
                    self._periods[k + 1].planned_visit_s if k + 1 < len(self._periods) else end_s
                )
                if change.kind is PlanChangeKind.PHARMACY_ERROR:
                    until = min(until, begin + change.days * 86400.0)
                extra: list[datetime] = []
                day = first_day
                while (
                    datetime.combine(day, time(0), tzinfo=OSLO) - self._start
                ).total_seconds() < until:
                    at = datetime.combine(day, change.extra, tzinfo=OSLO).astimezone(UTC)
                    if begin <= (at - self._start).total_seconds() < until:
                        extra.append(at)
                    day += timedelta(days=1)
                period = self._periods[k]
                self._periods[k] = replace(
                    period, sachet_times=tuple(sorted((*period.sachet_times, *extra)))
                )

    def _on_plan_alert(self, fields: dict[str, object]) -> None:
        """The response centre sees a plan_mismatch and answers it after a while."""
        roll_id, index = fields.get("roll_id"), fields.get("sachet_index")
        intended = fields.get("intended_utc")
        if not isinstance(roll_id, str) or not isinstance(index, int):
            return
        change = None
        if isinstance(intended, str):
            local = datetime.fromisoformat(intended).astimezone(OSLO).time()
            period = self._period_of_roll.get(roll_id)
            change = next(
                (
                    c
                    for c in self._plan_changes
                    if c.extra == local
                    and period is not None
                    and (
                        c.period == period
                        if c.kind is PlanChangeKind.PHARMACY_ERROR
                        else c.period <= period
                    )
                ),
                None,
            )
        self._at(
            self._elapsed + self._pharmacy.reaction_s(),
            f"plan mismatch decided ({roll_id}/{index})",
            partial(self._decide_plan, change, roll_id, index),
        )

    def _decide_plan(self, change: PlanChange | None, roll_id: str, index: int) -> None:
        """A schedule update for a new prescription; a discard decision otherwise."""
        if self._engine is None:
            self._at(
                self._elapsed + 600.0,
                "plan decision again",
                partial(self._decide_plan, change, roll_id, index),
            )
            return
        if change is not None and change.kind is PlanChangeKind.NEW_TIME:
            self._update_schedule(change)
            return
        decider = change.decider if change is not None else Decider.CENTRE_SACHET
        sachet = index if decider is Decider.CENTRE_SACHET else None
        by, source = (
            (PLAN_TECHNICIAN, ON_SITE)
            if decider is Decider.ON_SITE
            else (PLAN_OPERATOR, FROM_RESPONSE_CENTRE)
        )
        if self._judge is not None:
            self._judge.discard_decided(roll_id, sachet)
            self._judge.centre_command("discard", roll_id)
        try:
            self._feed([DiscardUnplanned(roll_id, sachet, by, source)])
        except EngineInputError:
            # refused (the roll or sachet changed meanwhile): the decision never happened
            if self._judge is not None:
                self._judge.centre_refused()
                self._judge.decision_refused(roll_id, sachet)
            return
        self._plan_decisions += 1

    def _update_schedule(self, change: PlanChange) -> None:
        """The centre adds the prescribed time from the day the pharmacy's first such sachet
        is for. Sent while the unit's clock agrees with true time (to the minute), so that the
        judge and the unit agree which new slots were already due when it arrived."""
        k = self._plan_changes.index(change)
        if k in self._applied:
            return
        now = self._clock.now()
        if (
            now.trust is TimeTrust.UNTRUSTED
            or abs((now.utc - self._true_utc()).total_seconds()) > 60
        ):
            self._at(
                self._elapsed + 600.0,
                "schedule update again",
                partial(self._update_schedule, change),
            )
            return
        first = next(
            t
            for t in self._periods[change.period].sachet_times
            if t.astimezone(OSLO).time() == change.extra
        )
        day = first.astimezone(OSLO).date()
        current = [r for r in self._rules if r.effective_from <= day][-1]
        times = tuple(sorted({*current.times, change.extra}))
        rules = [r for r in self._rules if r.effective_from < day]
        rules.append(ScheduleRule(effective_from=day, times=times))
        schedule = Schedule.build(DEFAULT_ZONE, rules, self.config.min_interval)
        self._rules, self._schedule_version = rules, self._schedule_version + 1
        self._applied.add(k)
        if self._judge is not None:
            hhmm = [f"{t:%H:%M}" for t in times]
            self._judge.schedule_changed(day, hhmm, self._judge_interval(rules))
            self._judge.centre_command("schedule", self._schedule_version)
        end_utc = self._start + timedelta(seconds=self._duration_s) - SETTLE_MARGIN
        known = set(self._expected)
        self._expected += [
            slot.slot_id
            for slot in schedule.slots_between(self._true_utc(), end_utc)
            if slot.slot_id not in known
        ]
        self._feed([SetSchedule(schedule, self._schedule_version)])
        self._plan_decisions += 1

    # --- mishaps: the print, phantom frames, the centre's habits, store faults ----------------

    def _plan_mishaps(self) -> None:
        for phantom in self._phantoms:
            self._at(phantom.at_s, f"phantom {phantom.kind}", partial(self._phantom, phantom))
        for move in self._moves:
            begins = datetime.combine(move.effective_from, time(0), tzinfo=OSLO)
            at = (begins - self._start).total_seconds() - move.notice.total_seconds()
            self._at(at, f"schedule update: times {move.times}", partial(self._move_times, move))
        for at in self._store_faults:
            self._at(at, "store fault", self._arm_store_fault)
        for at in self._state_damages:
            self._at(
                at,
                "agent restarts: stored state damaged",
                partial(self._damaged_restart, state_damage_parts(self.config.seed)),
            )

    def _misprinted(self, roll: SimRoll, period: int) -> SimRoll:
        """The pharmacy's print of roll `period`, with its defect if it has one."""
        defect, where = self._defects[period]
        sachets = roll.sachets
        if defect is RollDefect.NONE or not sachets:
            return roll
        self._mishap_counts[f"roll_{defect}"] += 1
        i = min(int(where * len(sachets)), len(sachets) - 1)
        sachet = sachets[i]
        match defect:
            case RollDefect.LEADER_BLANK:
                return replace(roll, patient_ref="")
            case RollDefect.LEADER_ERASED:
                return replace(roll, expiry_utc_s=U64_MAX)
            case RollDefect.SHORT:
                days = 1 + int(where * 3)
                last = sachets[-1].intended_utc_s - days * 86400
                return replace(roll, sachets=tuple(s for s in sachets if s.intended_utc_s <= last))
            case RollDefect.SACHET_UNREADABLE:
                sachet = replace(sachet, readable=False)
            case RollDefect.SACHET_NO_TIME:
                sachet = replace(sachet, intended_utc_s=0)
            case RollDefect.SACHET_GARBLED:
                sachet = replace(sachet, patient_ref=GARBLED_REF)
        return replace(roll, sachets=(*sachets[:i], sachet, *sachets[i + 1 :]))

    def _fix_unusable(self) -> None:
        """A nurse answers an alert about the roll or the sachet at the reader: a reprinted
        leader for this patient's misprinted roll, and the unusable sachets at the reader taken
        off by hand (nothing the dispenser cuts)."""
        self._fixer_on_the_way = False
        roll = self._model.roll
        if roll is None or not roll.sachets:
            return
        ref = self.config.patient_ref
        if roll.sachets[0].patient_ref != ref and roll.sachets[-1].patient_ref != ref:
            return  # another patient's roll: the nurse's own correction takes it out
        fixed = roll
        if roll.patient_ref == "":
            fixed = replace(fixed, patient_ref=ref)
        if _wire_date(roll.expiry_utc_s) is None:
            fixed = replace(fixed, expiry_utc_s=self._rtc_utc_s() + 60 * 86400)
        position = self._model.position
        while position < len(fixed.sachets) and not _usable(fixed.sachets[position], fixed):
            position += 1
        if fixed is roll and position == self._model.position:
            return
        self._mishap_counts["nurse_fixes"] += 1
        self._physical(
            self._model.remove_roll() + self._model.insert_roll(replace(fixed, next_index=position))
        )

    def _phantom(self, phantom: Phantom) -> None:
        """The dispenser's firmware reports a dose event for nothing the agent commanded."""
        if self._engine is None or self._link_downs:
            return  # nobody hears it
        tray = self._model.tray
        dispense_id: int | None = phantom.dispense_id
        message: Message
        match phantom.kind:
            case PhantomKind.PRESENTED:
                message = DosePresented(phantom.dispense_id, phantom.sachet_index)
            case PhantomKind.RETAINED:
                message = DoseRetained(phantom.dispense_id, phantom.sachet_index)
            case PhantomKind.WRONG_INDEX if tray is not None:
                other = (tray.sachet_index + 1 + phantom.sachet_index) % (U16_MAX + 1)
                if other == tray.sachet_index:
                    other = (other + 1) % (U16_MAX + 1)
                message = DoseTaken(tray.dispense_id, other)
                dispense_id = None  # a real dose's id, another sachet's index
            case PhantomKind.LOW_SUPPLY:
                message = LowSupply("", U16_MAX)
            case _:
                message = DoseTaken(phantom.dispense_id, phantom.sachet_index)
        self._mishap_counts[f"phantom_{type(message).__name__}"] += 1
        if self._judge is not None and phantom.kind is not PhantomKind.LOW_SUPPLY:
            self._judge.phantom(dispense_id)
        elif self._judge is not None:
            self._judge.low_supply_phantom()
        self._feed([FromDispenser(message)], heard_before=True)  # no real dose's report

    def _centre_reacts(self, event: EngineEvent) -> None:
        """The response centre's people: acknowledge latched alerts, silence the unit on a HIGH
        event, send a nurse to a roll or sachet nobody can use."""
        rates, rng = self.config.mishaps, self._rng_world
        high = event.priority is Priority.HIGH
        if (
            event.alert_id is not None
            and event.alert_id not in self._acknowledging
            and rates.acknowledge
            and rng.random() < rates.acknowledge
        ):
            self._acknowledging.add(event.alert_id)
            self._at(
                self._elapsed + rng.uniform(60.0, 4 * 3600.0),
                f"centre acknowledges {event.alert_id}",
                partial(self._acknowledge, event.alert_id),
            )
        if high and rates.silence and rng.random() < rates.silence:
            minutes = rng.uniform(5.0, 60.0)
            self._at(
                self._elapsed + rng.uniform(30.0, 600.0),
                "centre silences the unit",
                partial(self._silence, timedelta(minutes=minutes)),
            )
        if (
            high
            and rates.roll_defect
            and event.kind in ("wrong_roll", "roll_rejected", "fault_reader", "sachet_rejected")
            and not self._fixer_on_the_way
        ):
            self._fixer_on_the_way = True
            self._at(
                self._elapsed + rng.uniform(3600.0, 8 * 3600.0),
                "nurse sees to an unusable roll or sachet",
                self._fix_unusable,
            )

    def _centre_input(self, inp: EngineInput, what: str, alert_id: str | None = None) -> bool:
        """A response-centre command reaches the agent (it waits while the Pi is down); True
        when the agent took it now."""
        if self._engine is None:
            self._at(
                self._elapsed + 600.0,
                f"{what} again",
                partial(self._centre_input, inp, what, alert_id),
            )
            return False
        if self._judge is not None:
            self._judge.centre_command(what, alert_id)
        try:
            self._feed([inp])
        except EngineInputError:
            self._mishap_counts[f"{what}_refused"] += 1  # e.g. an alert resolved meanwhile
            if self._judge is not None:
                self._judge.centre_refused()
            return False
        self._mishap_counts[what] += 1
        return True

    def _bind_again(self) -> None:
        """A technician on site binds the unit to its patient again (a stored binding that
        could not be read)."""
        bind = SetBinding(Binding(self.config.patient_ref))
        if self._centre_input(bind, "bind") and self._judge is not None:
            self._judge.bound()

    def _acknowledge(self, alert_id: str) -> None:
        self._centre_input(AcknowledgeAlert(alert_id, CENTRE_OPERATOR), "acknowledge", alert_id)

    def _silence(self, duration: timedelta) -> None:
        if self._engine is None:  # as _centre_input waits, so that the judge hears when it lands
            self._at(self._elapsed + 600.0, "silence again", partial(self._silence, duration))
            return
        if self._centre_input(Silence(duration), "silence") and self._judge is not None:
            self._judge.silenced(duration)  # R14: no pattern owed meanwhile

    def _move_times(self, move: TimeMove) -> None:
        """The centre sends the schedule with the moved dose times ahead of their first day
        (like `_update_schedule`, while the unit's clock agrees with true time)."""
        now = self._clock.now()
        if (
            self._engine is None
            or now.trust is TimeTrust.UNTRUSTED
            or abs((now.utc - self._true_utc()).total_seconds()) > 60
        ):
            self._at(
                self._elapsed + 600.0, "schedule update again", partial(self._move_times, move)
            )
            return
        day = move.effective_from
        rules = [r for r in self._rules if r.effective_from < day]
        rules.append(
            ScheduleRule(effective_from=day, times=tuple(parse_time(t) for t in move.times))
        )
        schedule = Schedule.build(DEFAULT_ZONE, rules, self.config.min_interval)
        self._rules, self._schedule_version = rules, self._schedule_version + 1
        if self._judge is not None:
            self._judge.schedule_changed(day, move.times, self._judge_interval(rules))
            self._judge.centre_command("schedule", self._schedule_version)
        self._mishap_counts["times_moved"] += 1
        self._feed([SetSchedule(schedule, self._schedule_version)])

    def _judge_interval(self, rules: Sequence[ScheduleRule]) -> timedelta:
        """R2's minimum interval for these rules: the config's, or the judge's own reference of
        the documented default (never the engine's value)."""
        if self.config.min_interval is not None:
            return self.config.min_interval
        return reference_min_interval_of_rules([[f"{t:%H:%M}" for t in r.times] for r in rules])

    def _plan_bad_commands(self) -> None:
        """Now and then the centre (or a faulty integration) sends a command the rules refuse:
        each kind once, at a random time. Its own random stream, and a refusal publishes
        nothing: the rest of the world is what it was without them."""
        rng = random.Random(f"bad commands {self.config.seed}")
        # sent at the first step of the loop from their time on, not as agenda items of their
        # own: the virtual clock takes no extra step (its float sum, in every event's time,
        # stays what it was)
        self._bad_commands = sorted((rng.uniform(0.0, self._duration_s), k) for k in BAD_COMMANDS)

    def _bad_command(self, kind: str) -> None:
        """Send a command the documented rules refuse; the judge forbids what accepting it
        would publish (R11). The unit's own refusal (EngineInputError, or the schedule's
        ScheduleError while it is built, as agent/commands.py builds it) is the right answer."""
        if self._engine is None or self._judge is None:
            return  # the Pi is down: the centre's integration gets no answer, nothing to judge
        now = self._true_utc()
        forbid = self._judge.forbid
        try:
            inp: EngineInput
            if kind == "silence_zero":
                forbid(kind, "alert_silenced")
                inp = Silence(timedelta(0))
            elif kind.startswith("pause_"):
                bad = self._bad_pause(kind, now)
                if bad is None:
                    return  # no pause in force to name twice
                inp = bad
            elif kind.startswith("schedule_"):
                version = 0 if kind == "schedule_old_version" else self._schedule_version + 1
                if kind == "schedule_version_jump":  # far past the bounded step (1000)
                    version = self._schedule_version + 1_000_000
                forbid(kind, "schedule_changed", "version", version)
                day = (now + timedelta(days=2)).astimezone(OSLO).date()
                times: tuple[str, ...] = self._times  # schedule_old_version: as it is
                interval = self.config.min_interval
                if kind == "schedule_time_twice":
                    times = (*self._times, self._times[0])
                elif kind == "schedule_13_doses":
                    times = tuple(f"{6 + h:02d}:00" for h in range(13))
                elif kind == "schedule_time_24_00":
                    times = ("08:00", "24:00")
                elif kind == "schedule_doses_too_close":
                    times = ("08:00", "08:20")  # doses are at least 30 min apart
                elif kind == "schedule_interval_too_short":
                    interval = timedelta(minutes=5)  # under the 15 min floor
                elif kind == "schedule_interval_too_long":
                    times, interval = ("08:00", "09:00"), timedelta(hours=2)  # > the spacing
                rules = [r for r in self._rules if r.effective_from < day]
                rules.append(ScheduleRule(day, tuple(parse_time(t) for t in times)))
                inp = SetSchedule(Schedule.build(DEFAULT_ZONE, rules, interval), version)
            elif kind.startswith("discard_"):
                roll = self._model.roll
                roll_id = "no-such-roll" if roll is None else roll.roll_id
                by, index = PLAN_OPERATOR, None
                if kind == "discard_unknown_roll":
                    roll_id = "no-such-roll"
                elif kind == "discard_nobody":
                    by = ""  # a decision names who decided
                else:  # discard_sachet_not_at_reader: an index the roll does not reach
                    index = U16_MAX
                forbid(kind, "plan_mismatch_decided", "roll_id", roll_id)
                inp = DiscardUnplanned(roll_id, index, by, FROM_RESPONSE_CENTRE)
            elif kind == "acknowledge_nobody":
                # the last alert the unit raised, acknowledged by nobody named
                alert_id = self._last_alert_id or "alert-000001"
                forbid(kind, "alert_acknowledged", "alert_id", alert_id)
                inp = AcknowledgeAlert(alert_id, "")
            else:
                forbid(kind, "alert_acknowledged", "alert_id", "alert-999999")
                inp = AcknowledgeAlert("alert-999999", CENTRE_OPERATOR)
            self._feed([inp])
        except (EngineInputError, ScheduleError):
            self._mishap_counts["bad_command_refused"] += 1

    def _bad_pause(self, kind: str, now: datetime) -> StartPause | None:
        """A pause command the rules refuse (`_bad_command`); the judge forbids its start.
        `pause_id_twice` names a pause the unit has now (None: there is none)."""
        pause_id, reason = f"bad-{kind}", "hospital"
        start = now + timedelta(days=1)
        end: datetime | None = now + timedelta(days=1, hours=8)
        take_along, bookkeeping = False, 0
        if kind == "pause_backwards":
            start, end = start + timedelta(hours=8), start
        elif kind == "pause_year_3000":
            start, end = datetime(3000, 1, 1, tzinfo=UTC), datetime(3000, 1, 2, tzinfo=UTC)
        elif kind == "pause_too_long":
            end = start + self.config.engine.pause_max + timedelta(days=1)
        elif kind == "pause_no_id":
            pause_id = ""
        elif kind == "pause_unknown_reason":
            reason = "holiday"
        elif kind == "pause_take_along_hospital":
            take_along = True  # sachets to take along are for a trip only
        elif kind == "pause_take_along_open":
            reason, end, take_along = "travel", None, True  # and a trip with an end
        elif kind == "pause_with_bookkeeping":
            bookkeeping = 3  # a new pause has taken nothing along yet
        elif kind == "pause_id_twice":
            known = [
                p.pause_id
                for p in self._pauses_planned
                if p.pause_id in self._pauses_ordered and p.end_s > self._elapsed + 60.0
            ]
            if not known:
                return None
            pause_id = known[0]
        if self._judge is not None:
            self._judge.forbid(kind, "pause_started", "pause_id", pause_id)
        window = PauseWindow(pause_id, start, end, reason, take_along, travel_dispensed=bookkeeping)
        return StartPause(window)

    def _arm_store_fault(self) -> None:
        """The store will refuse the commit of the next dispenser event the agent handles."""
        self._store_fault_armed = True

    def _fail_safe(self, messages: list[Message]) -> None:
        """The daemon's fail-safe (agent/daemon.py): the step's commit failed, so nothing of it
        leaves the unit and the frame is not ACKed; the dispenser is locked and shows FAULT; the
        process exits and systemd starts it again from the durable state (the engine as it was
        before this step)."""
        self._store_fault_armed = False
        self._mishap_counts["store_fault"] += 1
        for message in messages:
            if isinstance(message, DosePresented):
                self._on_presented()  # the dose is in the tray whatever the agent stored
        self._model.handle(SetLock(self._next_req_id(), True))
        self._model.handle(SetAlert(self._next_req_id(), AlertPattern.FAULT))
        self._held_frames = [*self._held_frames, *messages]
        self._saved, self._engine = self._engine, None
        self._at(
            self._elapsed + self._rng_world.uniform(5.0, 30.0),
            "agent restarts after a store fault",
            self._after_store_fault,
        )

    def _after_store_fault(self) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        self._engine = self._factory.restart(saved, self.config.engine, self._clock.now())
        if self._judge is not None:
            self._judge.agent_restarted(
                clock_trusted=self._clock.now().trust is not TimeTrust.UNTRUSTED
            )
        if self._link_downs == 0:
            self._link_up()

    # --- the shell ----------------------------------------------------------------------------

    def _restart_engine(self) -> None:
        if self._engine is None:
            return
        self._engine = self._factory.restart(self._engine, self.config.engine, self._clock.now())
        if self._judge is not None:
            self._judge.agent_restarted(
                clock_trusted=self._clock.now().trust is not TimeTrust.UNTRUSTED
            )
        if self._link_downs == 0:
            self._link_up()

    def _damaged_restart(self, parts: tuple[str, ...]) -> None:
        """The agent restarts and finds `parts` of its stored state damaged (the loaded roll's
        record; with "binding" the patient binding too): it starts from what it can read and is
        told so (`StateUnreadable`), as the daemon does; the response centre binds the patient
        again when told the binding is lost, then acknowledges the alert (`_publish`)."""
        factory = self._factory
        if self._engine is None or not isinstance(factory, DoseEngineFactory):
            return  # the Pi is down (its next boot reads the state as it was), or no real engine
        now = self._clock.now()
        self._engine, told = factory.restart_damaged(self._engine, self.config.engine, now, parts)
        self._mishap_counts["state_damaged"] += 1
        if self._judge is not None:
            self._judge.agent_restarted(clock_trusted=now.trust is not TimeTrust.UNTRUSTED)
            # what the world damaged, not what the restore says of it: the judge's own truth
            self._judge.state_damaged("unreadable" if "binding" in parts else "kept")
        self._feed([told])
        if self._link_downs == 0:
            self._link_up()

    def _link_up(self) -> None:
        """The link comes (back) up: Hello -> Capabilities, then (SPEC 4.1) a loaded roll is
        announced again (RollInserted + SachetRead). Like the real driver, the shell reports
        LinkUp first and then hands on what the dispenser sent after Capabilities."""
        if self._engine is None:
            return
        reply = self._model.handle(Hello(self._next_req_id(), PROTOCOL_VERSION, "sim"))
        caps, announced = reply[0], reply[1:]
        assert isinstance(caps, Capabilities)
        chance = self.config.mishaps.erased_rtc
        if chance and self._rng_world.random() < chance:
            caps = replace(caps, rtc_utc_s=U64_MAX)  # the dispenser's RTC reads as erased flash
            self._mishap_counts["erased_rtc"] += 1
        self._feed([LinkUp(caps), *(FromDispenser(message) for message in announced)])
        if self._held_frames:
            # the dispenser retransmits the frames the agent that failed safe never ACKed
            held, self._held_frames = self._held_frames, []
            self._feed([FromDispenser(message) for message in held])

    def _next_req_id(self) -> int:
        self._req_id = (self._req_id + 1) & 0xFFFF
        return self._req_id

    def _from_dispenser(self, messages: list[Message]) -> None:
        if (
            self._store_fault_armed
            and messages
            and self._engine is not None
            and not self._link_downs
        ):
            self._fail_safe(messages)
            return
        inputs: list[EngineInput] = []
        for message in messages:
            if isinstance(message, DosePresented):
                self._on_presented()
            if self._engine is None or self._link_downs:
                self._dropped += 1
            else:
                inputs.append(FromDispenser(message))
        if inputs:
            self._feed(inputs)

    def _execute(self, command: SendCommand) -> list[EngineInput]:
        if self._engine is None or self._link_downs:
            return [CommandOutcome(command.correlation, None, "link_down")]
        # every command carries req_id; the driver stamps it, so does the harness
        stamped = _stamped(command.command, self._next_req_id())
        dispensed_before = len(self._model.dispensed)
        discarded_before = len(self._model.discarded)
        bin_before = len(self._model.bin)
        retained_before = len(self._model.retained_ids)
        replies = self._model.handle(stamped)
        for dispense_id, index in self._model.dispensed[dispensed_before:]:
            roll = self._model.roll
            assert roll is not None
            sachet = roll.sachets[index]
            if self._judge is not None:
                self._judge.presented(dispense_id, _label(roll, index))
            self._checker.on_physical_dispense(
                PhysicalDispense(
                    dispense_id,
                    index,
                    roll.patient_ref,
                    sachet.patient_ref,
                    datetime.fromtimestamp(
                        max(0, min(sachet.intended_utc_s, WIRE_DATE_MAX_S)), UTC
                    ),
                )
            )
        if self._judge is not None:
            self._observe_world()
            roll = self._model.roll
            discards = self._model.discarded[discarded_before:]
            for dispense_id, index in discards:
                assert roll is not None
                self._judge.discarded(dispense_id, _label(roll, index))
            if len(self._model.retained_ids) != retained_before:
                for entry in self._model.bin[bin_before:]:
                    if entry.how == "retain":
                        self._judge.retained(entry.dispense_id)
            if len(self._model.bin) != bin_before:
                self._judge.bin_fill(
                    len(self._model.bin), self._model.identity.bin_capacity, len(discards)
                )
            if isinstance(stamped, Discard) and any(
                isinstance(r, CommandResult) and r.result is ResultCode.BIN_FULL for r in replies
            ):
                self._judge.discard_refused_bin_full(stamped.dispense_id)
            if any(
                isinstance(r, CommandResult) and r.result is ResultCode.UNSUPPORTED for r in replies
            ):
                self._judge.unsupported(type(stamped).__name__)
        chance = self.config.mishaps.reply_lost
        if (
            chance
            and isinstance(stamped, Dispense)
            and stamped.dispense_id not in self._asked
            and self._rng_world.random() < chance
        ):
            # a first attempt only: the probe that asks after it gets its answer (a second loss
            # in a row: docs/engine.md, Simulation)
            self._asked.add(stamped.dispense_id)
            return self._reply_lost(command, replies)
        if self._judge is not None and isinstance(stamped, Dispense | Discard | Retain):
            for r in replies:
                if isinstance(r, CommandResult) and r.result not in TOLD_RESULTS:
                    self._judge.dispenser_refused(
                        type(stamped).__name__.lower(), r.result.name.lower()
                    )
        inputs: list[EngineInput] = []
        for message in replies:
            if isinstance(message, CommandResult | Status | Capabilities | TimeReport):
                inputs.append(CommandOutcome(command.correlation, message))
            else:
                if isinstance(message, DosePresented):
                    self._on_presented()
                inputs.append(FromDispenser(message))
        return inputs

    def _reply_lost(self, command: SendCommand, replies: list[Message]) -> list[EngineInput]:
        """The link drops just after the dispenser took a Dispense: it did what it was told (the
        dose may be in the tray), the agent hears neither its reply nor what followed, and gets
        the link back within minutes (a reply it must ask after: SPEC 4.4)."""
        self._mishap_counts["reply_lost"] += 1
        self._dropped += len(replies)
        if any(isinstance(message, DosePresented) for message in replies):
            self._on_presented()  # the patient sees the dose in the tray all the same
        self._link_downs += 1
        back = self._elapsed + self._rng_world.uniform(5.0, 600.0)
        self._at(back, "link back (reply lost)", self._link_back)
        self._observe_world()
        inputs: list[EngineInput] = [CommandOutcome(command.correlation, None, "link_down")]
        if self._link_downs == 1:
            inputs.append(LinkDown("sim_reply_lost"))
        return inputs

    def _publish(self, event: EngineEvent, now: Now) -> None:
        self._seq += 1
        self._checker.on_published(self._seq)
        priority = event.priority.value  # (an enum's .value is a descriptor call)
        record = _RECORD_JSON.encode(
            [
                self._seq,
                round(self._elapsed, 3),
                now.utc.isoformat(),
                event.kind,
                priority,
                event.vkp_code,
                event.fields,
                event.alert_id,
            ]
        )
        self._hash.update(record.encode())
        if event.alert_id is not None:
            self._last_alert_id = event.alert_id
        if self._judge is not None:
            self._judge.published(
                event.kind, priority, dict(event.fields), event.alert_id, event.vkp_code
            )
        if event.kind == "slot_outcome":
            self._outcome_counts[str(event.fields.get("outcome"))] += 1
        if event.kind == "backlog_needs_nurse" and not self._backlog_visit:
            self._backlog_visit = True  # the response centre sends a nurse
            delay = self._rng_pauses.uniform(3600.0, 6 * 3600.0)
            self._at(self._elapsed + delay, "nurse clears a backlog", self._nurse_clears_backlog)
        if (
            event.kind in ("dose_stuck_in_tray", "dose_left_in_tray")
            and event.priority is not Priority.INFO
            and not self._model.has(Feature.RETAIN_BIN)
        ):
            # a dispenser without a bin cannot take a dose back (SPEC 3): a carer the centre
            # sends lifts it out of the tray (a removal the agent must count as an intake)
            dispense_id = event.fields.get("dispense_id")
            delay = self._rng_pauses.uniform(1800.0, 4 * 3600.0)
            self._at(
                self._elapsed + delay,
                "carer empties the tray",
                partial(self._carer_empties_tray, dispense_id),
            )
        if event.kind == "plan_mismatch":
            self._on_plan_alert(event.fields)
        if event.kind == "state_unreadable" and event.alert_id is not None:
            # a person looks into it and lets the unit go on; told the binding is lost, a
            # technician binds the patient again first
            self._acknowledging.add(event.alert_id)
            at = self._elapsed + self._rng_pauses.uniform(600.0, 3 * 3600.0)
            if event.fields.get("binding") == "unreadable":
                self._at(at - 300.0, "technician binds the patient again", self._bind_again)
            self._at(
                at,
                f"centre acknowledges {event.alert_id}",
                partial(self._acknowledge, event.alert_id),
            )
        if self._centre_habits:
            self._centre_reacts(event)

    def _feed(
        self,
        first: Sequence[EngineInput],
        heard_before: bool = False,
        on_first: Callable[[Sequence[Action]], None] | None = None,
    ) -> None:
        """Step the engine on these inputs and on everything their actions cause, in order.
        `heard_before`: the given inputs are no dose event heard for the first time (a phantom,
        a repeat), so none of them comes again; `on_first` sees the first step's actions."""
        queue: deque[EngineInput] = deque(first)
        own = len(first)
        handled = 0
        while queue:
            inp = queue.popleft()
            engine = self._engine
            if engine is None:
                continue
            now = self._clock.now()
            actions = _total_step(engine, inp, now)
            if not (heard_before and handled < own):
                self._maybe_repeat_later(inp)
            if on_first is not None and handled == 0:
                on_first(actions)
            self._step += 1
            self._recent.append((self._step, self._elapsed, "step", inp, actions))
            self._checker.on_actions(actions)
            for action in actions:
                if isinstance(action, Emit):
                    self._publish(action.event, now)
            for action in actions:
                if isinstance(action, SendCommand):
                    queue.extend(self._execute(action))
            self._checker.check_all_published()
            handled += 1
            if handled > MAX_INPUTS_PER_INSTANT:
                raise InvariantViolation(
                    f"livelock: more than {MAX_INPUTS_PER_INSTANT} inputs at one instant"
                )
        world = self._world
        if handled and world is not None and self._panel_held() != world.panel_held:
            self._observe_world()  # the unit's held light follows the engine at once

    def _maybe_repeat_later(self, inp: EngineInput) -> None:
        """A dose event the agent heard may come again (mishaps.MishapRates.repeats)."""
        chance = self.config.mishaps.repeats
        if not (
            chance
            and isinstance(inp, FromDispenser)
            and isinstance(inp.message, DosePresented | DoseTaken | DoseRetained)
            and self._rng_repeats.random() < chance
        ):
            return
        message = inp.message
        at_s = self._elapsed + repeat_delay_s(self._rng_repeats)
        self._at(at_s, f"{type(message).__name__} again", partial(self._repeat, message))

    def _repeat(self, message: DosePresented | DoseTaken | DoseRetained) -> None:
        """The dispenser sends a dose event again that the agent heard before (judge R24)."""
        if self._engine is None or self._link_downs:
            return  # nobody hears it
        self._mishap_counts[f"repeat_{type(message).__name__}"] += 1
        judge = self._judge

        def answered(actions: Sequence[Action]) -> None:
            if judge is not None:
                judge.repeat_answered(
                    type(message).__name__,
                    [a.event.kind for a in actions if isinstance(a, Emit)],
                    [type(a.command).__name__ for a in actions if isinstance(a, SendCommand)],
                )

        self._feed([FromDispenser(message)], heard_before=True, on_first=answered)

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> SimulationResult:
        try:
            self._install()
            self._loop()
            self._checker.finish(self._expected if self.config.require_outcomes else ())
            if self._judge is not None:
                self._judge.finish(self._true_utc())
        except InvariantViolation as violation:
            if violation.seed is not None:
                raise
            raise violation.with_context(
                seed=self.config.seed,
                step=self._step,
                sim_time=self._sim_time(),
                recent=self._render_recent(),
            ) from None
        return SimulationResult(
            seed=self.config.seed,
            days=self.config.days,
            start_utc=self._start.isoformat(),
            schedule=self._times,
            steps=self._step,
            events=self._seq,
            event_hash=self._hash.hexdigest(),
            slots_expected=len(self._expected),
            outcomes=dict(sorted(self._outcome_counts.items())),
            physical_dispenses=len(self._model.dispensed),
            discards=len(self._model.discarded),
            faults_planned=len(self._faults),
            dropped_messages=self._dropped,
            judge_findings=self._judge.counts() if self._judge else {},
            judge_first=self._judge.first_findings() if self._judge else {},
            plan_changes=len(self._plan_changes),
            plan_decisions=self._plan_decisions,
            mishaps=dict(sorted(self._mishap_counts.items())),
        )

    def _install(self) -> None:
        """A technician installs the unit: binding, schedule, then the dispenser link comes up."""
        self._engine = self._factory.create(self.config.engine, self._clock.now())
        self._feed([SetBinding(Binding(self.config.patient_ref)), SetSchedule(self._schedule, 1)])
        self._link_up()
        self._observe_world()

    def _loop(self) -> None:
        end = self._duration_s
        inf = float("inf")
        while True:
            engine = self._engine
            deadline = (
                self._next_deadline(engine, self._clock.now()) if engine is not None else None
            )
            deadline_s = deadline - self._mono_base if deadline is not None else inf
            item_s = self._agenda[0][0] if self._agenda else inf
            target = min(deadline_s, item_s)
            if target >= end:
                self._advance_to(end)
                return
            if (
                engine is not None
                and target - self._elapsed > 2.0
                and (self._rng_checks.random() < self.config.idle_tick_chance)
            ):
                self._idle_tick(engine, target)
            if deadline is not None and deadline_s <= item_s:
                self._advance_to_mono(deadline)
                self._recent.append((self._step, self._elapsed, "deadline", deadline, None))
                self._feed([Tick()])
                if engine is not None and self._engine is engine:
                    now = self._clock.now()
                    self._checker.check_deadline_after_tick(
                        now.mono, self._next_deadline(engine, now)
                    )
            else:
                item = heapq.heappop(self._agenda)[2]
                self._advance_to(item.at_s)
                self._recent.append((self._step, self._elapsed, "world", item.label, None))
                item.run()
            if self._bad_commands and self._bad_commands[0][0] <= self._elapsed:
                self._bad_command(self._bad_commands.pop(0)[1])
            self._observe_world()

    def _observe_world(self) -> None:
        """Show the judge the physical state after whatever just happened (when it changed)."""
        if self._judge is None:
            return
        m = self._model
        linked = self._engine is not None and not self._link_downs
        clock = self._clock.now()
        # the clock's lag, memoised on the reading and the true time it lags (asked again after
        # every command at the same instant)
        lag_memo = self._lag_memo
        if lag_memo is not None and lag_memo[0] is clock and lag_memo[1] == self._elapsed:
            behind, ahead = lag_memo[2], lag_memo[3]
        else:
            behind = ahead = timedelta(0)
            if clock.trust is not TimeTrust.UNTRUSTED:
                lag = round((self._true_utc() - clock.utc).total_seconds())
                behind = timedelta(seconds=max(0, lag))  # a wall jump back not yet corrected
                ahead = timedelta(seconds=max(0, -lag))  # or one ahead
            self._lag_memo = (clock, self._elapsed, behind, ahead)
        # everything World is made of (roll and identity are frozen): asked after every loop
        # step and command, and the world seldom changes
        faults = tuple(m.faults)
        key = (
            m.roll,
            m.position,
            m.identity,
            len(m.bin),
            linked,
            m.tray is not None,
            behind,
            ahead,
            clock.trust is TimeTrust.UNTRUSTED,
            m.shown,
            m.locked,
            faults,
            m.lid_open,
            m.silence_alarm,
            self._panel_held(),
        )
        if key == self._world_key:
            return
        previous_key, self._world_key = self._world_key, key
        roll = m.roll
        if previous_key and previous_key[0] is roll and previous_key[11] == faults:
            # the same roll and faults (most changes are a pattern or the tray): their part of
            # the world as it was
            assert self._world is not None
            patient_ref, readable = self._world.roll_patient_ref, self._world.roll_label_readable
            jammed, fault_names = self._world.jammed, self._world.faults
        else:
            patient_ref = roll.patient_ref if roll is not None else None
            readable = roll is None or _wire_date(roll.expiry_utc_s) is not None
            jammed = FaultCode.JAM in m.faults
            fault_names = frozenset(f.name for f in m.faults)
        world = World(
            roll_patient_ref=patient_ref,
            remaining=m.remaining,
            jammed=jammed,
            bin_full=len(m.bin) >= m.identity.bin_capacity,
            agent_linked=linked,
            reader=self._reader_label(),
            tray_occupied=m.tray is not None,
            roll_label_readable=readable,
            clock_behind=behind,
            clock_trusted=clock.trust is not TimeTrust.UNTRUSTED,
            pattern=m.shown.name,
            locked=m.locked,
            lock_supported=m.has(Feature.LOCK),
            clock_ahead=ahead,
            faults=fault_names,
            lid_open=m.lid_open,
            bin_room=m.identity.bin_capacity - len(m.bin),
            retain_bin=m.has(Feature.RETAIN_BIN),
            held_pattern=m.has(Feature.HELD_PATTERN),
            silence_alarm=m.silence_alarm,
            panel_held=key[-1],
        )
        if world != self._world:
            self._world = world
            self._judge.world(world)

    def _panel_held(self) -> bool | None:
        """The unit's own held light (drivers/gpio_panel.py shows what the engine says); None
        while the Pi is down or for an engine without a panel."""
        dose_held = getattr(self._engine, "dose_held", None)
        return bool(dose_held()) if callable(dose_held) else None

    def _reader_label(self) -> SachetLabel | None:
        """The label of the sachet at the reader (memoised: asked after every loop step)."""
        roll, position = self._model.roll, self._model.position
        memo = self._reader_memo
        if memo is not None and memo[0] is roll and memo[1] == position:
            return memo[2]
        label = (
            _label(roll, position) if roll is not None and position < len(roll.sachets) else None
        )
        self._reader_memo = (roll, position, label)
        return label

    def _idle_tick(self, engine: EngineLike, target_s: float) -> None:
        """Tick somewhere before the next deadline: the engine must do nothing (invariant 5)."""
        self._advance_to(
            self._elapsed + (target_s - self._elapsed) * self._rng_checks.uniform(0.1, 0.9)
        )
        now = self._clock.now()
        before = self._next_deadline(engine, now)
        actions = _total_step(engine, Tick(), now)
        self._step += 1
        self._recent.append((self._step, self._elapsed, "idle tick", None, actions))
        self._checker.on_actions(actions)
        self._checker.check_idle_tick(actions, before, self._next_deadline(engine, now))

    def _next_deadline(self, engine: EngineLike, now: Now) -> float | None:
        """The engine's deadline, asked once per engine, step and clock reading: the loop asks
        again at the instant the tick check asked, with no step in between (a pure answer)."""
        memo = self._deadline_memo
        if memo is not None and memo[0] is engine and memo[1] == self._step and memo[2] is now:
            return memo[3]
        deadline = engine.next_deadline(now)
        self._deadline_memo = (engine, self._step, now, deadline)
        return deadline

    def _sim_time(self) -> str:
        now = self._clock.now()
        return (
            f"t+{self._elapsed:.1f}s true {self._true_utc().isoformat()}, agent wall "
            f"{now.utc.isoformat()} ({now.trust}), mono {now.mono:.3f}"
        )

    def _render_recent(self) -> list[str]:
        return [
            f"#{step} t+{elapsed:.1f}s {kind}: {what!r}"
            + (f" -> {actions!r}" if actions is not None else "")
            for step, elapsed, kind, what, actions in self._recent
        ]


_INIT_FIELDS: dict[type, tuple[str, ...]] = {}


def _stamped(command: Message, req_id: int) -> Message:
    """`replace(command, req_id=req_id)` with the message type's field names looked up once
    (dataclasses.replace walks them on every call; a command goes out ~5,000 times a year)."""
    cls: Any = type(command)  # every command type has req_id (not every Message type)
    names = _INIT_FIELDS.get(cls)
    if names is None:
        names = _INIT_FIELDS[cls] = tuple(
            f.name for f in fields(cast(Any, command)) if f.init and f.name != "req_id"
        )
    return cast(Message, cls(req_id=req_id, **{name: getattr(command, name) for name in names}))


def _label(roll: SimRoll, index: int) -> SachetLabel:
    """What the judge may read: the sachet's print and its roll's leader."""
    sachet = roll.sachets[index]
    return SachetLabel(
        roll_id=roll.roll_id,
        roll_patient_ref=roll.patient_ref,
        patient_ref=sachet.patient_ref,
        index=index,
        intended_utc=_wire_date(sachet.intended_utc_s),
        roll_expiry_utc=_wire_date(roll.expiry_utc_s),
        readable=sachet.readable,
        roll_last_dose_utc=_wire_date(roll.last_dose_utc_s),
    )


def _wire_date(seconds: int) -> datetime | None:
    """A printed time as a date; None for 0 (nothing printed) or a value no date has."""
    if not 0 < seconds <= WIRE_DATE_MAX_S:
        return None
    return datetime.fromtimestamp(seconds, UTC)


def _usable(sachet: SimSachet, roll: SimRoll) -> bool:
    """Could a nurse read this sachet as one of the roll's patient's doses?"""
    return sachet.readable and sachet.intended_utc_s > 0 and sachet.patient_ref == roll.patient_ref


def _total_step(engine: EngineLike, inp: EngineInput, now: Now) -> list[Action]:
    """One engine step; an exception on input it must take (anything but a centre's input it
    may refuse) is a violation: the engine is total (issue 7: never a crash, never a crash loop)."""
    try:
        return engine.step(inp, now)
    except EngineInputError:
        if isinstance(inp, _CENTRE_INPUTS):
            raise
        raise InvariantViolation(f"engine refused {inp!r} as a centre's input") from None
    except InvariantViolation:
        raise
    except Exception as exc:  # any crash is the finding
        raise InvariantViolation(f"engine raised {exc!r} on {inp!r}") from exc


# --- engines ---------------------------------------------------------------------------------


class NullEngine:
    """Does nothing: the baseline that shows what the loop costs without the engine."""

    def step(self, inp: EngineInput, now: Now) -> list[Action]:
        return []

    def next_deadline(self, now: Now) -> float | None:
        return None


class NullEngineFactory:
    def create(self, config: EngineConfig, now: Now) -> EngineLike:
        return NullEngine()

    def restart(self, engine: EngineLike, config: EngineConfig, now: Now) -> EngineLike:
        return NullEngine()


class DoseEngineFactory:
    """The real engine. A restart goes through the JSON the shell would persist, so anything the
    state forgets on the way shows up as a violation here, not in a patient's home."""

    def create(self, config: EngineConfig, now: Now) -> EngineLike:
        from agent.engine.engine import DoseEngine, EngineState

        return DoseEngine(config, EngineState.initial(), now)

    def restart(self, engine: EngineLike, config: EngineConfig, now: Now) -> EngineLike:
        """As the daemon restarts: the stored JSON and the ledger's open slots (`restore`)."""
        from agent.engine.engine import DoseEngine
        from agent.engine.state import restore

        if not isinstance(engine, DoseEngine):
            raise TypeError(f"cannot restart {type(engine).__name__} as a DoseEngine")
        state = engine.state
        restored = restore(state.to_json(), _ledger(state))
        # the ledger lists its open slots by due time: the state as the daemon's restart has it
        expected = replace(state, open_slots=tuple(sorted(state.open_slots, key=_ledger_order)))
        if restored.unreadable is not None or restored.state != expected:
            raise InvariantViolation(
                "engine state does not survive its own restart (JSON and ledger): "
                f"{state!r} became {restored.state!r} ({restored.unreadable})"
            )
        return DoseEngine(config, restored.state, now)

    def restart_damaged(
        self, engine: EngineLike, config: EngineConfig, now: Now, parts: tuple[str, ...]
    ) -> tuple[EngineLike, StateUnreadable]:
        """A restart whose stored state has `parts` damaged ("roll": the loaded roll's record,
        or with no roll an unused field; "binding": the patient binding): the engine from what
        `restore` can read, and the input that tells it so (the daemon's `_record_startup`)."""
        from agent.engine.engine import DoseEngine
        from agent.engine.state import restore

        if not isinstance(engine, DoseEngine):
            raise TypeError(f"cannot restart {type(engine).__name__} as a DoseEngine")
        document = json.loads(engine.state.to_json())
        if "roll" in parts:
            document["roll" if document.get("roll") is not None else "extra"] = {"damaged": 1}
        if "binding" in parts:
            document["binding"] = {"patient": 1}
        restored = restore(json.dumps(document), _ledger(engine.state))
        if restored.unreadable is None:
            raise InvariantViolation("a damaged stored state was read as sound")
        told = StateUnreadable(restored.unreadable, restored.binding)
        return DoseEngine(config, restored.state, now), told


@dataclass(frozen=True, slots=True)
class _LedgerRow:
    """An open slot as the store's ledger gives it (agent.store.ledger.SlotRecord): written in
    the step's transaction, beside the state."""

    slot_id: str
    dispense_id: int | None
    sachet_index: int | None
    due_utc: str | None
    presented_utc: str | None


def _ledger_order(slot: Any) -> tuple[str, str]:
    return (slot.due_utc.isoformat(), slot.slot_id)


def _ledger(state: Any) -> list[_LedgerRow]:
    """The ledger's open slots for a state (`ORDER BY due_utc, slot_id`)."""
    return [
        _LedgerRow(
            o.slot_id,
            o.dispense_id,
            o.sachet_index,
            o.due_utc.isoformat(),
            None if o.presented_utc is None else o.presented_utc.isoformat(),
        )
        for o in sorted(state.open_slots, key=_ledger_order)
    ]


def _default_factory() -> EngineFactory:
    return DoseEngineFactory()
