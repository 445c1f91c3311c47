"""Run the benchmarks and print one table: figure, value, baseline, ratio, target, met.

    python -m bench                 # every benchmark, full length (a few minutes)
    python -m bench --quick         # a short run (under a minute)
    python -m bench --smoke         # every figure, taken as briefly as it can be (seconds)
    python -m bench --only latency  # one benchmark (repeat --only for several)

Every figure is compared with a baseline measured in the same run. Targets are reported, not
enforced: the exit status is 0 even when a target is missed, and 1 only when a measurement itself
failed (a rig did not come up, a condition was never met, an invariant broke).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable

from bench import drain, idle, latency, reconnect
from bench.common import Figure, MeasurementError, Size, format_table, say, say_as


def sim_year(size: Size) -> list[Figure]:
    """bench/sim_year.py's figure: wall time per simulated year in the fault mix (the world of
    `simulate` and of the suite's year test), engine vs a no-op engine."""
    from agent.simulation.harness import DoseEngineFactory, NullEngineFactory
    from bench.sim_year import time_year

    seeds, days = ([0, 1, 2, 3], 365) if size == "full" else ([0], 30)
    scale = 365.0 / days
    say(f"sim_year: seeds {seeds}, {days} days each, scaled to a year")
    engine: list[float] = []
    noop: list[float] = []
    broken: list[str] = []
    for seed in seeds:
        wall, steps, ok = time_year(seed, days, DoseEngineFactory())
        base, _, _ = time_year(seed, days, NullEngineFactory())
        engine.append(wall * scale)
        noop.append(base * scale)
        say(f"  seed {seed}: engine {wall:.2f} s ({steps} steps), no-op loop {base:.3f} s")
        if not ok:
            broken.append(f"seed {seed} stopped at an invariant violation (step {steps})")
    if broken:
        # Timed only up to the violation: not a year's cost. The run is reported as failed.
        raise MeasurementError("sim_year: " + "; ".join(broken))
    return [
        Figure(
            "simulated year",
            statistics.mean(engine),
            statistics.mean(noop),
            "s",
            "-",
            None,
            f"fault mix, mean over seeds {seeds[0]}-{seeds[-1]}, {days} days scaled to 365; "
            "baseline = same loop, no-op engine",
        )
    ]


BENCHMARKS: dict[str, Callable[[Size], list[Figure]]] = {
    "latency": latency.run,
    "idle": idle.run,
    "drain": drain.run,
    "reconnect": reconnect.run,
    "sim_year": sim_year,
}

# In a smoke run these start in a thread and the next benchmarks run meanwhile: idle measures
# another process (the daemon, over a window this process only sleeps through), and a smoke
# run's figures are not for comparing anyway. Full and quick runs keep every benchmark alone.
BESIDE_OTHERS_IN_SMOKE = frozenset({"idle"})


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--quick", action="store_true", help="short run (fewer samples)")
    length.add_argument(
        "--smoke",
        action="store_true",
        help="every figure on the real parts, as briefly as possible: checks that the benchmarks "
        "run, its numbers are too thin to compare",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    args = parser.parse_args(argv)
    # The daemon logs at INFO; benchmarks print their own lines. Warnings still show.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    selected = args.only or list(BENCHMARKS)
    size: Size = "smoke" if args.smoke else "quick" if args.quick else "full"
    say(f"bench: {size} run of {', '.join(selected)}; {_load()}")
    started = time.monotonic()
    results: dict[str, list[Figure]] = {}
    failed: list[str] = []

    def measure(name: str, beside: bool = False) -> None:
        if beside:
            say_as(name)
        try:
            results[name] = BENCHMARKS[name](size)
        except Exception as exc:
            failed.append(name)
            say(f"{name}: MEASUREMENT FAILED: {exc}")
            traceback.print_exc(file=sys.stdout)

    beside: list[threading.Thread] = []
    for name in selected:
        if size == "smoke" and name in BESIDE_OTHERS_IN_SMOKE:
            thread = threading.Thread(target=measure, args=(name, True), name=f"bench-{name}")
            thread.start()
            beside.append(thread)
        else:
            measure(name)
    for thread in beside:
        thread.join()
    figures = [figure for name in selected for figure in results.get(name, [])]
    say(f"\nresults ({time.monotonic() - started:.0f} s; {_load()}):\n")
    say(format_table(figures))
    if failed:
        say(f"\nmeasurement failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
