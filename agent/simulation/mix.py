"""The fault mix: the world each seed runs in by default (`simulate`, the suite's year test, the
mutation command's `--suite sim`).

Every seed gets the hardware, link and clock faults of faults.py and the mishaps of mishaps.py
(misprinted rolls and sachets, phantom dispenser frames, dose events sent again, a centre that
acknowledges and silences).
On top, the seed picks its scenario deterministically, so that any run of consecutive seeds covers
each of them:

| seed % 10 | dose times |
|---|---|
| 3, 7 | `CLOSE_DOSES` (08:00, 08:30, 20:00: sachet tolerances and minimum interval matter) |
| 1 | `NIGHT_DOSES` (00:10, 08:00, 23:20: the smallest spacing, 50 min, crosses midnight) |
| others | the seed's template (harness.SCHEDULE_TEMPLATES) |

| seed % 3 | scenario |
|---|---|
| 0 | the centre moves the dose times four times a year (schedule updates ahead of new rolls) |
| 1 | twelve pauses a year (hospital, open-ended, travel with sachets to take along) |
| 2 | twelve pharmacy plan changes a year (a new prescription, or a pharmacy error) |

| seed % 10 | the dispenser model lacks (SPEC 3, "What each bit obliges"; REDUCED_MODELS) |
|---|---|
| 4 | `RETAIN_BIN` and `BIN_LEVEL` (`BINLESS`): a dose not taken stays in the tray |
| 6 | `HELD_PATTERN`: a held dose shows FAULT |
| 9 | `LOCK`: another patient's roll is not locked (FAULT; nothing is cut from it) |
| others | nothing: the full model |

The classic and wide worlds keep the full model. A bin-less dispenser (`BINLESS`;
`config_for(..., features=...)` runs one for any seed) leaves a dose not taken in the tray: a
carer comes 30 min to 4 h after the centre hears of it and lifts it out, a removal the agent must
count as an intake (it cannot tell who took it).

Seeds of the pause kind on a template of doses far apart (4, 10, 16, 19, ...: not the close
doses, nor the night doses of seeds ending in 1) get their second roll printed exactly the
sachet tolerance off each dose time, early and late in turn (the boundary of R4 and R16: each
sachet still belongs to its slot).

Seeds 4 and 9 (mod 10) walk the battery through its thresholds on a power loss of more than
4 h (20, 25 %; 3, 5 % and the levels beside them, going down and charging up: judge R21);
seeds 0 and 5 (mod 10) have a patient who now and then presses a stray TAKE or HELP again
within a minute (R20: the second is not told), and the unit's own panel button now and then
(R20: never silently lost, a help call with a true reason); seeds ending in 5 have a bin of
`SMALL_BIN` sachets (the model's: 30), full between the nurse's visits (R6: a discard never takes
the last place; R8.bin_full; R18). None of these four (night doses, battery, presses, small bin)
is in the wide world.
Seeds 2 and 7 (mod 10) meet, in their first three weeks, a restart that finds a field of the
stored state damaged (the unit locks down until the centre acknowledges: judge R17); not in the
wide world, whose seeds stay the regressions tests/test_sim_wide.py replays.
Even seeds of the other two kinds have four pauses a year as well; every seed with pauses has a
trip of one to four days in its first three weeks (so a short run packs sachets to take along).
Plan changes and moved dose times never share a seed: a prescribed extra time is chosen well clear
of the dose times in force at planning, which a later move could break. The classic world
(`--world classic`) is the simulation without any of this: the seed's template, faults.py's
faults, nothing else.

The wide world (`--world wide`) is the mix with its rare events made common: misprinted rolls
2.5 times as often, twice the phantom frames and erased RTCs, three times the lost replies, and
three times the agent restarts, Pi reboots, dispenser reboots and wall-clock jumps. It reaches
more of the engine's rules in a short run (more refusal paths, more restarts through the stored
state). It found engine gaps the mix seldom reaches, fixed since: a Dispense whose reply was lost
under a reader or jam fault was not asked again until its slot's deadline (R12, seeds 33 and 51;
tests/test_sim_wide.py), and a new engine started with the link down decided only at its next
deadline (seeds 131, 169, 180); and judge readings (R8.roll_empty after a wall clock stepped
back, seeds 32 and 41; a pause read in true time while the wall clock was wrong: R7 and a trip
sachet (R4) after a step back, seeds 318 and 338, and R8.pause_overdue after a step back or with
the clock untrusted, seeds 361 and 316; R14's held dose after a step back, seed 251). Of seeds
0-399 of a year each, all hold the judge's holding rules but 23 and 131 (R15: a
roll_period_passed hold; at 131 the clock ahead an hour) and 273 (R14: the unit calls with no
dose of an open slot in the tray), not yet read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from agent.simulation.faults import FaultRates
from agent.simulation.harness import SimulationConfig
from agent.simulation.mishaps import MishapRates
from hw.dispenser import DEFAULT_FEATURES
from protocol.messages import Feature

CLOSE_DOSES = ("08:00", "08:30", "20:00")  # doses 30 min apart (hazards #1 to #3)
# A dispenser without a retain bin (nor a bin level: it has no bin), for seeds 4 (mod 10).
# It found three engine defects, fixed: a dose left in its tray lost across a restart, a
# DoseTaken with another sachet index taken as its removal, and a trip's sachet cut unheard and
# seen gone by a Status still reported stuck in the tray, a report never cleared that hid the
# next dose left there (year seed 94, R12; tests/test_engine_stuck_cleared.py).
BINLESS = Feature.RETAIN_BIN | Feature.BIN_LEVEL
# seed % 10 -> the feature bits the seed's dispenser lacks (SPEC 3, "What each bit obliges"); the
# other seeds' dispensers have every bit
REDUCED_MODELS: dict[int, Feature] = {
    4: BINLESS,
    6: Feature.HELD_PATTERN,
    9: Feature.LOCK,
}


def features_for(seed: int) -> int | None:
    """The feature bits of the seed's dispenser in the mix; None: the full model."""
    lacks = REDUCED_MODELS.get(seed % 10)
    return None if lacks is None else DEFAULT_FEATURES & ~int(lacks)


