"""A missed dose the dispenser would not take back (SAFETY.md H15): a Retain refused because the
bin was full is sent again once the dispenser reports room (its bin fault cleared, or a BinLevel
with room), at most RETAIN_BIN_FULL_TRIES times; meanwhile the centre knows which dose is stuck
in the tray (`dose_stuck_in_tray`) and the next dose's hold says why; a patient who takes the
stuck dose meanwhile has taken it late (the minimum interval holds the next one).

Dates are in March 2026, Europe/Oslo is UTC+1: local 08:00 is 07:00 UTC.
"""

from __future__ import annotations

from datetime import timedelta

from test_engine import ALL_FEATURES, Rig, daily, morning_rig, utc
from test_pause_safety import four_a_day_rig

from agent.engine.types import LinkDown, LinkUp, Outcome, PauseWindow, StartPause
from hw.dispenser import BinEntry
from protocol.messages import (
    BinLevel,
    FaultChanged,
    FaultCode,
    Feature,
    GetStatus,
    ResultCode,
    Retain,
)

D1_0800 = utc(2026, 3, 2, 7, 0)
MISSED_AT = D1_0800 + timedelta(minutes=61)  # grace 60 min: missed, Retain refused
D2_0800 = utc(2026, 3, 3, 7, 0)
SLOT_1 = "2026-03-02T08:00"
SLOT_2 = "2026-03-03T08:00"


def stuck_after_a_refused_retain(rig: Rig) -> int:
    """The 08:00 dose is missed and the dispenser refuses to take it back: bin full."""
    rig.dispenser.forced[Retain] = ResultCode.BIN_FULL
    rig.install()
    rig.run_until(MISSED_AT)
    dispense_id = rig.begins()[0].dispense_id
    assert rig.outcome_of(SLOT_1).outcome is Outcome.MISSED
    assert rig.commands(Retain) == [Retain(0, dispense_id)]
    assert rig.dispenser.tray == dispense_id
    return dispense_id


def nurse_empties_the_bin(rig: Rig) -> None:
    rig.dispenser.forced.pop(Retain)
    rig.msg(FaultChanged(FaultCode.BIN_FULL, False, "bin emptied"))


def held(rig: Rig, slot_id: str) -> list[dict[str, object]]:
    return [e.fields for e in rig.events("dose_held") if e.fields["slot_id"] == slot_id]


def test_a_retain_refused_for_a_full_bin_is_sent_again_once_the_bin_is_emptied() -> None:
    rig = morning_rig()
    dispense_id = stuck_after_a_refused_retain(rig)
    rig.run_until(utc(2026, 3, 2, 12, 0))
    assert len(rig.commands(Retain)) == 1  # nothing changed: not asked again
    nurse_empties_the_bin(rig)
    assert rig.commands(Retain) == [Retain(0, dispense_id), Retain(0, dispense_id)]
    assert rig.dispenser.tray is None
    assert len(rig.events("dose_retained")) == 1
    rig.run_until(D2_0800 + timedelta(minutes=1))
    assert [b.slot_id for b in rig.begins()] == [SLOT_1, SLOT_2]
    assert rig.dispenser.dispensed == [0, 1]
    assert held(rig, SLOT_2) == []


def test_the_centre_knows_which_dose_is_stuck_and_the_next_dose_says_why_it_waits() -> None:
    rig = morning_rig()
    dispense_id = stuck_after_a_refused_retain(rig)
    stuck = rig.events("dose_stuck_in_tray")
    assert len(stuck) == 1
    assert (stuck[0].priority.value, stuck[0].vkp_code) == ("medium", "3.24")
    assert stuck[0].fields == {
        "slot_id": SLOT_1,
        "dispense_id": dispense_id,
        "reason": "bin_full",
        "deviation": "dose_left_in_tray",
    }
    rig.run_until(D2_0800 + timedelta(minutes=5))  # the bin is still full at the next dose
    assert held(rig, SLOT_2) == [
        {
            "slot_id": SLOT_2,
            "reason": "dose_stuck_in_tray",
            "stuck_slot_id": SLOT_1,
            "stuck_dispense_id": dispense_id,
            "stuck_reason": "bin_full",
        }
    ]
    nurse_empties_the_bin(rig)  # in time for the second dose: it is given
    assert [e.fields["slot_id"] for e in rig.events("dose_stuck_in_tray_cleared")] == [SLOT_1]
    assert rig.dispenser.dispensed == [0, 1]
    rig.take()
    assert rig.outcome_of(SLOT_2).outcome is Outcome.TAKEN


