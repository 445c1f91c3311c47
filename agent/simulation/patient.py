"""Seeded behaviour of the people around the dispenser: the patient, the home-care nurse, and
the pharmacy with the prescriber (plan changes).

Everything is drawn from one `random.Random` passed in, so a seed replays exactly. Times are
*true* seconds since the start of the simulation (what a person's watch would say), not the
agent's wall clock, which the fault plan may step.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from agent.engine.schedule import Slot


class Habit(enum.StrEnum):
    """What the patient does with one presented dose."""

    EARLY = "early"  # presses TAKE inside the early window, then takes the dose at once
    ON_TIME = "on_time"  # takes it within minutes of presentation
    LATE = "late"  # takes it late, sometimes after the grace window has closed
    NEVER = "never"  # does not take it at all


@dataclass(frozen=True, slots=True)
class PatientTraits:
    """Probabilities of each habit (normalised on use) and how chatty the patient is."""

    early: float = 0.10
    on_time: float = 0.65
    late: float = 0.17
    never: float = 0.08
    stray_presses_per_day: float = 0.4  # TAKE/HELP pressed for no dose reason
    lid_openings_per_day: float = 0.3
    roll_removals_per_year: float = 4.0  # fiddles with the cassette and pulls the roll out

    @classmethod
    def drawn(cls, rng: random.Random) -> PatientTraits:
        """A patient of their own: some are reliable, some forget a lot."""
        never = rng.choice((0.02, 0.08, 0.2))
        late = rng.choice((0.1, 0.2, 0.3))
        early = rng.choice((0.0, 0.1, 0.25))
        return cls(
            early=early, on_time=max(0.05, 1.0 - never - late - early), late=late, never=never
        )


class Patient:
    """Decides, from its own random stream, what the patient does and when."""

    def __init__(
        self, rng: random.Random, traits: PatientTraits, grace: timedelta, early_window: timedelta
    ) -> None:
        self._rng = rng
        self._traits = traits
        self._grace_s = grace.total_seconds()
        self._early_s = early_window.total_seconds()

    def habit_for_slot(self) -> Habit:
        t = self._traits
        habits = (Habit.EARLY, Habit.ON_TIME, Habit.LATE, Habit.NEVER)
        return self._rng.choices(habits, weights=(t.early, t.on_time, t.late, t.never))[0]

    def early_press_lead_s(self) -> float:
        """How long before the due time an EARLY patient presses TAKE (inside the window)."""
        return self._rng.uniform(0.05, 0.95) * self._early_s

    def take_delay_s(self, habit: Habit) -> float | None:
        """Seconds from presentation until the patient lifts the dose out; None: never."""
        if habit is Habit.NEVER:
            return None
        if habit is Habit.EARLY:
            return self._rng.uniform(5.0, 120.0)
        if habit is Habit.ON_TIME:
            return self._rng.uniform(10.0, 0.25 * self._grace_s)
        # late: up to half again the grace window, so some are too late (retained by then)
        return self._rng.uniform(0.25 * self._grace_s, 1.5 * self._grace_s)

    def stray_press_times_s(self, duration_s: float) -> list[float]:
        return _poisson_times(self._rng, self._traits.stray_presses_per_day / 86400.0, duration_s)

    def lid_open_times_s(self, duration_s: float) -> list[tuple[float, float]]:
        """(open at, closed after) pairs."""
        rate = self._traits.lid_openings_per_day / 86400.0
        return [
            (t, self._rng.uniform(20.0, 900.0)) for t in _poisson_times(self._rng, rate, duration_s)
        ]

    def roll_removal_times_s(self, duration_s: float) -> list[tuple[float, float]]:
        """(removed at, put back after) pairs."""
        rate = self._traits.roll_removals_per_year / (365 * 86400.0)
        return [
            (t, self._rng.uniform(300.0, 12 * 3600.0))
            for t in _poisson_times(self._rng, rate, duration_s)
        ]

    def pick_button_is_take(self) -> bool:
        return self._rng.random() < 0.6


class RollMistake(enum.StrEnum):
    """What can go wrong when the nurse loads a roll."""

    NONE = "none"
    FOREIGN = "foreign"  # another patient's roll
    FOREIGN_SACHETS_CLAIM_PATIENT = "foreign_sachets_claim_patient"  # leader says other patient
    EXPIRED = "expired"
    PERIOD_PASSED = "period_passed"  # an old roll whose doses all lie in the past


@dataclass(frozen=True, slots=True)
class NurseVisit:
    """A refill: at `at_s` the nurse takes the old roll out and loads roll `period`."""

    at_s: float
    period: int  # index into the roll plan
    mistake: RollMistake
    correction_after_s: float  # a mistake is noticed and put right this long after


@dataclass(frozen=True, slots=True)
class RollPeriod:
    """What the pharmacy packed for one refill period: one sachet per slot in it."""

    roll_id: str
    sachet_times: tuple[datetime, ...]
    planned_visit_s: float


class Nurse:
    """Plans refills every `period_days`, in a quiet gap between doses, sometimes late, and
    sometimes with a mistake that she notices and corrects later."""

    def __init__(
        self,
        rng: random.Random,
        period_days: int = 14,
        p_late: float = 0.08,
        p_mistake: float = 0.06,
    ) -> None:
        self._rng = rng
        self._period_s = period_days * 86400.0
        self._p_late = p_late
        self._p_mistake = p_mistake

    def plan(
        self,
        slots: Sequence[Slot],
        start: datetime,
        duration_s: float,
        quiet_before_s: float,
        quiet_after_s: float,
    ) -> tuple[list[RollPeriod], list[NurseVisit]]:
        """Roll periods covering every slot in `slots` and the visits that load them.

        A planned visit falls after the previous dose is settled (`quiet_after_s` past its due
        time) and before the next dose's early window (`quiet_before_s`), when the gap allows.
        """
        dues = [(s.due_utc - start).total_seconds() for s in slots]
        visit_times = [60.0]
        boundary = self._period_s
        while boundary < duration_s + self._period_s:
            visit_times.append(self._quiet_time(dues, boundary, quiet_before_s, quiet_after_s))
            boundary += self._period_s
        periods: list[RollPeriod] = []
        for k, begin in enumerate(visit_times):
            end = visit_times[k + 1] if k + 1 < len(visit_times) else float("inf")
            times = tuple(s.due_utc for s, d in zip(slots, dues, strict=True) if begin <= d < end)
            periods.append(RollPeriod(f"R{k:03d}", times, begin))
        visits = [NurseVisit(periods[0].planned_visit_s, 0, RollMistake.NONE, 0.0)]
        for k in range(1, len(periods)):
            at = periods[k].planned_visit_s
            if self._rng.random() < self._p_late:
                at += self._rng.uniform(3600.0, 30 * 3600.0)
            mistake = RollMistake.NONE
            if self._rng.random() < self._p_mistake:
                mistake = self._rng.choice([m for m in RollMistake if m is not RollMistake.NONE])
            visits.append(NurseVisit(at, k, mistake, self._rng.uniform(1800.0, 20 * 3600.0)))
        return periods, visits

    def _quiet_time(
        self, dues: list[float], boundary: float, before_s: float, after_s: float
    ) -> float:
        prev = max((d for d in dues if d < boundary), default=boundary - 86400.0)
        nxt = min((d for d in dues if d >= boundary), default=boundary + 86400.0)
        lo, hi = prev + after_s, nxt - before_s
        if hi <= lo:  # doses too close together: land halfway, it may catch a dose mid-way
            lo = hi = (prev + nxt) / 2
        return self._rng.uniform(lo, hi)


def _poisson_times(rng: random.Random, rate_per_s: float, duration_s: float) -> list[float]:
    times: list[float] = []
    if rate_per_s <= 0:
        return times
    t = rng.expovariate(rate_per_s)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(rate_per_s)
    return times


# --- the pharmacy's plan and the unit's schedule -------------------------------------------------


class PlanChangeKind(enum.StrEnum):
    NEW_TIME = "new_time"  # the GP added a dose time: every roll from this one carries it
    PHARMACY_ERROR = "pharmacy_error"  # one roll carries, on a few days, a time nobody prescribed


class Decider(enum.StrEnum):
    """Who answers a `plan_mismatch` alert about a pharmacy error, and how."""

    CENTRE_SACHET = "centre_sachet"  # the response centre, for the sachet the alert names
    CENTRE_ROLL = "centre_roll"  # the response centre, for the whole roll
    ON_SITE = "on_site"  # a technician at the home (local control socket), for the whole roll


@dataclass(frozen=True, slots=True)
class PlanChange:
    """From roll period `period` on (NEW_TIME), or on the first `days` days of that roll only
    (PHARMACY_ERROR), the pharmacy packs a daily sachet at local `extra`, a time the unit's
    schedule lacks. The response centre answers the alert it causes: NEW_TIME with a schedule
    update, a pharmacy error with a discard decision (`decider`). (A whole roll of errors would
    fill the 30-sachet bin: a real pharmacy sends a corrected roll.)"""

    period: int
    kind: PlanChangeKind
    extra: time
    decider: Decider
    days: int = 0  # PHARMACY_ERROR: how many days of the roll carry the extra sachet


# Candidate extra times: whole and half hours away from the DST-changing night hours.
_EXTRA_TIMES = tuple(time(h, m) for h in range(5, 24) for m in (0, 30))
# An extra time is this far from every dose time, as far as the default schedules' closest doses
# are: a sachet at it is plainly for no dose time (no play with the sachet tolerance, hazard #3),
# and a schedule that takes it up keeps a minimum interval (hazard #1) like the default ones.
MIN_EXTRA_SPACING_MIN = 270


def _minutes(t: time) -> int:
    return t.hour * 60 + t.minute


def _spaced(candidate: time, times: list[time]) -> bool:
    def gap(a: int, b: int) -> int:
        d = abs(a - b) % 1440
        return min(d, 1440 - d)

    return all(gap(_minutes(candidate), _minutes(t)) >= MIN_EXTRA_SPACING_MIN for t in times)


class Pharmacy:
    """Plans the changes of the pharmacy's packing against the unit's schedule."""

    def __init__(self, rng: random.Random, p_new_time: float = 0.5) -> None:
        self._rng = rng
        self._p_new_time = p_new_time

    def plan(
        self, periods: int, per_year: float, period_days: int, times: Sequence[time]
    ) -> list[PlanChange]:
        """Changes at roll periods 1..periods-2 (`per_year` expected a year), each with an
        extra time at least MIN_EXTRA_SPACING_MIN from every dose time in effect then."""
        changes: list[PlanChange] = []
        if per_year <= 0:
            return changes
        chance = min(1.0, per_year * period_days / 365.0)
        in_effect = list(times)
        for period in range(1, periods - 1):
            if self._rng.random() >= chance:
                continue
            kind = (
                PlanChangeKind.NEW_TIME
                if self._rng.random() < self._p_new_time
                else PlanChangeKind.PHARMACY_ERROR
            )
            decider = self._rng.choice(list(Decider))
            options = [t for t in _EXTRA_TIMES if _spaced(t, in_effect)]
            if not options:
                continue
            extra = self._rng.choice(options)
            days = self._rng.randint(1, 4) if kind is PlanChangeKind.PHARMACY_ERROR else 0
            changes.append(PlanChange(period, kind, extra, decider, days))
            if kind is PlanChangeKind.NEW_TIME:
                in_effect.append(extra)  # a dose time from now on: later changes keep clear
        return changes

    def reaction_s(self) -> float:
        """How long people take to decide after the alert: mostly within hours, sometimes a
        day (doses behind the held sachet are refused meanwhile)."""
        if self._rng.random() < 0.8:
            return self._rng.uniform(600.0, 3 * 3600.0)
        return self._rng.uniform(3 * 3600.0, 30 * 3600.0)
