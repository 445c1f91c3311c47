"""The deterministic simulation: invariants hold for many seeded years, a seed replays exactly,
and the invariant checker itself catches every kind of violation it exists for."""

from __future__ import annotations

import io
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.clock import Now
from agent.engine.types import (
    Action,
    BeginDispense,
    Emit,
    EngineConfig,
    EngineEvent,
    EngineInput,
    FromDispenser,
    LinkUp,
    Outcome,
    Priority,
    RecordOutcome,
    Tick,
)
from agent.simulation import cli
from agent.simulation.faults import FaultKind, FaultRates, plan_faults
from agent.simulation.harness import (
    EngineLike,
    NullEngineFactory,
    Simulation,
    SimulationConfig,
)
from agent.simulation.invariants import InvariantChecker, InvariantViolation, PhysicalDispense
from agent.simulation.judge import HOLDING_RULES, parse_rules
from agent.simulation.mishaps import MishapRates
from agent.simulation.mix import BINLESS, CLOSE_DOSES, NIGHT_DOSES, config_for, scenario_for
from hw.dispenser import DEFAULT_FEATURES
from protocol.messages import Feature, RollInserted, SachetRead

REF = "p-sim-0001"
DUE = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
FULL_SEEDS = int(os.environ.get("SIM_SEEDS", "200"))
FULL_DAYS = int(os.environ.get("SIM_DAYS", "365"))


def checker() -> InvariantChecker:
    return InvariantChecker(REF, timedelta(minutes=30))


def begin(slot: str = "2026-03-29T02:30", dispense_id: int = 1, index: int = 0) -> BeginDispense:
    return BeginDispense(slot, dispense_id, index, DUE)


def outcome_event(slot: str, outcome: str = "taken") -> Emit:
    fields: dict[str, object] = {"slot_id": slot, "outcome": outcome}
    return Emit(EngineEvent("slot_outcome", Priority.INFO, None, fields))


def cut(
    dispense_id: int = 1,
    index: int = 0,
    roll_ref: str = REF,
    sachet_ref: str = REF,
    intended: datetime = DUE,
) -> PhysicalDispense:
    return PhysicalDispense(dispense_id, index, roll_ref, sachet_ref, intended)


# --- the checker catches what it is for (a checker that cannot fail is a defect) ------------


def test_checker_catches_second_begin_dispense_for_a_slot() -> None:
    c = checker()
    c.on_actions([begin(dispense_id=1)])
    with pytest.raises(InvariantViolation, match="second BeginDispense"):
        c.on_actions([begin(dispense_id=2)])


def test_checker_catches_a_reused_dispense_id() -> None:
    c = checker()
    c.on_actions([begin("2026-03-29T02:30", 7)])
    with pytest.raises(InvariantViolation, match="reused"):
        c.on_actions([begin("2026-03-29T09:00", 7)])


def test_checker_catches_a_second_outcome_for_a_slot() -> None:
    c = checker()
    c.on_actions([RecordOutcome("s1", Outcome.TAKEN, None)])
    with pytest.raises(InvariantViolation, match="second outcome"):
        c.on_actions([RecordOutcome("s1", Outcome.MISSED, "not_taken")])


def test_checker_catches_a_second_slot_outcome_event() -> None:
    c = checker()
    c.on_actions([outcome_event("s1")])
    with pytest.raises(InvariantViolation, match="second slot_outcome"):
        c.on_actions([outcome_event("s1")])


def test_checker_catches_a_seq_gap_and_a_repeat() -> None:
    gap = checker()
    gap.on_published(1)
    with pytest.raises(InvariantViolation, match="gap"):
        gap.on_published(3)
    repeat = checker()
    repeat.on_published(1)
    with pytest.raises(InvariantViolation, match="repeat"):
        repeat.on_published(1)


def test_checker_catches_a_lost_and_a_duplicated_event() -> None:
    lost = checker()
    lost.on_actions([outcome_event("s1"), outcome_event("s2")])
    lost.on_published(1)
    with pytest.raises(InvariantViolation, match="lost"):
        lost.check_all_published()
    duplicated = checker()
    duplicated.on_actions([outcome_event("s1")])
    duplicated.on_published(1)
    duplicated.on_published(2)
    with pytest.raises(InvariantViolation, match="duplicated"):
        duplicated.check_all_published()


