"""The alert desk in the engine: the alert-id sequence and the rate limit of chatty conditions.

From docs/engine.md: latched alerts get deterministic ids counting up from `alert-000001`, and the
sequence survives a restart (it is in the engine state); "Technical conditions": a chatty
condition (the lid) is raised at most once per `chatty_min_interval` (15 min by default), one
still present when the interval ends is raised then, and one that came and went inside the
interval is not sent at all. Virtual clock, fake dispenser (tests/test_engine.py's `Rig`).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_engine import Rig, morning_rig, utc

from agent.engine.engine import EngineState
from agent.engine.types import AcknowledgeAlert, EngineInputError, LinkUp, Tick
from protocol.messages import LidChanged

CHATTY = timedelta(minutes=15)  # EngineConfig.chatty_min_interval's default, docs/engine.md


def test_alert_ids_count_up_from_alert_000001_and_go_on_after_a_restart() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(utc(2026, 3, 3, 9, 0))  # 08:00 on two days, never taken: two missed doses
    assert [e.alert_id for e in rig.events("slot_outcome")] == ["alert-000001", "alert-000002"]
    state = EngineState.from_json(rig.engine.state.to_json())
    again = Rig(rig.schedule, start=rig.clock.now().utc, state=state)
    again.dispenser = rig.dispenser
    again.feed(LinkUp(again.caps))
    again.run_until(utc(2026, 3, 4, 9, 0))
    assert [e.alert_id for e in again.events("slot_outcome")] == ["alert-000003"]


def test_a_lid_that_opens_and_closes_inside_the_interval_is_not_raised_later() -> None:
    rig = morning_rig()
    rig.install()
    rig.msg(LidChanged(True))
    rig.msg(LidChanged(False))
    assert rig.kinds().count("lid_open") == 1
    rig.run_for(timedelta(minutes=1))
    rig.msg(LidChanged(True))  # inside the interval: held back
    rig.run_for(timedelta(minutes=1))
    rig.msg(LidChanged(False))  # gone before the interval ends: never sent
    rig.run_for(CHATTY)
    assert rig.kinds().count("lid_open") == 1


def test_a_lid_still_open_is_raised_exactly_when_the_interval_ends() -> None:
    rig = morning_rig()
    rig.install()
    first = rig.clock.now().mono
    rig.msg(LidChanged(True))
    rig.msg(LidChanged(False))
    rig.run_for(timedelta(minutes=2))
    rig.msg(LidChanged(True))  # stays open: held back until the interval ends
    # the engine asks to be woken then (the next dose is hours away)
    assert rig.engine.next_deadline(rig.clock.now()) == first + CHATTY.total_seconds()
    rig.run_for(CHATTY - timedelta(minutes=2) - timedelta(seconds=1))
    assert rig.kinds().count("lid_open") == 1
    rig.run_for(timedelta(seconds=1))
    assert rig.kinds().count("lid_open") == 2
    assert rig.events("lid_open")[1].fields == {"held_back": True}


def test_an_unknown_alert_id_is_refused_before_the_step_changes_anything() -> None:
    """docs/engine.md: an unknown id raises EngineInputError, and a refused input changes
    nothing, not even what the engine saw of the clock: a wall jump that came with it is still
    reported by the next step."""
    rig = morning_rig()
    rig.install()
    rig.run_for(timedelta(minutes=10))
    before = rig.engine.state.to_json()
    rig.clock.jump_wall(timedelta(hours=1))
    with pytest.raises(EngineInputError):
        rig.feed(AcknowledgeAlert("alert-000009", by="operator-12"))
    assert rig.engine.state.to_json() == before
    rig.feed(Tick())
    assert [e.fields["delta_s"] for e in rig.events("clock_jumped")] == [3600.0]
