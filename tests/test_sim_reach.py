"""The simulated world reaches the rare paths of the safety code, and the judge sees when they
break: a restart that finds the stored state damaged (judge R17), the daemon's restart through
the stored JSON and the ledger, and commands the rules refuse (R11). Each break is made by hand
here (monkeypatch), as a mutant would make it (docs/mutation-testing.md)."""

from __future__ import annotations

import pytest

from agent.engine import state as engine_state
from agent.engine.engine import DoseEngine
from agent.simulation.harness import BAD_COMMANDS, Simulation, SimulationResult
from agent.simulation.invariants import InvariantViolation
from agent.simulation.mix import config_for

DAMAGED_SEED = 2  # seed % 5 == 2: an early restart that finds the stored state damaged


def run(seed: int, days: int) -> SimulationResult:
    return Simulation(config_for(seed, days)).run()


def test_a_damaged_stored_state_locks_the_unit_down_until_the_centre_acknowledges() -> None:
    result = run(DAMAGED_SEED, 25)
    assert result.mishaps.get("state_damaged") == 1
    assert result.mishaps.get("acknowledge", 0) >= 1  # the centre let it go on
    assert result.outcomes.get("taken", 0) > 40  # and doses came again


def test_a_unit_that_ignores_a_damaged_state_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DoseEngine, "locked_down", property(lambda self: False))
    with pytest.raises(InvariantViolation, match=r"judge R1[47] "):
        run(DAMAGED_SEED, 25)


def test_restarts_go_through_the_ledger_as_the_daemons_do(monkeypatch: pytest.MonkeyPatch) -> None:
    def forgetful(state: object, records: object) -> tuple[tuple[object, ...], list[str]]:
        return (), []  # every open slot of the ledger lost

    monkeypatch.setattr(engine_state, "_ledger_slots", forgetful)
    with pytest.raises(InvariantViolation, match=r"does not survive its own restart"):
        run(1, 90)  # a restart with a dose open


def test_every_command_the_rules_refuse_is_refused() -> None:
    """Each kind is sent once (R11 fails the run if the unit takes one); one may miss the unit
    (the Pi down), and a pause id is given twice only while a pause is in force."""
    result = run(1, 90)
    assert result.mishaps.get("bad_command_refused", 0) >= len(BAD_COMMANDS) - 2