@pytest.mark.parametrize(
    ("physical", "message"),
    [
        (cut(roll_ref="p-other"), "foreign roll"),
        (cut(sachet_ref="p-other"), "foreign sachet"),
        (cut(dispense_id=99), "without a BeginDispense"),
        (cut(index=1), "BeginDispense named sachet 0"),
        (cut(intended=DUE + timedelta(hours=12)), "packed for"),
    ],
)
def test_checker_catches_a_wrong_physical_dispense(
    physical: PhysicalDispense, message: str
) -> None:
    c = checker()
    c.on_actions([begin()])
    with pytest.raises(InvariantViolation, match=message):
        c.on_physical_dispense(physical)


def test_checker_catches_a_dispense_id_cut_twice() -> None:
    c = checker()
    c.on_actions([begin()])
    c.on_physical_dispense(cut())
    with pytest.raises(InvariantViolation, match="twice"):
        c.on_physical_dispense(cut())


def test_checker_catches_missing_and_inconsistent_outcomes_at_the_end() -> None:
    missing = checker()
    with pytest.raises(InvariantViolation, match="without an outcome"):
        missing.finish(["s1"])
    no_event = checker()
    no_event.on_actions([RecordOutcome("s1", Outcome.TAKEN, None)])
    with pytest.raises(InvariantViolation, match="disagree"):
        no_event.finish(["s1"])
    disagree = checker()
    disagree.on_actions([RecordOutcome("s1", Outcome.TAKEN, None), outcome_event("s1", "missed")])
    for seq in (1,):
        disagree.on_published(seq)
    with pytest.raises(InvariantViolation, match="says missed"):
        disagree.finish(["s1"])


def test_checker_catches_missed_timed_decisions() -> None:
    with pytest.raises(InvariantViolation, match="not taken"):
        InvariantChecker.check_deadline_after_tick(100.0, 100.0)
    InvariantChecker.check_deadline_after_tick(100.0, 100.5)
    InvariantChecker.check_deadline_after_tick(100.0, None)
    with pytest.raises(InvariantViolation, match="produced actions"):
        InvariantChecker.check_idle_tick([outcome_event("s1")], 5.0, 5.0)
    with pytest.raises(InvariantViolation, match="moved it"):
        InvariantChecker.check_idle_tick([], 5.0, 6.0)


def test_a_clean_stream_passes_the_checker() -> None:
    c = checker()
    c.on_actions(
        [
            begin(),
            outcome_event("2026-03-29T02:30"),
            RecordOutcome("2026-03-29T02:30", Outcome.TAKEN, None),
        ]
    )
    c.on_physical_dispense(cut())
    c.on_published(1)
    c.finish(["2026-03-29T02:30"])


# --- the harness reports violations of a doctored engine with everything to replay it -------


class DoctoredEngine:
    """An engine that misbehaves on cue, to prove the harness notices."""

    def __init__(
        self,
        misbehave: Callable[[EngineInput, Now], list[Action]],
        deadline: Callable[[Now], float | None],
    ) -> None:
        self._misbehave = misbehave
        self._deadline = deadline

    def step(self, inp: EngineInput, now: Now) -> list[Action]:
        return self._misbehave(inp, now)

    def next_deadline(self, now: Now) -> float | None:
        return self._deadline(now)


class DoctoredFactory:
    def __init__(self, make: Callable[[], DoctoredEngine]) -> None:
        self._make = make

    def create(self, config: EngineConfig, now: Now) -> EngineLike:
        return self._make()

    def restart(self, engine: EngineLike, config: EngineConfig, now: Now) -> EngineLike:
        return engine


def run_doctored(
    make: Callable[[], DoctoredEngine], idle_tick_chance: float = 0.15
) -> InvariantViolation:
    config = SimulationConfig(
        seed=3, days=3, faults=FaultRates.none(), idle_tick_chance=idle_tick_chance
    )
    sim = Simulation(config, DoctoredFactory(make))
    with pytest.raises(InvariantViolation) as caught:
        sim.run()
    return caught.value


