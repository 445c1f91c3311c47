"""A dose due behind a dose left in the tray, with the roll empty (SAFETY.md H4).

Doses 23:15 and 00:05; the roll's last sachet is the 23:15 dose, which the patient leaves in
the tray. At 00:05 the next dose cannot be given whatever happens to the tray (no sachet is left
to cut): the centre must hear it HIGH, VKP 3.7, at its due time, so that a nurse brings a roll,
not only once the dose in the tray is taken back at 00:15 (or when the 00:05 slot ends at 01:05).

Dates are in March 2026, Europe/Oslo is UTC+1: local 23:15 is 22:15 UTC, 00:05 is 23:05 UTC.
"""

from __future__ import annotations

from datetime import timedelta

from test_engine import Rig, daily, utc

from agent.engine.types import EngineEvent, Outcome

EVENING = utc(2026, 3, 2, 22, 15)  # 23:15 local, the roll's last sachet
NIGHT = utc(2026, 3, 2, 23, 5)  # 00:05 local on 3 March
EVENING_SLOT = "2026-03-02T23:15"
NIGHT_SLOT = "2026-03-03T00:05"


def held(events: list[EngineEvent], slot_id: str) -> list[tuple[str, str | None, object, object]]:
    return [
        (e.priority.value, e.vkp_code, e.fields["reason"], e.fields.get("dispenser_empty"))
        for e in events
        if e.fields["slot_id"] == slot_id
    ]


def night_rig(sachets: int = 1) -> Rig:
    times = [EVENING + timedelta(minutes=50) * i for i in range(sachets)]
    return Rig(daily("00:05", "23:15"), sachet_times=times)


def test_a_dose_due_behind_a_dose_in_the_tray_with_the_roll_empty_is_high_at_its_time() -> None:
    rig = night_rig()
    rig.install()
    rig.run_until(EVENING)
    assert rig.dispenser.dispensed == [0]  # the roll's last sachet, left in the tray
    rig.run_until(NIGHT - timedelta(seconds=1))
    assert rig.events("dose_held") == []  # not due yet: nothing to say
    rig.run_until(NIGHT)
    assert held(rig.events("dose_held"), NIGHT_SLOT) == [
        ("high", "3.7", "previous_dose_in_tray", True)
    ]
    # the 23:15 dose's slot ends at 00:15 and it is taken back; 00:05 now waits for a roll
    # (whose period has passed too: its last sachet was for 23:15), said HIGH once already
    rig.run_until(NIGHT + timedelta(minutes=11))
    assert rig.outcome_of(EVENING_SLOT).outcome is Outcome.MISSED
    assert held(rig.events("dose_held"), NIGHT_SLOT)[1:] == [
        ("low", None, "roll_period_passed", True)
    ]
    rig.run_until(NIGHT + timedelta(minutes=61))
    assert rig.outcome_of(NIGHT_SLOT).outcome is Outcome.REFUSED  # not given: the roll
    [ended] = [e for e in rig.events("slot_outcome") if e.fields["slot_id"] == NIGHT_SLOT]
    assert ended.vkp_code == "3.7"


def test_a_dose_behind_the_tray_with_sachets_left_waits_quietly() -> None:
    # the roll has the 00:05 sachet: the dose comes once the tray is free, nothing to alarm
    rig = night_rig(sachets=2)
    rig.install()
    rig.run_until(NIGHT + timedelta(minutes=5))
    assert rig.dispenser.dispensed == [0]
    assert rig.events("dose_held") == []
    rig.take()
    rig.run_for(timedelta(minutes=25))  # the default minimum interval (half of 50 min)
    assert rig.dispenser.dispensed == [0, 1]
    assert [e.priority.value for e in rig.events("dose_held")] == ["low"]  # min_interval


def test_the_roll_running_out_while_a_dose_waits_behind_the_tray_is_said_at_once() -> None:
    # the dose in the tray was not the last sachet; the roll is taken out after 00:05
    rig = night_rig(sachets=2)
    rig.install()
    rig.run_until(NIGHT + timedelta(minutes=2))
    assert rig.events("dose_held") == []
    rig.remove_roll()
    assert held(rig.events("dose_held"), NIGHT_SLOT) == [
        ("high", "3.7", "previous_dose_in_tray", True)
    ]
