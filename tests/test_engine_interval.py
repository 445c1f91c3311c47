"""Double dose and wrong sachet (SAFETY.md H2, H3): the minimum interval between two doses made
available, early TAKE bounded by it, a missed dose taken late holding the next one, and a sachet
given only for the slot it was packed for (tolerance strictly below half the spacing).

Dates are in March 2026, Europe/Oslo is UTC+1: local 08:00 is 07:00 UTC.
"""

from __future__ import annotations

import json
from datetime import date, timedelta

from model_rig import ModelRig, dose_instants, make_roll
from model_rig import utc as model_utc
from test_engine import ALL_FEATURES, OTHER, PATIENT, Rig, daily, utc

from agent.engine.engine import DoseEngine, EngineState
from agent.engine.types import (
    Binding,
    EngineConfig,
    LinkDown,
    LinkUp,
    Outcome,
    PauseWindow,
    SetBinding,
    StartPause,
)
from protocol.messages import (
    ButtonId,
    ButtonPressed,
    FaultChanged,
    FaultCode,
    Feature,
    ResultCode,
    Retain,
    RollRemoved,
)

D1_0800 = utc(2026, 3, 2, 7, 0)
D1_0830 = utc(2026, 3, 2, 7, 30)
D1_0900 = utc(2026, 3, 2, 8, 0)
NO_BIN = ALL_FEATURES & ~int(Feature.RETAIN_BIN)


def hourly_rig(**kwargs: object) -> Rig:
    """Doses at 08:00 and 09:00 daily (the default minimum interval is then 30 min)."""
    times = [D1_0800, D1_0900, utc(2026, 3, 3, 7, 0), utc(2026, 3, 3, 8, 0)]
    return Rig(daily("08:00", "09:00"), sachet_times=times, **kwargs)  # type: ignore[arg-type]


def begun_at(rig: Rig, slot_id: str) -> list[str]:
    return [b.slot_id for b in rig.begins() if b.slot_id == slot_id]


def restart(rig: Rig) -> None:
    """The agent restarts from its stored state (JSON) and reconnects."""
    state = EngineState.from_json(rig.engine.state.to_json())
    rig.engine = DoseEngine(rig.config, state, rig.clock.now())
    rig.feed(LinkUp(rig.caps))
    rig.insert_roll()


def held_reasons(rig: Rig, slot_id: str) -> list[object]:
    return [e.fields["reason"] for e in rig.events("dose_held") if e.fields["slot_id"] == slot_id]


# --- hazard #1: TAKE right after an intake ---------------------------------------------------


def test_take_pressed_30_s_after_an_intake_does_not_present_the_next_dose() -> None:
    rig = hourly_rig()
    rig.install()
    rig.run_until(D1_0800 + timedelta(minutes=2))
    rig.take()
    rig.run_for(timedelta(seconds=30))
    rig.msg(ButtonPressed(ButtonId.TAKE))
    assert begun_at(rig, "2026-03-02T09:00") == []
    assert rig.dispenser.dispensed == [0]
    pressed = rig.events("button_pressed")
    assert [(e.fields["button"], e.fields.get("reason")) for e in pressed] == [
        ("take", "min_interval")
    ]
    assert pressed[0].fields["not_before_utc"] == "2026-03-02T07:32:00Z"


def test_take_after_the_minimum_interval_starts_the_next_dose_early() -> None:
    rig = hourly_rig()
    rig.install()
    rig.run_until(D1_0800 + timedelta(minutes=2))
    rig.take()
    rig.run_until(D1_0800 + timedelta(minutes=31, seconds=59))
    rig.msg(ButtonPressed(ButtonId.TAKE))  # one second short of 30 min: refused
    assert begun_at(rig, "2026-03-02T09:00") == []
    rig.run_until(utc(2026, 3, 2, 7, 32))
    rig.msg(ButtonPressed(ButtonId.TAKE))  # exactly 30 min after the intake
    assert begun_at(rig, "2026-03-02T09:00") == ["2026-03-02T09:00"]
    assert rig.dispenser.dispensed == [0, 1]


def test_take_while_a_missed_dose_is_still_in_the_tray_starts_nothing() -> None:
    rig = hourly_rig(features=NO_BIN)
    rig.install()
    rig.run_until(D1_0800 + timedelta(minutes=61))  # missed, left in the tray (no bin)
    assert rig.outcome_of("2026-03-02T08:00").outcome is Outcome.MISSED
    rig.run_until(utc(2026, 3, 3, 6, 30))
    rig.msg(ButtonPressed(ButtonId.TAKE))  # next day's 08:00 is inside the early window
    assert begun_at(rig, "2026-03-03T08:00") == []


