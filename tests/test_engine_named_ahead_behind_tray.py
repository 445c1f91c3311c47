"""A dose named held ahead (clock untrusted, dispenser empty) that comes due behind a dose left
in the tray, a roll loaded since (year simulation seed 121, doses 00:10 and 23:20).

The centre was told the 00:10 dose is held; a roll came and the clock was trusted again, and the
23:20 dose lies in the tray at 00:10. The 00:10 dose is still not given at its time: it is held
(behind the tray, LOW: sachets are left), and the unit's held light is on (docs/engine.md, "Local
sound and light": the held light is a due dose held). Before, nothing was said and the light was
off, so the patient and the centre still read the old hold with no sign of it at the unit.

Dates are in March 2026, Europe/Oslo is UTC+1: local 23:20 is 22:20 UTC, 00:10 is 23:10 UTC.
"""

from __future__ import annotations

from datetime import timedelta

from test_engine import Rig, daily, utc

from agent.clock import TimeTrust
from agent.engine.types import Tick

EVENING = utc(2026, 3, 2, 22, 20)  # 23:20 local
NIGHT = utc(2026, 3, 2, 23, 10)  # 00:10 local on 3 March
NIGHT_SLOT = "2026-03-03T00:10"


def held(rig: Rig, slot_id: str) -> list[tuple[str, str | None, object]]:
    return [
        (e.priority.value, e.vkp_code, e.fields["reason"])
        for e in rig.events("dose_held")
        if e.fields["slot_id"] == slot_id
    ]


def test_a_dose_named_held_ahead_and_due_behind_the_tray_is_held_with_its_light_on() -> None:
    rig = Rig(daily("00:10", "23:20"), sachet_times=[utc(2026, 3, 1, 22, 20)])
    rig.dispenser.next_index = 1  # the roll is used up
    rig.install()
    rig.run_until(utc(2026, 3, 2, 9, 0))
    rig.clock.set_trust(TimeTrust.UNTRUSTED)  # the Pi booted with a guessed clock
    rig.feed(Tick())
    assert held(rig, NIGHT_SLOT) == [("high", "3.7", "clock_untrusted")]  # named ahead
    rig.clock.set_trust(TimeTrust.SYNCHRONISED)
    rig.feed(Tick())
    rig.dispenser.roll_id, rig.dispenser.next_index = "R2", 0
    rig.dispenser.sachet_times = [EVENING + timedelta(minutes=50) * i for i in range(3)]
    rig.insert_roll()
    rig.run_until(EVENING + timedelta(minutes=1))
    assert rig.dispenser.dispensed == [0]  # 23:20 is in the tray, left there
    assert not rig.engine.dose_held()
    rig.run_until(NIGHT)
    assert held(rig, NIGHT_SLOT)[1:] == [("low", None, "previous_dose_in_tray")]
    assert rig.engine.dose_held()  # the unit's held light
    rig.take()
    rig.run_for(timedelta(minutes=25))  # the minimum interval (half of 50 min)
    assert rig.dispenser.dispensed == [0, 1]
    assert not rig.engine.dose_held()


def test_a_dose_not_named_ahead_behind_the_tray_with_sachets_left_still_waits_quietly() -> None:
    rig = Rig(
        daily("00:10", "23:20"),
        sachet_times=[EVENING + timedelta(minutes=50) * i for i in range(3)],
    )
    rig.install()
    rig.run_until(NIGHT + timedelta(minutes=5))
    assert rig.dispenser.dispensed == [0]
    assert rig.events("dose_held") == []
    assert not rig.engine.dose_held()
