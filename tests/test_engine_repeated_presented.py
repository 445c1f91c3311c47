"""A DosePresented repeated for a settled dose (SAFETY.md H13): the dispenser sends the report
again (a retransmission after a lost ACK, also to a restarted agent, SPEC 2.6; a stale report) for
a dose the patient has taken already, that went back into the bin, or that was seen presented and
still lies in the tray. The report changes nothing. A dose gone is not believed in the tray again
(the next dose comes on time, not held behind a dose that is not there), no Retain is sent for it,
nothing is said to be unexpected; the repeat is recorded (an event, so its ACK follows a commit).
The simulation's mix sends such repeats (judge R24; year seed 15 found the left-in-tray case).

Dates are in March 2026, Europe/Oslo is UTC+1: local 08:00 is 07:00 UTC.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_engine import ALL_FEATURES, Rig, daily, morning_rig, utc
from test_engine_interval import restart
from test_engine_repeated_retained import retained_rig

from agent.engine.types import Emit, Outcome
from protocol.messages import DosePresented, Feature, Retain

D1_0800 = utc(2026, 3, 2, 7, 0)
D1_1200 = utc(2026, 3, 2, 11, 0)
SLOT_0800 = "2026-03-02T08:00"
SLOT_1200 = "2026-03-02T12:00"
WITH_LEVEL = ALL_FEATURES | int(Feature.BIN_LEVEL)


def taken_rig() -> tuple[Rig, int, int]:
    """08:00 and 12:00; the 08:00 dose taken at 08:02. Returns the rig and that dose's dispense
    id and sachet index."""
    rig = Rig(daily("08:00", "12:00"), sachet_times=[D1_0800, D1_1200])
    rig.install()
    rig.run_until(D1_0800 + timedelta(minutes=2))
    dispense_id, index = rig.dispenser.tray, rig.dispenser.tray_index
    assert dispense_id is not None
    rig.take()
    assert rig.outcome_of(SLOT_0800).outcome is Outcome.TAKEN
    return rig, dispense_id, index


def assert_a_recorded_repeat_that_changes_nothing(
    rig: Rig, actions: list[object], dispense_id: int, index: int, retains_before: int
) -> None:
    [repeat] = rig.events("dose_event_repeated")
    assert repeat.fields == {
        "message": "DosePresented",
        "dispense_id": dispense_id,
        "sachet_index": index,
        "slot_id": SLOT_0800,
    }
    assert any(isinstance(a, Emit) for a in actions)  # recorded: the ACK waits for its commit
    assert rig.events("unexpected_dispenser_event") == []
    assert rig.events("phantom_dispenser_event") == []
    assert len(rig.commands(Retain)) == retains_before  # nothing in the tray to take back
    rig.run_until(D1_1200 + timedelta(minutes=1))
    assert [b.slot_id for b in rig.begins()] == [SLOT_0800, SLOT_1200]  # on time
    assert rig.events("dose_held") == []


def test_a_presented_report_of_a_taken_dose_changes_nothing() -> None:
    rig, dispense_id, index = taken_rig()
    rig.run_until(D1_0800 + timedelta(minutes=30))
    actions = rig.msg(DosePresented(dispense_id, index))
    assert_a_recorded_repeat_that_changes_nothing(rig, list(actions), dispense_id, index, 0)


def test_a_presented_report_of_a_dose_taken_back_changes_nothing() -> None:
    rig, dispense_id, index = retained_rig()
    actions = rig.msg(DosePresented(dispense_id, index))
    assert_a_recorded_repeat_that_changes_nothing(rig, list(actions), dispense_id, index, 1)


def test_after_a_restart_a_presented_report_of_a_taken_dose_changes_nothing() -> None:
    rig, dispense_id, index = taken_rig()
    restart(rig)
    actions = rig.msg(DosePresented(dispense_id, index))
    assert_a_recorded_repeat_that_changes_nothing(rig, list(actions), dispense_id, index, 0)


def test_after_a_restart_a_presented_report_of_a_dose_taken_back_changes_nothing() -> None:
    rig, dispense_id, index = retained_rig()
    restart(rig)
    actions = rig.msg(DosePresented(dispense_id, index))
    assert_a_recorded_repeat_that_changes_nothing(rig, list(actions), dispense_id, index, 1)


def test_a_presented_report_naming_another_sachet_is_still_a_phantom() -> None:
    rig, dispense_id, index = taken_rig()
    rig.msg(DosePresented(dispense_id, index + 1))
    [phantom] = rig.events("phantom_dispenser_event")
    assert phantom.fields["reason"] == "sachet_index_mismatch"
    assert rig.events("dose_event_repeated") == []
    rig.run_until(D1_1200 + timedelta(minutes=1))
    assert [b.slot_id for b in rig.begins()] == [SLOT_0800, SLOT_1200]  # on time


NO_BIN = ALL_FEATURES & ~int(Feature.RETAIN_BIN) & ~int(Feature.BIN_LEVEL)


def left_in_tray_rig() -> tuple[Rig, int, int]:
    """08:00 and 12:00 on a dispenser without a bin: the 08:00 dose is missed and stays in the
    tray. Returns the rig and that dose's dispense id and sachet index."""
    rig = Rig(daily("08:00", "12:00"), sachet_times=[D1_0800, D1_1200], features=NO_BIN)
    rig.install()
    rig.run_until(D1_0800 + timedelta(minutes=61))
    assert rig.outcome_of(SLOT_0800).outcome is Outcome.MISSED
    dispense_id, index = rig.dispenser.tray, rig.dispenser.tray_index
    assert dispense_id is not None
    return rig, dispense_id, index


