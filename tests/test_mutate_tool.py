"""scripts/mutate.py, the mutation-testing tool: which mutants it makes, that their ids are stable,
and that it reports killed, survived and timed-out mutants from real pytest runs on a toy repo."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "mutate.py"


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutate_tool", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutate_tool"] = module  # dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


mutate = load_tool()

SAMPLE = '''\
import logging

log = logging.getLogger(__name__)


def check(dose: int, limit: int, flag: bool = True) -> str | None:
    """A docstring: 1 < 2 is not code."""
    log.info("checking %d", dose)
    if not flag and dose > limit:
        raise ValueError(f"too much: {dose + 1}")
    if dose == 0:
        return None
    notify(dose - 1)
    total = dose + limit
    total += 2
    return "ok" if total >= 3 else "low"


def plain(x: int) -> int:
    return x
'''


def mutations(source: str) -> set[tuple[str, int, str]]:
    """(operator, line, mutated line) of every mutant of `source`."""
    found = set()
    for m in mutate.enumerate_mutants("pkg/sample.py", source):
        found.add((m.operator, m.line, mutate.mutated_line(source, m).strip()))
    return found


def test_each_operator_makes_the_expected_mutants() -> None:
    got = mutations(SAMPLE)
    expected = {
        ("const", 6, "def check(dose: int, limit: int, flag: bool = False) -> str | None:"),
        ("not_drop", 9, "if flag and dose > limit:"),
        ("bool_op", 9, "if not flag or dose > limit:"),
        ("cmp_flip", 9, "if not flag and dose >= limit:"),
        ("stmt_del", 10, "pass"),  # the guard's raise
        ("cmp_flip", 11, "if dose != 0:"),
        ("const", 11, "if dose == 1:"),
        ("stmt_del", 12, "pass"),  # the guard's return
        ("stmt_del", 13, "pass"),  # a call statement
        ("arith", 13, "notify(dose + 1)"),
        ("const", 13, "notify(dose - 2)"),
        ("arith", 14, "total = dose - limit"),
        ("arith", 15, "total -= 2"),
        ("const", 15, "total += 3"),
        ("return_none", 16, "return None"),
        ("cmp_flip", 16, 'return "ok" if total > 3 else "low"'),
        ("const", 16, 'return "ok" if total >= 4 else "low"'),
    }
    assert got == expected
    # not mutated: the docstring, the logging call, the message, strings, `return x` (not
    # Optional), the annotation, and `return None` itself


def test_every_mutant_parses_and_changes_the_program() -> None:
    original = ast.dump(ast.parse(SAMPLE))
    for m in mutate.enumerate_mutants("pkg/sample.py", SAMPLE):
        assert ast.dump(ast.parse(mutate.apply_mutant(SAMPLE, m))) != original, m.id


def test_ids_are_stable_unique_and_survive_edits_below() -> None:
    first = [m.id for m in mutate.enumerate_mutants("pkg/sample.py", SAMPLE)]
    again = [m.id for m in mutate.enumerate_mutants("pkg/sample.py", SAMPLE)]
    assert first == again
    assert len(set(first)) == len(first)
    assert all(re.fullmatch(r"pkg/sample\.py:\d+:\d+:[a-z_]+:\d+", i) for i in first)
    assert "pkg/sample.py:9:7:cmp_flip:0" not in first  # `not flag and ...`: the BoolOp is at 7
    assert "pkg/sample.py:9:20:cmp_flip:0" in first
    extended = SAMPLE + "\n\ndef more(a: int) -> bool:\n    return a < 1\n"
    later = [m.id for m in mutate.enumerate_mutants("pkg/sample.py", extended)]
    assert later[: len(first)] == first


def test_a_chained_comparison_gives_one_mutant_per_operator_with_an_index() -> None:
    source = "def low(r: int, t: int) -> bool:\n    return 0 < r <= t\n"
    by_id = {m.id: m for m in mutate.enumerate_mutants("m.py", source)}
    assert mutate.mutated_line(source, by_id["m.py:2:11:cmp_flip:0"]).strip() == (
        "return 0 <= r <= t"
    )
    assert mutate.mutated_line(source, by_id["m.py:2:11:cmp_flip:1"]).strip() == (
        "return 0 < r < t"
    )


def test_columns_are_characters_even_after_non_ascii_text() -> None:
    source = 'pair = ("ø—", a < b)\n'
    (mutant,) = mutate.enumerate_mutants("m.py", source)
    assert mutate.apply_mutant(source, mutant) == 'pair = ("ø—", a <= b)\n'
    assert mutant.col == len('pair = ("ø—", ')


def test_dropping_not_keeps_the_grouping_of_its_operand() -> None:
    source = "ok = y and not (a or b)\n"
    drops = [m for m in mutate.enumerate_mutants("m.py", source) if m.operator == "not_drop"]
    assert [mutate.apply_mutant(source, m) for m in drops] == ["ok = y and (a or b)\n"]


def test_type_checking_blocks_and_main_guards_are_not_mutated() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    X = 1\n"
        'if __name__ == "__main__":\n    main(2)\n'
    )
    assert mutate.enumerate_mutants("m.py", source) == []


def test_equivalents_need_a_reason(tmp_path: Path) -> None:
    good = tmp_path / "eq.txt"
    good.write_text("# comment\n\nm.py:1:0:const:0  the value is only logged\n", encoding="utf-8")
    assert mutate.read_equivalents(good) == {"m.py:1:0:const:0": "the value is only logged"}
    bad = tmp_path / "bad.txt"
    bad.write_text("m.py:1:0:const:0\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="no reason"):
        mutate.read_equivalents(bad)


def test_engine_modules_get_their_own_tests_first_and_the_simulation() -> None:
    root = SCRIPT.parent.parent
    selection = mutate.selection_for("agent/engine/pause.py", root)
    assert selection is not None
    assert selection.tests[0] == "tests/test_pause.py"
    assert "tests/test_simulation.py" in selection.tests
    assert selection.sim
    assert mutate.selection_for("agent/nowhere.py", root) is None


def test_engine_selection_takes_every_engine_test_file_once_and_the_simulation_last() -> None:
    root = SCRIPT.parent.parent
    for module in ("agent/engine/pause.py", "agent/engine/alert_desk.py"):
        selection = mutate.selection_for(module, root)
        assert selection is not None
        tests = selection.tests
        assert len(tests) == len(set(tests))
        assert tests[-1] == "tests/test_simulation.py"
        engine_files = {p.relative_to(root).as_posix() for p in root.glob("tests/test_engine*.py")}
        assert "tests/test_engine.py" in engine_files
        assert engine_files <= set(tests)
        for named in ("tests/test_plan_mismatch.py", "tests/test_pause_safety.py"):
            assert named in tests
        assert all((root / t).is_file() for t in tests)


def test_globs_in_a_selection_expand_in_the_copy_and_node_ids_stay(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    for name in ("test_b.py", "test_a.py", "test_c.py"):
        (tmp_path / "tests" / name).write_text("", encoding="utf-8")
    tests = mutate.expand_tests(
        ("tests/test_c.py", "tests/test_*.py", "tests/test_x.py::test_y", "tests/none_*.py"),
        tmp_path,
    )
    assert tests == (
        "tests/test_c.py",
        "tests/test_a.py",
        "tests/test_b.py",
        "tests/test_x.py::test_y",
    )


# --- real runs on a toy repository ---------------------------------------------------------

GUARD = """\
def allowed(dose: int, limit: int) -> bool:
    return dose <= limit


