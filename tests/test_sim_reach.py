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
        # a restart with a dose open (seed 1 had one in 90 days while its night doses were
        # 00:05 and 23:15; seed 7 meets one on 2026-03-07)
        run(7, 60)


def test_every_command_the_rules_refuse_is_refused() -> None:
    """Each kind is sent once (R11 fails the run if the unit takes one); one may miss the unit
    (the Pi down), and a pause id is given twice only while a pause is in force."""
    result = run(1, 90)
    assert result.mishaps.get("bad_command_refused", 0) >= len(BAD_COMMANDS) - 2


LOST_BINDING_SEED = 7  # seed % 10 == 7: the damaged state lost the binding too


def test_a_lost_binding_is_bound_again_by_a_person_and_doses_come_again() -> None:
    result = run(LOST_BINDING_SEED, 25)
    assert result.mishaps.get("state_damaged") == 1
    assert result.mishaps.get("bind") == 1  # a technician bound the patient again
    assert result.outcomes.get("taken", 0) > 30


def test_a_unit_that_says_a_lost_binding_was_kept_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The judge knows what the world damaged: the restore's own word is not its oracle."""
    real = engine_state.restore

    def claims_kept(saved: str | None, records: object) -> engine_state.Restored:
        restored = real(saved, records)  # type: ignore[arg-type]
        return engine_state.Restored(restored.state, restored.unreadable, "kept")

    monkeypatch.setattr(engine_state, "restore", claims_kept)
    with pytest.raises(InvariantViolation, match=r"judge R17 .*saying binding 'unreadable'"):
        run(LOST_BINDING_SEED, 25)


def test_the_second_roll_of_an_edge_seed_is_printed_at_the_sachet_tolerance() -> None:
    """Seed 4 (pauses, doses far apart): its second roll's sachets lie exactly the tolerance
    before and after their dose times, in turn (each still its slot's, at the boundary)."""
    sim = Simulation(config_for(4, 30))
    period = sim._periods[1]
    roll = sim._roll(period, "p", "p", period.sachet_times[-1])
    offsets = {
        s.intended_utc_s - int(t.timestamp())
        for s, t in zip(roll.sachets, period.sachet_times, strict=True)
    }
    assert offsets == {-30 * 60, 30 * 60}  # the engine's default tolerance: 30 min
    plain = Simulation(config_for(2, 30))  # plan changes: not an edge seed
    other = plain._roll(plain._periods[1], "p", "p", plain._periods[1].sachet_times[-1])
    assert all(
        s.intended_utc_s == int(t.timestamp())
        for s, t in zip(other.sachets, plain._periods[1].sachet_times, strict=False)
    )
