"""Temporary stop: which slots a pause covers, skipped_paused outcomes, no missed alarms, sachets
of paused slots discarded on resume, clean resume."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_engine import morning_rig, utc

from agent.engine import pause
from agent.engine.types import EndPause, EngineInputError, Outcome, PauseWindow, StartPause
from protocol.messages import Dispense

START = utc(2026, 3, 2, 12, 0)


def test_window_covers_start_inclusive_end_exclusive() -> None:
    window = PauseWindow("p1", START, START + timedelta(days=2))
    assert pause.covers(window, START)
    assert pause.covers(window, START + timedelta(days=1))
    assert not pause.covers(window, START + timedelta(days=2))
    assert not pause.covers(window, START - timedelta(seconds=1))


def test_open_ended_window_covers_until_resumed() -> None:
    pauses = pause.start((), PauseWindow("p1", START, None))
    assert pause.active(pauses, START + timedelta(days=300)) is not None
    pauses, ended = pause.end(pauses, None, START + timedelta(days=3))
    assert ended.end_utc == START + timedelta(days=3)
    assert pause.active(pauses, START + timedelta(days=3)) is None
    assert pause.covering(pauses, START + timedelta(days=1)) is not None


def test_pause_not_yet_started_is_cancelled_by_resume() -> None:
    pauses = pause.start((), PauseWindow("p1", START, None))
    pauses, _ = pause.end(pauses, "p1", START - timedelta(hours=1))
    assert pauses == ()


def test_inconsistent_pauses_are_refused() -> None:
    with pytest.raises(EngineInputError):
        pause.start((), PauseWindow("p1", START, START - timedelta(hours=1)))
    pauses = pause.start((), PauseWindow("p1", START, None))
    with pytest.raises(EngineInputError):
        pause.start(pauses, PauseWindow("p1", START, None))
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
    # the three sachets of the paused slots go into the bin, the next one stays at the reader
    assert rig.dispenser.discarded == [0, 1, 2]
    assert len(rig.events("sachet_discarded")) == 3
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
