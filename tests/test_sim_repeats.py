"""The dispenser sends a dose event again (mishaps.MishapRates.repeats, in the mix): its report of
a dose presented, taken or taken back, which the agent heard already, comes again seconds to hours
later. Judge R24: the answer is no news of a dose and moves no sachet. Seed 2 of the mix meets all
three kinds in its first 45 days.

The engine tests (tests/test_engine_repeated_*.py) pin each repeat down; these show that the
simulation reaches them and that its judge sees an engine that takes a repeat as news.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.engine.engine import DoseEngine
from agent.engine.types import Action
from agent.simulation.harness import DoseEngineFactory, Simulation
from agent.simulation.mix import config_for
from agent.simulation.violation import InvariantViolation
from protocol.messages import DosePresented, DoseRetained, DoseTaken

SEED, DAYS = 2, 45


def test_the_mix_sends_each_kind_of_dose_event_again_and_nothing_changes() -> None:
    result = Simulation(config_for(SEED, DAYS, "mix"), DoseEngineFactory()).run()
    repeats = {k: v for k, v in result.mishaps.items() if k.startswith("repeat_")}
    assert set(repeats) == {"repeat_DosePresented", "repeat_DoseTaken", "repeat_DoseRetained"}


def test_the_rate_zero_sends_nothing_again() -> None:
    config = config_for(SEED, DAYS, "mix")
    quiet = replace(config, mishaps=replace(config.mishaps, repeats=0.0))
    result = Simulation(quiet, DoseEngineFactory()).run()
    assert not [k for k in result.mishaps if k.startswith("repeat_")]


def _retained_taken_as_news(
    self: DoseEngine, msg: DoseRetained, now: object, actions: list[Action]
) -> None:
    self._emit(actions, "dose_retained", {"dispense_id": msg.dispense_id, "slot_id": None})


def _repeat_taken_as_news(
    self: DoseEngine,
    msg: DosePresented | DoseTaken | DoseRetained,
    slot_id: str | None,
    expected: int,
    now: object,
    actions: list[Action],
) -> None:
    self._emit(
        actions,
        "unexpected_dispenser_event",
        {"message": type(msg).__name__, "dispense_id": msg.dispense_id, "slot_id": slot_id},
    )


@pytest.mark.parametrize(
    ("method", "stand_in"),
    [
        ("_on_retained_again", _retained_taken_as_news),
        ("_repeated", _repeat_taken_as_news),
    ],
)
def test_the_judge_sees_an_engine_that_takes_a_repeat_as_news(
    monkeypatch: pytest.MonkeyPatch, method: str, stand_in: object
) -> None:
    monkeypatch.setattr(DoseEngine, method, stand_in)
    with pytest.raises(InvariantViolation, match=r"judge R24 .* sent again, heard before"):
        Simulation(config_for(SEED, DAYS, "mix"), DoseEngineFactory()).run()