def test_harness_reports_a_double_outcome_with_seed_step_time_and_history() -> None:
    def make() -> DoctoredEngine:
        def step(inp: EngineInput, now: Now) -> list[Action]:
            if isinstance(inp, Tick):
                return [RecordOutcome("s1", Outcome.MISSED, "x")]
            return []

        return DoctoredEngine(step, lambda now: now.mono + 3600.0)

    violation = run_doctored(make, idle_tick_chance=0.0)
    assert "second outcome for slot s1" in violation.message
    assert violation.seed == 3
    assert violation.step is not None
    assert violation.step > 0
    assert violation.sim_time is not None
    assert "true 20" in violation.sim_time
    assert any("Tick()" in line for line in violation.recent)
    assert str(violation).startswith("seed 3, step ")


def test_harness_catches_a_deadline_the_engine_never_acts_on() -> None:
    stuck_at = [0.0]

    def make() -> DoctoredEngine:
        def deadline(now: Now) -> float:
            if not stuck_at[0]:
                stuck_at[0] = now.mono + 60.0
            return stuck_at[0]

        return DoctoredEngine(lambda inp, now: [], deadline)

    assert "not taken" in run_doctored(make).message


def test_harness_catches_a_tick_before_the_deadline_that_does_something() -> None:
    def make() -> DoctoredEngine:
        def step(inp: EngineInput, now: Now) -> list[Action]:
            return (
                [Emit(EngineEvent("chatter", Priority.INFO, None))] if isinstance(inp, Tick) else []
            )

        return DoctoredEngine(step, lambda now: now.mono + 3600.0)

    violation = run_doctored(make, idle_tick_chance=1.0)
    assert "before the engine's deadline produced actions" in violation.message


# --- plans, determinism and coverage -------------------------------------------------------


def test_fault_plan_is_a_pure_function_of_the_seed_and_spares_the_tail() -> None:
    import random

    duration = 365 * 86400.0
    first = plan_faults(random.Random(11), duration, FaultRates())
    again = plan_faults(random.Random(11), duration, FaultRates())
    other = plan_faults(random.Random(12), duration, FaultRates())
    assert first == again
    assert first != other
    assert {f.kind for f in first} == set(FaultKind)
    assert all(3600.0 <= f.at_s < duration - 2 * 86400.0 for f in first)
    assert [f.at_s for f in first] == sorted(f.at_s for f in first)


def test_seeded_years_cover_both_dst_changes_of_2026_and_2027_with_a_0230_dose() -> None:
    # seeds 7 and 2 use the 02:30 template; 7 starts 2026-01-16, 2 starts 2026-04-21 (local)
    ids_2026 = set(Simulation(SimulationConfig(seed=7), NullEngineFactory()).expected_slot_ids)
    ids_2027 = set(Simulation(SimulationConfig(seed=2), NullEngineFactory()).expected_slot_ids)
    assert "2026-03-29T02:30" in ids_2026  # spring forward: 02:30 does not exist that night
    assert "2026-10-25T02:30" in ids_2026  # fall back: 02:30 happens twice that night
    assert "2027-03-28T02:30" in ids_2027


def outcome_of_run(seed: int, days: int) -> tuple[str, str]:
    """("ok", event hash) or ("violation", its text): either way it must replay identically."""
    report = cli.run_one(seed, days)
    if report.result is not None:
        return "ok", f"{report.result.event_hash}/{report.result.steps}/{report.result.events}"
    assert report.violation is not None
    return "violation", report.violation


def test_the_same_seed_replays_exactly_and_another_seed_differs() -> None:
    first = outcome_of_run(12, 60)
    assert outcome_of_run(12, 60) == first
    assert outcome_of_run(13, 60) != first


def test_a_seed_replays_identically_in_a_fresh_interpreter() -> None:
    # a spawned interpreter has another string-hash seed: set iteration order would show here
    with ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        remote = pool.submit(cli.run_one, 4, 45).result(timeout=300)
    local = cli.run_one(4, 45)
    assert (remote.violation, remote.result) == (local.violation, local.result)


def test_cli_runs_seeds_and_prints_a_summary() -> None:
    out = io.StringIO()
    assert cli.main(["--seeds", "0-1", "--days", "5", "--engine", "null", "--jobs", "1"], out) == 0
    text = out.getvalue()
    assert "seed 0: ok" in text
    assert "seed 1: ok" in text
    assert "2/2 seeds passed" in text


