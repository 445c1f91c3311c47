"""Hazard #4 (SAFETY.md H6), medicine destroyed on a plan change: a sachet packed for a time the
unit's schedule lacks is held until someone decides (a schedule update, a discard decision from
the response centre, or a technician on site), never discarded on the agent's own initiative.

Engine tests on the virtual clock with the scripted dispenser of test_engine.py.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
from test_engine import OTHER, PATIENT, Rig, daily, utc

from agent.engine.engine import DoseEngine, EngineState
from agent.engine.types import (
    FROM_RESPONSE_CENTRE,
    ON_SITE,
    DiscardUnplanned,
    EngineConfig,
    EngineInputError,
    LinkDown,
    LinkUp,
    Outcome,
    PauseWindow,
    SetSchedule,
    StartPause,
)
from protocol.messages import Discard, Feature, SachetRead

# 08:00 and 20:00 in Oslo (CET in March: 07:00 and 19:00 UTC); the pharmacy's new roll also has
# a 14:00 sachet every day (13:00 UTC), which the unit's schedule lacks.
SCHEDULE = daily("08:00", "20:00")


def new_plan_times(days: range = range(2, 5)) -> list[datetime]:
    return [utc(2026, 3, d, h) for d in days for h in (7, 13, 19)]


def plan_rig() -> Rig:
    rig = Rig(SCHEDULE, sachet_times=new_plan_times())
    rig.install()
    return rig


def test_a_sachet_the_schedule_lacks_is_held_and_its_alert_latches_until_decided() -> None:
    rig = plan_rig()
    rig.run_until(utc(2026, 3, 2, 7, 5))
    rig.take()  # the 08:00 dose; the 14:00 sachet (index 1) comes to the reader
    rig.run_until(utc(2026, 3, 2, 12, 0))
    # not cut into the bin six hours early: nobody decided to destroy it
    assert rig.dispenser.discarded == []
    assert rig.commands(Discard) == []
    [alert] = rig.events("plan_mismatch")
    assert (alert.priority.value, alert.vkp_code) == ("high", "3.22")
    assert alert.alert_id is not None
    assert alert.fields["roll_id"] == "R1"
    assert alert.fields["sachet_index"] == 1
    assert alert.fields["intended_utc"] == "2026-03-02T13:00:00Z"
    # 20:00 is due behind the undecided sachet: held, with the reason
    rig.run_until(utc(2026, 3, 2, 19, 5))
    assert rig.dispenser.dispensed == [0]
    held = [e.fields["reason"] for e in rig.events("dose_held")]
    assert held[-1] == "plan_mismatch"
    # undecided at its deadline: refused (the agent would not destroy medicine to reach it)
    rig.run_until(utc(2026, 3, 2, 21, 0))
    outcome = rig.outcome_of("2026-03-02T20:00")
    assert (outcome.outcome, outcome.reason) == (Outcome.REFUSED, "plan_mismatch")
    # still latched: no later sachet clears it, nothing went to the bin, and one alert only
    rig.run_until(utc(2026, 3, 3, 8, 0))
    assert rig.events("plan_mismatch_cleared") == []
    assert rig.dispenser.discarded == []
    assert len(rig.events("plan_mismatch")) == 1
    [alert] = rig.events("plan_mismatch")
    assert latched(rig) == [(alert.alert_id, False)]
    unplanned = rig.engine.status().unplanned
    assert unplanned is not None
    assert (unplanned.roll_id, unplanned.sachet_index, unplanned.alert_id) == (
        "R1",
        1,
        alert.alert_id,
    )


# --- decisions --------------------------------------------------------------------------------


def at_reader_after_morning_dose() -> Rig:
    """08:00 taken; the unplanned 14:00 sachet (index 1) waits at the reader, alert latched."""
    rig = plan_rig()
    rig.run_until(utc(2026, 3, 2, 7, 5))
    rig.take()
    rig.run_until(utc(2026, 3, 2, 9, 0))
    assert len(rig.events("plan_mismatch")) == 1
    return rig


def latched(rig: Rig, kind: str = "plan_mismatch") -> list[tuple[str, bool]]:
    alerts = rig.engine.status().latched_alerts
    return [(a.alert_id, a.resolved) for a in alerts if a.kind == kind]


def test_a_discard_decision_from_the_centre_bins_that_sachet_and_resolves_the_alert() -> None:
    rig = at_reader_after_morning_dose()
    [alert] = rig.events("plan_mismatch")
    rig.feed(DiscardUnplanned("R1", 1, "operator-17", FROM_RESPONSE_CENTRE))
    assert rig.dispenser.discarded == [1]
    [decided] = rig.events("plan_mismatch_decided")
    assert decided.fields == {
        "alert_id": alert.alert_id,
        "decision": "discard",
        "roll_id": "R1",
        "sachet_index": 1,
        "by": "operator-17",
        "source": "response_centre",
        "schedule_version": 1,
    }
    [binned] = rig.events("sachet_discarded")
    assert binned.fields["reason"] == "discard_decided"
    assert (binned.fields["decided_by"], binned.fields["source"]) == (
        "operator-17",
        "response_centre",
    )
    assert latched(rig) == [(alert.alert_id, True)]  # resolved; stays until acknowledged
    rig.run_until(utc(2026, 3, 2, 19, 5))
    assert rig.dispenser.dispensed == [0, 2]  # the 20:00 dose is given
    # the decision was about one sachet: tomorrow's 14:00 sachet is held and alerted again
    rig.take()
    rig.run_until(utc(2026, 3, 3, 7, 5))
    rig.take()
    rig.run_for(timedelta(minutes=5))
    assert rig.dispenser.discarded == [1]
    assert [e.fields["sachet_index"] for e in rig.events("plan_mismatch")] == [1, 4]


def test_a_technicians_decision_for_the_whole_roll_bins_every_unplanned_sachet() -> None:
    rig = at_reader_after_morning_dose()
    rig.feed(DiscardUnplanned("R1", None, "tech-3", ON_SITE))
    assert rig.dispenser.discarded == [1]
    [decided] = rig.events("plan_mismatch_decided")
    assert (decided.fields["source"], decided.fields["sachet_index"]) == ("on_site", None)
    for day in (2, 3):
        rig.run_until(utc(2026, 3, day, 19, 5))
        rig.take()
        rig.run_until(utc(2026, 3, day + 1, 7, 5))
        rig.take()
        rig.run_for(timedelta(minutes=5))
    # the next day's 14:00 sachet went to the bin on the same decision, without a new alert
    assert rig.dispenser.discarded == [1, 4, 7]
    assert rig.dispenser.dispensed == [0, 2, 3, 5, 6]
    assert len(rig.events("plan_mismatch")) == 1
    assert [e.fields["decided_by"] for e in rig.events("sachet_discarded")] == ["tech-3"] * 3
    # only discards the decision covers: the planned sachets were all given
    assert all(o.outcome is Outcome.TAKEN for o in rig.outcomes())


def test_a_schedule_update_with_the_sachets_time_resolves_it_and_the_dose_is_given() -> None:
    rig = at_reader_after_morning_dose()
    [alert] = rig.events("plan_mismatch")
    rig.feed(SetSchedule(daily("08:00", "14:00", "20:00"), 2))
    [decided] = rig.events("plan_mismatch_decided")
    assert (decided.fields["decision"], decided.fields["schedule_version"]) == (
        "schedule_updated",
        2,
    )
    assert decided.fields["alert_id"] == alert.alert_id
    assert latched(rig) == [(alert.alert_id, True)]
    rig.run_until(utc(2026, 3, 2, 12, 59))
    assert rig.dispenser.dispensed == [0]
    rig.run_until(utc(2026, 3, 2, 13, 0))
    assert rig.dispenser.dispensed == [0, 1]  # the pharmacy's 14:00 dose, at 14:00
    assert rig.dispenser.discarded == []


def test_a_schedule_update_after_the_sachets_time_gives_that_slot_its_outcome_first() -> None:
    rig = at_reader_after_morning_dose()
    rig.run_until(utc(2026, 3, 2, 19, 5))  # 20:00 is held behind the undecided sachet
    rig.feed(SetSchedule(daily("08:00", "14:00", "20:00"), 2))
    # 14:00 passed undecided: its slot ends refused, then its sachet is a settled slot's
    late = rig.outcome_of("2026-03-02T14:00")
    assert (late.outcome, late.reason) == (Outcome.REFUSED, "plan_mismatch")
    assert rig.dispenser.discarded == [1]
    assert [e.fields["reason"] for e in rig.events("sachet_discarded")] == ["sachet_stale"]
    assert rig.dispenser.dispensed == [0, 2]  # and the 20:00 dose follows, inside its deadline
    rig.assert_one_outcome_per_slot()


def test_a_schedule_update_a_day_late_settles_every_new_slot_that_passed_behind_the_hold() -> None:
    rig = at_reader_after_morning_dose()
    rig.run_until(utc(2026, 3, 3, 17, 0))  # 18:00 on day 2: three doses refused behind the hold
    refused = {o.slot_id: o.reason for o in rig.outcomes() if o.outcome is Outcome.REFUSED}
    assert refused == {"2026-03-02T20:00": "plan_mismatch", "2026-03-03T08:00": "plan_mismatch"}
    rig.feed(SetSchedule(daily("08:00", "14:00", "20:00"), 2))
    # the two 14:00 slots that passed undecided get their outcome, none twice: the one behind
    # the cursor at once, the other picked up past its deadline with the leftover at the reader
    first, second = rig.outcome_of("2026-03-02T14:00"), rig.outcome_of("2026-03-03T14:00")
    assert (first.outcome, first.reason) == (Outcome.REFUSED, "plan_mismatch")
    assert (second.outcome, second.reason) == (Outcome.REFUSED, "sachet_stale")
    # their sachets and those of the refused doses are leftovers of settled slots now: four,
    # more than a bin of unknown level is trusted with, so a nurse is asked (pause.resume_plan)
    assert rig.dispenser.discarded == []
    assert rig.events("backlog_needs_nurse")
    rig.run_until(utc(2026, 3, 3, 20, 5))
    rig.assert_one_outcome_per_slot()


def test_a_roll_changed_on_site_ends_the_hold() -> None:
    rig = at_reader_after_morning_dose()
    rig.remove_roll()
    assert rig.events("plan_mismatch_decided") == []  # out is not decided: it may come back
    rig.dispenser.roll_id = "R2"
    rig.dispenser.sachet_times = [utc(2026, 3, d, h) for d in range(2, 5) for h in (7, 19)]
    rig.dispenser.next_index = 1
    rig.insert_roll()
    [decided] = rig.events("plan_mismatch_decided")
    assert (decided.fields["decision"], decided.fields["by"]) == ("roll_changed", None)
    rig.run_until(utc(2026, 3, 2, 19, 5))
    assert rig.dispenser.dispensed == [0, 1]


def test_the_same_roll_put_back_keeps_the_hold_and_raises_nothing_new() -> None:
    rig = at_reader_after_morning_dose()
    rig.remove_roll()
    rig.insert_roll()
    for _ in range(2):
        rig.feed(LinkDown("unplugged"))
        rig.feed(LinkUp(rig.caps))
        rig.insert_roll()  # SPEC 4.1: announced again after every Hello
    assert len(rig.events("plan_mismatch")) == 1
    assert rig.events("plan_mismatch_decided") == []
    assert rig.dispenser.discarded == []


def test_the_hold_and_the_decision_survive_a_restart() -> None:
    rig = at_reader_after_morning_dose()
    restored = EngineState.from_json(rig.engine.state.to_json())
    assert restored == rig.engine.state
    assert restored.unplanned is not None
    assert restored.unplanned.sachet_index == 1
    rig.engine = DoseEngine(rig.config, restored, rig.clock.now())
    rig.feed(LinkUp(rig.caps))
    rig.insert_roll()
    assert len(rig.events("plan_mismatch")) == 1  # not raised again
    rig.run_until(utc(2026, 3, 2, 19, 5))
    assert rig.dispenser.discarded == []
    rig.feed(DiscardUnplanned("R1", None, "operator-17", FROM_RESPONSE_CENTRE))
    decisions = rig.engine.state.discard_decisions
    assert [(d.roll_id, d.sachet_index, d.by) for d in decisions] == [("R1", None, "operator-17")]
    again = DoseEngine(
        rig.config, EngineState.from_json(rig.engine.state.to_json()), rig.clock.now()
    )
    assert again.state.discard_decisions == decisions


@pytest.mark.parametrize(
    ("decision", "code"),
    [
        (DiscardUnplanned("R9", 1, "operator-17", FROM_RESPONSE_CENTRE), "roll_not_loaded"),
        (DiscardUnplanned("R1", 2, "operator-17", FROM_RESPONSE_CENTRE), "sachet_not_at_reader"),
        (DiscardUnplanned("R1", 1, "", FROM_RESPONSE_CENTRE), "invalid_command"),
    ],
)
def test_a_decision_that_does_not_fit_is_refused_and_changes_nothing(
    decision: DiscardUnplanned, code: str
) -> None:
    rig = at_reader_after_morning_dose()
    before = rig.engine.state
    with pytest.raises(EngineInputError) as refused:
        rig.feed(decision)
    assert refused.value.code == code
    assert rig.engine.state == before
    assert rig.events("plan_mismatch_decided") == []


def test_a_planned_sachet_is_never_discarded_on_a_decision() -> None:
    rig = plan_rig()
    rig.run_until(utc(2026, 3, 2, 6, 0))  # the 08:00 sachet is at the reader
    with pytest.raises(EngineInputError) as refused:
        rig.feed(DiscardUnplanned("R1", 0, "operator-17", FROM_RESPONSE_CENTRE))
    assert refused.value.code == "sachet_planned"
    # a decision for the whole roll is accepted, and still only covers unplanned sachets
    rig.feed(DiscardUnplanned("R1", None, "operator-17", FROM_RESPONSE_CENTRE))
    rig.run_until(utc(2026, 3, 2, 7, 5))
    assert rig.dispenser.dispensed == [0]
    assert rig.events("plan_mismatch") == []  # decided before it reached the reader


def test_another_patients_roll_is_never_cut_on_a_decision() -> None:
    rig = Rig(SCHEDULE, sachet_times=new_plan_times())
    rig.dispenser.roll_patient = OTHER
    rig.install()
    with pytest.raises(EngineInputError) as refused:
        rig.feed(DiscardUnplanned("R1", None, "operator-17", FROM_RESPONSE_CENTRE))
    assert refused.value.code == "foreign_roll"


def test_a_wrong_roll_whose_sachets_claim_the_patient_is_no_plan_question() -> None:
    rig = Rig(SCHEDULE, sachet_times=new_plan_times(range(2, 3))[1:])  # starts with 14:00
    rig.dispenser.roll_patient = OTHER  # the leader names another patient ...
    rig.install(roll=False)
    rig.msg(rig.dispenser.roll_message())
    rig.msg(SachetRead("R1", 0, int(utc(2026, 3, 2, 13).timestamp()), PATIENT))  # ... not these
    rig.feed(SetSchedule(daily("08:00", "20:00", start=date(2026, 2, 1)), 2))
    assert len(rig.events("wrong_roll")) == 1
    assert rig.events("plan_mismatch") == []


def test_a_sachet_the_schedule_lacks_before_a_due_dose_holds_it_with_that_reason() -> None:
    # the pharmacy moved the morning dose to 14:00: at 08:00 the 14:00 sachet is at the reader
    times = [utc(2026, 3, d, h) for d in range(2, 5) for h in (13, 19)]
    rig = Rig(SCHEDULE, sachet_times=times)
    rig.install()
    assert [e.fields["intended_utc"] for e in rig.events("plan_mismatch")] == [
        "2026-03-02T13:00:00Z"
    ]
    rig.run_until(utc(2026, 3, 2, 8, 30))
    assert rig.outcome_of("2026-03-02T08:00").reason == "plan_mismatch"
    rig.run_until(utc(2026, 3, 2, 20, 30))
    assert rig.outcome_of("2026-03-02T20:00").reason == "plan_mismatch"
    assert rig.dispenser.discarded == []
    assert rig.dispenser.dispensed == []


def test_without_a_bin_a_decided_sachet_waits_for_a_person_and_says_so() -> None:
    rig = Rig(
        SCHEDULE,
        sachet_times=new_plan_times(),
        features=int(Feature.LOCK | Feature.TRAY_SENSOR | Feature.SACHET_READER),
    )
    rig.install()
    rig.run_until(utc(2026, 3, 2, 7, 5))
    rig.take()
    rig.feed(DiscardUnplanned("R1", 1, "operator-17", FROM_RESPONSE_CENTRE))
    rig.run_until(utc(2026, 3, 2, 21, 0))
    assert rig.dispenser.discarded == []
    outcome = rig.outcome_of("2026-03-02T20:00")
    assert (outcome.outcome, outcome.reason) == (Outcome.MISSED, "not_dispensed:discard_decided")


def test_a_decision_about_another_roll_leaves_the_held_sachets_alert_alone() -> None:
    rig = at_reader_after_morning_dose()
    [alert] = rig.events("plan_mismatch")
    rig.remove_roll()
    rig.dispenser.roll_id = "R2"  # the same plan, another roll; its SachetRead has not come yet
    rig.dispenser.loaded = True
    rig.msg(rig.dispenser.roll_message())
    rig.feed(DiscardUnplanned("R2", None, "operator-17", FROM_RESPONSE_CENTRE))
    [decided] = rig.events("plan_mismatch_decided")
    assert decided.fields["alert_id"] is None
    assert latched(rig) == [(alert.alert_id, False)]
    # R2's sachet at the reader: R1's hold ends (roll changed); R2's is decided: to the bin
    rig.msg(rig.dispenser.sachet())  # type: ignore[arg-type]
    assert [e.fields["decision"] for e in rig.events("plan_mismatch_decided")] == [
        "discard",
        "roll_changed",
    ]
    assert latched(rig) == [(alert.alert_id, True)]
    assert len(rig.events("plan_mismatch")) == 1
    assert rig.dispenser.discarded == [1]


def test_a_later_decision_for_the_whole_roll_replaces_the_one_for_a_sachet() -> None:
    rig = at_reader_after_morning_dose()
    rig.feed(StartPause(PauseWindow("away", utc(2026, 3, 2, 9), utc(2026, 3, 2, 12))))
    rig.run_for(timedelta(minutes=1))  # no discard while paused: the decisions wait
    rig.feed(DiscardUnplanned("R1", 1, "operator-17", FROM_RESPONSE_CENTRE))
    rig.feed(DiscardUnplanned("R1", None, "operator-18", FROM_RESPONSE_CENTRE))
    decisions = rig.engine.state.discard_decisions
    assert [(d.sachet_index, d.by) for d in decisions] == [(None, "operator-18")]
    rig.feed(DiscardUnplanned("R1", 1, "operator-19", FROM_RESPONSE_CENTRE))  # kept beside it
    assert [(d.sachet_index, d.by) for d in rig.engine.state.discard_decisions] == [
        (None, "operator-18"),
        (1, "operator-19"),
    ]
    assert rig.dispenser.discarded == []
    rig.run_until(utc(2026, 3, 2, 12, 1))
    assert rig.dispenser.discarded == [1]


def test_passed_slots_in_a_pause_are_skipped_when_the_schedule_takes_up_their_time() -> None:
    rig = at_reader_after_morning_dose()
    # away from 13:00 to 23:00, and the update comes while still away
    rig.feed(StartPause(PauseWindow("day-centre", utc(2026, 3, 2, 12), utc(2026, 3, 2, 22))))
    rig.run_until(utc(2026, 3, 2, 19, 5))
    rig.feed(SetSchedule(daily("08:00", "14:00", "20:00"), 2))
    passed = rig.outcome_of("2026-03-02T14:00")
    assert (passed.outcome, passed.reason) == (Outcome.SKIPPED_PAUSED, "day-centre")


def test_refusals_say_what_is_loaded() -> None:
    rig = at_reader_after_morning_dose()
    with pytest.raises(EngineInputError, match=r"roll 'R9' is not the roll loaded \(roll 'R1'"):
        rig.feed(DiscardUnplanned("R9", None, "operator-17", FROM_RESPONSE_CENTRE))
    with pytest.raises(EngineInputError, match=r"sachet 2 is not at the reader \(index 1 is\)"):
        rig.feed(DiscardUnplanned("R1", 2, "operator-17", FROM_RESPONSE_CENTRE))
    rig.remove_roll()
    with pytest.raises(EngineInputError, match=r"\(no roll is\)"):
        rig.feed(DiscardUnplanned("R1", None, "operator-17", FROM_RESPONSE_CENTRE))
    rig.dispenser.loaded = True
    rig.msg(rig.dispenser.roll_message())  # the sachet has not been read yet
    with pytest.raises(EngineInputError, match=r"sachet 1 is not at the reader \(none is\)"):
        rig.feed(DiscardUnplanned("R1", 1, "operator-17", FROM_RESPONSE_CENTRE))


def test_a_sachet_without_a_time_or_at_the_tolerance_edge_is_no_plan_mismatch() -> None:
    tolerance = EngineConfig().sachet_time_tolerance
    edge = utc(2026, 3, 2, 7) - tolerance  # packed for 08:00 as early as the tolerance allows
    rig = Rig(SCHEDULE, sachet_times=[edge, utc(2026, 3, 2, 19)])
    rig.install()
    rig.run_until(utc(2026, 3, 2, 7, 5))
    assert rig.events("plan_mismatch") == []
    assert rig.dispenser.dispensed == [0]
    untimed = Rig(SCHEDULE, sachet_times=new_plan_times())
    untimed.install(roll=False)
    untimed.msg(untimed.dispenser.roll_message())
    untimed.msg(SachetRead("R1", 0, 0, PATIENT))  # a label without an intended time
    untimed.run_until(utc(2026, 3, 2, 8, 30))
    assert untimed.events("plan_mismatch") == []
    assert untimed.outcome_of("2026-03-02T08:00").reason == "sachet_time_unknown"