# a late evening dose and one after midnight, closer (50 min) than any two of the day: the
# minimum interval and the sachet tolerance come from the spacing across midnight. The nurse's
# refill (00:07 local) falls between them: a roll that runs out at the evening dose, left in the
# tray, and a late nurse leave the night dose due behind it with the roll empty, which must be
# said HIGH at its due time (judge R8.roll_empty; tests/test_sim_night_refill.py runs seed 11 so)
NIGHT_DOSES = ("00:10", "08:00", "23:20")
SMALL_BIN = 4  # sachets the bin of seeds ending in 5 holds (the model's: 30)
DOUBLE_PRESS = 0.3  # the chance a stray press is pressed again within a minute (seeds 0, 5)
WORLDS = ("mix", "classic", "wide")
# the wide world's faults, in place of faults.py's defaults (see the module's docstring)
WIDE_FAULTS = FaultRates(agent_restart=36.0, pi_reboot=18.0, wall_jump=12.0, dispenser_reboot=18.0)


def wide_mishaps(time_moves: float = 0.0) -> MishapRates:
    """The mix's mishap rates with the rare ones made common (the wide world)."""
    return replace(
        MishapRates.mix(time_moves=time_moves),
        roll_defect=0.3,
        phantoms=48.0,
        erased_rtc=0.1,
        reply_lost=0.03,
    )


@dataclass(frozen=True, slots=True)
class SeedWorld:
    """What a seed's world holds beyond the classic one."""

    times: tuple[str, ...] | None  # None: the seed's template
    pauses_per_year: float
    plan_changes_per_year: float
    time_moves_per_year: float

    @property
    def name(self) -> str:
        parts = ["close"] if self.times == CLOSE_DOSES else []
        parts += ["night"] if self.times == NIGHT_DOSES else []
        if self.pauses_per_year:
            parts.append(f"pauses={self.pauses_per_year:g}")
        if self.plan_changes_per_year:
            parts.append(f"plans={self.plan_changes_per_year:g}")
        if self.time_moves_per_year:
            parts.append(f"moves={self.time_moves_per_year:g}")
        return ",".join(parts)


