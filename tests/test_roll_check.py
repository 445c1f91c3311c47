"""Roll and sachet checks: patient, expiry, period, empty/low, sachet time and order; and what the
engine does with them (foreign roll locked and never dispensed from)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from test_engine import OTHER, PATIENT, morning_rig, secs, utc

from agent.engine import roll_check
from agent.engine.types import EngineConfig, Outcome
from protocol.messages import (
    AlertPattern,
    Dispense,
    LowSupply,
    RollInserted,
    SachetRead,
    SetAlert,
    SetLock,
)

NOW = datetime(2026, 3, 2, 7, 0, tzinfo=UTC)
TOL = timedelta(minutes=30)


def roll(**overrides: object) -> RollInserted:
    values: dict[str, object] = {
        "roll_id": "R1",
        "patient_ref": PATIENT,
        "sachet_count": 28,
        "next_index": 0,
        "first_dose_utc_s": secs(NOW),
        "last_dose_utc_s": secs(NOW + timedelta(days=13)),
        "expiry_utc_s": secs(NOW + timedelta(days=60)),
    }
    values.update(overrides)
    return RollInserted(**values)  # type: ignore[arg-type]


def sachet(
    index: int = 0, at: datetime = NOW, ref: str = PATIENT, roll_id: str = "R1"
) -> SachetRead:
    return SachetRead(roll_id, index, secs(at), ref)


def check(r: RollInserted, ref: str | None = PATIENT) -> str | None:
    return roll_check.check_roll(r, ref, NOW, period_tolerance=TOL).reason


def test_accepts_the_right_roll() -> None:
    assert roll_check.check_roll(roll(), PATIENT, NOW, period_tolerance=TOL).ok


def test_foreign_roll() -> None:
    assert check(roll(patient_ref=OTHER)) == "foreign_roll"
    assert check(roll(patient_ref=PATIENT + " ")) == "foreign_roll"


def test_no_binding_refuses_any_roll() -> None:
    assert check(roll(), ref=None) == "no_binding"


def test_expired_roll() -> None:
    assert check(roll(expiry_utc_s=secs(NOW - timedelta(seconds=1)))) == "roll_expired"
    assert check(roll(expiry_utc_s=secs(NOW))) == "roll_expired"
    assert check(roll(expiry_utc_s=0)) is None  # unknown expiry: not refused on that ground


def test_roll_for_a_period_that_has_passed() -> None:
    assert check(roll(last_dose_utc_s=secs(NOW - TOL - timedelta(minutes=1)))) == (
        "roll_period_passed"
    )
    assert check(roll(last_dose_utc_s=secs(NOW - TOL))) is None


def test_empty_and_low_roll() -> None:
    assert check(roll(next_index=28)) == "roll_empty"
    assert roll_check.sachets_remaining(28, 25) == 3
    assert roll_check.is_low(3, 4)
    assert roll_check.is_low(4, 4)
    assert not roll_check.is_low(5, 4)
    assert not roll_check.is_low(0, 4)  # empty is its own condition


def test_patient_reference_compared_in_constant_time_on_utf8() -> None:
    assert roll_check.same_patient("pasient-ø", "pasient-ø")
    assert not roll_check.same_patient("pasient-ø", "pasient-o")


@pytest.mark.parametrize(
    ("sachet_read", "expected_index", "reason"),
    [
        (sachet(), 0, None),
        (sachet(ref=OTHER), 0, "sachet_foreign"),
        (sachet(roll_id="R9"), 0, "sachet_wrong_roll"),
        (sachet(index=3), 0, "sachet_out_of_order"),
        (sachet(at=NOW - TOL - timedelta(minutes=1)), 0, "sachet_stale"),
        (sachet(at=NOW + TOL + timedelta(minutes=1)), 0, "sachet_time_mismatch"),
        (sachet(at=NOW + TOL), 0, None),
        (SachetRead("R1", 0, 0, PATIENT), 0, "sachet_time_unknown"),
    ],
)
def test_sachet_checks(sachet_read: SachetRead, expected_index: int, reason: str | None) -> None:
    verdict = roll_check.check_sachet(sachet_read, PATIENT, "R1", expected_index, NOW, TOL)
    assert verdict.reason == reason
    assert verdict.ok is (reason is None)


# --- in the engine ------------------------------------------------------------------------------


def test_foreign_roll_is_locked_alarmed_and_never_dispensed_from() -> None:
    rig = morning_rig()
    rig.dispenser.roll_patient = OTHER
    rig.install()
    alarm = rig.events("wrong_roll")
    assert len(alarm) == 1
    assert alarm[0].vkp_code == "3.5"
    assert alarm[0].alert_id is not None
    assert rig.commands(SetLock) == [SetLock(0, True)]
    assert SetAlert(0, AlertPattern.FAULT) in rig.commands(SetAlert)
    # a later sachet claims the right patient: still never dispensed from this roll
    rig.msg(SachetRead("R1", 0, secs(utc(2026, 3, 2, 7, 0)), PATIENT))
    rig.run_until(utc(2026, 3, 2, 9, 0))
    assert rig.commands(Dispense) == []
    outcome = rig.outcome_of("2026-03-02T08:00")
    assert (outcome.outcome, outcome.reason) == (Outcome.REFUSED, "foreign_roll")


def test_right_roll_after_foreign_one_is_used_and_unlocked() -> None:
    rig = morning_rig()
    rig.dispenser.roll_patient = OTHER
    rig.install()
    rig.remove_roll()
    rig.dispenser.roll_patient = PATIENT
    rig.dispenser.roll_id = "R2"
    rig.insert_roll()
    assert rig.commands(SetLock)[-1] == SetLock(0, False)
    assert [e.vkp_code for e in rig.events("roll_inserted")] == ["3.21"]
    rig.run_until(utc(2026, 3, 2, 7, 0))
    assert len(rig.commands(Dispense)) == 1


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("sachet_out_of_order", "sachet_out_of_order"),
        ("sachet_time_mismatch", "sachet_time_mismatch"),
        ("sachet_foreign", "sachet_foreign"),
    ],
)
def test_bad_sachet_is_not_dispensed_and_slot_refused(setup: str, reason: str) -> None:
    rig = morning_rig()
    rig.install(roll=False)
    rig.msg(rig.dispenser.roll_message())
    due = utc(2026, 3, 2, 7, 0)
    bad = {
        "sachet_out_of_order": SachetRead("R1", 2, secs(due), PATIENT),
        # tomorrow's dose (a time of no dose at all is a plan mismatch: test_plan_mismatch.py)
        "sachet_time_mismatch": SachetRead("R1", 0, secs(due + timedelta(days=1)), PATIENT),
        "sachet_foreign": SachetRead("R1", 0, secs(due), OTHER),
    }[setup]
    rig.msg(bad)
    rig.run_until(utc(2026, 3, 2, 9, 0))
    assert rig.commands(Dispense) == []
    outcome = rig.outcome_of("2026-03-02T08:00")
    assert (outcome.outcome, outcome.reason) == (Outcome.REFUSED, reason)


def test_stale_sachet_is_discarded_then_the_right_one_given() -> None:
    due = utc(2026, 3, 2, 7, 0)
    rig = morning_rig()
    rig.dispenser.sachet_times = [due - timedelta(days=1), due, due + timedelta(days=1)]
    rig.install()
    rig.run_until(due)
    assert rig.dispenser.discarded == [0]
    assert rig.dispenser.dispensed == [1]
    assert [e.fields["sachet_index"] for e in rig.events("sachet_discarded")] == [0]


def test_stale_sachet_without_retain_bin_refuses_the_slot() -> None:
    due = utc(2026, 3, 2, 7, 0)
    rig = morning_rig(features=0)
    # a later sachet too, so the roll's period does not pass (at due + tolerance) meanwhile
    rig.dispenser.sachet_times = [due - timedelta(days=1), due, due + timedelta(days=1)]
    rig.install()
    rig.run_until(utc(2026, 3, 2, 9, 0))
    assert rig.commands(Dispense) == []
    assert rig.outcome_of("2026-03-02T08:00").reason == "sachet_stale"


@pytest.mark.parametrize(
    ("field", "value", "reason", "outcome"),
    [
        ("expiry_utc_s", secs(utc(2026, 3, 1)), "roll_expired", Outcome.REFUSED),
        ("last_dose_utc_s", secs(utc(2026, 2, 20)), "roll_period_passed", Outcome.REFUSED),
    ],
)
def test_expired_or_passed_roll_refuses(
    field: str, value: int, reason: str, outcome: Outcome
) -> None:
    rig = morning_rig()
    rig.install(roll=False)
    message = rig.dispenser.roll_message()
    rig.msg(RollInserted(**{**_fields(message), field: value}))  # type: ignore[arg-type]
    rig.msg(rig.dispenser.sachet())  # type: ignore[arg-type]
    assert [e.fields["reason"] for e in rig.events("roll_rejected")] == [reason]
    rig.run_until(utc(2026, 3, 2, 9, 0))
    assert rig.commands(Dispense) == []
    assert (
        rig.outcome_of("2026-03-02T08:00").outcome,
        rig.outcome_of("2026-03-02T08:00").reason,
    ) == (
        outcome,
        reason,
    )


def test_empty_roll_alarms_and_the_dose_is_missed_with_vkp_3_7() -> None:
    rig = morning_rig()
    rig.dispenser.next_index = 7  # all 7 used
    rig.install()
    assert [e.vkp_code for e in rig.events("roll_empty")] == ["3.6"]
    rig.run_until(utc(2026, 3, 2, 9, 0))
    outcome = rig.outcome_of("2026-03-02T08:00")
    assert outcome.reason == "not_dispensed:roll_empty"
    assert rig.events("slot_outcome")[0].vkp_code == "3.7"


def test_low_roll_raises_few_doses_left_once() -> None:
    rig = morning_rig()
    rig.dispenser.next_index = 3  # 4 left = threshold
    rig.install()
    low = rig.events("low_supply")
    assert len(low) == 1
    assert low[0].vkp_code == "3.25"
    rig.run_until(utc(2026, 3, 2, 7, 1))
    assert len(rig.events("low_supply")) == 1


def test_the_dispensers_low_supply_at_zero_does_not_raise_few_doses_left_again() -> None:
    # SPEC 4.4: the dispenser sends LowSupply after every cut that leaves 4 or fewer, 0 included;
    # the agent judges it with its own threshold. On an empty roll "few doses left" is cleared
    # (catalogue), and roll_empty says what is true.
    rig = morning_rig()
    rig.dispenser.next_index = 6  # one sachet left: the 08:00 dose of 2026-03-08
    rig.install()
    rig.run_until(utc(2026, 3, 8, 7, 5))
    rig.take()
    assert [e.kind for e in rig.events() if "supply" in e.kind] == [
        "low_supply",
        "low_supply_cleared",
    ]
    rig.msg(LowSupply(roll_id="R1", remaining=0))
    assert [e.kind for e in rig.events() if "supply" in e.kind][-1] == "low_supply_cleared"
    assert len(rig.events("roll_empty")) == 1


def test_the_dispensers_low_supply_above_the_agents_threshold_raises_nothing() -> None:
    rig = morning_rig(config=EngineConfig(low_supply_threshold=2))
    rig.dispenser.next_index = 3  # 4 left: low for the dispenser's fixed 4, not for the agent's 2
    rig.install()
    assert rig.events("low_supply") == []
    rig.msg(LowSupply(roll_id="R1", remaining=4))
    assert rig.events("low_supply") == []
    rig.msg(LowSupply(roll_id="R1", remaining=2))
    assert [e.fields["remaining"] for e in rig.events("low_supply")] == [2]


def _fields(message: RollInserted) -> dict[str, object]:
    return {name: getattr(message, name) for name in message.__slots__}


# --- the tolerance is capped strictly below half the spacing (SAFETY.md H2) -------------------


@pytest.mark.parametrize(
    ("configured", "spacings", "expected"),
    [
        (TOL, [timedelta(minutes=30)], timedelta(minutes=14, seconds=59)),
        (TOL, [timedelta(hours=6), timedelta(minutes=60)], timedelta(minutes=29, seconds=59)),
        (TOL, [timedelta(hours=2)], TOL),  # already below half: kept
        (timedelta(minutes=5), [timedelta(minutes=30)], timedelta(minutes=5)),
        (TOL, [timedelta(0), timedelta(hours=4)], TOL),  # a shared instant is no spacing
        (TOL, [timedelta(seconds=1)], timedelta(0)),  # never negative
        (TOL, [], TOL),
    ],
)
def test_capped_tolerance(
    configured: timedelta, spacings: list[timedelta], expected: timedelta
) -> None:
    assert roll_check.capped_tolerance(configured, spacings) == expected


# The latest label time read as a time is 3000-01-01T00:00:00Z = 32503680000 s (written out here:
# 1030 years of 365 days plus 250 leap days, times 86400); one second later is a broken label.
YEAR_3000_S = 32_503_680_000


def test_wire_time_is_a_date_from_one_second_after_the_epoch_to_the_year_3000() -> None:
    assert roll_check.wire_time(YEAR_3000_S) == datetime(3000, 1, 1, tzinfo=UTC)
    assert roll_check.wire_time(YEAR_3000_S + 1) is None
    assert roll_check.wire_time(1) == datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert roll_check.wire_time(0) is None  # 0 is "unknown", never the epoch
    assert roll_check.wire_time(-1) is None


def test_a_label_time_past_the_year_3000_or_negative_is_not_a_time_but_0_is_unknown() -> None:
    assert not roll_check.wire_time_invalid(YEAR_3000_S)
    assert roll_check.wire_time_invalid(YEAR_3000_S + 1)
    assert not roll_check.wire_time_invalid(0)
    assert roll_check.wire_time_invalid(-1)
    assert check(roll(expiry_utc_s=YEAR_3000_S)) is None
    assert check(roll(expiry_utc_s=YEAR_3000_S + 1)) == "roll_label_invalid"
    assert check(roll(first_dose_utc_s=YEAR_3000_S + 1)) == "roll_label_invalid"
