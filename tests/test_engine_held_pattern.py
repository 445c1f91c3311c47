"""Hazard #10, first half: a due dose the engine holds is signalled at home (SPEC 4.5 `HELD`).

A held dose used to leave the dispenser dark and quiet. Now the engine wants `HELD` (or `FAULT` on
a dispenser without `HELD_PATTERN`) until the hold ends, ranked below a dose waiting in the tray
and below a technical alarm (docs/engine.md, "Local sound and light"). Virtual time, fake
dispenser (tests/test_engine.py's `Rig`); `rig.sounding()` is what the dispenser shows.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from test_engine import ALL_FEATURES, OTHER, Rig, daily, morning_rig, utc

from agent.clock import TimeTrust
from agent.engine.dispenser_mirror import desired_pattern
from agent.engine.lifecycle import Phase, SlotRun
from agent.engine.types import EngineConfig, EscalationStep, LinkUp, Outcome, Silence, Tick
from protocol.messages import (
    AlertPattern,
    Dispense,
    FaultChanged,
    FaultCode,
    Feature,
    ResultCode,
    SetAlert,
)

HELD_FEATURES = ALL_FEATURES | int(Feature.HELD_PATTERN)
DUE = utc(2026, 3, 2, 7, 0)  # the 08:00 (Oslo) dose of morning_rig
SLOT = "2026-03-02T08:00"


def no_roll_rig(features: int = ALL_FEATURES) -> Rig:
    rig = morning_rig(features=features)
    rig.dispenser.loaded = False
    return rig


def test_no_roll_at_due_time_shows_held_until_the_dose_is_given() -> None:
    rig = no_roll_rig(features=HELD_FEATURES)
    rig.install(roll=False)
    rig.run_until(DUE - timedelta(minutes=1))
    assert rig.sounding() is AlertPattern.OFF, "nothing due: dark"

    rig.run_until(DUE + timedelta(minutes=1))
    assert rig.events("dose_held")[0].fields["reason"] == "no_roll"
    assert rig.sounding() is AlertPattern.HELD

    rig.insert_roll()  # the nurse brings the roll: the dose goes out at once
    assert rig.dispenser.dispensed == [0]
    assert rig.sounding() is AlertPattern.REMINDER
    rig.take()
    assert rig.sounding() is AlertPattern.OFF


def test_a_dispenser_without_held_pattern_gets_fault_and_never_held() -> None:
    rig = no_roll_rig()  # ALL_FEATURES: no HELD_PATTERN
    rig.install(roll=False)
    rig.run_until(DUE + timedelta(minutes=1))
    assert rig.sounding() is AlertPattern.FAULT
    assert AlertPattern.HELD not in rig.patterns_sent()


def test_the_hold_ends_with_the_slot_and_the_dispenser_goes_dark() -> None:
    rig = no_roll_rig(features=HELD_FEATURES)
    rig.install(roll=False)
    rig.run_until(DUE + timedelta(minutes=59))
    assert rig.sounding() is AlertPattern.HELD
    rig.run_until(DUE + timedelta(minutes=61))  # undispensed_deadline (60 min) passed
    assert rig.outcome_of(SLOT).outcome is Outcome.MISSED
    assert rig.outcome_of(SLOT).reason == "not_dispensed:no_roll"
    assert rig.sounding() is AlertPattern.OFF


def test_a_jam_at_due_time_shows_held_and_its_clearing_gives_the_dose() -> None:
    rig = morning_rig(features=HELD_FEATURES)
    rig.install()
    rig.msg(FaultChanged(FaultCode.JAM, True, "cutter"))
    rig.run_until(DUE - timedelta(minutes=5))
    assert rig.sounding() is AlertPattern.OFF, "a jam with no dose due is the centre's business"
    rig.run_until(DUE + timedelta(minutes=10))
    assert rig.sounding() is AlertPattern.HELD
    rig.msg(FaultChanged(FaultCode.JAM, False, ""))
    assert rig.dispenser.dispensed == [0]
    assert rig.sounding() is AlertPattern.REMINDER


def test_a_dose_refused_by_the_dispenser_is_held_with_the_same_dispense_id() -> None:
    rig = morning_rig(features=HELD_FEATURES)
    rig.install()
    rig.dispenser.forced[Dispense] = ResultCode.LOCKED  # a technician's lock, say
    rig.run_until(DUE + timedelta(minutes=1))
    assert len(rig.begins()) == 1, "a dispense id was taken, then refused"
    assert rig.dispenser.dispensed == []
    assert rig.sounding() is AlertPattern.HELD


def test_a_foreign_roll_shows_fault_not_held() -> None:
    rig = morning_rig(features=HELD_FEATURES)
    rig.dispenser.roll_patient = OTHER
    rig.install()
    rig.run_until(DUE + timedelta(minutes=1))
    assert rig.sounding() is AlertPattern.FAULT


def test_a_dose_in_the_tray_outranks_the_next_dose_held_behind_it() -> None:
    """08:00 presented and not taken; 08:30 due and waits behind it: the patient is asked for the
    dose in the tray, URGENT once it escalates; a hold never shows over them."""
    times = [utc(2026, 3, 2, 7, 0), utc(2026, 3, 2, 7, 30)]
    urgent_late = EngineConfig(
        escalation=(EscalationStep(timedelta(minutes=45), AlertPattern.URGENT, notify=True),)
    )
    rig = Rig(
        daily("08:00", "08:30"), sachet_times=times, features=HELD_FEATURES, config=urgent_late
    )
    rig.install()
    rig.run_until(utc(2026, 3, 2, 7, 31))
    assert [(s.slot_id, s.phase) for s in rig.engine.status().open_slots] == [
        ("2026-03-02T08:00", "presented"),
        ("2026-03-02T08:30", "waiting"),
    ]
    assert rig.sounding() is AlertPattern.REMINDER
    rig.run_until(utc(2026, 3, 2, 7, 46))  # the 08:00 dose escalates
    assert rig.sounding() is AlertPattern.URGENT
    assert AlertPattern.HELD not in rig.patterns_sent()


def test_a_dose_in_the_tray_outranks_a_hold_for_an_untrusted_clock() -> None:
    """The clock loses its trust while the 08:00 dose waits in the tray: every later dose is held,
    but the patient is still asked for the one in the tray."""
    rig = morning_rig(features=HELD_FEATURES)
    rig.install()
    rig.run_until(DUE + timedelta(minutes=1))
    assert rig.sounding() is AlertPattern.REMINDER
    rig.clock.set_trust(TimeTrust.UNTRUSTED)
    rig.run_until(DUE + timedelta(minutes=20))
    assert rig.sounding() is AlertPattern.REMINDER
    rig.run_until(DUE + timedelta(minutes=31))
    assert rig.sounding() is AlertPattern.URGENT
    rig.take()
    assert rig.sounding() is AlertPattern.HELD, "nothing in the tray: the hold shows"


def _run(
    phase: Phase, pattern: AlertPattern = AlertPattern.REMINDER, held: bool = False
) -> SlotRun:
    return SlotRun(
        "s",
        DUE,
        "",
        phase=phase,
        pattern=pattern,
        held_reason="no_roll" if held else None,
        presented_mono=1.0 if phase is Phase.PRESENTED else None,
    )


# (foreign roll, presented pattern or None, a run held, every dose held) -> shown
RANKING = [
    ((False, None, False, False), AlertPattern.OFF),
    ((False, None, True, False), AlertPattern.HELD),
    ((False, None, False, True), AlertPattern.HELD),
    ((False, AlertPattern.REMINDER, True, True), AlertPattern.REMINDER),
    ((False, AlertPattern.URGENT, True, True), AlertPattern.URGENT),
    ((True, None, True, True), AlertPattern.FAULT),
    ((True, AlertPattern.URGENT, False, False), AlertPattern.FAULT),
]


@pytest.mark.parametrize(("case", "shown"), RANKING)
def test_pattern_ranking(
    case: tuple[bool, AlertPattern | None, bool, bool], shown: AlertPattern
) -> None:
    foreign, presented, held, holding_all = case
    runs = []
    if presented is not None:
        runs.append(_run(Phase.PRESENTED, presented))
    if held:
        runs.append(_run(Phase.WAITING, held=True))
    assert desired_pattern(False, foreign, runs, holding_all, held_supported=True) is shown
    fallback = AlertPattern.FAULT if shown is AlertPattern.HELD else shown
    assert desired_pattern(False, foreign, runs, holding_all, held_supported=False) is fallback
    assert desired_pattern(True, foreign, runs, holding_all, held_supported=True) is (
        AlertPattern.OFF
    )


def test_a_run_in_the_tray_is_never_held_whatever_its_last_reason() -> None:
    refused_then_confirmed = replace(
        _run(Phase.DISPENSING, held=True), dispense_id=7, confirmed_mono=5.0
    )
    assert desired_pattern(False, False, [refused_then_confirmed], False, True) is (
        AlertPattern.OFF
    )


def test_silence_turns_held_off_for_its_duration_only() -> None:
    rig = no_roll_rig(features=HELD_FEATURES)
    rig.install(roll=False)
    rig.run_until(DUE + timedelta(minutes=1))
    rig.feed(Silence(timedelta(minutes=10)))
    assert rig.sounding() is AlertPattern.OFF
    rig.run_until(DUE + timedelta(minutes=12))
    assert rig.sounding() is AlertPattern.HELD


def test_an_untrusted_clock_holds_every_dose_so_held_shows_until_trust_returns() -> None:
    """With an untrusted clock the engine cannot tell which dose is due and gives none: in doubt,
    a dose is held."""
    rig = morning_rig(features=HELD_FEATURES, trust=TimeTrust.UNTRUSTED)
    rig.install()
    assert rig.sounding() is AlertPattern.HELD
    rig.clock.set_trust(TimeTrust.SYNCHRONISED)
    rig.feed(Tick())
    assert rig.sounding() is AlertPattern.OFF


def test_an_unbound_unit_with_an_untrusted_clock_stays_dark() -> None:
    rig = morning_rig(features=HELD_FEATURES, trust=TimeTrust.UNTRUSTED)
    rig.feed(LinkUp(rig.caps))
    assert rig.sounding() is AlertPattern.OFF
    assert rig.commands(SetAlert) == []
