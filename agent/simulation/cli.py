"""Run seeded simulations from the command line.

    python -m agent.simulation.cli --seeds 0-199 --days 365     (the fault mix: simulation.mix)
    python -m agent.simulation.cli --seeds 0-999 --days 365     (the long run, docs/engine.md)
    python -m agent.simulation.cli --seeds 0-39 --judge none --findings   (what the judge sees)
    python -m agent.simulation.cli --seeds 0-39 --world classic  (faults only, the seed's template)
    python -m agent.simulation.cli --seeds 0-39 --pauses-per-year 12      (hospital, open, travel)
    python -m agent.simulation.cli --seeds 0-39 --plan-changes 12   (pharmacy plan changes)
    dispenser-agent simulate --seeds 7 --days 30

Prints one line per seed (with its world); a failing seed prints the violation and the exact
command that replays it. Exit status 1 if any seed broke an invariant.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TextIO

from agent.simulation.faults import FaultRates
from agent.simulation.harness import (
    DoseEngineFactory,
    EngineFactory,
    NullEngineFactory,
    Simulation,
    SimulationResult,
)
from agent.simulation.invariants import InvariantViolation
from agent.simulation.judge import parse_rules
from agent.simulation.mix import WORLDS, config_for, describe


@dataclass(frozen=True, slots=True)
class SeedReport:
    """What a worker process hands back: picklable, with the violation already rendered."""

    seed: int
    days: int
    result: SimulationResult | None
    violation: str | None
    wall_s: float
    world: str = ""  # what the seed's world held (agent.simulation.mix.describe)


def parse_seeds(text: str) -> list[int]:
    """ "0-199", "7", "1,4,10-12" -> seeds in the given order (ranges inclusive)."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, sep, high = part.partition("-")
        try:
            if sep:
                first, last = int(low), int(high)
                if last < first:
                    raise ValueError
                seeds.extend(range(first, last + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad seed list {text!r}: use e.g. 7, 0-199 or 1,4,10-12"
            ) from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"bad seed list {text!r}: need seeds >= 0")
    return seeds


def run_one(
    seed: int,
    days: int,
    faults: bool = True,
    engine: str = "dose",
    judge: str = "holding",
    pauses: float | None = None,
    plan_changes: float | None = None,
    world: str = "mix",
) -> SeedReport:
    """Run one seed; never raises for a violation (it is part of the report).

    `judge`: the judge's rules that stop the run ("all", "none" or e.g. "R1,R3"); the others
    are recorded in the result. `world`: "mix" (the seed's scenario, agent.simulation.mix) or
    "classic". `pauses`: temporary stops per year, `plan_changes`: pharmacy plan changes per
    year; None: the world's choice (0: none)."""
    factory: EngineFactory = NullEngineFactory() if engine == "null" else DoseEngineFactory()
    config = config_for(
        seed,
        days,
        world,
        pauses=pauses,
        plan_changes=plan_changes,
        faults=FaultRates() if faults else FaultRates.none(),
        require_outcomes=engine != "null",
        judge_enforce=parse_rules(judge),
    )
    name = describe(config)
    started = time.perf_counter()
    try:
        result = Simulation(config, factory).run()
    except InvariantViolation as violation:
        return SeedReport(seed, days, None, str(violation), time.perf_counter() - started, name)
    return SeedReport(seed, days, result, None, time.perf_counter() - started, name)


def run_many(
    seeds: list[int],
    days: int,
    *,
    faults: bool = True,
    engine: str = "dose",
    judge: str = "holding",
    jobs: int | None = None,
    pauses: float | None = None,
    plan_changes: float | None = None,
    world: str = "mix",
) -> Iterator[SeedReport]:
    """Reports in seed order; in parallel worker processes when jobs > 1."""
    jobs = jobs or os.cpu_count() or 1
    if jobs <= 1 or len(seeds) <= 1:
        for seed in seeds:
            yield run_one(seed, days, faults, engine, judge, pauses, plan_changes, world)
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        n = len(seeds)
        yield from pool.map(
            run_one,
            seeds,
            [days] * n,
            [faults] * n,
            [engine] * n,
            [judge] * n,
            [pauses] * n,
            [plan_changes] * n,
            [world] * n,
        )