def test_explicit_minimum_interval_of_the_schedule_bounds_take() -> None:
    schedule = daily("08:00", "09:00", min_interval=timedelta(minutes=45))
    rig = Rig(schedule, sachet_times=[D1_0800, D1_0900])
    rig.install()
    rig.run_until(D1_0800 + timedelta(minutes=2))
    rig.take()
    rig.run_until(utc(2026, 3, 2, 7, 46))
    rig.msg(ButtonPressed(ButtonId.TAKE))
    assert begun_at(rig, "2026-03-02T09:00") == []
    rig.run_until(utc(2026, 3, 2, 7, 47))
    rig.msg(ButtonPressed(ButtonId.TAKE))
    assert begun_at(rig, "2026-03-02T09:00") == ["2026-03-02T09:00"]


# --- a due dose held by the minimum interval -------------------------------------------------


def test_due_dose_is_held_within_the_interval_and_dispensed_as_soon_as_allowed() -> None:
    rig = hourly_rig()
    rig.install()
    rig.run_until(D1_0800 + timedelta(minutes=50))
    rig.take()  # 07:50 UTC: the 09:00 dose (08:00 UTC) may come at 08:20 UTC at the earliest
    rig.run_until(D1_0900)
    assert begun_at(rig, "2026-03-02T09:00") == []
    held = [e for e in rig.events("dose_held") if e.fields["slot_id"] == "2026-03-02T09:00"]
    assert [(e.fields["reason"], e.fields["not_before_utc"]) for e in held] == [
        ("min_interval", "2026-03-02T08:20:00Z")
    ]
    rig.run_until(D1_0900 + timedelta(minutes=19, seconds=59))
    assert begun_at(rig, "2026-03-02T09:00") == []
    rig.run_until(utc(2026, 3, 2, 8, 20))
    assert begun_at(rig, "2026-03-02T09:00") == ["2026-03-02T09:00"]
    rig.run_for(timedelta(minutes=1))
    rig.take()
    assert rig.outcome_of("2026-03-02T09:00").outcome is Outcome.TAKEN


def test_dose_held_by_the_interval_past_its_window_is_refused() -> None:
    # minimum interval = the spacing (60 min); a jam holds the 08:00 dose until 07:30 UTC and it
    # is taken at 08:10 UTC: the 09:00 dose could come at 09:10 UTC, after its window (09:00 UTC)
    schedule = daily("08:00", "09:00", min_interval=timedelta(minutes=60))
    rig = Rig(schedule, sachet_times=[D1_0800, D1_0900])
    rig.install()
    rig.msg(FaultChanged(FaultCode.JAM, True, ""))
    rig.run_until(utc(2026, 3, 2, 7, 30))
    rig.msg(FaultChanged(FaultCode.JAM, False, ""))
    rig.run_until(utc(2026, 3, 2, 8, 10))
    rig.take()
    rig.run_until(utc(2026, 3, 2, 10, 0))
    assert begun_at(rig, "2026-03-02T09:00") == []
    outcome = rig.outcome_of("2026-03-02T09:00")
    assert (outcome.outcome, outcome.reason) == (Outcome.REFUSED, "min_interval")
    assert held_reasons(rig, "2026-03-02T09:00") == ["min_interval"]


def test_the_last_intake_survives_a_restart() -> None:
    rig = hourly_rig()
    rig.install()
    rig.run_until(D1_0800 + timedelta(minutes=50))
    rig.take()
    restart(rig)
    rig.run_until(D1_0900 + timedelta(minutes=5))
    assert begun_at(rig, "2026-03-02T09:00") == []
    rig.run_until(utc(2026, 3, 2, 8, 20))
    assert begun_at(rig, "2026-03-02T09:00") == ["2026-03-02T09:00"]


def test_a_forward_wall_step_does_not_shorten_the_interval() -> None:
    rig = hourly_rig()
    rig.install()
    rig.run_until(D1_0800 + timedelta(minutes=2))
    rig.take()
    rig.clock.advance(60)
    rig.clock.jump_wall(timedelta(minutes=29))  # wall says 30 min since the intake, it was 1
    rig.msg(ButtonPressed(ButtonId.TAKE))
    assert begun_at(rig, "2026-03-02T09:00") == []