def test_cli_prints_the_replay_command_for_a_failing_seed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def failing(
        seed: int,
        days: int,
        faults: bool = True,
        engine: str = "dose",
        judge: str = "all",
        pauses: float | None = None,
        plan_changes: float | None = None,
        world: str = "mix",
    ) -> cli.SeedReport:
        return cli.SeedReport(seed, days, None, "seed 5, step 9, at t+1s: boom", 0.0, world)

    monkeypatch.setattr(cli, "run_one", failing)
    out = io.StringIO()
    assert cli.main(["--seeds", "5", "--days", "30", "--jobs", "1"], out) == 1
    # the fault mix is the default and the seed's scenario is its own: seed and days replay it
    assert "replay: python -m agent.simulation.cli --seeds 5 --days 30\n" in out.getvalue()
    paused = io.StringIO()
    argv = ["--seeds", "5", "--days", "30", "--jobs", "1", "--pauses-per-year", "12"]
    assert cli.main(argv, paused) == 1
    assert "--seeds 5 --days 30 --pauses-per-year 12\n" in paused.getvalue()
    out = io.StringIO()
    assert cli.main(["--seeds", "5", "--days", "30", "--plan-changes", "0"], out) == 1
    assert "--seeds 5 --days 30 --plan-changes 0\n" in out.getvalue()
    out = io.StringIO()
    argv = ["--seeds", "5", "--days", "30", "--world", "classic", "--no-faults", "--judge", "all"]
    assert cli.main(argv, out) == 1
    assert "--seeds 5 --days 30 --judge all --world classic --no-faults\n" in out.getvalue()


