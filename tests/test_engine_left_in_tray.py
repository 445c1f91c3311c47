"""A dose left in the tray of a dispenser without a retain bin (SAFETY.md H3, phantom events):
the engine keeps the settled dispense ids whose dose may still lie in the tray in its stored
state, so a removal heard after an agent restart is still a late intake (the next dose waits the
minimum interval), and a DoseTaken or DosePresented naming such an id with another sachet index
is a phantom that changes nothing (the dose is still in the tray).

Dates are in March 2026, Europe/Oslo is UTC+1: local 08:00 is 07:00 UTC.
"""

from __future__ import annotations

from datetime import timedelta

from test_engine import ALL_FEATURES, Rig, daily, utc
from test_engine_interval import restart

from agent.engine.types import Outcome
from protocol.messages import DosePresented, DoseTaken, Feature

D1_0800 = utc(2026, 3, 2, 7, 0)
D1_1200 = utc(2026, 3, 2, 11, 0)
MISSED_AT = D1_0800 + timedelta(minutes=61)  # grace 60 min: missed, left in the tray
SLOT_1 = "2026-03-02T08:00"
SLOT_2 = "2026-03-02T12:00"
NO_BIN = ALL_FEATURES & ~int(Feature.RETAIN_BIN) & ~int(Feature.BIN_LEVEL)


def missed_and_left() -> tuple[Rig, int]:
    """08:00 and 12:00 daily (minimum interval 2 h); the 08:00 dose is missed and stays in the
    tray of a bin-less dispenser."""
    rig = Rig(
        daily("08:00", "12:00"),
        sachet_times=[D1_0800, D1_1200, utc(2026, 3, 3, 7, 0)],
        features=NO_BIN,
    )
    rig.install()
    rig.run_until(MISSED_AT)
    assert rig.outcome_of(SLOT_1).outcome is Outcome.MISSED
    dispense_id = rig.dispenser.tray
    assert dispense_id is not None
    assert [e.fields["reason"] for e in rig.events("dose_stuck_in_tray")] == ["no_retain_bin"]
    return rig, dispense_id


def held_reasons(rig: Rig, slot_id: str) -> list[object]:
    return [e.fields["reason"] for e in rig.events("dose_held") if e.fields["slot_id"] == slot_id]


def test_a_dose_left_in_the_tray_and_taken_after_a_restart_is_a_late_intake() -> None:
    rig, dispense_id = missed_and_left()
    rig.run_until(utc(2026, 3, 2, 10, 0))
    restart(rig)
    rig.run_until(utc(2026, 3, 2, 10, 50))
    rig.take()  # the carer lifts it out 10 min before the 12:00 dose
    assert rig.events("phantom_dispenser_event") == []
    [late] = rig.events("dose_taken_late")
    assert late.fields["slot_id"] == SLOT_1
    assert late.fields["dispense_id"] == dispense_id
    assert late.fields["next_dose_not_before_utc"] == "2026-03-02T12:50:00Z"
    assert late.fields["alert_id"] is not None  # the missed slot's alert it is news about
    assert [e.fields["dispense_id"] for e in rig.events("dose_stuck_in_tray_cleared")] == [
        dispense_id
    ]
    rig.run_until(D1_1200 + timedelta(minutes=5))
    assert len(rig.begins()) == 1  # the 12:00 dose waits the minimum interval
    assert "min_interval" in held_reasons(rig, SLOT_2)


def test_a_taken_report_for_a_dose_left_in_the_tray_with_another_index_is_a_phantom() -> None:
    rig, dispense_id = missed_and_left()
    index = rig.dispenser.tray_index
    rig.run_until(utc(2026, 3, 2, 10, 50))
    rig.msg(DoseTaken(dispense_id, index + 3))
    rig.run_for(rig.config.chatty_min_interval)  # (phantom reports are rate limited)
    rig.msg(DosePresented(dispense_id, index + 5))
    assert rig.events("dose_taken_late") == []
    assert rig.events("dose_stuck_in_tray_cleared") == []
    phantoms = rig.events("phantom_dispenser_event")
    assert [(e.fields["message"], e.fields["reason"]) for e in phantoms] == [
        ("DoseTaken", "sachet_index_mismatch"),
        ("DosePresented", "sachet_index_mismatch"),
    ]
    assert [e.fields["expected_sachet_index"] for e in phantoms] == [index, index]
    rig.run_until(D1_1200 + timedelta(minutes=5))
    assert len(rig.begins()) == 1  # still in the tray: nothing is cut over it
    assert held_reasons(rig, SLOT_2) == ["dose_stuck_in_tray"]
    rig.take()  # the real removal
    assert [e.fields["slot_id"] for e in rig.events("dose_taken_late")] == [SLOT_1]


def test_after_a_restart_another_index_for_a_dose_left_in_the_tray_is_a_phantom_too() -> None:
    rig, dispense_id = missed_and_left()
    index = rig.dispenser.tray_index
    restart(rig)
    rig.msg(DoseTaken(dispense_id, index + 1))
    assert rig.events("dose_taken_late") == []
    [phantom] = rig.events("phantom_dispenser_event")
    assert phantom.fields["reason"] == "sachet_index_mismatch"
    rig.take()
    assert [e.fields["slot_id"] for e in rig.events("dose_taken_late")] == [SLOT_1]
