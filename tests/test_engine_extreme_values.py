"""Hazard #6 (SAFETY.md): a frame value at the type's limit must never crash the engine.

Erased flash reads as all ones, so a dispenser can send a u64 of 2**64 - 1 as a label time. Such a
roll is refused (HIGH `roll_rejected`, reason `roll_label_invalid`), nothing is dispensed from it,
and the persisted state it leaves behind starts a new engine without an exception: no crash loop.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_engine import PATIENT, Rig, daily, secs, utc

from agent.engine import roll_check
from agent.engine.engine import DoseEngine, EngineState
from agent.engine.types import EngineConfig, Priority, Tick
from protocol.messages import Dispense, RollInserted, SachetRead

U64_MAX = 2**64 - 1
YEAR_10000 = 253_402_300_800  # 10000-01-01T00:00:00Z: datetime cannot hold it
OUT_OF_RANGE = (U64_MAX, 2**63, YEAR_10000, roll_check.WIRE_TIME_MAX_S + 1)


def roll(first: int, last: int, expiry: int) -> RollInserted:
    return RollInserted("R9", PATIENT, 28, 0, first, last, expiry)


@pytest.mark.parametrize("value", OUT_OF_RANGE)
@pytest.mark.parametrize("field", ["first", "last", "expiry"])
def test_roll_check_refuses_a_label_time_out_of_range(value: int, field: str) -> None:
    times = {"first": secs(utc(2026, 3, 1)), "last": secs(utc(2026, 3, 28)), "expiry": 0}
    times[field] = value
    verdict = roll_check.check_roll(
        roll(times["first"], times["last"], times["expiry"]),
        PATIENT,
        utc(2026, 3, 2),
        period_tolerance=timedelta(minutes=30),
    )
    assert verdict.reason == roll_check.ROLL_LABEL_INVALID


def test_zero_still_means_unknown_and_the_bound_itself_is_a_time() -> None:
    now = utc(2026, 3, 2)
    bound = roll_check.WIRE_TIME_MAX_S
    verdict = roll_check.check_roll(
        roll(0, bound, bound), PATIENT, now, period_tolerance=timedelta(minutes=30)
    )
    assert verdict.ok
    assert roll_check.wire_time(bound) is not None
    assert roll_check.wire_time(bound + 1) is None
    assert roll_check.wire_time(U64_MAX) is None


@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_sachet_time_out_of_range_is_unknown_never_a_match(value: int) -> None:
    timing = roll_check.sachet_timing(value, utc(2026, 3, 2, 7), timedelta(minutes=30))
    assert timing is roll_check.SachetTiming.UNKNOWN


def test_engine_refuses_an_all_ones_roll_dispenses_nothing_and_restarts_cleanly() -> None:
    rig = Rig(daily("08:00"), start=utc(2026, 3, 2, 6))
    rig.install(roll=False)
    rig.msg(roll(U64_MAX, U64_MAX, U64_MAX))
    rig.msg(SachetRead("R9", 0, U64_MAX, PATIENT))
    rejected = rig.events("roll_rejected")
    assert [e.fields["reason"] for e in rejected] == [roll_check.ROLL_LABEL_INVALID]
    assert rejected[0].priority is Priority.HIGH
    rig.run_until(utc(2026, 3, 2, 9, 30))
    assert rig.commands(Dispense) == []
    assert rig.outcome_of("2026-03-02T08:00").reason == roll_check.ROLL_LABEL_INVALID

    # What a restart reads back: the roll is persisted as it was announced.
    saved = EngineState.from_json(rig.engine.state.to_json())
    now = rig.clock.now()
    engine = DoseEngine(EngineConfig(), saved, now)
    engine.step(Tick(), now)  # raised OverflowError before the bound: a crash loop at boot
    assert engine.next_deadline(now) is not None
