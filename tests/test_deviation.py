"""Deviation (avvik) categories: every event kind that is a deviation names one from the one list,
the events carry it as data.deviation, and the guide's tables show it."""

from __future__ import annotations

import pytest
from test_engine import OTHER, morning_rig, utc

from agent.contract.generate import GUIDE_SECTIONS
from agent.engine import catalogue
from agent.engine.catalogue import CATALOGUE, deviation_of, make_event
from agent.engine.deviation import DEVIATIONS, Deviation
from agent.engine.types import LinkDown

# Written out by hand: the kinds that are a deviation, and their category. A kind added to the
# catalogue is not a deviation until it is added here too (the test over the whole catalogue).
EXPECTED = {
    "dose_taken_late": "dose_late",
    "plan_mismatch": "plan_mismatch",
    "dose_left_in_tray": "dose_left_in_tray",
    "dose_stuck_in_tray": "dose_left_in_tray",
    "backlog_needs_nurse": "dispensing_stopped",
    "sachet_rejected": "roll_fault",
    "wrong_roll": "roll_fault",
    "roll_rejected": "roll_fault",
    "roll_unverified": "roll_fault",
    "roll_empty": "medication_missing",
    "no_schedule": "dispensing_stopped",
    "no_contact": "dispensing_stopped",
    "fault_tamper": "tampering",
    "fault_bin_full": "dispensing_stopped",
    "fault_jam": "dispensing_stopped",
    "fault_reader": "dispensing_stopped",
    "fault_sensor": "dispensing_stopped",
    "fault_cutter": "dispensing_stopped",
    "battery_empty": "dispensing_stopped",
    "clock_untrusted": "dispensing_stopped",
    "pause_overdue": "pause_overrun",
    "travel_short": "medication_missing",
    "dispense_id_conflict": "dispensing_stopped",
    "state_unreadable": "dispensing_stopped",
    "binding_mismatch": "dispensing_stopped",
}


def test_every_catalogued_kind_is_a_deviation_exactly_when_expected() -> None:
    found = {kind: str(s.deviation) for kind, s in CATALOGUE.items() if s.deviation is not None}
    assert found == EXPECTED


@pytest.mark.parametrize(
    ("outcome", "reason", "expected"),
    [
        ("taken", None, None),
        ("skipped_paused", "pause-1", None),
        ("dispensed_for_travel", None, None),
        ("missed", "not_taken", "dose_missed"),
        ("missed", "tray_unknown", "dose_missed"),
        ("missed", "restart_unknown", "dose_missed"),
        ("missed", "not_dispensed:no_link", "dose_not_presented"),
        ("missed", "not_dispensed:roll_empty", "dose_not_presented"),
        ("missed", "not_presented", "dose_not_presented"),
        ("missed", "dispense_unconfirmed", "dose_not_presented"),
        ("refused", "foreign_roll", "dose_refused"),
        ("refused", "plan_mismatch", "dose_refused"),
        ("taken_unconfirmed", "tray_emptied_unseen", "dose_unconfirmed"),
    ],
)
def test_slot_outcome_category_follows_the_outcome(
    outcome: str, reason: str | None, expected: str | None
) -> None:
    event = make_event("slot_outcome", {"outcome": outcome, "reason": reason})
    assert event.fields.get("deviation") == expected
    assert deviation_of("slot_outcome", event.fields) == expected


def test_a_cleared_condition_and_an_informational_kind_carry_no_category() -> None:
    assert "deviation" not in make_event("fault_jam_cleared").fields
    assert "deviation" not in make_event("roll_inserted").fields
    assert make_event("fault_jam").fields["deviation"] == "dispensing_stopped"
    # a dose stuck in the tray after its slot is one for the municipality to record too
    assert make_event("dose_stuck_in_tray").fields["deviation"] == "dose_left_in_tray"


def test_every_category_is_documented_and_used_or_found_by_the_summary() -> None:
    assert set(DEVIATIONS) == set(Deviation)
    used = {s.deviation for s in CATALOGUE.values()} | {
        Deviation.DOSE_MISSED,
        Deviation.DOSE_NOT_PRESENTED,
        Deviation.DOSE_REFUSED,
        Deviation.DOSE_UNCONFIRMED,
        Deviation.ALERT_NOT_ACKNOWLEDGED,  # agent.deviation_summary finds it
    }
    assert used - {None} == set(Deviation)


def test_engine_missed_dose_and_wrong_roll_carry_their_category() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(utc(2026, 3, 2, 9, 0))
    (missed,) = rig.events("slot_outcome")
    assert missed.fields["outcome"] == "missed"
    assert missed.fields["deviation"] == "dose_missed"

    wrong = morning_rig()
    wrong.dispenser.roll_patient = OTHER
    wrong.install()
    assert wrong.events("wrong_roll")[0].fields["deviation"] == "roll_fault"


def test_engine_dose_never_presented_is_dose_not_presented() -> None:
    rig = morning_rig()
    rig.install()
    rig.feed(LinkDown("unplugged"))
    rig.run_until(utc(2026, 3, 2, 9, 0))
    (outcome,) = rig.events("slot_outcome")
    assert outcome.fields["deviation"] == "dose_not_presented"


def test_guide_tables_show_the_categories() -> None:
    kinds = GUIDE_SECTIONS["event-kinds"]()
    assert "| `wrong_roll` | roll_fault |" in kinds
    assert "| `slot_outcome` | per outcome" in kinds
    categories = GUIDE_SECTIONS["deviation-categories"]()
    assert "| `dose_missed` | Dose ikke tatt |" in categories
    assert catalogue.CLEARED_SUFFIX not in categories
