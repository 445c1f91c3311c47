"""Dispense ids are u32 on the wire and never used twice (hazard #8). At the end of the range
(a corrupted or restored counter; 4e9 doses are not in a unit's lifetime) the engine must not
crash: the last id is used, then every later dose is held with a reason and, like any dose not
given, ends missed with its high alarm. No Dispense and no Discard ever carries an id past u32."""

from __future__ import annotations

from datetime import timedelta

from test_engine import morning_rig, utc

from agent.engine.engine import EngineState
from protocol.messages import Discard, Dispense

U32_MAX = 0xFFFF_FFFF  # the wire's dispense_id field (protocol/SPEC.md)


def test_the_last_id_is_used_then_doses_are_held_and_end_missed() -> None:
    rig = morning_rig(state=EngineState(next_dispense_id=U32_MAX))
    rig.install()
    rig.run_until(utc(2026, 3, 2, 7, 1))
    [first] = rig.commands(Dispense)
    assert isinstance(first, Dispense)
    assert first.dispense_id == U32_MAX
    rig.take()
    rig.run_until(utc(2026, 3, 3, 7, 1))  # the next morning: no id left
    assert len(rig.commands(Dispense)) == 1
    held = [e for e in rig.events("dose_held") if e.fields.get("slot_id") == "2026-03-03T08:00"]
    assert [e.fields["reason"] for e in held] == ["dispense_ids_exhausted"]
    rig.run_until(utc(2026, 3, 3, 7, 0) + timedelta(hours=2))
    outcome = rig.outcome_of("2026-03-03T08:00")
    assert outcome.outcome.value == "missed"
    assert all(
        isinstance(c, (Dispense, Discard)) and c.dispense_id <= U32_MAX
        for c in rig.commands(Dispense) + rig.commands(Discard)
    )


def test_a_counter_already_used_up_holds_the_first_dose_without_crashing() -> None:
    rig = morning_rig(state=EngineState(next_dispense_id=U32_MAX + 1))
    rig.install()
    rig.run_until(utc(2026, 3, 2, 9, 0))
    assert rig.commands(Dispense) == []
    assert "dispense_ids_exhausted" in [e.fields["reason"] for e in rig.events("dose_held")]
    assert rig.outcome_of("2026-03-02T08:00").outcome.value == "missed"
