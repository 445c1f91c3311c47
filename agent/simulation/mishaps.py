"""What else goes wrong around the unit, beyond the hardware, link and clock faults of faults.py.

- the pharmacy's print: a roll whose leader names nobody or whose expiry reads as all ones (erased
  flash), a roll packed short (it runs empty at a due time), one sachet the reader cannot read,
  one printed without its time, one with a misprinted patient reference;
- phantom frames from the dispenser's firmware: dose events for nothing the agent commanded
  (unknown dispense ids up to u32 max, sachet indices up to u16 max, or the dose in the tray with
  another sachet index), a low-supply report at its type limits, a link-up whose Capabilities carry
  an erased RTC;
- the response centre's habits: acknowledging latched alerts, silencing the unit, moving the dose
  times with a schedule update ahead of the pharmacy's new rolls;
- a jam that comes back minutes after the nurse freed it (a flapping condition);
- the link dropping just after the dispenser took a `Dispense` (its reply and the dose's events
  lost: the agent must find out whether it was cut);
- store faults of the agent (the daemon fails safe: the dispenser is locked, FAULT shown, the
  process restarts from its durable state and the dispenser hands it the frame it could not store);
- a stored state found damaged at a restart (a field that no longer reads: the agent starts from
  what it can read, locks the unit down and alerts until a person acknowledges; the centre does).
- a dose event sent again: the dispenser's report of a dose presented, taken or taken back,
  which the agent heard already, comes again (a retransmission after a lost ACK within seconds, or
  a firmware that sends a stale report up to hours later); it must change nothing.

Everything is drawn from one `random.Random` passed in, so a seed replays exactly; with the default
rates (all zero) nothing is drawn and a run is what it was without this module.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from datetime import date, timedelta

U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
_YEAR_S = 365 * 86400.0


class RollDefect(enum.StrEnum):
    """How the pharmacy's print of one roll is wrong (at most one defect a roll)."""

    NONE = "none"
    LEADER_BLANK = "leader_blank"  # the leader names nobody: "" (a wrong roll to the agent)
    LEADER_ERASED = "leader_erased"  # the leader's expiry reads as all ones (u64 max)
    SHORT = "short"  # the last days' sachets are missing: the roll runs empty at a due time
    SACHET_UNREADABLE = "sachet_unreadable"  # one sachet the reader cannot read at all
    SACHET_NO_TIME = "sachet_no_time"  # one sachet printed without its time (0 on the wire)
    SACHET_GARBLED = "sachet_garbled"  # one sachet with a misprinted patient reference


class PhantomKind(enum.StrEnum):
    PRESENTED = "presented"  # DosePresented with a dispense id nobody used
    TAKEN = "taken"  # DoseTaken with a dispense id nobody used
    RETAINED = "retained"  # DoseRetained with a dispense id nobody used
    WRONG_INDEX = "wrong_index"  # DoseTaken for the dose in the tray, naming another sachet
    LOW_SUPPLY = "low_supply"  # LowSupply at its type limits: no roll id, u16 max remaining


@dataclass(frozen=True, slots=True)
class Phantom:
    at_s: float  # true seconds since the start of the run
    kind: PhantomKind
    dispense_id: int  # an id the agent never uses (2^31 .. u32 max)
    sachet_index: int  # 0 .. u16 max


@dataclass(frozen=True, slots=True)
class TimeMove:
    """The response centre moves the dose times: from local date `effective_from` the schedule
    has `times`; the update is sent `notice` ahead, and the pharmacy packs its rolls to match."""

    effective_from: date
    times: tuple[str, ...]
    notice: timedelta


@dataclass(frozen=True, slots=True)
class MishapRates:
    """How often each mishap happens (chances per occasion, or expected counts a year)."""

    roll_defect: float = 0.0  # chance that a roll (after the first) has one print defect
    phantoms: float = 0.0  # phantom dispenser frames a year
    erased_rtc: float = 0.0  # chance a link-up's Capabilities carry an erased RTC (u64 max)
    acknowledge: float = 0.0  # chance the centre acknowledges a latched alert
    silence: float = 0.0  # chance the centre silences the unit on a HIGH event
    time_moves: float = 0.0  # schedule updates a year that move the dose times
    store_faults: float = 0.0  # store faults of the agent a year
    flapping: float = 0.0  # chance a freed jam comes back within minutes
    reply_lost: float = 0.0  # chance the link drops just after the dispenser took a Dispense
    state_damage: float = 0.0  # restarts a year that find the stored state damaged
    early_state_damage: bool = False  # and one in the run's first three weeks
    # chance that a dose event the agent heard is sent again (drawn from a stream of its own,
    # so the other mishaps of a seed stay as they were)
    repeats: float = 0.0

    @classmethod
    def mix(cls, *, time_moves: float = 0.0) -> MishapRates:
        """The rates of the suite's fault mix (agent.simulation.mix). Store faults are not in it:
        the fail-safe's lock is never lifted after the restart (tests/test_simulation.py)."""
        return cls(
            roll_defect=0.12,
            phantoms=24.0,
            erased_rtc=0.05,
            acknowledge=0.7,
            silence=0.2,
            time_moves=time_moves,
            flapping=0.3,
            reply_lost=0.01,
            repeats=0.02,
        )

    @property
    def any(self) -> bool:
        return any(
            (
                self.roll_defect,
                self.phantoms,
                self.erased_rtc,
                self.acknowledge,
                self.silence,
                self.time_moves,
                self.store_faults,
                self.flapping,
                self.reply_lost,
                self.state_damage,
                self.early_state_damage,
                self.repeats,
            )
        )