def test_a_dose_gone_from_the_tray_unseen_counts_as_an_intake_when_noticed() -> None:
    # the DoseTaken is lost with the link; the Status after LinkUp says the tray is empty: in
    # doubt, the patient took it then, and the next dose waits the minimum interval from there
    rig = hourly_rig()
    rig.install()
    rig.run_until(D1_0800 + timedelta(minutes=5))
    rig.feed(LinkDown("unplugged"))
    rig.dispenser.tray = None  # taken while the link is down: nobody hears of it
    rig.run_until(D1_0800 + timedelta(minutes=50))
    rig.feed(LinkUp(rig.caps))
    rig.run_until(D1_0900 + timedelta(minutes=19))
    assert begun_at(rig, "2026-03-02T09:00") == []
    assert held_reasons(rig, "2026-03-02T09:00")[-1] == "min_interval"
    rig.run_until(D1_0900 + timedelta(minutes=20))
    assert begun_at(rig, "2026-03-02T09:00") == ["2026-03-02T09:00"]


def test_a_new_binding_forgets_the_previous_patients_last_intake() -> None:
    rig = hourly_rig()
    rig.install()
    rig.run_until(D1_0800 + timedelta(minutes=2))
    rig.take()
    assert rig.engine.state.last_intake_utc == D1_0800 + timedelta(minutes=2)
    rig.feed(SetBinding(Binding("patient-99aa")))
    assert rig.engine.state.last_intake_utc is None


def test_state_keeps_the_last_intake_and_an_explicit_interval_through_json() -> None:
    schedule = daily("08:00", "09:00", min_interval=timedelta(minutes=45))
    rig = Rig(schedule, sachet_times=[D1_0800, D1_0900])
    rig.install()
    rig.run_until(D1_0800 + timedelta(minutes=2))
    rig.take()
    again = EngineState.from_json(rig.engine.state.to_json())
    assert again.last_intake_utc == D1_0800 + timedelta(minutes=2)
    assert again.schedule is not None
    assert again.schedule.min_interval == timedelta(minutes=45)
    # state stored before these existed: no last intake, the schedule's default interval
    old = json.loads(rig.engine.state.to_json())
    del old["last_intake_utc"]
    del old["schedule"]["min_interval_s"]
    loaded = EngineState.from_json(json.dumps(old))
    assert loaded.last_intake_utc is None
    assert loaded.schedule is not None
    assert loaded.schedule.min_interval is None


# --- hazard #2: a missed dose left in the tray and taken late --------------------------------


def missed_then_taken_late(rig: Rig) -> None:
    rig.install()
    rig.run_until(D1_0800 + timedelta(minutes=61))  # 08:00 missed, still in the tray
    assert rig.outcome_of("2026-03-02T08:00").outcome is Outcome.MISSED
    # (with a bin: tray_occupied while the Retain is on its way, then refused: stuck)
    assert held_reasons(rig, "2026-03-02T09:00")[-1] == "dose_stuck_in_tray"
    rig.run_until(utc(2026, 3, 2, 8, 10))
    rig.take()  # the patient takes the missed 08:00 dose at 08:10 UTC


def test_missed_dose_left_in_the_tray_and_taken_late_holds_the_next_dose() -> None:
    rig = hourly_rig(features=NO_BIN)
    missed_then_taken_late(rig)
    assert begun_at(rig, "2026-03-02T09:00") == []  # not within a minute of the late intake
    assert held_reasons(rig, "2026-03-02T09:00") == ["dose_stuck_in_tray", "min_interval"]
    rig.run_until(D1_0900 + timedelta(minutes=39, seconds=59))
    assert begun_at(rig, "2026-03-02T09:00") == []
    rig.run_until(utc(2026, 3, 2, 8, 40))
    assert begun_at(rig, "2026-03-02T09:00") == ["2026-03-02T09:00"]


def test_missed_dose_taken_late_is_told_to_the_centre_above_info() -> None:
    rig = hourly_rig(features=NO_BIN)
    missed_then_taken_late(rig)
    late = rig.events("dose_taken_late")
    assert len(late) == 1
    assert (late[0].priority.value, late[0].vkp_code) == ("medium", "3.3")
    assert late[0].fields["slot_id"] == "2026-03-02T08:00"
    assert late[0].fields["taken_at"] == "2026-03-02T08:10:00Z"
    assert late[0].fields["next_dose_not_before_utc"] == "2026-03-02T08:40:00Z"


