"""The roll desk on its own: which announced roll is the one already known, whose roll is loaded,
and which of people's discard decisions covers a sachet.

From docs/engine.md, "Rolls and sachets": a roll announced again (SPEC 4.1, after every Hello) is
the known one when its roll id, patient, sachet count, dose times and expiry are the same and the
reader is not further back than expected; a verified roll of another patient is foreign; a roll
only seen in a Status is unverified. "Plan mismatch": a decision is about one roll, for one
sachet or (no index) every unplanned sachet of it; another roll loaded needs its own decision.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.engine.roll_desk import RollDesk
from agent.engine.state import DiscardDecision, RollInfo
from agent.engine.types import Binding
from protocol.messages import RollInserted, SachetRead

PATIENT, OTHER = "patient-7f3a", "patient-0b21"
ROLL = RollInfo(
    roll_id="R1",
    patient_ref=PATIENT,
    sachet_count=28,
    next_index=5,
    first_dose_utc_s=1_772_434_800,
    last_dose_utc_s=1_773_039_600,
    expiry_utc_s=1_775_631_600,
)
SAME = RollInserted("R1", PATIENT, 28, 5, 1_772_434_800, 1_773_039_600, 1_775_631_600)


def test_the_same_label_with_the_reader_where_expected_or_further_on_is_the_known_roll() -> None:
    desk = RollDesk(roll=ROLL)
    assert desk.is_known_roll(SAME)
    assert desk.is_known_roll(replace(SAME, next_index=6))  # sachets cut while we did not see


@pytest.mark.parametrize(
    "changed",
    [
        {"roll_id": "R2"},
        {"patient_ref": OTHER},
        {"sachet_count": 29},
        {"first_dose_utc_s": 1_772_434_801},
        {"last_dose_utc_s": 1_773_039_601},
        {"expiry_utc_s": 1_775_631_601},
        {"next_index": 4},  # the reader further back: another roll, or this one reloaded
    ],
)
def test_any_other_label_or_a_reader_further_back_is_news(changed: dict[str, object]) -> None:
    assert not RollDesk(roll=ROLL).is_known_roll(replace(SAME, **changed))  # type: ignore[arg-type]


def test_no_roll_or_one_only_seen_in_a_status_is_never_the_known_roll() -> None:
    assert not RollDesk(roll=None).is_known_roll(SAME)
    assert not RollDesk(roll=replace(ROLL, unverified=True)).is_known_roll(SAME)


def test_whose_roll_it_is() -> None:
    bound = Binding(PATIENT)
    assert RollDesk(roll=None).roll_state(bound) is None
    assert RollDesk(roll=replace(ROLL, unverified=True)).roll_state(bound) == "roll_unverified"
    assert RollDesk(roll=ROLL).roll_state(bound) == "loaded"
    assert RollDesk(roll=ROLL).roll_state(Binding(OTHER)) == "foreign_roll"
    # nobody bound: no one to compare with, so not foreign
    assert RollDesk(roll=ROLL).roll_state(None) == "loaded"
    assert not RollDesk(roll=ROLL).roll_foreign(None)
    assert not RollDesk(roll=None).roll_foreign(Binding(OTHER))
    assert not RollDesk(roll=replace(ROLL, unverified=True)).roll_foreign(Binding(OTHER))


def test_the_foreign_verdict_follows_a_new_binding_and_a_new_roll() -> None:
    desk = RollDesk(roll=ROLL)
    assert not desk.roll_foreign(Binding(PATIENT))
    assert desk.roll_foreign(Binding(OTHER))  # rebound to another patient
    assert not desk.roll_foreign(Binding(PATIENT))
    other = Binding(OTHER)
    assert desk.roll_foreign(other)
    desk.roll = replace(ROLL, patient_ref=OTHER)  # their roll is loaded
    assert not desk.roll_foreign(other)


def sachet(roll_id: str, index: int) -> SachetRead:
    return SachetRead(roll_id, index, 1_772_434_800, PATIENT)


def decided(roll_id: str, index: int | None) -> DiscardDecision:
    return DiscardDecision(roll_id, index, "nurse-3", "on_site")


def test_a_decision_covers_its_sachet_or_the_whole_roll_and_no_other_roll() -> None:
    one, whole = decided("R1", 7), decided("R1", None)
    assert RollDesk(roll=ROLL, decisions=(one,)).decision_for(sachet("R1", 7)) is one
    assert RollDesk(roll=ROLL, decisions=(one,)).decision_for(sachet("R1", 8)) is None
    assert RollDesk(roll=ROLL, decisions=(whole,)).decision_for(sachet("R1", 8)) is whole
    assert RollDesk(roll=ROLL, decisions=(one, whole)).decision_for(sachet("R2", 7)) is None
    later = decided("R2", 7)
    assert RollDesk(roll=ROLL, decisions=(one, later)).decision_for(sachet("R2", 7)) is later


def test_another_roll_loaded_keeps_only_the_decisions_about_it() -> None:
    first, second, third = decided("R1", 7), decided("R2", None), decided("R1", None)
    desk = RollDesk(roll=ROLL, decisions=(first, second, third))
    desk.keep_decisions_of("R1")
    assert desk.decisions == (first, third)
