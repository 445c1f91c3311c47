"""What does a simulated year cost? Wall time per seeded year with the real dose engine, and, as
the baseline measured in the same run, the same loop with the engine replaced by a no-op.

Each seed runs in the world `simulate` and the suite's year test run by default: the fault mix
(agent/simulation/mix.py: the seed's scenario, faults, misprints, phantom frames, the centre's
habits). `--world classic` times the simulation without the mix (faults only), the figure
measured before the mix existed.

The no-op engine gives no doses, so its loop lives in a quieter world than the real one.
`--replay` adds what everything but the engine costs in the very same year: the engine's answers
(each step's actions, each deadline) are recorded in an untimed run, then the year is timed again
with an engine that only hands the recorded answers back (the same event stream, checked by its
hash): the floor the engine's own speed cannot go below.

    python -m bench.sim_year [--seeds 0-3] [--days 365] [--world mix|classic|wide] [--replay]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator

from agent.clock import Now
from agent.engine.types import Action, EngineConfig, EngineInput
from agent.simulation.cli import parse_seeds
from agent.simulation.harness import (
    DoseEngineFactory,
    EngineFactory,
    EngineLike,
    NullEngineFactory,
    Simulation,
)
from agent.simulation.invariants import InvariantViolation
from agent.simulation.mix import WORLDS, config_for

# one answer of the engine: a step's actions, a deadline, or what a step raised
_Answer = list[Action] | float | None | BaseException


class _Recording:
    """The real engine, its answers written down in call order."""

    def __init__(self, inner: EngineLike, log: list[_Answer]) -> None:
        self.inner, self._log = inner, log

    def step(self, inp: EngineInput, now: Now) -> list[Action]:
        try:
            actions = self.inner.step(inp, now)
        except Exception as exc:  # a refused centre's input: raised again on replay
            self._log.append(exc)
            raise
        self._log.append(actions)
        return actions

    def next_deadline(self, now: Now) -> float | None:
        deadline = self.inner.next_deadline(now)
        self._log.append(deadline)
        return deadline


class _RecordingFactory:
    def __init__(self) -> None:
        self.log: list[_Answer] = []
        self._real = DoseEngineFactory()

    def create(self, config: EngineConfig, now: Now) -> EngineLike:
        return _Recording(self._real.create(config, now), self.log)

    def restart(self, engine: EngineLike, config: EngineConfig, now: Now) -> EngineLike:
        assert isinstance(engine, _Recording)
        return _Recording(self._real.restart(engine.inner, config, now), self.log)


class _Replay:
    """Hands back the recorded answers; the harness asks in the same order (it is deterministic,
    and a new engine object per restart keeps its per-engine memos as they were)."""

    def __init__(self, answers: Iterator[_Answer]) -> None:
        self._answers = answers

    def step(self, inp: EngineInput, now: Now) -> list[Action]:
        answer = next(self._answers)
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, list), "replay out of step with the recording"
        return answer

    def next_deadline(self, now: Now) -> float | None:
        answer = next(self._answers)
        assert answer is None or isinstance(answer, float), "replay out of step"
        return answer


class _ReplayFactory:
    def __init__(self, log: list[_Answer]) -> None:
        self._answers = iter(log)

    def create(self, config: EngineConfig, now: Now) -> EngineLike:
        return _Replay(self._answers)

    def restart(self, engine: EngineLike, config: EngineConfig, now: Now) -> EngineLike:
        return _Replay(self._answers)


def replay_year(seed: int, days: int, world: str = "mix") -> float:
    """Wall seconds of the seed's year with the engine's answers replayed (everything but the
    engine); raises if the replay's event stream differs from the real one."""
    recorder = _RecordingFactory()
    real = Simulation(config_for(seed, days, world, require_outcomes=True), recorder).run()
    started = time.perf_counter()
    sim = Simulation(
        config_for(seed, days, world, require_outcomes=True), _ReplayFactory(recorder.log)
    )
    replayed = sim.run()
    wall = time.perf_counter() - started
    if replayed.event_hash != real.event_hash:
        raise RuntimeError(f"seed {seed}: the replay published another event stream")
    return wall


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
    parser.add_argument(
        "--replay",
        action="store_true",
        help="also time the year with the engine's recorded answers replayed (all but the engine)",
    )
    args = parser.parse_args(argv)
    scale = 365.0 / args.days
    rows: dict[str, list[float]] = {"engine": [], "no-op": [], "replay": []}
    for seed in args.seeds:
        wall, steps, ok = time_year(seed, args.days, DoseEngineFactory(), args.world)
        base, _, _ = time_year(seed, args.days, NullEngineFactory(), args.world)
        rows["engine"].append(wall * scale)
        rows["no-op"].append(base * scale)
        note = "" if ok else " (stopped early at an invariant violation)"
        if args.replay and ok:
            replay = replay_year(seed, args.days, args.world)
            rows["replay"].append(replay * scale)
            note += f"; all but the engine {replay:.2f}s"
        print(
            f"seed {seed}: engine {wall:.2f}s, {steps} steps "
            f"({1e6 * wall / max(steps, 1):.0f} us/step); no-op loop {base:.3f}s{note}"
        )
    engine, noop = statistics.mean(rows["engine"]), statistics.mean(rows["no-op"])
    replayed = (
        f", all but the engine {statistics.mean(rows['replay']):.2f}s" if rows["replay"] else ""
    )
    print(
        f"mean wall time per simulated year ({args.world}) over {len(args.seeds)} seeds: "
        f"engine {engine:.2f}s,"
        f" no-op baseline {noop:.3f}s, ratio {engine / noop if noop else float('inf'):.1f}x"
        + replayed
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