def test_a_failing_mix_seed_replays_from_its_printed_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The printed command, run again, fails the same way: the scenario, the mishaps and the
    faults are the seed's own. Made to fail (in this process) by a livelock bound of two inputs
    at one instant, which the first busy instant breaks."""
    from agent.simulation import harness

    monkeypatch.setattr(harness, "MAX_INPUTS_PER_INSTANT", 2)
    out = io.StringIO()
    assert cli.main(["--seeds", "4", "--days", "90", "--jobs", "1"], out) == 1
    text = out.getvalue()
    replay = text.split("replay: ")[1].splitlines()[0]
    assert replay == "python -m agent.simulation.cli --seeds 4 --days 90"
    again = io.StringIO()
    assert cli.main([*replay.split()[3:], "--jobs", "1"], again) == 1
    first = text.split("VIOLATION")[1].split("replay:")[0]
    assert first == again.getvalue().split("VIOLATION")[1].split("replay:")[0]


def test_seed_lists_parse_and_bad_ones_are_refused() -> None:
    assert cli.parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    for bad in ("", "3-1", "x", "-1"):
        with pytest.raises(Exception, match="bad seed list"):
            cli.parse_seeds(bad)


# --- the real thing: many seeded years, in parallel ----------------------------------------


# The judge's rules that hold today (agent.simulation.judge.HOLDING_RULES); each one left out has an
# xfail test below that flips to a failure (strict XPASS) the day the engine is fixed, and then
# belongs there.
JUDGE_PASSING = "holding"


@pytest.mark.timeout(1800)
def test_invariants_hold_for_many_seeded_years() -> None:
    """SIM_SEEDS (200) seeds of SIM_DAYS (365) in the fault mix (agent.simulation.mix): each
    seed's own scenario (close doses, pauses, plan changes, moved dose times) on top of the
    faults and the mishaps (misprinted rolls and sachets, phantom frames, the centre's
    acknowledgements and silences), every holding rule of the judge enforced."""
    seeds = list(range(FULL_SEEDS))
    n = len(seeds)
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        reports = list(
            pool.map(
                cli.run_one,
                seeds,
                [FULL_DAYS] * n,
                [True] * n,
                ["dose"] * n,
                [JUDGE_PASSING] * n,
                [None] * n,
                [None] * n,
                ["mix"] * n,
            )
        )
    failures = [r for r in reports if r.violation is not None]
    assert not failures, (
        f"{len(failures)}/{len(seeds)} seeds broke an invariant; first: {failures[0].violation}"
        f"\nreplay: {cli.replay_command(failures[0].seed, FULL_DAYS, JUDGE_PASSING)}"
    )
    results = [r.result for r in reports if r.result is not None]
    assert sum(r.physical_dispenses for r in results) > 0
    if n >= 12 and FULL_DAYS >= 180:  # the mix happened (a short run may miss some of it)
        happened: Counter[str] = Counter()
        for r in results:
            happened.update(r.mishaps)
            happened.update(r.outcomes)
            happened["plan_decisions"] += r.plan_decisions
        wanted = {
            "times_moved",
            "acknowledge",
            "silence",
            "erased_rtc",
            "nurse_fixes",
            "phantom_DosePresented",
            "phantom_DoseTaken",
            "phantom_DoseRetained",
            "phantom_LowSupply",
            "reply_lost",
            "jam_again",
            "roll_leader_blank",
            "roll_leader_erased",
            "roll_short",
            "roll_sachet_unreadable",
            "roll_sachet_no_time",
            "roll_sachet_garbled",
            "dispensed_for_travel",
            "skipped_paused",
            "plan_decisions",
            "battery_walk",
            "press_again",
        }
        assert wanted <= set(happened), sorted(wanted - set(happened))


# --- the fault mix (agent.simulation.mix, agent.simulation.mishaps) --------------------------


def test_the_mix_gives_consecutive_seeds_every_scenario() -> None:
    names = [scenario_for(seed) for seed in range(10)]
    assert sum(s.times == CLOSE_DOSES for s in names) == 2
    assert sum(s.pauses_per_year == 12 for s in names) >= 3
    assert sum(s.plan_changes_per_year > 0 for s in names) >= 3
    assert sum(s.time_moves_per_year > 0 for s in names) >= 3
    # a prescribed extra time is chosen clear of the times in force: moves never join it
    assert not any(s.plan_changes_per_year and s.time_moves_per_year for s in names)
    assert scenario_for(7) == scenario_for(7)


def test_night_doses_a_battery_walk_and_presses_again_are_on_a_few_mix_seeds_only() -> None:
    """Each on a fifth or a tenth of the seeds (the others replay as they did), none in the wide
    world (its seeds are regressions replayed as they are)."""
    mix = [config_for(seed, 30) for seed in range(10)]
    assert [c.seed for c in mix if c.times == NIGHT_DOSES] == [1]
    assert [c.seed for c in mix if c.battery_walk] == [4, 9]
    assert [c.seed for c in mix if c.double_press] == [0, 5]
    assert [(c.seed, c.bin_capacity) for c in mix if c.bin_capacity is not None] == [(5, 4)]
    wide = [config_for(seed, 30, "wide") for seed in range(10)]
    assert not any(c.times == NIGHT_DOSES or c.battery_walk or c.double_press for c in wide)
    assert all(c.bin_capacity is None for c in wide)


def test_the_classic_world_is_the_simulation_without_the_mix() -> None:
    assert config_for(6, 30, "classic") == SimulationConfig(seed=6, days=30)
    mixed = config_for(6, 30)
    assert mixed.mishaps.any
    assert config_for(6, 30, pauses=0.0, plan_changes=0.0).pauses_per_year == 0.0
    with pytest.raises(ValueError, match="unknown world"):
        config_for(6, 30, "chaos")


def test_the_mix_gives_some_seeds_a_dispenser_without_feature_bits() -> None:
    """SPEC 3: real dispensers differ. Seeds 4, 6 and 9 (mod 10) of the mix get one without a
    retain bin, without HELD, without a lock; the others, and the classic and wide worlds, the
    full model. A bin-less one leaves a dose not taken in the tray: the centre hears it (judge
    R12), a carer lifts it out, and the doses after it come again."""
    lacks = {
        seed: DEFAULT_FEATURES & ~(config_for(seed, 30).features or DEFAULT_FEATURES)
        for seed in range(10)
    }
    assert lacks == {
        0: 0,
        1: 0,
        2: 0,
        3: 0,
        4: BINLESS,
        5: 0,
        6: Feature.HELD_PATTERN,
        7: 0,
        8: 0,
        9: Feature.LOCK,
    }
    assert config_for(6, 30, "classic").features is None
    assert config_for(6, 30, "wide").features is None
    result = Simulation(config_for(4, 30, features=DEFAULT_FEATURES & ~BINLESS)).run()
    assert result.mishaps["carer_empties_tray"] >= 2
    assert result.outcomes["taken"] >= 15


def test_mishaps_are_opt_in_and_leave_a_default_run_as_it_was() -> None:
    plain = Simulation(SimulationConfig(seed=5, days=60)).run()
    again = Simulation(SimulationConfig(seed=5, days=60, mishaps=MishapRates())).run()
    assert plain == again
    assert plain.mishaps == {}


def test_the_harness_reports_an_engine_that_raises_as_a_violation() -> None:
    """The engine is total (issue 7): an exception on any input it must take is a finding with
    the seed and the history, never a crashed worker."""

    def make() -> DoctoredEngine:
        def step(inp: EngineInput, now: Now) -> list[Action]:
            if isinstance(inp, FromDispenser) and isinstance(inp.message, SachetRead):
                raise OverflowError("date value out of range")
            return []

        return DoctoredEngine(step, lambda now: None)

    violation = run_doctored(make)
    assert "engine raised OverflowError('date value out of range') on FromDispenser" in (
        violation.message
    )
    assert violation.seed == 3


def test_a_patient_away_on_a_trip_takes_no_dose_left_in_the_tray() -> None:
    """Seed 22 of the mix: a dose presented just before its trip was lifted out by the patient
    83 s after the trip began; the world had the patient away and taking a dose at once, the
    engine rightly counted it taken along, and R13 failed on the world's own mistake (10
    reported, 9 packed). Away, nobody takes a dose; the packer is ready as the trip starts."""
    report = cli.run_one(22, 30)
    assert report.violation is None, report.violation
    assert report.result is not None
    assert report.result.outcomes.get("dispensed_for_travel", 0) >= 9


@pytest.mark.parametrize("seed", [3, 15])
def test_moved_dose_times_hold_the_judge(seed: int) -> None:
    """The centre moves the dose times ahead of the pharmacy's new rolls (the judge learns each
    update and the minimum interval of the rules together, from its own reference); seed 3
    starts with doses 30 min apart, seed 15 moves them four times."""
    config = config_for(seed, 200)
    assert config.mishaps.time_moves > 0
    result = Simulation(config).run()
    assert result.mishaps.get("times_moved", 0) >= 1
    assert not set(result.judge_findings) & HOLDING_RULES, result.judge_first


@pytest.mark.timeout(600)
def test_misprints_and_phantom_frames_hold_the_judge() -> None:
    """Many misprinted rolls and sachets and phantom frames a year: nothing nobody can check is
    given (R4), each is reported HIGH in time (R8.roll_unreadable, R8.sachet_unusable) and a
    nurse takes it off; phantom dose events are reported and change nothing (R10)."""
    happened: Counter[str] = Counter()
    for seed in (1, 2):
        rates = replace(MishapRates.mix(), roll_defect=0.6, phantoms=150.0)
        result = Simulation(SimulationConfig(seed=seed, days=300, mishaps=rates)).run()
        happened.update(result.mishaps)
    assert happened["nurse_fixes"] >= 4
    assert sum(v for k, v in happened.items() if k.startswith("phantom_")) >= 200


def test_doses_are_given_again_after_a_store_fault_and_the_restart() -> None:
    """After a store fault the daemon's fail-safe locks the dispenser and sets FAULT (SAFETY.md
    H8); the restarted agent took that lock for one it did not set and held every later dose
    'locked' for good. Now it lifts the fail-safe's lock (only the agent locks, SPEC 4.5)."""
    rates = MishapRates(store_faults=12.0)
    sim = Simulation(SimulationConfig(seed=1, days=120, mishaps=rates))
    result = sim.run()
    assert result.mishaps.get("store_fault", 0) >= 1
    assert result.outcomes.get("taken", 0) > 200  # 330 slots: most taken while unlocked