def replay_command(
    seed: int,
    days: int,
    judge: str = "holding",
    pauses: float | None = None,
    plan_changes: float | None = None,
    world: str = "mix",
    faults: bool = True,
) -> str:
    """The command that runs this seed again exactly (the mix's scenario is the seed's own)."""
    extra = "" if judge == "holding" else f" --judge {judge}"
    extra += "" if world == "mix" else f" --world {world}"
    extra += "" if faults else " --no-faults"
    extra += f" --pauses-per-year {pauses:g}" if pauses is not None else ""
    extra += f" --plan-changes {plan_changes:g}" if plan_changes is not None else ""
    return f"python -m agent.simulation.cli --seeds {seed} --days {days}{extra}"


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    stream = out if out is not None else sys.stdout
    parser = argparse.ArgumentParser(
        prog="dispenser-agent simulate",
        description="Deterministic simulation of the dose engine and the dispenser, with "
        "safety invariants checked after every step.",
    )
    parser.add_argument(
        "--seeds",
        type=parse_seeds,
        default=parse_seeds("0-9"),
        help="seeds to run, e.g. 7, 0-199 or 1,4,10-12 (default 0-9)",
    )
    parser.add_argument("--days", type=int, default=365, help="simulated days per seed")
    parser.add_argument(
        "--jobs", type=int, default=None, help="worker processes (default: one per CPU)"
    )
    parser.add_argument("--no-faults", action="store_true", help="no hardware/link/clock faults")
    parser.add_argument(
        "--world",
        choices=WORLDS,
        default="mix",
        help="mix (default): each seed's scenario of the fault mix (close doses, pauses, plan "
        "changes, moved dose times, misprints, phantom frames, the centre's habits; "
        "agent/simulation/mix.py); classic: the seed's template and the faults only; wide: "
        "the mix with its rare events made common (see mix.py)",
    )
    parser.add_argument(
        "--engine",
        choices=("dose", "null"),
        default="dose",
        help="'null' runs the loop without the engine (a baseline)",
    )
    parser.add_argument(
        "--judge",
        default="holding",
        help="the independent judge's rules that fail a seed: holding (default: the rules the "
        "engine keeps today, see SAFETY.md), all, none, or e.g. R1,R3,R4; the others are still "
        "checked and their violations counted per seed",
    )
    parser.add_argument(
        "--findings", action="store_true", help="print each rule's first recorded violation"
    )
    parser.add_argument(
        "--pauses-per-year",
        type=float,
        default=None,
        help="temporary stops ordered by the response centre (hospital with an end, open-ended, "
        "travel with sachets to take along; default: the world's choice, 0: none)",
    )
    parser.add_argument(
        "--plan-changes",
        type=float,
        default=None,
        metavar="PER_YEAR",
        help="pharmacy plan changes a year (a dose time the schedule lacks; default: the "
        "world's choice, 0: none)",
    )
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error("--days must be at least 1")
    if args.pauses_per_year is not None and not 0 <= args.pauses_per_year <= 365:
        parser.error("--pauses-per-year must lie in 0..365")
    try:
        parse_rules(args.judge)
    except ValueError as bad:
        parser.error(str(bad))

    started = time.perf_counter()
    failed: list[int] = []
    steps = 0
    for report in run_many(
        args.seeds,
        args.days,
        faults=not args.no_faults,
        engine=args.engine,
        judge=args.judge,
        jobs=args.jobs,
        pauses=args.pauses_per_year,
        plan_changes=args.plan_changes,
        world=args.world,
    ):
        if report.result is not None:
            r = report.result
            steps += r.steps
            outcomes = " ".join(f"{k}={v}" for k, v in r.outcomes.items())
            judged = " ".join(f"{k}={v}" for k, v in r.judge_findings.items())
            print(
                f"seed {r.seed}: ok {report.wall_s:.2f}s {report.world} steps={r.steps} "
                f"events={r.events} slots={r.slots_expected} {outcomes} "
                f"hash={r.event_hash[:16]}" + (f" judge(not enforced): {judged}" if judged else ""),
                file=stream,
            )
            if args.findings:
                for rule, first in r.judge_first.items():
                    print(f"  {rule} first: {first}", file=stream)
        else:
            failed.append(report.seed)
            print(
                f"seed {report.seed}: VIOLATION ({report.world})\n{report.violation}", file=stream
            )
            replay = replay_command(
                report.seed,
                report.days,
                args.judge,
                args.pauses_per_year,
                args.plan_changes,
                args.world,
                not args.no_faults,
            )
            print(f"replay: {replay}", file=stream)
    elapsed = time.perf_counter() - started
    print(
        f"{len(args.seeds) - len(failed)}/{len(args.seeds)} seeds passed, {steps} steps, "
        f"{elapsed:.1f}s" + (f"; failed seeds: {','.join(map(str, failed))}" if failed else ""),
        file=stream,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
