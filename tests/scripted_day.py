"""A scripted day on the firmware model, recorded in a real SQLite store as the daemon records it.

Monday 2 March 2026, four doses a day (08, 12, 17, 22 Oslo = 07, 11, 16, 21 UTC):
08:00 taken; 12:00 missed (nobody lifts it out); 14:00 Oslo a nurse loads another patient's roll
(wrong_roll), acknowledges the alert at 14:10 and puts the right roll back at 14:20; 17:00 and 22:00
taken; a travel pause for Tuesday (05:00 UTC Tuesday to 05:00 UTC Wednesday) is set at 22:30 and
its four sachets are dispensed at its start and packed.

Used by the FHIR converter tests and the deviation-summary tests: the events are the engine's own,
stored with the daemon's payload shape (agent/daemon.py `_append_event`) and published with the
publisher's envelope builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

from model_rig import PATIENT, ModelRig, dose_instants, make_roll, utc

from agent.engine.types import (
    AcknowledgeAlert,
    BeginDispense,
    Binding,
    Emit,
    PauseWindow,
    RecordOutcome,
    RecordPresented,
    SetBinding,
    SetSchedule,
    StartPause,
)
from agent.envelope import build_envelope
from agent.store.audit import Stamp
from agent.store.db import Store

FOUR_A_DAY = ("08:00", "12:00", "17:00", "22:00")
UNIT_ID = "oslo-0001"
DAY = date(2026, 3, 2)
TRIP_START = utc(2026, 3, 3, 5, 0)
TRIP_END = utc(2026, 3, 4, 5, 0)


def iso_z(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


@dataclass
class RecordedDay:
    store: Store
    lines: list[str]  # every event as published on dispenser/v1/{unit_id}/events
    rig: ModelRig


def run_day() -> ModelRig:
    rig = ModelRig(FOUR_A_DAY, utc(2026, 3, 2, 5, 0))
    roll = make_roll("R1", dose_instants(FOUR_A_DAY, DAY, 14))
    # as the daemon starts: the schedule first, then the binding (ModelRig.install binds first,
    # which raises and clears no_schedule at once)
    rig.feed(SetSchedule(rig.schedule, 1), SetBinding(Binding(PATIENT)))
    rig.link_up()
    rig.physical(rig.model.insert_roll(roll))
    rig.run_until(utc(2026, 3, 2, 8, 0), take=True)  # 08:00 Oslo taken
    rig.run_until(utc(2026, 3, 2, 12, 30))  # 12:00 Oslo presented, not taken: missed
    rig.run_until(utc(2026, 3, 2, 13, 0))
    foreign = make_roll("R9", dose_instants(FOUR_A_DAY, DAY, 14), patient="patient-0b21")
    rig.physical(rig.model.insert_roll(foreign))
    (wrong,) = rig.events("wrong_roll")
    assert wrong.alert_id is not None
    rig.run_until(utc(2026, 3, 2, 13, 10))
    rig.feed(AcknowledgeAlert(wrong.alert_id, by="nurse-3"))
    rig.run_until(utc(2026, 3, 2, 13, 20))
    rig.physical(rig.model.remove_roll())
    back = make_roll("R1", dose_instants(FOUR_A_DAY, DAY, 14), next_index=2)
    rig.physical(rig.model.insert_roll(back))
    rig.run_until(utc(2026, 3, 2, 21, 30), take=True)  # 17:00 and 22:00 Oslo taken
    trip = PauseWindow("trip", TRIP_START, TRIP_END, reason="travel", take_along=True)
    rig.feed(StartPause(trip))
    rig.run_until(TRIP_START + timedelta(minutes=30), take=True)  # packed as they come out
    return rig


def record_day(path: Path) -> RecordedDay:
    """The day's store actions applied to a real store at the instants they happened."""
    rig = run_day()
    clock = {"at": utc(2026, 3, 2, 5, 0)}
    store = Store.open(path, stamp=lambda: Stamp(iso_z(clock["at"]), "synchronised"))
    lines: list[str] = []
    for at, action in rig.log:
        clock["at"] = at
        with store.transaction():
            match action:
                case BeginDispense():
                    store.begin_dispense(
                        action.slot_id,
                        action.dispense_id,
                        action.sachet_index,
                        action.due_utc.isoformat(),
                    )
                case RecordPresented():
                    store.record_presented(action.slot_id)
                case RecordOutcome():
                    store.record_outcome(action.slot_id, action.outcome.value, action.reason)
                case Emit(event=event):
                    payload: dict[str, object] = {
                        "priority": event.priority.value,
                        "vkp_code": event.vkp_code,
                        "alert_id": event.alert_id,
                        "boot": 1,
                        "data": event.fields,
                    }
                    stored = store.append_event(event.kind, payload, iso_z(at), "synchronised")
                    lines.append(build_envelope(UNIT_ID, stored, False, 1).decode())
                case _:
                    pass
    return RecordedDay(store, lines, rig)
