"""Small engine rules whose effect is easy to overlook: each test names what a person (the
patient, the nurse, the response centre) or the stored state would see differently without it.

Engine tests on the virtual clock with the scripted dispenser of test_engine.py; stored-state
tests edit the full stored state of test_engine_state.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from test_engine import Rig, daily, morning_rig, utc
from test_engine_state import edited, put

from agent.engine import lifecycle
from agent.engine.lifecycle import SlotRun
from agent.engine.slot_window import SlotWindow
from agent.engine.state import EngineState, StateUnreadableError
from agent.engine.types import (
    AcknowledgeAlert,
    EngineConfig,
    EngineInputError,
    LinkDown,
    Priority,
    Tick,
)
from protocol.messages import Dispense, LidChanged, ResultCode

# --- a refused input changes nothing --------------------------------------------------------


def test_a_refused_acknowledgement_does_not_swallow_a_clock_jump() -> None:
    """An acknowledgement of an unknown alert is refused before anything changes: the wall
    clock's jump seen at that step is still reported at the next one."""
    rig = morning_rig()
    rig.install()
    rig.clock.jump_wall(timedelta(hours=2))
    with pytest.raises(EngineInputError):
        rig.feed(AcknowledgeAlert("alert-999999", by="operator-12"))
    rig.feed(Tick())
    assert [e.fields["delta_s"] for e in rig.events("clock_jumped")] == [7200.0]


# --- what the dispenser said about its roll ---------------------------------------------------


def test_a_dispense_answered_no_roll_forgets_the_roll_and_says_so() -> None:
    """NO_ROLL: the roll the agent knew is gone (taken out unheard). It is reported removed and
    the dose is held for want of a roll, not for a roll the agent still thinks is there."""
    rig = morning_rig()
    rig.install()
    assert rig.engine.status().roll_id == "R1"
    rig.dispenser.forced[Dispense] = ResultCode.NO_ROLL
    rig.run_until(utc(2026, 3, 2, 7, 1))
    assert [e.fields["roll_id"] for e in rig.events("roll_removed")] == ["R1"]
    assert rig.engine.status().roll_id is None
    assert [e.fields["reason"] for e in rig.events("dose_held")][-1] == "no_roll"


def test_a_dose_due_while_the_link_is_down_is_not_called_empty_from_an_old_status() -> None:
    """With the link down the dispenser's contents are unknown (a nurse may load a roll
    meanwhile): a dose due then is held for the link, not raised HIGH as a dispenser with no
    roll because the last Status before the drop had none."""
    rig = morning_rig()
    rig.dispenser.loaded = False
    rig.install(roll=False)  # the Status after LinkUp says: no roll
    rig.feed(LinkDown("unplugged"))
    rig.run_until(utc(2026, 3, 2, 7, 5))
    held = rig.events("dose_held")
    assert [e.fields["reason"] for e in held] == ["no_link"]
    assert "dispenser_empty" not in held[0].fields
    assert held[0].priority is not Priority.HIGH


# --- chatty conditions held back ----------------------------------------------------------------


def test_a_held_back_lid_open_is_a_deadline_of_the_engine() -> None:
    """A lid opened again within the rate limit is held back; the engine asks to be woken when
    the limit ends (a daemon ticks only at deadlines), not at the next dose hours later."""
    rig = morning_rig()
    rig.install()
    first = rig.clock.now().mono
    rig.msg(LidChanged(True))
    rig.clock.advance(30)
    rig.msg(LidChanged(False))
    rig.clock.advance(30)
    rig.msg(LidChanged(True))  # stays open: held back
    assert rig.kinds().count("lid_open") == 1
    assert rig.engine.next_deadline(rig.clock.now()) == first + 15 * 60


# --- the plan-mismatch alert names the sachet's time as the patient reads it -------------------


def test_a_plan_mismatch_names_the_sachets_time_in_the_units_zone() -> None:
    times = [utc(2026, 3, d, h) for d in range(2, 5) for h in (7, 13, 19)]
    rig = Rig(daily("08:00", "20:00"), sachet_times=times)
    rig.install()
    rig.run_until(utc(2026, 3, 2, 7, 5))
    rig.take()  # the 14:00 sachet (no slot at 14:00) comes to the reader
    [alert] = rig.events("plan_mismatch")
    assert alert.fields["intended_utc"] == "2026-03-02T13:00:00Z"
    assert alert.fields["intended_local"] == "2026-03-02T14:00:00+01:00"  # Oslo in March


# --- reminders switched off ----------------------------------------------------------------------


def test_a_reminder_interval_of_zero_sounds_no_reminder() -> None:
    """`reminder_repeat` zero means no reminders: a presented dose is not re-sounded at once
    (nor later); its escalation steps and grace still run."""
    config = EngineConfig(reminder_repeat=timedelta(0))
    due = utc(2026, 3, 2, 7, 0)
    run = lifecycle.begin(SlotRun("2026-03-02T08:00", due, "2026-03-02T08:00:00+01:00"), 7, 0, "R1")
    run = lifecycle.presented(run, 100.0, due)
    for now in (100.0, 100.0 + 60, 100.0 + 599):
        result = lifecycle.on_time(run, config, now)
        assert (result.remind, result.run.reminders_sent) == (False, 0)


# --- the slot window's arguments -------------------------------------------------------------


@pytest.mark.parametrize(
    ("ahead", "behind"),
    [(timedelta(0), timedelta(hours=1)), (timedelta(days=1), timedelta(seconds=-1))],
)
def test_a_slot_window_refuses_no_lookahead_or_a_negative_lookbehind(
    ahead: timedelta, behind: timedelta
) -> None:
    with pytest.raises(ValueError, match="ahead must be positive"):
        SlotWindow(daily("08:00"), ahead=ahead, behind=behind)


# --- the stored state -------------------------------------------------------------------------


def test_a_stored_counter_past_a_signed_64_bit_integer_is_refused() -> None:
    assert EngineState.from_json(edited(put("starts", 2**63 - 1))).starts == 2**63 - 1
    with pytest.raises(StateUnreadableError) as refused:
        EngineState.from_json(edited(put("starts", 2**63)))
    assert "starts" in refused.value.reason


def test_a_stored_state_without_the_lock_flag_does_not_claim_the_lock() -> None:
    """A state lacking `locked_by_agent` (written before it existed) says the agent did not lock
    the cassette: it never unlocks a lock someone else set."""

    def drop(document: dict[str, Any]) -> None:
        del document["locked_by_agent"]

    assert EngineState.from_json(edited(put("locked_by_agent", True))).locked_by_agent is True
    assert EngineState.from_json(edited(drop)).locked_by_agent is False
