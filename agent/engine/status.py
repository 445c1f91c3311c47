"""What the engine reports about itself (`DoseEngine.status()`): a typed snapshot.

The shell turns it into the `request_status` result and the retained health/dispenser state;
`to_json()` is the one place its JSON form is defined.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from agent.clock import utc_text, utc_text_or_none
from agent.engine import roll_check
from agent.engine.alerts import LatchedAlert
from agent.engine.state import UnplannedHold


@dataclass(frozen=True, slots=True)
class NextSlotStatus:
    slot_id: str
    due_utc: datetime


@dataclass(frozen=True, slots=True)
class OpenSlotStatus:
    slot_id: str
    phase: str
    dispense_id: int | None
    held_reason: str | None


@dataclass(frozen=True, slots=True)
class EngineStatus:
    bound: bool
    schedule_version: int
    link_up: bool
    roll_id: str | None
    roll_state: str | None  # None: no roll
    sachets_remaining: int | None
    next_slot: NextSlotStatus | None
    open_slots: tuple[OpenSlotStatus, ...]
    pause_id: str | None
    conditions: tuple[str, ...]  # raised and told to the centre, not yet cleared
    latched_alerts: tuple[LatchedAlert, ...]
    unplanned: UnplannedHold | None = None  # the sachet held for a plan decision (VKP 3.22)

    @property
    def active_alerts(self) -> tuple[str, ...]:
        """The bare id of every latched alert still active (the health payload's active_alerts;
        the conditions are its active_conditions)."""
        return tuple(a.alert_id for a in self.latched_alerts)

    def to_json(self) -> dict[str, object]:
        return {
            "bound": self.bound,
            "schedule_version": self.schedule_version,
            "link": "up" if self.link_up else "down",
            "roll_id": self.roll_id,
            "roll_state": self.roll_state,
            "sachets_remaining": self.sachets_remaining,
            "next_slot": None
            if self.next_slot is None
            else {
                "slot_id": self.next_slot.slot_id,
                "due_utc": utc_text(self.next_slot.due_utc),
            },
            "open_slots": [
                {
                    "slot_id": s.slot_id,
                    "phase": s.phase,
                    "dispense_id": s.dispense_id,
                    "held_reason": s.held_reason,
                }
                for s in self.open_slots
            ],
            "pause_id": self.pause_id,
            "unplanned_sachet": None
            if self.unplanned is None
            else {
                "roll_id": self.unplanned.roll_id,
                "sachet_index": self.unplanned.sachet_index,
                "intended_utc": _wire_iso(self.unplanned.intended_utc_s),
                "alert_id": self.unplanned.alert_id,
            },
            "conditions": list(self.conditions),
            "active_alerts": list(self.active_alerts),
            "latched_alerts": [
                {
                    "alert_id": a.alert_id,
                    "kind": a.kind,
                    "raised_at": utc_text(datetime.fromisoformat(a.raised_at)),
                    "acknowledged_by": a.acknowledged_by,
                    "resolved": a.resolved,
                }
                for a in self.latched_alerts
            ],
        }


def _wire_iso(seconds: int) -> str | None:
    return utc_text_or_none(roll_check.wire_time(seconds))
