"""What does a simulated year cost? Wall time per seeded year with the real dose engine, and, as
the baseline measured in the same run, the same loop with the engine replaced by a no-op.

Each seed runs in the world `simulate` and the suite's year test run by default: the fault mix
(agent/simulation/mix.py: the seed's scenario, faults, misprints, phantom frames, the centre's
habits). `--world classic` times the simulation without the mix (faults only), the figure
measured before the mix existed.

    python -m bench.sim_year [--seeds 0-3] [--days 365] [--world mix|classic]
"""

from __future__ import annotations

import argparse
import statistics
import time

from agent.simulation.cli import parse_seeds
from agent.simulation.harness import (
    DoseEngineFactory,
    EngineFactory,
    NullEngineFactory,
    Simulation,
)
from agent.simulation.invariants import InvariantViolation
from agent.simulation.mix import WORLDS, config_for


def time_year(
    seed: int, days: int, factory: EngineFactory, world: str = "mix"
) -> tuple[float, int, bool]:
    """(wall seconds, engine steps, invariants held) for one seed."""
    # the engine's import (its state models are built once per process, ~0.2 s) is not a year's
    # cost: without this the first seed of a run paid it
    import agent.engine.engine  # noqa: F401

    started = time.perf_counter()
    baseline = isinstance(factory, NullEngineFactory)
    sim = Simulation(config_for(seed, days, world, require_outcomes=not baseline), factory)
    try:
        steps, ok = sim.run().steps, True
    except InvariantViolation as violation:
        steps, ok = violation.step or 0, False  # timed up to the violation
    return time.perf_counter() - started, steps, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-3"))
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--world", choices=WORLDS, default="mix")
    args = parser.parse_args(argv)
    scale = 365.0 / args.days
    rows: dict[str, list[float]] = {"engine": [], "no-op": []}
    for seed in args.seeds:
        wall, steps, ok = time_year(seed, args.days, DoseEngineFactory(), args.world)
        base, _, _ = time_year(seed, args.days, NullEngineFactory(), args.world)
        rows["engine"].append(wall * scale)
        rows["no-op"].append(base * scale)
        note = "" if ok else " (stopped early at an invariant violation)"
        print(
            f"seed {seed}: engine {wall:.2f}s, {steps} steps "
            f"({1e6 * wall / max(steps, 1):.0f} us/step); no-op loop {base:.3f}s{note}"
        )
    engine, noop = statistics.mean(rows["engine"]), statistics.mean(rows["no-op"])
    print(
        f"mean wall time per simulated year ({args.world}) over {len(args.seeds)} seeds: "
        f"engine {engine:.2f}s,"
        f" no-op baseline {noop:.3f}s, ratio {engine / noop if noop else float('inf'):.1f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
