"""Temporary stop: which slots a pause covers, skipped_paused outcomes, no missed alarms, and a
resume on a dispenser that does not report its bin level (its backlog waits for a nurse).
The safety rules of hazard #5 on the firmware model are in test_pause_safety.py."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from test_engine import morning_rig, utc

from agent.engine import pause
from agent.engine.types import EndPause, EngineInputError, Outcome, PauseWindow, StartPause
from protocol.messages import Dispense

START = utc(2026, 3, 2, 12, 0)
MAX = timedelta(days=30)


def test_window_covers_start_inclusive_end_exclusive() -> None:
    window = PauseWindow("p1", START, START + timedelta(days=2))
    assert pause.covers(window, START)
    assert pause.covers(window, START + timedelta(days=1))
    assert not pause.covers(window, START + timedelta(days=2))
    assert not pause.covers(window, START - timedelta(seconds=1))


def test_open_ended_window_covers_until_resumed() -> None:
    pauses = pause.start((), PauseWindow("p1", START, None), MAX)
    assert pause.active(pauses, START + timedelta(days=300)) is not None
    pauses, ended = pause.end(pauses, None, START + timedelta(days=3))
    assert ended.end_utc == START + timedelta(days=3)
    assert pause.active(pauses, START + timedelta(days=3)) is None
    assert pause.covering(pauses, START + timedelta(days=1)) is not None


def test_pause_not_yet_started_is_cancelled_by_resume() -> None:
    pauses = pause.start((), PauseWindow("p1", START, None), MAX)
    pauses, _ = pause.end(pauses, "p1", START - timedelta(hours=1))
    assert pauses == ()


def test_inconsistent_pauses_are_refused() -> None:
    with pytest.raises(EngineInputError):
        pause.start((), PauseWindow("p1", START, START - timedelta(hours=1)), MAX)
    pauses = pause.start((), PauseWindow("p1", START, None), MAX)
    with pytest.raises(EngineInputError):
        pause.start(pauses, PauseWindow("p1", START, None), MAX)
    with pytest.raises(EngineInputError):
        pause.end((), None, START)
    with pytest.raises(EngineInputError):
        pause.end(pauses, "nope", START)


def test_engine_refuses_pause_ending_before_start_without_changing_anything() -> None:
    rig = morning_rig()
    rig.install()
    before = rig.engine.state.to_json()
    with pytest.raises(EngineInputError):
        rig.feed(StartPause(PauseWindow("p1", START, START - timedelta(hours=1))))
    assert rig.engine.state.to_json() == before


def test_paused_slots_are_skipped_without_missed_alarms_and_resume_is_clean() -> None:
    rig = morning_rig()
    rig.install()
    rig.feed(StartPause(PauseWindow("hospital", utc(2026, 3, 2, 6, 0), None)))
    rig.run_until(utc(2026, 3, 5, 6, 0))  # three paused dose times
    outcomes = rig.outcomes()
    assert [o.outcome for o in outcomes] == [Outcome.SKIPPED_PAUSED] * 3
    assert all(o.reason == "hospital" for o in outcomes)
    events = rig.events("slot_outcome")
    assert all(e.alert_id is None and e.vkp_code is None for e in events)
    assert rig.commands(Dispense) == []
    assert rig.dispenser.discarded == []  # nothing cut while the patient is away
    rig.feed(EndPause("hospital"))
    # this dispenser does not report how full its bin is: the three sachets of the paused slots
    # are not cut into it blindly; the centre hears what the nurse must do
    assert rig.dispenser.discarded == []
    (told,) = rig.events("backlog_needs_nurse")
    assert told.fields["sachets_to_discard"] == 3
    assert told.fields["bin_room"] is None
    assert told.fields["action"] == "swap_roll_or_remove_by_hand"
    # the nurse takes the three sachets off the roll by hand and puts it back
    rig.dispenser.next_index = 3
    rig.insert_roll()
    assert rig.events("backlog_needs_nurse_cleared")
    rig.run_until(utc(2026, 3, 5, 7, 0))
    assert rig.dispenser.dispensed == [3]
    rig.take()
    assert rig.outcome_of("2026-03-05T08:00").outcome is Outcome.TAKEN
    rig.assert_one_outcome_per_slot()


def test_pause_started_after_a_held_slot_fell_due_skips_it() -> None:
    rig = morning_rig()
    rig.install(link=False)
    rig.run_until(utc(2026, 3, 2, 7, 10))
    rig.feed(StartPause(PauseWindow("respite", utc(2026, 3, 2, 7, 0), None)))
    assert rig.outcome_of("2026-03-02T08:00").outcome is Outcome.SKIPPED_PAUSED


def test_a_pause_longer_than_the_maximum_or_inconsistent_travel_is_refused() -> None:
    with pytest.raises(EngineInputError, match="30 days"):
        pause.start((), PauseWindow("p1", START, START + MAX + timedelta(seconds=1)), MAX)
    assert pause.start((), PauseWindow("p1", START, START + MAX), MAX)  # exactly the maximum
    with pytest.raises(EngineInputError, match="reason"):
        pause.start((), PauseWindow("p1", START, None, reason="holiday"), MAX)
    for window in (
        PauseWindow("p1", START, START + timedelta(days=2), reason="hospital", take_along=True),
        PauseWindow("p1", START, None, reason="travel", take_along=True),
    ):
        with pytest.raises(EngineInputError, match="take_along"):
            pause.start((), window, MAX)


def test_paused_since_follows_a_chain_of_windows_but_not_a_gap() -> None:
    day = timedelta(days=1)
    chain = (
        PauseWindow("a", START, START + 10 * day),
        PauseWindow("b", START + 10 * day, START + 20 * day),  # end to start
        PauseWindow("c", START + 15 * day, None),  # overlapping, open-ended
        PauseWindow("d", START - 5 * day, START - day),  # a gap before the chain
    )
    assert pause.paused_since(chain, START + 25 * day) == START
    assert pause.paused_since(chain, START - 2 * day) == START - 5 * day
    assert pause.paused_since(chain, START - timedelta(hours=1)) is None
    assert pause.overdue_at(chain, chain[2], MAX) == START + MAX


def test_reminders_of_an_open_ended_pause_are_counted_from_its_start() -> None:
    week = timedelta(days=7)
    window = PauseWindow("p1", START, None)
    assert pause.reminders_due(window, START + week - timedelta(seconds=1), week) == 0
    assert pause.reminders_due(window, START + week, week) == 1
    assert pause.reminders_due(window, START + 3 * week + timedelta(hours=5), week) == 3
    bounded = PauseWindow("p2", START, START + 3 * week)
    assert pause.reminders_due(bounded, START + 2 * week, week) == 0  # it has an end notice


@pytest.mark.parametrize(
    ("backlog", "room", "action"),
    [
        (None, 30, "check_roll"),
        (0, None, "none"),
        (1, None, "discard_automatically"),  # one leftover: the dispenser's BIN_FULL bounds it
        (2, None, "swap_roll_or_remove_by_hand"),  # level unknown: never a backlog blindly
        (29, 30, "discard_automatically"),  # one place kept for a dose taken back
        (30, 30, "swap_roll_or_remove_by_hand"),
        (56, 30, "swap_roll_or_remove_by_hand"),
        (1, 1, "swap_roll_or_remove_by_hand"),
    ],
)
def test_resume_plan_discards_only_what_the_bin_holds_beside_its_reserve(
    backlog: int | None, room: int | None, action: str
) -> None:
    plan = pause.resume_plan(backlog, room, 30 if room is not None else None, reserve=1)
    assert plan.action == action
    assert plan.fits == (action in ("none", "discard_automatically"))


def test_a_pause_start_is_still_due_when_the_shell_wakes_at_it_without_stepping() -> None:
    """The simulation found it: the shell woke at the very instant a pause began (for another
    reason), asked for the next deadline without stepping the engine, and the start was gone
    (only instants after `now` counted), so the travel pre-dispense began hours late."""
    rig = morning_rig()
    rig.install()
    begins = utc(2026, 3, 2, 6, 30)
    rig.feed(StartPause(PauseWindow("trip", begins, begins + timedelta(days=2))))
    rig.clock.advance((begins - rig.clock.now().utc).total_seconds())
    now = rig.clock.now()
    deadline = rig.engine.next_deadline(now)
    assert deadline is not None
    assert deadline <= now.mono


def test_a_chain_whose_first_window_ended_long_ago_is_overdue_at_the_maximum() -> None:
    """docs/engine.md: a chain of windows (end to start) in force for `pause_max` (30 days) raises
    pause_overdue. A hospital stay resumed after 20 days and at once followed by 15 days of
    respite has been a pause for 30 days on day 30, although the first window ended 10 days
    before (and the slot horizon has long passed its end)."""
    rig = morning_rig()
    rig.install()
    start = utc(2026, 3, 2, 6, 0)
    rig.feed(StartPause(PauseWindow("hospital", start, None, "hospital")))
    rig.run_until(start + timedelta(days=20))
    rig.feed(EndPause("hospital"))
    respite = PauseWindow("respite", start + timedelta(days=20), start + timedelta(days=35))
    rig.feed(StartPause(replace(respite, reason="respite")))
    rig.run_until(start + MAX - timedelta(seconds=1))
    assert rig.events("pause_overdue") == []
    rig.run_until(start + MAX)
    [overdue] = rig.events("pause_overdue")
    assert overdue.fields["pause_id"] == "respite"
    assert overdue.fields["paused_since_utc"] == "2026-03-02T06:00:00Z"


def test_prune_keeps_an_ended_window_that_a_window_in_force_continues() -> None:
    day = timedelta(days=1)
    first = PauseWindow("a", START, START + 20 * day)
    second = PauseWindow("b", START + 20 * day, START + 35 * day)  # end to start
    overlapping = PauseWindow("c", START + 18 * day, START + 21 * day)
    before_a_gap = PauseWindow("d", START - 5 * day, START - day)
    pauses = (before_a_gap, first, overlapping, second)
    assert pause.prune(pauses, START + 25 * day) == (first, overlapping, second)
    assert pause.paused_since(pause.prune(pauses, START + 25 * day), START + 30 * day) == START
    assert pause.prune(pauses, START + 35 * day) == ()
