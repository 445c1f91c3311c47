"""What the events say to the response centre (issue 8, items 4, 8 and 12): times in UTC with
`Z`, the alert an event refers to named in the envelope, clearings and decisions without a VKP
code (a forwarder files no second alert), a late intake naming the missed alert, a cancelled
pause reporting the window it cancelled. Driven through the engine with explicit time.
"""

from __future__ import annotations

from datetime import timedelta

from contract_check import offset_times
from test_engine import OTHER, morning_rig, utc
from test_engine_interval import NO_BIN, hourly_rig, missed_then_taken_late

from agent.engine.catalogue import documented_kinds, make_event
from agent.engine.types import AcknowledgeAlert, EndPause, PauseWindow, StartPause


def test_every_time_in_a_day_of_events_is_utc_with_z() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(utc(2026, 3, 2, 9, 0))  # the 08:00 dose is missed
    rig.feed(StartPause(PauseWindow("trip", utc(2026, 3, 3, 6), utc(2026, 3, 4, 6), "travel")))
    rig.run_until(utc(2026, 3, 3, 12, 0))
    found = [(e.kind, offset_times(e.fields)) for e in rig.events() if offset_times(e.fields)]
    assert found == []
    assert rig.events("slot_outcome")[0].fields["due_utc"] == "2026-03-02T07:00:00Z"


def test_the_status_result_has_utc_times_with_z() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(utc(2026, 3, 2, 9, 0))  # a latched missed-dose alert, the next slot known
    status = rig.engine.status().to_json()
    assert offset_times(status) == []
    assert status["latched_alerts"], status


def test_events_that_refer_to_a_latched_alert_name_it_in_the_envelope() -> None:
    rig = morning_rig()
    rig.dispenser.roll_patient = OTHER
    rig.install()
    [raised] = rig.events("wrong_roll")
    rig.feed(AcknowledgeAlert(raised.alert_id or "", by="nurse-3"))
    rig.remove_roll()
    [acked] = rig.events("alert_acknowledged")
    [cleared] = rig.events("wrong_roll_cleared")
    assert raised.alert_id is not None
    assert acked.alert_id == raised.alert_id
    assert cleared.alert_id == raised.alert_id


def test_health_lists_bare_alert_ids_and_conditions_apart() -> None:
    rig = morning_rig()
    rig.dispenser.roll_patient = OTHER
    rig.install()
    [raised] = rig.events("wrong_roll")
    status = rig.engine.status()
    assert status.active_alerts == (raised.alert_id,)


def test_a_late_intake_of_a_missed_dose_names_the_missed_alert() -> None:
    rig = hourly_rig(features=NO_BIN)
    missed_then_taken_late(rig)
    [missed] = [e for e in rig.events("slot_outcome") if e.fields["outcome"] == "missed"]
    [late] = rig.events("dose_taken_late")
    assert missed.alert_id is not None
    assert late.fields["alert_id"] == missed.alert_id
    assert late.alert_id == missed.alert_id  # news about that alert, not a new one
    assert late.fields["taken_at"] == "2026-03-02T08:10:00Z"
    assert utc(2026, 3, 2, 8, 10).tzinfo is not None


def test_clearing_and_deciding_events_carry_no_vkp_code() -> None:
    """A forwarder files one alert per event with a vkp_code: a clearing is not a second one."""
    kinds = [k for k in documented_kinds() if k.endswith("_cleared")]
    kinds += ["plan_mismatch_decided", "alert_acknowledged"]
    carrying = {k: make_event(k).vkp_code for k in kinds if make_event(k).vkp_code is not None}
    assert carrying == {}
    assert make_event("wrong_roll").vkp_code == "3.5"  # the alarms keep theirs
    assert make_event("mains_lost").vkp_code == "3.9"


def test_a_pause_cancelled_before_it_began_reports_the_window_it_cancelled() -> None:
    rig = morning_rig()
    rig.install()
    start, end = utc(2026, 3, 5, 8), utc(2026, 3, 7, 8)
    rig.feed(StartPause(PauseWindow("hospital", start, end, "hospital")))
    rig.run_until(utc(2026, 3, 2, 12, 0))
    rig.feed(EndPause("hospital"))
    [ended] = rig.events("pause_ended")
    assert ended.fields["start_utc"] == "2026-03-05T08:00:00Z"
    assert ended.fields["end_utc"] == "2026-03-07T08:00:00Z"
    assert ended.fields["cancelled"] is True
    assert ended.fields["ended_at"] == "2026-03-02T12:00:00Z"


def test_a_pause_ended_while_in_force_reports_when() -> None:
    rig = morning_rig()
    rig.install()
    rig.feed(StartPause(PauseWindow("respite", utc(2026, 3, 2, 10), None, "respite")))
    rig.run_until(utc(2026, 3, 3, 12, 0) + timedelta(minutes=1))
    rig.feed(EndPause(None))
    [ended] = rig.events("pause_ended")
    assert ended.fields["start_utc"] == "2026-03-02T10:00:00Z"
    assert ended.fields["end_utc"] == "2026-03-03T12:01:00Z"
    assert ended.fields["cancelled"] is False