def scenario_for(seed: int) -> SeedWorld:
    close = seed % 10 in (3, 7)
    kind = seed % 3
    return SeedWorld(
        times=CLOSE_DOSES if close else None,
        pauses_per_year=12.0 if kind == 1 else 4.0 if seed % 2 == 0 else 0.0,
        plan_changes_per_year=12.0 if kind == 2 else 0.0,
        time_moves_per_year=4.0 if kind == 0 else 0.0,
    )


def config_for(
    seed: int,
    days: int,
    world: str = "mix",
    *,
    pauses: float | None = None,
    plan_changes: float | None = None,
    **extra: Any,
) -> SimulationConfig:
    """The seed's configuration in `world` ("mix" or "classic"); `pauses` and `plan_changes`,
    when given, replace the world's choice (0: none); `extra` goes to SimulationConfig."""
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}: use one of {', '.join(WORLDS)}")
    config = SimulationConfig(seed=seed, days=days, **extra)
    if world in ("mix", "wide"):
        scenario = scenario_for(seed)
        moves = scenario.time_moves_per_year
        config = replace(
            config,
            times=scenario.times,
            pauses_per_year=scenario.pauses_per_year,
            plan_changes_per_year=scenario.plan_changes_per_year,
            mishaps=MishapRates.mix(time_moves=moves) if world == "mix" else wide_mishaps(moves),
            early_trip=scenario.pauses_per_year > 0,
        )
        if world == "mix" and seed % 5 == 2:  # a restart that finds its state damaged, early
            config = replace(config, mishaps=replace(config.mishaps, early_state_damage=True))
        if world == "mix" and config.features is None:  # a model without some feature bits
            config = replace(config, features=features_for(seed))
        if world == "mix" and seed % 10 == 1:  # the smallest spacing crosses midnight
            config = replace(config, times=NIGHT_DOSES)
        if world == "mix" and scenario.pauses_per_year == 12.0 and config.times is None:
            # seeds with pauses only (no extra sachets, no moved times) on a template of doses
            # far apart (not close, not night doses): the sachet-time edge
            config = replace(config, edge_prints=True)
        if world == "mix" and seed % 5 == 4:  # the battery through its thresholds (R21)
            config = replace(config, battery_walk=True)
        if world == "mix" and seed % 5 == 0:  # a stray press pressed again at once (R20)
            config = replace(config, double_press=DOUBLE_PRESS)
        if world == "mix" and seed % 10 == 5:  # a small bin: full between the nurse's visits
            config = replace(config, bin_capacity=SMALL_BIN)
    if world == "wide" and config.faults == FaultRates():  # not --no-faults: the wide ones
        config = replace(config, faults=WIDE_FAULTS)
    if pauses is not None:
        config = replace(config, pauses_per_year=pauses)
    if plan_changes is not None:
        config = replace(config, plan_changes_per_year=plan_changes)
    return config


def describe(config: SimulationConfig) -> str:
    """A short name of the world a configuration describes (for the CLI's seed lines)."""
    if not config.mishaps.any and not config.pauses_per_year and not config.plan_changes_per_year:
        return "classic" if config.times is None else "classic,times"
    scenario = SeedWorld(
        config.times,
        config.pauses_per_year,
        config.plan_changes_per_year,
        config.mishaps.time_moves,
    )
    world = "wide" if config.faults == WIDE_FAULTS else "mix"
    name = ",".join(
        [scenario.name] * bool(scenario.name)
        + ["battery"] * config.battery_walk
        + ["presses"] * bool(config.double_press)
        + [f"bin={config.bin_capacity}"] * (config.bin_capacity is not None)
    )
    if config.features is not None and config.features != DEFAULT_FEATURES:
        lacks = Feature(DEFAULT_FEATURES & ~config.features)
        name = ",".join(filter(None, [name, "no " + "+".join(f.name or "?" for f in lacks)]))
    return world + (f"[{name}]" if name else "")
