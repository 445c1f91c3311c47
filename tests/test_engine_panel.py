"""The unit's own "take now / help" button (GPIO, drivers/gpio_panel.py) as the engine sees it.

A press inside the reach of a dose (one in the tray, due or held, or the next one inside the early
window) is the dispenser's TAKE; any other press is a help call to the response centre
(`panel_help_requested`, medium, VKP 3). Virtual time, fake dispenser (tests/test_engine.py).
"""

from __future__ import annotations

from datetime import timedelta

from test_engine import ALL_FEATURES, morning_rig, utc

from agent.clock import TimeTrust
from agent.engine.types import PanelPress
from protocol.messages import AlertPattern, Feature

DUE = utc(2026, 3, 2, 7, 0)  # the 08:00 (Oslo) dose of morning_rig
SLOT = "2026-03-02T08:00"


def test_a_press_inside_the_early_window_starts_the_next_dose() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE - timedelta(minutes=20))
    rig.feed(PanelPress())
    assert [b.slot_id for b in rig.begins()] == [SLOT]
    assert rig.dispenser.dispensed == [0]
    assert rig.events("panel_help_requested") == []


def test_a_press_with_no_dose_within_reach_calls_for_help() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE - timedelta(hours=3))
    rig.feed(PanelPress())
    assert rig.begins() == []
    [event] = rig.events("panel_help_requested")
    assert event.priority == "medium"
    assert event.vkp_code == "3"
    assert event.fields["reason"] == "no_dose_due"
    assert event.fields["next_due_utc"] == "2026-03-02T07:00:00Z"


def test_help_calls_are_rate_limited() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE - timedelta(hours=3))
    rig.feed(PanelPress())
    rig.run_for(timedelta(minutes=1))
    rig.feed(PanelPress())
    assert len(rig.events("panel_help_requested")) == 1
    rig.run_for(timedelta(minutes=20))  # past chatty_min_interval (15 min)
    rig.feed(PanelPress())
    assert len(rig.events("panel_help_requested")) == 2


def test_a_press_while_the_dose_waits_in_the_tray_is_a_take_not_a_help_call() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=1))
    assert rig.dispenser.tray is not None
    rig.feed(PanelPress())
    assert rig.events("panel_help_requested") == []
    assert [e.fields["button"] for e in rig.events("button_pressed")] == ["panel"]
    assert rig.dispenser.dispensed == [0]  # never a second dose


def test_an_untrusted_clock_makes_a_press_a_help_call() -> None:
    rig = morning_rig(trust=TimeTrust.UNTRUSTED)
    rig.install()
    rig.run_until(DUE - timedelta(minutes=20))
    rig.feed(PanelPress())
    assert rig.begins() == []
    [event] = rig.events("panel_help_requested")
    assert event.fields["reason"] == "clock_untrusted"


def test_the_local_signal_shows_held_even_when_the_dispenser_cannot() -> None:
    rig = morning_rig()  # ALL_FEATURES: no HELD_PATTERN, the dispenser gets FAULT
    assert not ALL_FEATURES & Feature.HELD_PATTERN
    rig.dispenser.loaded = False
    rig.install(roll=False)
    rig.run_until(DUE - timedelta(minutes=1))
    assert rig.engine.signal_pattern(rig.clock.now()) is AlertPattern.OFF
    rig.run_until(DUE + timedelta(minutes=1))
    assert rig.sounding() is AlertPattern.FAULT
    assert rig.engine.signal_pattern(rig.clock.now()) is AlertPattern.HELD
    assert rig.engine.dose_held()
