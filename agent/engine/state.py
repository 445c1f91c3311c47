"""The engine's durable state: what must survive a restart, and its JSON form.

`EngineState` is a plain snapshot the shell stores after every step and hands back to a new
`DoseEngine` on start. It holds no monotonic instants (they mean nothing after a reboot) and only
aware UTC datetimes; `to_json()` / `from_json()` round-trip it exactly (decisions: docs/engine.md,
"Restart policy").
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

from agent.engine import roll_check
from agent.engine.alerts import LatchedAlert
from agent.engine.schedule import Schedule, ScheduleRule, parse_time
from agent.engine.types import Binding, PauseWindow
from protocol.messages import RollInserted

__all__ = [
    "DiscardDecision",
    "EngineState",
    "OpenSlot",
    "OpenSlotRecord",
    "RollInfo",
    "SettledSlot",
    "UnplannedHold",
    "iso_or_none",
    "parse_utc",
]


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


@dataclass(frozen=True, slots=True)
class SettledSlot:
    slot_id: str
    due_utc: datetime


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
    last_intake_utc: datetime | None = None  # the last DoseTaken: the minimum interval runs from it
    roll: RollInfo | None = None
    raised_conditions: tuple[str, ...] = ()  # told to the centre, not yet cleared
    locked_by_agent: bool = False  # we locked the cassette (foreign roll): we may unlock it
    next_alert_seq: int = 1
    starts: int = 0  # engine starts, to keep command correlations unique across restarts
    unplanned: UnplannedHold | None = None  # the sachet held for a plan decision
    discard_decisions: tuple[DiscardDecision, ...] = ()  # for the loaded roll only
    extra: dict[str, str] = field(default_factory=dict)  # forward-compatible, unused

    @classmethod
    def initial(cls) -> EngineState:
        return cls()

    def with_open_slots(self, records: Iterable[OpenSlotRecord]) -> EngineState:
        """Replace open slots with the store's ledger (the single source of truth for them)."""
        known = {o.slot_id: o for o in self.open_slots}
        slots: list[OpenSlot] = []
        for record in records:
            if record.dispense_id is None or record.due_utc is None:
                continue
            previous = known.get(record.slot_id)
            slots.append(
                OpenSlot(
                    slot_id=record.slot_id,
                    dispense_id=record.dispense_id,
                    # the sachet last sent for it (a retry may name another than the begin did,
                    # and its dose events name that one); the ledger's when the state lacks it
                    sachet_index=(
                        previous.sachet_index
                        if previous is not None and previous.dispense_id == record.dispense_id
                        else record.sachet_index or 0
                    ),
                    due_utc=parse_utc(record.due_utc),
                    presented_utc=(
                        parse_utc(record.presented_utc) if record.presented_utc else None
                    ),
                    roll_id=previous.roll_id if previous else None,
                )
            )
        return replace(self, open_slots=tuple(slots))

    def to_json(self) -> str:
        return json.dumps(_state_to_dict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> EngineState:
        return _state_from_dict(json.loads(text))


def parse_utc(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.utcoffset() is None:
        raise ValueError(f"naive datetime in engine state: {text!r}")
    return value.astimezone(UTC)


def iso_or_none(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _schedule_to_dict(schedule: Schedule) -> dict[str, object]:
    return {
        "zone": schedule.zone,
        "rules": [
            {
                "effective_from": rule.effective_from.isoformat(),
                "times": [f"{t:%H:%M}" for t in rule.times],
                "weekday_times": {
                    str(day): [f"{t:%H:%M}" for t in times]
                    for day, times in rule.weekday_times.items()
                },
            }
            for rule in schedule.rules
        ],
        # None: the schedule's default (half the smallest spacing), computed again when loaded
        "min_interval_s": None
        if schedule.min_interval is None
        else schedule.min_interval.total_seconds(),
    }


def _schedule_from_dict(data: dict[str, object]) -> Schedule:
    rules = [
        ScheduleRule(
            effective_from=date.fromisoformat(raw["effective_from"]),
            times=tuple(parse_time(t) for t in raw["times"]),
            weekday_times={
                int(day): tuple(parse_time(t) for t in times)
                for day, times in raw["weekday_times"].items()
            },
        )
        for raw in data["rules"]  # type: ignore[attr-defined]
    ]
    interval = data.get("min_interval_s")  # absent in state stored before it existed
    min_interval = None if interval is None else timedelta(seconds=float(interval))  # type: ignore[arg-type]
    return Schedule.build(str(data["zone"]), rules, min_interval)


def _state_to_dict(state: EngineState) -> dict[str, object]:
    return {
        "binding": None if state.binding is None else {"patient_ref": state.binding.patient_ref},
        "schedule": None if state.schedule is None else _schedule_to_dict(state.schedule),
        "schedule_version": state.schedule_version,
        "pauses": [
            {
                "pause_id": p.pause_id,
                "start_utc": iso_or_none(p.start_utc),
                "end_utc": iso_or_none(p.end_utc),
                "reason": p.reason,
                "take_along": p.take_along,
                "reminders_sent": p.reminders_sent,
                "end_notice_sent": p.end_notice_sent,
                "travel_dispensed": p.travel_dispensed,
            }
            for p in state.pauses
        ],
        "horizon_utc": iso_or_none(state.horizon_utc),
        "next_dispense_id": state.next_dispense_id,
        "latched_alerts": [
            {
                "alert_id": a.alert_id,
                "kind": a.kind,
                "raised_at": a.raised_at,
                "acknowledged_by": a.acknowledged_by,
                "acknowledged_at": a.acknowledged_at,
                "resolved": a.resolved,
            }
            for a in state.latched_alerts
        ],
        "open_slots": [
            {
                "slot_id": o.slot_id,
                "dispense_id": o.dispense_id,
                "sachet_index": o.sachet_index,
                "due_utc": iso_or_none(o.due_utc),
                "presented_utc": iso_or_none(o.presented_utc),
                "roll_id": o.roll_id,
            }
            for o in state.open_slots
        ],
        "settled": [
            {"slot_id": s.slot_id, "due_utc": iso_or_none(s.due_utc)} for s in state.settled
        ],
        "last_intake_utc": iso_or_none(state.last_intake_utc),
        "roll": None
        if state.roll is None
        else {
            "roll_id": state.roll.roll_id,
            "patient_ref": state.roll.patient_ref,
            "sachet_count": state.roll.sachet_count,
            "next_index": state.roll.next_index,
            "first_dose_utc_s": state.roll.first_dose_utc_s,
            "last_dose_utc_s": state.roll.last_dose_utc_s,
            "expiry_utc_s": state.roll.expiry_utc_s,
            "unverified": state.roll.unverified,
        },
        "raised_conditions": list(state.raised_conditions),
        "locked_by_agent": state.locked_by_agent,
        "next_alert_seq": state.next_alert_seq,
        "starts": state.starts,
        "unplanned": None
        if state.unplanned is None
        else {
            "roll_id": state.unplanned.roll_id,
            "sachet_index": state.unplanned.sachet_index,
            "intended_utc_s": state.unplanned.intended_utc_s,
            "alert_id": state.unplanned.alert_id,
        },
        "discard_decisions": [
            {"roll_id": d.roll_id, "sachet_index": d.sachet_index, "by": d.by, "source": d.source}
            for d in state.discard_decisions
        ],
        "extra": dict(state.extra),
    }


def _state_from_dict(data: dict[str, object]) -> EngineState:
    d: dict[str, object] = data
    binding_raw = d.get("binding")
    schedule_raw = d.get("schedule")
    roll_raw = d.get("roll")
    horizon = d.get("horizon_utc")
    last_intake = d.get("last_intake_utc")
    unplanned_raw = d.get("unplanned")
    return EngineState(
        binding=None if binding_raw is None else Binding(str(binding_raw["patient_ref"])),  # type: ignore[index]
        schedule=None if schedule_raw is None else _schedule_from_dict(schedule_raw),  # type: ignore[arg-type]
        schedule_version=int(d.get("schedule_version", 0)),  # type: ignore[call-overload]
        pauses=tuple(
            PauseWindow(
                p["pause_id"],
                parse_utc(p["start_utc"]),
                parse_utc(p["end_utc"]) if p["end_utc"] else None,
                str(p.get("reason", "other")),
                bool(p.get("take_along", False)),
                int(p.get("reminders_sent", 0)),
                bool(p.get("end_notice_sent", False)),
                int(p.get("travel_dispensed", 0)),
            )
            for p in d.get("pauses", [])  # type: ignore[attr-defined]
        ),
        horizon_utc=parse_utc(horizon) if isinstance(horizon, str) else None,
        next_dispense_id=int(d.get("next_dispense_id", 1)),  # type: ignore[call-overload]
        latched_alerts=tuple(
            LatchedAlert(
                a["alert_id"],
                a["kind"],
                a["raised_at"],
                a.get("acknowledged_by"),
                a.get("acknowledged_at"),
                bool(a.get("resolved", False)),
            )
            for a in d.get("latched_alerts", [])  # type: ignore[attr-defined]
        ),
        open_slots=tuple(
            OpenSlot(
                o["slot_id"],
                int(o["dispense_id"]),
                int(o["sachet_index"]),
                parse_utc(o["due_utc"]),
                parse_utc(o["presented_utc"]) if o.get("presented_utc") else None,
                o.get("roll_id"),
            )
            for o in d.get("open_slots", [])  # type: ignore[attr-defined]
        ),
        settled=tuple(
            SettledSlot(s["slot_id"], parse_utc(s["due_utc"]))
            for s in d.get("settled", [])  # type: ignore[attr-defined]
        ),
        last_intake_utc=parse_utc(last_intake) if isinstance(last_intake, str) else None,
        roll=None
        if roll_raw is None
        else RollInfo(
            str(roll_raw["roll_id"]),  # type: ignore[index]
            str(roll_raw["patient_ref"]),  # type: ignore[index]
            int(roll_raw["sachet_count"]),  # type: ignore[index]
            int(roll_raw["next_index"]),  # type: ignore[index]
            int(roll_raw["first_dose_utc_s"]),  # type: ignore[index]
            int(roll_raw["last_dose_utc_s"]),  # type: ignore[index]
            int(roll_raw["expiry_utc_s"]),  # type: ignore[index]
            bool(roll_raw.get("unverified", False)),  # type: ignore[attr-defined]
        ),
        raised_conditions=tuple(str(k) for k in d.get("raised_conditions", [])),  # type: ignore[attr-defined]
        locked_by_agent=bool(d.get("locked_by_agent", False)),
        next_alert_seq=int(d.get("next_alert_seq", 1)),  # type: ignore[call-overload]
        starts=int(d.get("starts", 0)),  # type: ignore[call-overload]
        unplanned=None
        if unplanned_raw is None
        else UnplannedHold(
            str(unplanned_raw["roll_id"]),  # type: ignore[index]
            int(unplanned_raw["sachet_index"]),  # type: ignore[index]
            int(unplanned_raw["intended_utc_s"]),  # type: ignore[index]
            str(unplanned_raw["alert_id"]),  # type: ignore[index]
        ),
        discard_decisions=tuple(
            DiscardDecision(
                str(x["roll_id"]),
                None if x["sachet_index"] is None else int(x["sachet_index"]),
                str(x["by"]),
                str(x["source"]),
            )
            for x in d.get("discard_decisions", [])  # type: ignore[attr-defined]
        ),
        extra={str(k): str(v) for k, v in dict(d.get("extra", {})).items()},  # type: ignore[call-overload]
    )