def repeat_delay_s(rng: random.Random) -> float:
    """When a dose event comes again: half of them as a retransmission after a lost ACK (seconds),
    half as a stale report from the firmware (a minute to three hours later)."""
    if rng.random() < 0.5:
        return rng.uniform(1.0, 30.0)
    return rng.uniform(60.0, 3 * 3600.0)


def plan_roll_defects(
    rng: random.Random, periods: int, chance: float
) -> list[tuple[RollDefect, float]]:
    """One (defect, where) per roll period: `where` in [0, 1) places a sachet defect on the roll
    (or says how many days a short roll lacks). The first roll (installation) is always good."""
    defects = [(RollDefect.NONE, 0.0)]
    kinds = [d for d in RollDefect if d is not RollDefect.NONE]
    for _ in range(1, periods):
        if chance > 0 and rng.random() < chance:
            defects.append((rng.choice(kinds), rng.random()))
        else:
            defects.append((RollDefect.NONE, 0.0))
    return defects


def plan_phantoms(
    rng: random.Random,
    duration_s: float,
    per_year: float,
    dues_s: list[float],
    quiet_tail_s: float = 2 * 86400.0,
) -> list[Phantom]:
    """Phantom frames at random times; half of them shortly before a dose is due, where a phantom
    the engine believed (a tray it thinks occupied, an intake that never happened) would cost the
    patient that dose."""
    out: list[Phantom] = []
    if per_year <= 0:
        return out
    window = duration_s - quiet_tail_s
    rate = per_year / _YEAR_S
    t = rng.expovariate(rate)
    while t < window:
        at = t
        if dues_s and rng.random() < 0.5:
            due = rng.choice(dues_s)
            at = due - rng.uniform(0.0, 40 * 60.0)
        kind = rng.choice(list(PhantomKind))
        dispense_id = rng.choice((U32_MAX, rng.randint(2**31, U32_MAX - 1)))
        index = rng.choice((U16_MAX, rng.randint(0, 60)))
        if 0 < at < window:
            out.append(Phantom(at, kind, dispense_id, index))
        t += rng.expovariate(rate)
    out.sort(key=lambda p: p.at_s)
    return out


def plan_time_moves(
    rng: random.Random,
    per_year: float,
    first_day: date,
    days: int,
    templates: tuple[tuple[str, ...], ...],
    times: tuple[str, ...],
) -> list[TimeMove]:
    """Dose-time moves on local dates between three weeks after the start and five weeks before
    the end, each to another template than the times in force, sent one to five days ahead."""
    out: list[TimeMove] = []
    if per_year <= 0 or days < 8 * 7:
        return out
    current = times
    day = first_day + timedelta(days=21)
    last = first_day + timedelta(days=days - 35)
    while True:
        day += timedelta(days=max(1, round(rng.expovariate(per_year / 365.0))))
        if day > last:
            return out
        choices = [t for t in templates if t != current]
        current = rng.choice(choices)
        notice = timedelta(days=rng.uniform(1.0, 5.0))
        out.append(TimeMove(day, current, notice))
        day += timedelta(days=21)  # the pharmacy needs time between two changes


def plan_store_faults(
    rng: random.Random, duration_s: float, per_year: float, quiet_tail_s: float = 2 * 86400.0
) -> list[float]:
    out: list[float] = []
    if per_year <= 0:
        return out
    rate = per_year / _YEAR_S
    t = 3600.0 + rng.expovariate(rate)
    while t < duration_s - quiet_tail_s:
        out.append(t)
        t += rng.expovariate(rate)
    return out


def plan_state_damage(
    seed: int, duration_s: float, per_year: float, early: bool, quiet_tail_s: float = 2 * 86400.0
) -> list[float]:
    """When the agent restarts and finds its stored state damaged: `per_year` at random, and
    with `early` one in days 2-20 (so a short run meets it). A stream of its own, so that the
    rest of a seed's world stays what it was without them."""
    rng = random.Random(f"state damage {seed}")
    out: list[float] = []
    if early:
        out.append(rng.uniform(2 * 86400.0, 20 * 86400.0))
    if per_year > 0:
        rate = per_year / _YEAR_S
        t = 86400.0 + rng.expovariate(rate)
        while t < duration_s - quiet_tail_s:
            out.append(t)
            t += rng.expovariate(rate)
    return sorted(t for t in out if t < duration_s - quiet_tail_s)


def state_damage_parts(seed: int) -> tuple[str, ...]:
    """What a damaged stored state of `seed` has lost: always the loaded roll's record; for
    seeds ending in 7 the patient binding too (a person must bind the unit again)."""
    return ("roll", "binding") if seed % 10 == 7 else ("roll",)
