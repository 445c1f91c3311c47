"""The engine's durable state: what must survive a restart, and its JSON form.

`EngineState` is a plain snapshot the shell stores after every step and hands back to a new
`DoseEngine` on start. It holds no monotonic instants (they mean nothing after a reboot) and only
aware UTC datetimes; `to_json()` / `from_json()` round-trip it exactly (decisions: docs/engine.md,
"Restart policy").
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Protocol

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.engine import catalogue, roll_check
from agent.engine.alerts import LatchedAlert
from agent.engine.outbound import RECENT_DISPENSES
from agent.engine.schedule import Schedule, ScheduleRule, parse_time
from agent.engine.types import PAUSE_REASONS, Binding, PauseWindow
from protocol.messages import RollInserted

__all__ = [
    "DiscardDecision",
    "EngineState",
    "LeftDose",
    "OpenSlot",
    "OpenSlotRecord",
    "Restored",
    "RetainedDose",
    "RollInfo",
    "SettledSlot",
    "StateUnreadableError",
    "TakenDose",
    "UnplannedHold",
    "iso_or_none",
    "parse_utc",
    "restore",
]

REASON_MAX = 300  # characters of a reason for the response centre


class StateUnreadableError(ValueError):
    """Persisted state that cannot be read, or that contradicts itself. `reason` names where and
    why (field paths and rules, never a stored value: no patient data)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason[:REASON_MAX]


@dataclass(frozen=True, slots=True)
class RollInfo:
    """The roll in the dispenser, as read from its leader label (or only known by id)."""

    roll_id: str
    patient_ref: str  # kept only to re-check after a binding change; never published
    sachet_count: int
    next_index: int  # the sachet expected at the reader
    first_dose_utc_s: int
    last_dose_utc_s: int
    expiry_utc_s: int
    unverified: bool = False  # seen only in a Status (e.g. swapped while the agent was down)

    @property
    def remaining(self) -> int:
        return roll_check.sachets_remaining(self.sachet_count, self.next_index)

    def as_message(self) -> RollInserted:
        return RollInserted(
            roll_id=self.roll_id,
            patient_ref=self.patient_ref,
            sachet_count=self.sachet_count,
            next_index=self.next_index,
            first_dose_utc_s=self.first_dose_utc_s,
            last_dose_utc_s=self.last_dose_utc_s,
            expiry_utc_s=self.expiry_utc_s,
        )


@dataclass(frozen=True, slots=True)
class OpenSlot:
    """A slot begun (BeginDispense) without an outcome: never dispensed again."""

    slot_id: str
    dispense_id: int
    sachet_index: int
    due_utc: datetime
    presented_utc: datetime | None = None
    roll_id: str | None = None
    # escalation steps taken while it lay in the tray: a restart never calls the patient less
    # urgently (absent in a state stored before: 0)
    escalations_done: int = 0


@dataclass(frozen=True, slots=True)
class SettledSlot:
    slot_id: str
    due_utc: datetime


@dataclass(frozen=True, slots=True)
class LeftDose:
    """A settled slot's dose that may still lie in the tray (missed on a dispenser without a
    retain bin, owed to the bin, left at a pause): its removal after a restart is still that
    dose's (a late intake), and a report naming its id with another sachet is a phantom."""

    dispense_id: int
    slot_id: str
    sachet_index: int
    alert_id: str | None = None  # the alert its slot's outcome raised (dose_taken_late names it)
    presented: bool = False  # its DosePresented was handled: the same report again is a repeat


@dataclass(frozen=True, slots=True)
class TakenDose:
    """A recently settled dose whose DoseTaken the engine handled: the same report again (the
    dispenser re-sends what the agent stored and died before acknowledging, SPEC 2.6) is a
    repeat after a restart too, never a phantom nor a second intake."""

    dispense_id: int
    slot_id: str
    sachet_index: int


@dataclass(frozen=True, slots=True)
class RetainedDose:
    """A recent DoseRetained the engine handled: a dose taken back into the bin, or a sachet
    discarded (`slot_id` None). The same report again (re-sent after a lost ACK, also to a
    restarted agent, SPEC 2.6) is a repeat, never a second place in the bin nor a phantom."""

    dispense_id: int
    slot_id: str | None
    sachet_index: int