def test_a_bin_level_with_room_is_enough_to_try_again() -> None:
    # a dispenser that reports its level but never its bin fault: the agent asks its Status
    rig = morning_rig(features=ALL_FEATURES | int(Feature.BIN_LEVEL))
    dispense_id = stuck_after_a_refused_retain(rig)
    statuses = len(rig.commands(GetStatus))
    rig.dispenser.forced.pop(Retain)
    rig.msg(BinLevel(30, 0))
    assert len(rig.commands(GetStatus)) == statuses + 1
    assert rig.commands(Retain) == [Retain(0, dispense_id), Retain(0, dispense_id)]
    assert rig.dispenser.tray is None


def test_a_dispenser_that_keeps_refusing_is_asked_a_bounded_number_of_times() -> None:
    rig = morning_rig()
    stuck_after_a_refused_retain(rig)
    for _ in range(6):  # it says the bin has room, then refuses again
        rig.msg(FaultChanged(FaultCode.BIN_FULL, False, "flapping"))
    assert len(rig.commands(Retain)) == 3
    assert len(rig.events("dose_stuck_in_tray")) == 1
    assert rig.events("dose_stuck_in_tray_cleared") == []
    rig.run_until(D2_0800 + timedelta(minutes=5))
    assert [f["stuck_reason"] for f in held(rig, SLOT_2)] == ["retain_refused"]


def test_a_stuck_dose_taken_meanwhile_is_a_late_intake_and_is_not_asked_back() -> None:
    rig = Rig(
        daily("08:00", "12:00"),
        sachet_times=[D1_0800, utc(2026, 3, 2, 11, 0), D2_0800],
    )
    stuck_after_a_refused_retain(rig)
    rig.run_until(utc(2026, 3, 2, 10, 50))
    rig.take()  # the patient takes the missed dose 10 min before the 12:00 one
    late = rig.events("dose_taken_late")
    assert [e.fields["slot_id"] for e in late] == [SLOT_1]
    assert [e.fields["slot_id"] for e in rig.events("dose_stuck_in_tray_cleared")] == [SLOT_1]
    nurse_empties_the_bin(rig)
    assert len(rig.commands(Retain)) == 1  # nothing left to take back
    rig.run_until(utc(2026, 3, 2, 11, 5))
    assert len(rig.begins()) == 1  # minimum interval (2 h) from the late intake
    assert [f["reason"] for f in held(rig, "2026-03-02T12:00")] == ["min_interval"]


def test_a_stuck_dose_gone_unseen_clears_when_the_status_says_the_tray_is_empty() -> None:
    rig = morning_rig()
    stuck_after_a_refused_retain(rig)
    rig.feed(LinkDown("unplugged"))
    rig.dispenser.tray = None  # lifted out while nobody could hear it
    rig.feed(LinkUp(rig.caps))
    assert [e.fields["slot_id"] for e in rig.events("dose_stuck_in_tray_cleared")] == [SLOT_1]
    nurse_empties_the_bin(rig)
    assert len(rig.commands(Retain)) == 1


def test_a_missed_dose_left_by_a_dispenser_without_a_bin_is_stuck_too() -> None:
    rig = morning_rig(features=ALL_FEATURES & ~int(Feature.RETAIN_BIN))
    rig.install()
    rig.run_until(MISSED_AT)
    assert rig.commands(Retain) == []
    stuck = rig.events("dose_stuck_in_tray")
    assert [(e.fields["slot_id"], e.fields["reason"]) for e in stuck] == [(SLOT_1, "no_retain_bin")]
    rig.run_until(D2_0800 + timedelta(minutes=5))
    assert [f["reason"] for f in held(rig, SLOT_2)] == ["dose_stuck_in_tray"]


# --- on the firmware model: a pause that begins with a full bin ------------------------------


def test_a_dose_left_in_the_tray_at_a_pause_start_by_a_full_bin_goes_back_once_emptied() -> None:
    rig = four_a_day_rig()
    rig.model.bin = [BinEntry(900 + i, 0, "discard") for i in range(30)]  # full: 30 places
    rig.physical([BinLevel(30, 30), *rig.model.set_fault(FaultCode.BIN_FULL, True, "full")])
    rig.run_until(utc(2026, 3, 3, 7, 5))  # the 08:00 dose is in the tray, not taken
    rig.feed(StartPause(PauseWindow("ambulance", utc(2026, 3, 3, 7, 20), utc(2026, 3, 10, 6))))
    rig.run_until(utc(2026, 3, 3, 8, 0))
    assert [e.fields["reason"] for e in rig.events("dose_left_in_tray")] == ["bin_full"]
    assert [e.fields["reason"] for e in rig.events("dose_stuck_in_tray")] == ["bin_full"]
    assert rig.model.tray is not None
    rig.run_until(utc(2026, 3, 4, 10, 0))
    rig.physical(rig.model.empty_bin())  # a nurse comes by while the patient is away
    assert rig.model.tray is None
    assert [entry.how for entry in rig.model.bin] == ["retain"]
    assert len(rig.events("dose_stuck_in_tray_cleared")) == 1
    assert [e.kind for e in rig.high()] == ["fault_bin_full"]  # no missed alarm while away