@pytest.mark.parametrize("restarted", [False, True])
def test_a_presented_report_of_a_missed_dose_still_in_the_tray_is_a_repeat(
    restarted: bool,
) -> None:
    """Year seed 15 (a full bin of 4): the missed 20:00 dose lay in the tray, and its report came
    again 2.6 h later; it was told as unexpected. After a restart the stored `left_in_tray` says
    the dose was seen presented."""
    rig, dispense_id, index = left_in_tray_rig()
    if restarted:
        restart(rig)
    actions = rig.msg(DosePresented(dispense_id, index))
    [repeat] = rig.events("dose_event_repeated")
    assert repeat.fields["slot_id"] == SLOT_0800
    assert any(isinstance(a, Emit) for a in actions)
    assert rig.events("unexpected_dispenser_event") == []
    assert rig.events("phantom_dispenser_event") == []
    rig.run_until(D1_1200 + timedelta(minutes=1))
    assert [b.slot_id for b in rig.begins()] == [SLOT_0800]  # still behind the dose in the tray


def test_a_late_presentation_is_told_once_and_its_repeat_is_a_repeat() -> None:
    """A slot ended while its Dispense went unanswered; the dose's DosePresented comes after:
    news, told as unexpected (and taken back into the bin). The same report again is a repeat."""
    rig = morning_rig()
    rig.install()
    rig.auto = False
    rig.run_until(D1_0800)
    [begin] = rig.begins()
    rig.outbox.clear()  # the Dispense's outcome never comes
    rig.run_until(D1_0800 + timedelta(hours=2))  # the slot ends missed
    rig.auto = True
    rig.msg(DosePresented(begin.dispense_id, begin.sachet_index))
    assert len(rig.events("unexpected_dispenser_event")) == 1
    retains = len(rig.commands(Retain))
    rig.msg(DosePresented(begin.dispense_id, begin.sachet_index))
    assert len(rig.events("unexpected_dispenser_event")) == 1
    assert [e.fields["message"] for e in rig.events("dose_event_repeated")] == ["DosePresented"]
    assert len(rig.commands(Retain)) == retains


def test_a_presented_report_of_a_dose_taken_back_naming_another_sachet_is_a_phantom() -> None:
    rig, dispense_id, index = retained_rig()
    rig.msg(DosePresented(dispense_id, index + 1))
    [phantom] = rig.events("phantom_dispenser_event")
    assert (phantom.fields["reason"], phantom.fields["expected_sachet_index"]) == (
        "sachet_index_mismatch",
        index,
    )
    assert rig.events("dose_event_repeated") == []
    assert rig.events("unexpected_dispenser_event") == []