@dataclass(frozen=True, slots=True)
class UnplannedHold:
    """The sachet at the reader is packed for no dose time of the schedule (a plan mismatch,
    VKP 3.22): nothing is cut past it until someone decides; `alert_id` is its latched alert."""

    roll_id: str
    sachet_index: int
    intended_utc_s: int
    alert_id: str


@dataclass(frozen=True, slots=True)
class DiscardDecision:
    """A person decided that unplanned sachets of roll `roll_id` go to the bin: the one at
    `sachet_index`, or every one of the roll (None)."""

    roll_id: str
    sachet_index: int | None
    by: str
    source: str


class OpenSlotRecord(Protocol):
    """What the store's ledger gives for an open slot (agent.store.ledger.SlotRecord)."""

    @property
    def slot_id(self) -> str: ...
    @property
    def dispense_id(self) -> int | None: ...
    @property
    def sachet_index(self) -> int | None: ...
    @property
    def due_utc(self) -> str | None: ...
    @property
    def presented_utc(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class EngineState:
    """Everything that must survive a restart; JSON-safe via to_json()/from_json().

    No monotonic instants: they mean nothing after a reboot.
    """

    binding: Binding | None = None
    schedule: Schedule | None = None
    schedule_version: int = 0
    pauses: tuple[PauseWindow, ...] = ()
    horizon_utc: datetime | None = None  # slots due before this are settled (or predate install)
    next_dispense_id: int = 1  # u32, never reused; the shell's unit counter is the one that counts
    latched_alerts: tuple[LatchedAlert, ...] = ()
    open_slots: tuple[OpenSlot, ...] = ()
    settled: tuple[SettledSlot, ...] = ()  # settled slots due at/after the horizon (early TAKE)
    # `settled` lists every settled slot due from here on (older records were pruned); None:
    # none was ever pruned
    settled_known_from_utc: datetime | None = None
    last_intake_utc: datetime | None = None  # the last DoseTaken: the minimum interval runs from it
    roll: RollInfo | None = None
    raised_conditions: tuple[str, ...] = ()  # told to the centre, not yet cleared
    locked_by_agent: bool = False  # we locked the cassette (foreign roll): we may unlock it
    next_alert_seq: int = 1
    starts: int = 0  # engine starts, to keep command correlations unique across restarts
    unplanned: UnplannedHold | None = None  # the sachet held for a plan decision
    discard_decisions: tuple[DiscardDecision, ...] = ()  # for the loaded roll only
    left_in_tray: tuple[LeftDose, ...] = ()  # oldest first, at most RECENT_DISPENSES
    taken_recently: tuple[TakenDose, ...] = ()  # oldest first, at most RECENT_DISPENSES
    retained_recently: tuple[RetainedDose, ...] = ()  # oldest first, at most RECENT_DISPENSES

    @classmethod
    def initial(cls) -> EngineState:
        return cls()

    def with_open_slots(self, records: Iterable[OpenSlotRecord]) -> EngineState:
        """Replace open slots with the store's ledger (the single source of truth for them).

        Raises StateUnreadableError for a ledger record that is not a valid open slot."""
        slots, problems = _ledger_slots(self, records)
        if problems:
            raise StateUnreadableError("; ".join(problems))
        return replace(self, open_slots=slots)

    def to_json(self) -> str:
        return _dump(self)

    @classmethod
    def from_json(cls, text: str) -> EngineState:
        return _load(text)


def parse_utc(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.utcoffset() is None:
        raise ValueError(f"naive datetime in engine state: {text!r}")
    return value.astimezone(UTC)


def iso_or_none(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# --- the JSON form: a pydantic boundary model mirroring EngineState ---------------------------
#
# Strict and closed: a wrongly typed value, an unknown field or a value out of its range is an
# error, never coerced. Missing top-level keys take their defaults (states written by older
# versions lack the newer keys). The dataclasses above stay what the engine works with.

U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
I64_MAX = (1 << 63) - 1
# A roll's counts: a Status adds two u16 (next index + remaining) for a roll it only saw, and a
# presented sachet moves the next index one past a u16.
ROLL_COUNT_MAX = 2 * U16_MAX
TEXT_MAX = 256
# Slot and horizon times lie in [1970, 3000): the engine adds hours and days to them, which must
# not overflow (datetime ends at year 9999); the same bound as for label times on the wire.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime.fromtimestamp(roll_check.WIRE_TIME_MAX_S, tz=UTC)


def _aware_utc(value: datetime) -> datetime:
    if value.utcoffset() is None:
        raise ValueError("naive datetime: engine state times are aware")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("not a time datetime can hold in UTC") from None


def _utc(value: datetime) -> datetime:
    value = _aware_utc(value)
    if not EARLIEST <= value < LATEST:
        raise ValueError("not a time in [1970, 3000)")
    return value


def _iso(value: datetime) -> str:
    return value.isoformat()


def _condition_kind(kind: str) -> str:
    entry = catalogue.CATALOGUE.get(kind)
    if entry is None or not entry.condition:
        raise ValueError("not a condition of the event catalogue")
    return kind


def _pause_reason(reason: str) -> str:
    if reason not in PAUSE_REASONS:
        raise ValueError(f"not a pause reason ({', '.join(PAUSE_REASONS)})")
    return reason


def _unique(values: Iterable[object], what: str) -> None:
    seen: set[object] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"two {what} are the same")
        seen.add(value)


UtcTime = Annotated[datetime, AfterValidator(_utc), PlainSerializer(_iso, return_type=str)]
# Pause windows are only compared, never added to, and the command contract takes any aware
# instant: a pause the centre set for year 9999 is a readable state.
AnyUtcTime = Annotated[datetime, AfterValidator(_aware_utc), PlainSerializer(_iso, return_type=str)]
Text = Annotated[str, Field(max_length=TEXT_MAX)]
Name = Annotated[str, Field(min_length=1, max_length=TEXT_MAX)]
HHMM = Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
SlotId = Annotated[str, Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}$")]
ConditionKind = Annotated[str, AfterValidator(_condition_kind)]
DispenseId = Annotated[int, Field(ge=1, le=U32_MAX)]  # the engine's ids start at 1
WireTime = Annotated[int, Field(ge=0, le=U64_MAX)]
RollCount = Annotated[int, Field(ge=0, le=ROLL_COUNT_MAX)]
Counter = Annotated[int, Field(ge=1, le=I64_MAX)]


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class BindingModel(_Model):
    patient_ref: Name

    def to_binding(self) -> Binding:
        return Binding(self.patient_ref)


class ScheduleRuleModel(_Model):
    effective_from: date
    times: tuple[HHMM, ...]
    weekday_times: dict[Annotated[int, Field(ge=0, le=6)], tuple[HHMM, ...]]

    def to_rule(self) -> ScheduleRule:
        return ScheduleRule(
            effective_from=self.effective_from,
            times=tuple(parse_time(t) for t in self.times),
            weekday_times={
                day: tuple(parse_time(t) for t in times)
                for day, times in self.weekday_times.items()
            },
        )


class ScheduleModel(_Model):
    zone: Name
    rules: tuple[ScheduleRuleModel, ...]
    # None: the schedule's default (half the smallest spacing), computed again when loaded
    min_interval_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _valid_schedule(self) -> ScheduleModel:
        self.to_schedule()  # the schedule's own rules (spacing, zone ...): ScheduleError
        return self

    def to_schedule(self) -> Schedule:
        interval = None if self.min_interval_s is None else timedelta(seconds=self.min_interval_s)
        return Schedule.build(self.zone, [rule.to_rule() for rule in self.rules], interval)

    @classmethod
    def of(cls, schedule: Schedule) -> ScheduleModel:
        return cls.model_construct(
            zone=schedule.zone,
            rules=tuple(
                ScheduleRuleModel.model_construct(
                    effective_from=rule.effective_from,
                    times=tuple(f"{t:%H:%M}" for t in rule.times),
                    weekday_times={
                        day: tuple(f"{t:%H:%M}" for t in times)
                        for day, times in rule.weekday_times.items()
                    },
                )
                for rule in schedule.rules
            ),
            min_interval_s=None
            if schedule.min_interval is None
            else schedule.min_interval.total_seconds(),
        )


class PauseModel(_Model):
    pause_id: Name
    start_utc: AnyUtcTime
    end_utc: AnyUtcTime | None
    # absent in states stored before travel and reminders existed
    reason: Annotated[str, AfterValidator(_pause_reason)] = "other"
    take_along: bool = False
    reminders_sent: Annotated[int, Field(ge=0, le=I64_MAX)] = 0
    end_notice_sent: bool = False
    travel_dispensed: Annotated[int, Field(ge=0, le=I64_MAX)] = 0

    @model_validator(mode="after")
    def _ends_after_start(self) -> PauseModel:
        if self.end_utc is not None and self.end_utc <= self.start_utc:
            raise ValueError("a pause ends before it starts")
        return self

    def to_window(self) -> PauseWindow:
        return PauseWindow(
            self.pause_id,
            self.start_utc,
            self.end_utc,
            self.reason,
            self.take_along,
            self.reminders_sent,
            self.end_notice_sent,
            self.travel_dispensed,
        )


class LatchedAlertModel(_Model):
    alert_id: Name
    kind: Name
    raised_at: Text
    acknowledged_by: Text | None = None
    acknowledged_at: Text | None = None
    resolved: bool = False

    def to_alert(self) -> LatchedAlert:
        return LatchedAlert(
            self.alert_id,
            self.kind,
            self.raised_at,
            self.acknowledged_by,
            self.acknowledged_at,
            self.resolved,
        )


class OpenSlotModel(_Model):
    slot_id: SlotId
    dispense_id: DispenseId
    sachet_index: Annotated[int, Field(ge=0, le=U16_MAX)]
    due_utc: UtcTime
    presented_utc: UtcTime | None = None
    roll_id: Text | None = None
    escalations_done: Annotated[int, Field(ge=0, le=U16_MAX)] = 0

    def to_slot(self) -> OpenSlot:
        return OpenSlot(
            self.slot_id,
            self.dispense_id,
            self.sachet_index,
            self.due_utc,
            self.presented_utc,
            self.roll_id,
            self.escalations_done,
        )


class SettledSlotModel(_Model):
    slot_id: SlotId
    due_utc: UtcTime

    def to_settled(self) -> SettledSlot:
        return SettledSlot(self.slot_id, self.due_utc)


class RollModel(_Model):
    roll_id: Text
    patient_ref: Text
    sachet_count: RollCount
    next_index: RollCount
    # any u64 is a wire value: one that is no time (erased flash) is a refused roll, not an
    # unreadable state (roll_check.ROLL_LABEL_INVALID)
    first_dose_utc_s: WireTime
    last_dose_utc_s: WireTime
    expiry_utc_s: WireTime
    unverified: bool = False

    def to_roll(self) -> RollInfo:
        return RollInfo(
            self.roll_id,
            self.patient_ref,
            self.sachet_count,
            self.next_index,
            self.first_dose_utc_s,
            self.last_dose_utc_s,
            self.expiry_utc_s,
            self.unverified,
        )


class UnplannedModel(_Model):
    roll_id: Text
    sachet_index: Annotated[int, Field(ge=0, le=U16_MAX)]
    intended_utc_s: WireTime
    alert_id: Name

    def to_hold(self) -> UnplannedHold:
        return UnplannedHold(self.roll_id, self.sachet_index, self.intended_utc_s, self.alert_id)


class DiscardDecisionModel(_Model):
    roll_id: Text
    sachet_index: Annotated[int, Field(ge=0, le=U16_MAX)] | None
    by: Text
    source: Text

    def to_decision(self) -> DiscardDecision:
        return DiscardDecision(self.roll_id, self.sachet_index, self.by, self.source)


class LeftDoseModel(_Model):
    dispense_id: DispenseId
    slot_id: SlotId
    sachet_index: Annotated[int, Field(ge=0, le=U16_MAX)]
    alert_id: Name | None = None
    presented: bool = False  # absent in a state stored before it was kept: not known, False

    def to_left(self) -> LeftDose:
        return LeftDose(
            self.dispense_id, self.slot_id, self.sachet_index, self.alert_id, self.presented
        )


class TakenDoseModel(_Model):
    dispense_id: DispenseId
    slot_id: SlotId
    sachet_index: Annotated[int, Field(ge=0, le=U16_MAX)]

    def to_taken(self) -> TakenDose:
        return TakenDose(self.dispense_id, self.slot_id, self.sachet_index)


class RetainedDoseModel(_Model):
    dispense_id: DispenseId
    slot_id: SlotId | None
    sachet_index: Annotated[int, Field(ge=0, le=U16_MAX)]

    def to_retained(self) -> RetainedDose:
        return RetainedDose(self.dispense_id, self.slot_id, self.sachet_index)


class EngineStateModel(_Model):
    """The persisted form of `EngineState`, field for field. Each check stays within one field,
    so that `restore` can keep every field that is readable on its own."""

    binding: BindingModel | None = None
    schedule: ScheduleModel | None = None
    schedule_version: Annotated[int, Field(ge=0, le=I64_MAX)] = 0
    pauses: tuple[PauseModel, ...] = ()
    horizon_utc: UtcTime | None = None
    next_dispense_id: Annotated[int, Field(ge=1, le=U32_MAX + 1)] = 1  # U32_MAX + 1: used up
    latched_alerts: tuple[LatchedAlertModel, ...] = ()
    open_slots: tuple[OpenSlotModel, ...] = ()
    settled: tuple[SettledSlotModel, ...] = ()
    settled_known_from_utc: UtcTime | None = None
    last_intake_utc: UtcTime | None = None
    roll: RollModel | None = None
    raised_conditions: tuple[ConditionKind, ...] = ()
    locked_by_agent: bool = False
    next_alert_seq: Counter = 1
    starts: Annotated[int, Field(ge=0, le=I64_MAX)] = 0
    unplanned: UnplannedModel | None = None
    discard_decisions: tuple[DiscardDecisionModel, ...] = ()
    left_in_tray: Annotated[tuple[LeftDoseModel, ...], Field(max_length=RECENT_DISPENSES)] = ()
    taken_recently: Annotated[tuple[TakenDoseModel, ...], Field(max_length=RECENT_DISPENSES)] = ()
    retained_recently: Annotated[
        tuple[RetainedDoseModel, ...], Field(max_length=RECENT_DISPENSES)
    ] = ()
    # unused: kept so that states saved by earlier versions (last_link_down_reason, which
    # nothing read) still load under extra="forbid"; written as {} for them to read ours
    extra: dict[Text, Text] = Field(default_factory=dict)

    @field_validator("pauses")
    @classmethod
    def _distinct_pauses(cls, pauses: tuple[PauseModel, ...]) -> tuple[PauseModel, ...]:
        _unique((p.pause_id for p in pauses), "pause ids")
        return pauses

    @field_validator("latched_alerts")
    @classmethod
    def _distinct_alerts(
        cls, alerts: tuple[LatchedAlertModel, ...]
    ) -> tuple[LatchedAlertModel, ...]:
        _unique((a.alert_id for a in alerts), "alert ids")
        return alerts

    @field_validator("open_slots")
    @classmethod
    def _distinct_slots(cls, slots: tuple[OpenSlotModel, ...]) -> tuple[OpenSlotModel, ...]:
        _unique((o.slot_id for o in slots), "open slot ids")
        _unique((o.dispense_id for o in slots), "open slot dispense ids")
        return slots

    @field_validator("left_in_tray")
    @classmethod
    def _distinct_left(cls, left: tuple[LeftDoseModel, ...]) -> tuple[LeftDoseModel, ...]:
        _unique((d.dispense_id for d in left), "dispense ids left in the tray")
        return left

    @field_validator("taken_recently")
    @classmethod
    def _distinct_taken(cls, taken: tuple[TakenDoseModel, ...]) -> tuple[TakenDoseModel, ...]:
        _unique((d.dispense_id for d in taken), "dispense ids taken")
        return taken

    @field_validator("retained_recently")
    @classmethod
    def _distinct_retained(
        cls, retained: tuple[RetainedDoseModel, ...]
    ) -> tuple[RetainedDoseModel, ...]:
        _unique((d.dispense_id for d in retained), "dispense ids retained")
        return retained

    @classmethod
    def of(cls, state: EngineState) -> EngineStateModel:
        """The model of a state the engine made (trusted: not validated again)."""
        return cls.model_construct(
            binding=None
            if state.binding is None
            else BindingModel.model_construct(patient_ref=state.binding.patient_ref),
            schedule=None if state.schedule is None else ScheduleModel.of(state.schedule),
            schedule_version=state.schedule_version,
            pauses=tuple(PauseModel.model_construct(**_fields(p)) for p in state.pauses),
            horizon_utc=state.horizon_utc,
            next_dispense_id=state.next_dispense_id,
            latched_alerts=tuple(
                LatchedAlertModel.model_construct(**_fields(a)) for a in state.latched_alerts
            ),
            open_slots=tuple(OpenSlotModel.model_construct(**_fields(o)) for o in state.open_slots),
            settled=tuple(SettledSlotModel.model_construct(**_fields(s)) for s in state.settled),
            settled_known_from_utc=state.settled_known_from_utc,
            last_intake_utc=state.last_intake_utc,
            roll=None if state.roll is None else RollModel.model_construct(**_fields(state.roll)),
            raised_conditions=state.raised_conditions,
            locked_by_agent=state.locked_by_agent,
            next_alert_seq=state.next_alert_seq,
            starts=state.starts,
            unplanned=None
            if state.unplanned is None
            else UnplannedModel.model_construct(**_fields(state.unplanned)),
            discard_decisions=tuple(
                DiscardDecisionModel.model_construct(**_fields(d)) for d in state.discard_decisions
            ),
            left_in_tray=tuple(
                LeftDoseModel.model_construct(**_fields(d)) for d in state.left_in_tray
            ),
            taken_recently=tuple(
                TakenDoseModel.model_construct(**_fields(d)) for d in state.taken_recently
            ),
            retained_recently=tuple(
                RetainedDoseModel.model_construct(**_fields(d)) for d in state.retained_recently
            ),
        )

    def to_state(self) -> EngineState:
        return EngineState(
            binding=None if self.binding is None else self.binding.to_binding(),
            schedule=None if self.schedule is None else self.schedule.to_schedule(),
            schedule_version=self.schedule_version,
            pauses=tuple(p.to_window() for p in self.pauses),
            horizon_utc=self.horizon_utc,
            next_dispense_id=self.next_dispense_id,
            latched_alerts=tuple(a.to_alert() for a in self.latched_alerts),
            open_slots=tuple(o.to_slot() for o in self.open_slots),
            settled=tuple(s.to_settled() for s in self.settled),
            settled_known_from_utc=self.settled_known_from_utc,
            last_intake_utc=self.last_intake_utc,
            roll=None if self.roll is None else self.roll.to_roll(),
            raised_conditions=self.raised_conditions,
            locked_by_agent=self.locked_by_agent,
            next_alert_seq=self.next_alert_seq,
            starts=self.starts,
            unplanned=None if self.unplanned is None else self.unplanned.to_hold(),
            discard_decisions=tuple(d.to_decision() for d in self.discard_decisions),
            left_in_tray=tuple(d.to_left() for d in self.left_in_tray),
            taken_recently=tuple(d.to_taken() for d in self.taken_recently),
            retained_recently=tuple(d.to_retained() for d in self.retained_recently),
        )


def _fields(
    record: PauseWindow
    | LatchedAlert
    | OpenSlot
    | SettledSlot
    | RollInfo
    | UnplannedHold
    | DiscardDecision
    | LeftDose
    | TakenDose
    | RetainedDose,
) -> dict[str, Any]:
    """A record's fields by name (for model_construct)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


def _describe(error: ValidationError, prefix: str = "") -> str:
    """Where and why, from pydantic's errors without their input values (no patient data)."""
    parts = []
    for item in error.errors(include_input=False, include_url=False)[:3]:
        where = ".".join(str(part) for part in (prefix, *item["loc"]) if part != "")
        parts.append(f"{where}: {item['msg']}" if where else item["msg"])
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


_ADDED_SINCE_THE_HAND_WRITTEN_ENCODER = (
    "settled_known_from_utc",
    "left_in_tray",
    "taken_recently",
    "retained_recently",
)


def _dump(state: EngineState) -> str:
    # sorted keys, no spaces: the exact text the hand-written encoder wrote, so a stored state is
    # rewritten only when it changed
    data = EngineStateModel.of(state).model_dump(mode="json")
    # fields added since, at their default, are left out: an older unit's text stays the same
    for added in _ADDED_SINCE_THE_HAND_WRITTEN_ENCODER:
        if data.get(added) in (None, []):
            data.pop(added, None)
    for slot in data.get("open_slots", ()):
        if slot.get("escalations_done") == 0:
            del slot["escalations_done"]
    for left in data.get("left_in_tray", ()):
        if left.get("presented") is False:  # kept since: left out at its default, as above
            del left["presented"]
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _load(text: str) -> EngineState:
    try:
        return EngineStateModel.model_validate_json(text).to_state()
    except ValidationError as exc:
        raise StateUnreadableError(_describe(exc)) from None


def _ledger_slots(
    state: EngineState, records: Iterable[OpenSlotRecord]
) -> tuple[tuple[OpenSlot, ...], list[str]]:
    """The ledger's open slots that are valid open slots, and what is wrong with the others.
    A slot keeps the roll id the state knew for it (the ledger does not record it)."""
    known = {o.slot_id: o for o in state.open_slots}
    slots: list[OpenSlot] = []
    problems: list[str] = []
    for position, record in enumerate(records):
        if record.dispense_id is None or record.due_utc is None:
            continue
        previous = known.get(record.slot_id)
        # the sachet last sent for it (a retry may name another than the begin did, and its dose
        # events name that one); the ledger's when the state lacks it
        sachet_index = (
            previous.sachet_index
            if previous is not None and previous.dispense_id == record.dispense_id
            else record.sachet_index or 0
        )
        document = {
            "slot_id": record.slot_id,
            "dispense_id": record.dispense_id,
            "sachet_index": sachet_index,
            "due_utc": record.due_utc,
            "presented_utc": record.presented_utc or None,
            "roll_id": previous.roll_id if previous else None,
            "escalations_done": previous.escalations_done
            if previous is not None and previous.dispense_id == record.dispense_id
            else 0,
        }
        try:
            # through JSON: the ledger's text times are checked exactly as the stored state's
            slot = OpenSlotModel.model_validate_json(json.dumps(document)).to_slot()
        except ValidationError as exc:
            problems.append(_describe(exc, f"ledger.{position}"))
            continue
        if any(s.slot_id == slot.slot_id or s.dispense_id == slot.dispense_id for s in slots):
            problems.append(f"ledger.{position}: two open slots share an id")
            continue
        slots.append(slot)
    return tuple(slots), problems


# --- loading what a restart finds: total ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Restored:
    """What a restarting shell starts the engine from.

    `unreadable` is None when the stored state and ledger were read as they are; else it names
    what could not be read, and `state` holds every part that could (a safe state: the engine is
    told with `StateUnreadable` and stops dispensing until a person decides). `binding` says what
    became of the patient binding: "kept", "none" (there was none) or "unreadable"."""

    state: EngineState
    unreadable: str | None = None
    binding: str = "kept"


def restore(saved: str | None, records: Iterable[OpenSlotRecord]) -> Restored:
    """The engine state to start from, given the stored text (None: never stored) and the
    ledger's open slots. Never raises: what cannot be read is reported, not thrown."""
    problems: list[str] = []
    binding_lost = False
    try:
        state = EngineState.initial() if saved is None else EngineState.from_json(saved)
    except StateUnreadableError as exc:
        problems.append(exc.reason)
        state, binding_lost = _salvage(saved)
    slots, slot_problems = _ledger_slots(state, records)
    state = replace(state, open_slots=slots)
    problems += slot_problems
    binding = "kept" if state.binding is not None else "none"
    if binding_lost:
        binding = "unreadable"
    if not problems:
        return Restored(state, None, binding)
    return Restored(state, "; ".join(problems)[:REASON_MAX], binding)


def _salvage(saved: str | None) -> tuple[EngineState, bool]:
    """Every top-level field of an unreadable state that is valid on its own (the binding above
    all, and the counters that must never go back); the others take their initial values.
    Returns the state and whether a binding was there but could not be read."""
    try:
        document = json.loads(saved or "")
    except (ValueError, RecursionError):
        return EngineState.initial(), True  # not even JSON: whether it was bound is unknown
    if not isinstance(document, dict):
        return EngineState.initial(), True
    kept: dict[str, object] = {}
    for name in EngineStateModel.model_fields:
        if name not in document:
            continue
        try:
            EngineStateModel.model_validate_json(json.dumps({name: document[name]}))
        except (ValidationError, ValueError, RecursionError):
            continue
        kept[name] = document[name]
    binding_lost = document.get("binding") is not None and "binding" not in kept
    try:
        return EngineStateModel.model_validate_json(json.dumps(kept)).to_state(), binding_lost
    except (ValidationError, ValueError, RecursionError):
        return EngineState.initial(), True
