"""Pure checks of a multidose roll and of the sachet at the reader.

Each check returns a `Verdict` with a stable reason token (listed in docs/engine.md); the engine
decides what a verdict means for a slot. Patient references are compared in constant time so a
probing device cannot learn a reference byte by byte from timing.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from agent.clock import utc_text
from protocol.messages import RollInserted, SachetRead

FOREIGN_ROLL = "foreign_roll"
NO_BINDING = "no_binding"
ROLL_EXPIRED = "roll_expired"
ROLL_PERIOD_PASSED = "roll_period_passed"
ROLL_EMPTY = "roll_empty"
ROLL_LABEL_INVALID = "roll_label_invalid"
SACHET_FOREIGN = "sachet_foreign"
SACHET_WRONG_ROLL = "sachet_wrong_roll"
SACHET_OUT_OF_ORDER = "sachet_out_of_order"
SACHET_STALE = "sachet_stale"
SACHET_TIME_MISMATCH = "sachet_time_mismatch"
SACHET_TIME_UNKNOWN = "sachet_time_unknown"
# A sachet packed for no dose time of the schedule (plan mismatch, VKP 3.22) is at the reader:
PLAN_MISMATCH = "plan_mismatch"  # nobody decided yet: nothing is cut past it
DISCARD_DECIDED = "discard_decided"  # a person decided it goes to the bin; not cut yet


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str | None = None  # stable token when not ok
    detail: str = ""


ACCEPTED = Verdict(ok=True)


def _refuse(reason: str, detail: str = "") -> Verdict:
    return Verdict(ok=False, reason=reason, detail=detail)


def same_patient(expected_ref: str, claimed_ref: str) -> bool:
    """Constant-time comparison of two pseudonymous patient references (UTF-8 bytes)."""
    return hmac.compare_digest(expected_ref.encode("utf-8"), claimed_ref.encode("utf-8"))


# Latest protocol time taken as a time (3000-01-01T00:00:00Z). The wire allows u64, and erased flash
# reads as all ones: a value past this is a broken label, not a date. The bound leaves centuries of
# room for the tolerances added to label times, so no date arithmetic can overflow.
WIRE_TIME_MAX_S = 32_503_680_000


@lru_cache(maxsize=256)  # a roll's few label times, asked on every step (datetime is immutable)
def wire_time(seconds: int) -> datetime | None:
    """A protocol time (whole seconds since the epoch, UTC) as an aware datetime; None when it is
    0 (unknown) or not a time at all (see `wire_time_invalid`). Never raises."""
    if seconds <= 0 or seconds > WIRE_TIME_MAX_S:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC)


def wire_time_invalid(seconds: int) -> bool:
    """A label time that is not a time (negative or past WIRE_TIME_MAX_S); 0 means unknown."""
    return seconds < 0 or seconds > WIRE_TIME_MAX_S


def sachets_remaining(sachet_count: int, next_index: int) -> int:
    return max(0, sachet_count - next_index)


def is_low(remaining: int, threshold: int) -> bool:
    """Few doses left (VKP 3.25): at or below the threshold but not yet empty."""
    return 0 < remaining <= threshold


def check_roll(
    roll: RollInserted,
    patient_ref: str | None,
    now_utc: datetime,
    *,
    period_tolerance: timedelta,
    expired_margin: timedelta = timedelta(0),
) -> Verdict:
    """May doses be given from this roll at all? Checked in order of severity.

    `patient_ref` None (no binding yet) refuses: a roll cannot be matched to nobody.
    """
    if patient_ref is None:
        return _refuse(NO_BINDING, "unit has no patient binding")
    if not same_patient(patient_ref, roll.patient_ref):
        return _refuse(FOREIGN_ROLL, "roll label names another patient")
    label_times = (roll.first_dose_utc_s, roll.last_dose_utc_s, roll.expiry_utc_s)
    if any(wire_time_invalid(t) for t in label_times):
        # never read as "unknown": an unreadable expiry must not pass as "no expiry"
        return _refuse(ROLL_LABEL_INVALID, f"roll label times out of range: {label_times}")
    expiry = wire_time(roll.expiry_utc_s)
    if expiry is not None and now_utc >= expiry - expired_margin:
        return _refuse(ROLL_EXPIRED, f"roll expired at {utc_text(expiry)}")
    last_dose = wire_time(roll.last_dose_utc_s)
    if last_dose is not None and last_dose < now_utc - period_tolerance:
        return _refuse(ROLL_PERIOD_PASSED, f"roll's last dose was {utc_text(last_dose)}")
    if roll.next_index >= roll.sachet_count:
        return _refuse(ROLL_EMPTY, f"{roll.sachet_count} sachets, next index {roll.next_index}")
    return ACCEPTED


# Label times are whole seconds: "strictly below half the spacing" is half the spacing less this.
TOLERANCE_MARGIN = timedelta(seconds=1)


def capped_tolerance(configured: timedelta, spacings: Iterable[timedelta]) -> timedelta:
    """The sachet-time tolerance to use: `configured`, but strictly below half of every spacing
    given (between a slot and its neighbours, and the schedule's smallest), never negative.

    Within such a tolerance a sachet is nearer its own slot than any other, so it cannot pass as
    the dose of a neighbouring slot (SAFETY.md H2). Spacings of zero (slots sharing one instant,
    which a DST gap can cause) cannot be told apart by time and are skipped.
    """
    tolerance = configured
    for spacing in spacings:
        if spacing > timedelta(0):
            tolerance = min(tolerance, spacing / 2 - TOLERANCE_MARGIN)
    return max(tolerance, timedelta(0))


class SachetTiming(enum.Enum):
    MATCH = "match"
    STALE = "stale"  # meant for an earlier dose time: a leftover
    FUTURE = "future"  # meant for a later dose time
    UNKNOWN = "unknown"  # the label carries no time


def sachet_timing(intended_utc_s: int, due_utc: datetime, tolerance: timedelta) -> SachetTiming:
    intended = wire_time(intended_utc_s)
    if intended is None:
        return SachetTiming.UNKNOWN
    if intended < due_utc - tolerance:
        return SachetTiming.STALE
    if intended > due_utc + tolerance:
        return SachetTiming.FUTURE
    return SachetTiming.MATCH


def check_sachet_identity(
    sachet: SachetRead, patient_ref: str | None, roll_id: str, expected_index: int
) -> Verdict:
    """Checks that do not depend on the slot: patient, roll, order."""
    if patient_ref is None:
        return _refuse(NO_BINDING, "unit has no patient binding")
    if not same_patient(patient_ref, sachet.patient_ref):
        return _refuse(SACHET_FOREIGN, f"sachet {sachet.index} names another patient")
    if sachet.roll_id != roll_id:
        return _refuse(SACHET_WRONG_ROLL, f"sachet from roll {sachet.roll_id!r}, not {roll_id!r}")
    if sachet.index != expected_index:
        return _refuse(
            SACHET_OUT_OF_ORDER, f"sachet index {sachet.index}, expected {expected_index}"
        )
    return ACCEPTED


def check_sachet(
    sachet: SachetRead,
    patient_ref: str | None,
    roll_id: str,
    expected_index: int,
    due_utc: datetime,
    tolerance: timedelta,
) -> Verdict:
    """May this sachet be given for the slot due at `due_utc`?"""
    identity = check_sachet_identity(sachet, patient_ref, roll_id, expected_index)
    if not identity.ok:
        return identity
    timing = sachet_timing(sachet.intended_utc_s, due_utc, tolerance)
    if timing is SachetTiming.MATCH:
        return ACCEPTED
    if timing is SachetTiming.STALE:
        return _refuse(SACHET_STALE, f"sachet {sachet.index} is for an earlier dose time")
    if timing is SachetTiming.FUTURE:
        return _refuse(SACHET_TIME_MISMATCH, f"sachet {sachet.index} is for a later dose time")
    return _refuse(SACHET_TIME_UNKNOWN, f"sachet {sachet.index} carries no intended time")