# --- the judge's rules that the engine breaks today: each runs seeds where it fires ---------

# CLOSE_DOSES (agent.simulation.mix): doses 30 min apart, the sachet tolerances overlap


def _run_enforcing(config: SimulationConfig, rule: str) -> None:
    try:
        result = Simulation(config).run()
    except InvariantViolation as violation:
        if not violation.message.startswith(f"judge {rule} "):
            pytest.fail(f"another violation than judge {rule}: {violation}")
        raise
    assert rule not in result.judge_findings


def judge_rule_holds(rule: str, seed: int, days: int, **scenario: Any) -> None:
    """Run a seed with only `rule` enforced: raises its first violation. Any other violation is
    a plain failure, so an xfail(raises=InvariantViolation) cannot pass for the wrong reason."""
    config = SimulationConfig(seed=seed, days=days, judge_enforce=parse_rules(rule), **scenario)
    _run_enforcing(config, rule)


def binless_rule_holds(rule: str, seed: int, days: int) -> None:
    """`judge_rule_holds` for the mix's seed on a dispenser without a retain bin (mix.BINLESS)."""
    config = config_for(
        seed, days, features=DEFAULT_FEATURES & ~BINLESS, judge_enforce=parse_rules(rule)
    )
    _run_enforcing(config, rule)