def unseen(x: int) -> int:
    return x - 1


def count_to(n: int) -> int:
    i = 0
    while i < n:
        i += 1
    return i
"""

TOY_TEST = """\
from toy.guard import allowed, count_to


def test_the_limit_is_inclusive() -> None:
    assert allowed(3, 3)
    assert not allowed(4, 3)


def test_counting() -> None:
    assert count_to(3) == 3
"""


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    root = tmp_path / "toy-repo"
    (root / "toy").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pyproject.toml").write_text("[tool.pytest.ini_options]\n", encoding="utf-8")
    (root / "toy" / "__init__.py").write_text("", encoding="utf-8")
    (root / "toy" / "guard.py").write_text(GUARD, encoding="utf-8")
    (root / "tests" / "test_toy.py").write_text(TOY_TEST, encoding="utf-8")
    return root


TOY_TIMEOUT_MARGIN_S = 3.0


def run_tool(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_toy_mutants_are_reported_killed_survived_and_timed_out(toy: Path) -> None:
    ids = {
        mutate.mutated_line(GUARD, m).strip(): m.id
        for m in mutate.enumerate_mutants("toy/guard.py", GUARD)
    }
    killed = ids["return dose < limit"]  # allowed(3, 3) sees it
    survived = ids["return x + 1"]  # no test calls unseen()
    hangs = ids["i -= 1"]  # counts away from n forever
    report = toy / "report.json"
    done = run_tool(
        toy,
        "--module",
        "toy/guard.py",
        "--tests",
        "tests/test_toy.py",
        "--markers",
        "",
        # no --timeout: the tool's own (4 x the unmutated run + margin) scales with the
        # machine's load, which a fixed one does not (3 s called a loaded pytest start a hang;
        # 30 s made the hanging mutant cost 30 s on every run). The margin: the default 10 s
        # made the hanging mutant cost 13 s idle; a toy run's factor 4 leaves room under load.
        "--timeout-margin",
        str(TOY_TIMEOUT_MARGIN_S),
        "--jobs",
        "2",
        "--only",
        killed,
        "--only",
        survived,
        "--only",
        hangs,
        "--json",
        str(report),
        "--min-score",
        "70",
    )
    assert done.returncode == 1, done.stdout + done.stderr  # 2 of 3 = 66.7 % < 70 %
    status = {r["id"]: r["status"] for r in json.loads(report.read_text())["results"]}
    assert status == {killed: "killed", survived: "survived", hangs: "timeout"}
    assert "survivors (no test failed):" in done.stdout
    assert f"{survived}\n    - return x - 1\n    + return x + 1" in done.stdout
    assert "66.7%" in done.stdout
    assert (toy / "toy" / "guard.py").read_text() == GUARD  # the tree itself is never touched


def test_list_marks_equivalents_and_runs_nothing(toy: Path) -> None:
    start_at_one = next(
        m.id
        for m in mutate.enumerate_mutants("toy/guard.py", GUARD)
        if mutate.mutated_line(GUARD, m).strip() == "i = 1"
    )
    equivalents = toy / "eq.txt"
    equivalents.write_text(f"{start_at_one} only the count matters\n", encoding="utf-8")
    done = run_tool(
        toy, "--module", "toy/guard.py", "--tests", "x", "--equivalent", str(equivalents), "--list"
    )
    assert done.returncode == 0, done.stderr
    assert f"{start_at_one}  [equivalent]\n    i = 1" in done.stdout
    assert done.stdout.rstrip().endswith(
        f"{len(mutate.enumerate_mutants('toy/guard.py', GUARD))} mutants"
    )


def test_the_simulation_enforces_the_judge_rules_the_suite_enforces(tmp_path: Path) -> None:
    assert mutate.judge_args(tmp_path) == ()
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_simulation.py").write_text(
        'FULL = 1\nJUDGE_PASSING = "R1,R3"\n', encoding="utf-8"
    )
    assert mutate.judge_args(tmp_path) == ("--judge", "R1,R3")


def test_the_timeout_options_are_checked() -> None:
    assert mutate.parse_args([]).timeout_margin == 10.0  # the default the docs give
    assert mutate.parse_args(["--timeout-margin", "0"]).timeout_margin == 0.0
    for bad in (["--timeout-margin", "-1"], ["--timeout", "0"], ["--timeout", "-5"]):
        with pytest.raises(SystemExit) as caught:
            mutate.parse_args(bad)
        assert caught.value.code == 2, bad