def test_missed_dose_kept_in_the_tray_by_a_full_bin_holds_the_next_dose_too() -> None:
    rig = hourly_rig()
    rig.dispenser.forced[Retain] = ResultCode.BIN_FULL
    missed_then_taken_late(rig)
    assert rig.commands(Retain) != []
    assert begun_at(rig, "2026-03-02T09:00") == []
    rig.run_until(utc(2026, 3, 2, 8, 40))
    assert begun_at(rig, "2026-03-02T09:00") == ["2026-03-02T09:00"]


# --- hazard #3: a sachet only for the slot it was packed for ---------------------------------


def close_rig(**kwargs: object) -> Rig:
    """Doses at 08:00 and 08:30 (30 min apart), one sachet for each."""
    times = [D1_0800, D1_0830, utc(2026, 3, 2, 19, 0)]
    return Rig(daily("08:00", "08:30", "20:00"), sachet_times=times, **kwargs)  # type: ignore[arg-type]


def test_wrong_roll_until_0836_then_the_right_one_gives_each_sachet_its_own_slot() -> None:
    # the case: a 30 min undispensed deadline settles the 08:00 slot at 08:30 (local)
    rig = close_rig(config=EngineConfig(undispensed_deadline=timedelta(minutes=30)))
    rig.dispenser.roll_patient, rig.dispenser.roll_id = OTHER, "RX"
    rig.install()
    rig.run_until(utc(2026, 3, 2, 7, 36))
    assert rig.outcome_of("2026-03-02T08:00").outcome is Outcome.REFUSED
    rig.msg(RollRemoved("RX"))
    rig.dispenser.roll_patient, rig.dispenser.roll_id = PATIENT, "R1"
    rig.insert_roll()
    presented = [
        (e.fields["slot_id"], e.fields["sachet_index"]) for e in rig.events("dose_presented")
    ]
    assert presented == [("2026-03-02T08:30", 1)]  # the 08:30 sachet, not the 08:00 one
    assert rig.dispenser.discarded == [0]  # the settled 08:00 slot's sachet goes to the bin


def test_jam_past_the_first_deadline_does_not_give_its_sachet_to_the_next_slot() -> None:
    rig = close_rig()
    rig.install()
    rig.msg(FaultChanged(FaultCode.JAM, True, ""))
    rig.run_until(utc(2026, 3, 2, 8, 5))  # 08:00 (local) missed at its deadline, 09:00
    assert rig.outcome_of("2026-03-02T08:00").outcome is Outcome.MISSED
    rig.msg(FaultChanged(FaultCode.JAM, False, ""))
    assert rig.dispenser.discarded == [0]
    assert rig.dispenser.dispensed == [1]
    presented = rig.events("dose_presented")
    assert [(e.fields["slot_id"], e.fields["sachet_index"]) for e in presented] == [
        ("2026-03-02T08:30", 1)
    ]


def test_on_a_spring_forward_day_the_true_spacing_caps_the_tolerance() -> None:
    # 01:50 and 03:10 are 80 min apart on the clock face but 20 min in true time on 2026-03-29
    # (02:00 -> 03:00): the 01:50 sachet must not pass as the 03:10 dose (tolerance < 10 min)
    first, second = utc(2026, 3, 29, 0, 50), utc(2026, 3, 29, 1, 10)
    rig = Rig(
        daily("01:50", "03:10"),
        start=utc(2026, 3, 28, 20, 0),
        sachet_times=[first, second, utc(2026, 3, 30, 0, 50)],
    )
    rig.install()
    rig.msg(FaultChanged(FaultCode.JAM, True, ""))
    rig.run_until(first + timedelta(minutes=61))  # the 01:50 slot ends at its deadline
    assert rig.outcome_of("2026-03-29T01:50").outcome is Outcome.MISSED
    rig.msg(FaultChanged(FaultCode.JAM, False, ""))
    presented = rig.events("dose_presented")
    assert [(e.fields["slot_id"], e.fields["sachet_index"]) for e in presented] == [
        ("2026-03-29T03:10", 1)
    ]
    assert rig.dispenser.discarded == [0]