def test_a_dose_left_in_a_binless_tray_and_lifted_out_after_a_restart_is_an_intake() -> None:
    """A dose missed and left in the tray of a bin-less dispenser, then an agent restart (or a
    Pi boot): the carer lifting it out was a phantom_dispenser_event (the engine kept that
    dispense id in memory only): no dose_taken_late, no intake (SAFETY.md H3). Now stored."""
    binless_rule_holds("R12", 4, 150)  # 2026-12-23, an agent restart between miss and removal


def test_a_phantom_with_another_sachet_index_does_not_take_a_dose_left_in_the_tray() -> None:
    """A phantom DoseTaken naming the dispense id of a dose left in a bin-less tray but another
    sachet index was taken as that dose's removal (dose_taken_late, an intake, the stuck
    condition cleared while the dose was still in the tray). Now a phantom (SAFETY.md H13)."""
    binless_rule_holds("R10", 24, 100)  # 2026-10-19 21:12, phantom wrong_index


def test_a_trip_sachet_seen_gone_is_not_reported_stuck_and_hides_no_later_dose() -> None:
    """A trip's sachet cut while the link dropped (reply and the packer's DoseTaken lost) was
    answered ALREADY_DONE and a Status showed the tray empty, yet at its collect time it was
    reported stuck in the tray; a carer found nothing to lift out, the report was never cleared,
    and the next dose left in the tray four days later was not reported (R12, 2026-11-18
    09:00Z). Now `dose_not_in_tray` (tests/test_engine_stuck_cleared.py)."""
    binless_rule_holds("R12", 94, 365)


def test_low_supply_is_not_raised_again_on_an_empty_roll() -> None:
    """low_supply was cleared when the roll ran empty (the catalogue: "or it is now empty"), then
    raised again at once by the dispenser's LowSupply(remaining 0) (SPEC 4.3 sends it at 0 too):
    the centre saw few doses left on an empty roll until the next roll (R22.empty, seed 0,
    2026-01-18 19:00Z). The engine now raises it by its own threshold only."""
    judge_rule_holds("R22.empty", 0, 20)


def test_judge_r9_no_false_missed_alarm_for_a_dose_taken_unseen() -> None:
    """Hazard #11: in seeds 22 and 23 a dose is taken while the agent's link is down and its
    DoseTaken is lost; before the reconciliation with the dispenser's Status both were reported
    missed (HIGH) while the agent could see the empty tray. Now: taken_unconfirmed."""
    for seed in (22, 23):
        judge_rule_holds("R9", seed, 365)


# Hazard #1 (SAFETY.md H3): doses minutes apart after an early TAKE, or a missed dose taken late
# with the next. The judge's interval comes from the simulation config (or its own reference of
# the documented default when the config leaves it to the schedule), never from engine code.
def test_judge_r2_minimum_intake_interval_with_close_doses() -> None:
    judge_rule_holds("R2", 14, 90, times=CLOSE_DOSES)


def test_judge_r2_with_the_interval_as_long_as_the_spacing() -> None:
    judge_rule_holds("R2", 14, 90, times=CLOSE_DOSES, min_interval=timedelta(minutes=30))


# Hazard #3 (SAFETY.md H2): the 08:00 sachet was presented as the 08:30 dose (tolerances overlapped)
def test_judge_r4_right_sachet_with_close_doses() -> None:
    judge_rule_holds("R4", 14, 90, times=CLOSE_DOSES)


def test_judge_r7_no_missed_alarm_while_paused() -> None:
    """Hazard #5: a dose in the tray when a pause starts was reported missed (HIGH) during it."""
    judge_rule_holds("R7", 11, 120, pauses_per_year=12.0)


@pytest.mark.timeout(600)
def test_pauses_of_every_kind_hold_the_judge_for_seeded_years() -> None:
    """Hazard #5: hospital stays with an end, open-ended pauses resumed by command (some past the
    maximum) and trips with sachets to take along, twelve a year; a nurse answers
    backlog_needs_nurse. Every holding rule holds, R6 and R7 included; the trips were packed."""
    totals: dict[str, int] = {}
    for seed in (11, 12, 13, 14):
        config = SimulationConfig(seed=seed, days=365, pauses_per_year=12.0)
        result = Simulation(config).run()
        for outcome, count in result.outcomes.items():
            totals[outcome] = totals.get(outcome, 0) + count
        assert not {"R6", "R7"} & set(result.judge_findings), result.judge_first
    assert totals.get("dispensed_for_travel", 0) > 0
    assert totals.get("skipped_paused", 0) > 0