def tolerance_rig(offset: timedelta) -> Rig:
    """08:00 and 08:30 daily; the roll's first sachet is packed for 08:00 + offset."""
    return Rig(
        daily("08:00", "08:30"),
        sachet_times=[D1_0800 + offset, D1_0830, utc(2026, 3, 3, 7, 0)],
        features=NO_BIN,  # a sachet off the slot is held (refused), not discarded
    )


def first_slot_result(offset: timedelta) -> tuple[list[int], list[object]]:
    rig = tolerance_rig(offset)
    rig.install()
    rig.run_until(D1_0800 + timedelta(seconds=1))
    return rig.dispenser.dispensed, held_reasons(rig, "2026-03-02T08:00")


# 30 min apart: the tolerance is strictly below 15 min, i.e. 14 min 59 s (whole seconds)
TOLERANCE = timedelta(minutes=14, seconds=59)
SECOND = timedelta(seconds=1)


def test_sachet_exactly_at_the_tolerance_is_given_on_either_side() -> None:
    assert first_slot_result(TOLERANCE) == ([0], [])
    assert first_slot_result(-TOLERANCE) == ([0], [])


def test_sachet_one_second_inside_the_tolerance_is_given() -> None:
    assert first_slot_result(TOLERANCE - SECOND) == ([0], [])
    assert first_slot_result(-(TOLERANCE - SECOND)) == ([0], [])


def test_sachet_one_second_outside_the_tolerance_is_not_given() -> None:
    assert first_slot_result(TOLERANCE + SECOND) == ([], ["sachet_time_mismatch"])
    assert first_slot_result(-(TOLERANCE + SECOND)) == ([], ["sachet_stale"])


def test_configured_tolerance_below_the_cap_is_kept() -> None:
    rig = Rig(
        daily("08:00", "08:30"),
        sachet_times=[D1_0800 + timedelta(minutes=6)],
        config=EngineConfig(sachet_time_tolerance=timedelta(minutes=5)),
        features=NO_BIN,
    )
    rig.install()
    rig.run_until(D1_0800 + timedelta(seconds=1))
    assert rig.dispenser.dispensed == []
    # 6 min off with a 5 min tolerance is no dose time of the schedule at all: a plan question
    # for a person (hazard #4), held the same way
    assert held_reasons(rig, "2026-03-02T08:00") == ["plan_mismatch"]


# --- travel pre-dispense (hazard #5) is not an intake and not held by the interval -----------


def test_a_trip_starting_right_after_an_intake_is_dispensed_without_waiting() -> None:
    # sachets taken along come out one after another (SAFETY.md H12): the minimum interval is
    # about doses made available to take now, not about packing the trip
    four = ("08:00", "12:00", "17:00", "22:00")
    rig = ModelRig(four, model_utc(2026, 3, 2, 5, 0))
    rig.install(make_roll("R1", dose_instants(four, date(2026, 3, 2), 28)))
    rig.run_until(model_utc(2026, 3, 2, 21, 10), take=True)  # 22:00 (21:00 UTC) just taken
    trip = PauseWindow(
        "trip",
        model_utc(2026, 3, 2, 21, 15),
        model_utc(2026, 3, 4, 6, 0),
        reason="travel",
        take_along=True,
    )
    rig.feed(StartPause(trip))
    rig.run_until(model_utc(2026, 3, 2, 21, 45), take=True)
    assert [index for _, index in rig.model.dispensed[4:]] == [4, 5, 6, 7]
    assert len(rig.events("travel_dispensed")) == 1


# --- a press is either a dose started early or reported as a press -----------------------------


def test_an_early_take_that_starts_a_dose_is_not_also_reported_as_a_press() -> None:
    rig = hourly_rig()
    rig.install()
    rig.run_until(D1_0800 - timedelta(minutes=30))  # inside the 60 min early window
    rig.msg(ButtonPressed(ButtonId.TAKE))
    assert begun_at(rig, "2026-03-02T08:00") == ["2026-03-02T08:00"]
    assert rig.events("button_pressed") == []  # the dose's own events say what happened


def test_a_take_early_for_a_paused_slot_starts_nothing_and_is_reported_as_a_press() -> None:
    rig = hourly_rig()
    rig.install()
    rig.feed(StartPause(PauseWindow("p-1", D1_0800 - timedelta(minutes=5), D1_0830)))
    rig.run_until(D1_0800 - timedelta(minutes=30))
    rig.msg(ButtonPressed(ButtonId.TAKE))
    assert rig.begins() == []
    assert [e.fields for e in rig.events("button_pressed")] == [{"button": "take"}]