def test_judge_r8_empty_roll_at_a_due_time_reported_in_time() -> None:
    """Seed 0 ran out of sachets at dose times: reported HIGH only at the undispensed deadline
    (60 min, roll_empty itself is medium). Now the held dose is HIGH (VKP 3.7) at once."""
    judge_rule_holds("R8.roll_empty", 0, 365)


def test_judge_r8_empty_roll_after_a_pi_reboot_with_a_roll_past_its_period() -> None:
    """Seed 135: the Pi rebooted with its clock two hours wrong and an empty roll whose period
    had passed (roll_rejected at boot); the 20:00 dose came due before the clock was trusted
    again, and no HIGH named it. Now the agent names it HIGH ahead (VKP 3.7)."""
    judge_rule_holds("R8.roll_empty", 135, 365)


# --- pharmacy plan changes (hazard #4): no sachet discarded without a person's decision -----


@pytest.mark.parametrize("seed", [0, 5, 24])
def test_judge_holds_with_pharmacy_plan_changes(seed: int) -> None:
    """A year with plan changes: new prescriptions (the centre updates the schedule) and
    pharmacy errors (the centre or a technician decides to discard), every holding rule
    enforced, R5 (no discard without a decision) and R8.plan_mismatch among them."""
    times = ("08:00", "20:00") if seed != 24 else None  # seed 24: its own 4-dose template
    config = SimulationConfig(seed=seed, days=365, plan_changes_per_year=12.0, times=times)
    result = Simulation(config).run()
    assert result.plan_changes >= 3
    assert result.plan_decisions >= result.plan_changes  # every change was decided
    assert not {"R5", "R8.plan_mismatch"} & set(result.judge_findings)


def test_plan_changes_are_opt_in_and_leave_a_default_run_as_it_was() -> None:
    plain = Simulation(SimulationConfig(seed=5, days=60)).run()
    again = Simulation(SimulationConfig(seed=5, days=60, plan_changes_per_year=0.0)).run()
    assert plain == again
    assert plain.plan_changes == 0


# --- the shell's link handling follows the protocol (SPEC 4.1) ----------------------------


class RecordingEngine:
    """Records every input; never asks for anything (so the roll stays loaded as inserted)."""

    def __init__(self) -> None:
        self.inputs: list[EngineInput] = []

    def step(self, inp: EngineInput, now: Now) -> list[Action]:
        self.inputs.append(inp)
        return []

    def next_deadline(self, now: Now) -> float | None:
        return None


class RecordingFactory:
    def __init__(self) -> None:
        self.engine = RecordingEngine()

    def create(self, config: EngineConfig, now: Now) -> EngineLike:
        return self.engine

    def restart(self, engine: EngineLike, config: EngineConfig, now: Now) -> EngineLike:
        return self.engine  # one record across restarts


def test_every_link_up_is_followed_by_the_roll_announced_again() -> None:
    factory = RecordingFactory()
    faults = FaultRates(
        0, 0, dispenser_reboot=40.0, link_down=80.0, wall_jump=0, pi_reboot=0, agent_restart=80.0
    )
    config = SimulationConfig(seed=5, days=30, faults=faults, require_outcomes=False)
    Simulation(config, factory).run()
    inputs = factory.engine.inputs
    first_roll = next(
        i
        for i, inp in enumerate(inputs)
        if isinstance(inp, FromDispenser) and isinstance(inp.message, RollInserted)
    )
    link_ups = [i for i, inp in enumerate(inputs) if isinstance(inp, LinkUp) and i > first_roll]
    assert len(link_ups) >= 3
    for i in link_ups:
        after = [inp.message for inp in inputs[i + 1 : i + 3] if isinstance(inp, FromDispenser)]
        assert [type(m) for m in after] == [RollInserted, SachetRead], inputs[i : i + 3]
        roll, sachet = after
        assert isinstance(roll, RollInserted)
        assert isinstance(sachet, SachetRead)
        assert sachet.index == roll.next_index  # the sachet now at the reader
