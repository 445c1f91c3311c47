"""Mutation testing for the safety code: does a test fail when a safety rule is changed?

    .venv/bin/python scripts/mutate.py                                  # every target, tests
    .venv/bin/python scripts/mutate.py --module agent/engine/roll_check.py --jobs 2
    .venv/bin/python scripts/mutate.py --suite sim                      # the simulation alone
    .venv/bin/python scripts/mutate.py --sample 40 --seed 1 --jobs 2    # a reproducible sample
    .venv/bin/python scripts/mutate.py --only agent/engine/pause.py:17:11:cmp_flip:0
    .venv/bin/python scripts/mutate.py --list --module protocol/framing.py

Each mutant is one small change to one target file (see OPERATORS), applied to a private copy of
the repository (one copy per worker), never to the working tree. The mutant is killed when the
test selection for its module fails (or, with `--suite sim`, when the seeded simulation reports
a violation); a run that exceeds the timeout is killed by timeout and reported apart. Mutants
listed in the equivalents file (scripts/mutation-equivalent.txt) are excluded from the score.
How to read the report: docs/mutation-testing.md.

Exit status: 0, or 1 when the score is under --min-score, or 2 when something could not be
measured (a baseline run failed, or a run ended in a way that is neither pass nor fail).
"""

from __future__ import annotations

import argparse
import ast
import copy
import glob
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from functools import partial
from pathlib import Path
from typing import Literal, TextIO, TypeVar

_T = TypeVar("_T")

REPO = Path(__file__).resolve().parent.parent

# The safety code. A glob, so modules split out of the engine are picked up as they appear.
TARGETS: tuple[str, ...] = (
    "agent/engine/*.py",
    "agent/commands.py",
    "agent/store/audit.py",
    "agent/store/verify.py",
    "protocol/framing.py",
    "protocol/link.py",
)

NOT_E2E = "not e2e"

# Every engine module is tested through these; a module's own tests/test_<name>.py goes first so
# that `-x` stops early for most mutants. Entries may be globs (expanded in the copy, sorted), so
# a new tests/test_engine_*.py joins without an edit here. The simulation test is last: it is the
# slowest.
ENGINE_TESTS: tuple[str, ...] = (
    "tests/test_engine.py",
    "tests/test_engine*.py",
    "tests/test_plan_mismatch.py",
    "tests/test_roll_check.py",
    "tests/test_lifecycle.py",
    "tests/test_pause.py",
    "tests/test_pause_safety.py",
    "tests/test_alerts.py",
    "tests/test_schedule.py",
    "tests/test_dispense_counter.py",
    "tests/test_contract.py",  # the catalogue's kinds, priorities and codes are in the contract
    "tests/test_simulation.py",
)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which tests run against the mutants of a module."""

    tests: tuple[str, ...]
    markers: str = NOT_E2E  # pytest -m expression; "" runs marked tests too
    sim: bool = False  # the year simulation exercises this module (`--suite sim` applies)
    own_test_first: bool = False  # put tests/test_<module name>.py first when it exists


# First matching pattern wins. A target without an entry is an error: add one here.
SELECTIONS: tuple[tuple[str, Selection], ...] = (
    ("agent/engine/*.py", Selection(ENGINE_TESTS, sim=True, own_test_first=True)),
    (
        # The authentication and warning rules are tested without a broker first; the rest of
        # the command path (agent -> MQTT or the local control socket -> answer) only end to end,
        # selected by name, so these e2e tests run (a private mosquitto each).
        "agent/commands.py",
        Selection(
            (
                "tests/test_commands_auth.py",
                "tests/test_e2e.py::"
                "test_malformed_expired_and_duplicate_commands_are_answered_and_not_executed",
                "tests/test_e2e.py::test_a_plan_mismatch_is_held_until_the_centre_decides_to_discard",
                "tests/test_e2e.py::"
                "test_a_technician_on_site_decides_through_the_local_control_socket",
            ),
            markers="",
        ),
    ),
    ("agent/store/audit.py", Selection(("tests/test_audit.py", "tests/test_store.py"))),
    ("agent/store/verify.py", Selection(("tests/test_audit.py", "tests/test_cli.py"))),
    (
        "protocol/framing.py",
        Selection(
            (
                "tests/test_framing_limits.py",
                "tests/test_link.py",
                "tests/test_protocol_vectors.py",
                "tests/test_protocol_properties.py",
                "tests/test_sim_wire.py",
            )
        ),
    ),
    (
        "protocol/link.py",
        Selection(
            (
                # first: it drives time by explicit polls, so a mutant that stops retransmits
                # fails here instead of hanging test_link.py's run-until-idle loop
                "tests/test_link_limits.py",
                "tests/test_link.py",
                "tests/test_protocol_properties.py",
                "tests/test_session.py",
                "tests/test_sim_wire.py",
            )
        ),
    ),
)

PYTEST_ARGS: tuple[str, ...] = ("-x", "-q", "-p", "no:cacheprovider")
DEFAULT_EQUIVALENTS = "scripts/mutation-equivalent.txt"

# Statements that only log are not safety rules; deleting them is not a useful mutant.
LOGGER_NAMES = frozenset({"log", "logger", "_log", "LOG", "logging"})

Suite = Literal["tests", "sim"]
TIMEOUT_MARGIN_S = 10.0  # the default timeout: 4 x the unmutated run's time + this

Status = Literal["killed", "timeout", "survived", "error"]

# --- mutants ---------------------------------------------------------------------------------

OPERATORS: dict[str, str] = {
    "cmp_flip": "comparison flipped: < <=, > >=, == !=, is / is not, in / not in",
    "bool_op": "boolean operator swapped: and <-> or",
    "not_drop": "`not x` -> `x`",
    "const": "constant tweaked: int n -> n+1, float x -> x+1, True <-> False",
    "arith": "+ <-> - (also += <-> -=)",
    "return_none": "`return X` -> `return None` in a function typed to return Optional",
    "stmt_del": "a call statement, or the raise/return of an if guard, replaced by `pass`",
}

CMP_FLIPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}

# Operands that need no parentheses wherever the `not` expression stood.
_ATOMIC = (ast.Name, ast.Attribute, ast.Call, ast.Subscript, ast.Constant, ast.Compare)


@dataclass(frozen=True, slots=True)
class Mutant:
    """One change to one file: the text from (line, col) to (end_line, end_col) is replaced.

    Lines are 1-based, columns 0-based characters (not bytes). The id is stable for a given
    source: path:line:col:operator:index, index counting mutants of one operator at one place.
    """

    path: str
    line: int
    col: int
    end_line: int
    end_col: int
    operator: str
    index: int
    replacement: str

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}:{self.col}:{self.operator}:{self.index}"


def _char_col(lines: Sequence[str], line: int, byte_col: int) -> int:
    """ast gives UTF-8 byte offsets; the text is indexed by characters."""
    return len(lines[line - 1].encode("utf-8")[:byte_col].decode("utf-8", errors="replace"))


def _offset(lines: Sequence[str], line: int, col: int) -> int:
    return sum(len(text) for text in lines[: line - 1]) + col


def apply_mutant(source: str, mutant: Mutant) -> str:
    """The source with the mutant applied."""
    lines = source.splitlines(keepends=True)
    start = _offset(lines, mutant.line, mutant.col)
    end = _offset(lines, mutant.end_line, mutant.end_col)
    return source[:start] + mutant.replacement + source[end:]


def mutated_line(source: str, mutant: Mutant) -> str:
    """The first line of the mutated region, as it reads after the change."""
    return apply_mutant(source, mutant).splitlines()[mutant.line - 1]


def _is_optional(annotation: ast.expr | None) -> bool:
    if annotation is None:
        return False
    if isinstance(annotation, ast.Constant):
        if annotation.value is None:
            return True
        if isinstance(annotation.value, str):  # a quoted annotation
            try:
                return _is_optional(ast.parse(annotation.value, mode="eval").body)
            except SyntaxError:
                return False
        return False
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        return _is_optional(annotation.left) or _is_optional(annotation.right)
    if isinstance(annotation, ast.Subscript):
        base = annotation.value
        name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
        return name == "Optional"
    return False


def _is_logging_call(call: ast.expr) -> bool:
    if isinstance(call, ast.Await):
        call = call.value
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
        return False
    owner = call.func.value
    return isinstance(owner, ast.Name) and owner.id in LOGGER_NAMES


def _is_str_operand(node: ast.expr) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes))
    )


def _skipped_block(node: ast.If) -> bool:
    """`if TYPE_CHECKING:` and `if __name__ == "__main__":` hold no rules."""
    test = node.test
    if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
        return True
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
    )


class _Enumerator:
    """Walks a module's AST and records candidate mutants in source order."""

    def __init__(self, path: str, source: str) -> None:
        self.path = path
        self.source = source
        self.lines = source.splitlines(keepends=True)
        self.tree = ast.parse(source)
        self.candidates: list[tuple[int, int, int, int, str, str]] = []
        self._optional_stack: list[bool] = []

    def span(self, node: ast.AST) -> tuple[int, int, int, int]:
        line: int = getattr(node, "lineno")  # noqa: B009 - every node we mutate has positions
        col: int = getattr(node, "col_offset")  # noqa: B009
        end_line: int = getattr(node, "end_lineno")  # noqa: B009
        end_col: int = getattr(node, "end_col_offset")  # noqa: B009
        return (
            line,
            _char_col(self.lines, line, col),
            end_line,
            _char_col(self.lines, end_line, end_col),
        )

    def add(self, node: ast.AST, operator: str, replacement: str) -> None:
        self.candidates.append((*self.span(node), operator, replacement))

    def run(self) -> list[Mutant]:
        self.visit_body(self.tree.body)
        original = ast.dump(self.tree)
        counts: dict[tuple[int, int, str], int] = {}
        mutants: list[Mutant] = []
        seen: set[str] = set()
        for line, col, end_line, end_col, operator, replacement in self.candidates:
            key = (line, col, operator)
            index = counts.get(key, 0)
            counts[key] = index + 1
            mutant = Mutant(self.path, line, col, end_line, end_col, operator, index, replacement)
            text = apply_mutant(self.source, mutant)
            try:
                changed = ast.dump(ast.parse(text)) != original
            except SyntaxError:
                continue  # cannot happen for the operators above; never run a broken mutant
            if changed and text not in seen:
                seen.add(text)
                mutants.append(mutant)
        return mutants

    # -- statements ----------------------------------------------------------------------------

    def visit_body(self, body: Iterable[ast.stmt], in_if: bool = False) -> None:
        for stmt in body:
            self.visit_stmt(stmt, in_if)

    def visit_stmt(self, stmt: ast.stmt, in_if: bool) -> None:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if stmt.name in {"__repr__", "__str__"}:
                return
            for default in (*stmt.args.defaults, *stmt.args.kw_defaults):
                if default is not None:
                    self.visit_expr(default)
            self._optional_stack.append(_is_optional(stmt.returns))
            self.visit_body(stmt.body)
            self._optional_stack.pop()
            return
        if isinstance(stmt, ast.ClassDef):
            self.visit_body(stmt.body)  # decorators and bases are structure, not rules
            return
        if isinstance(stmt, ast.If):
            if _skipped_block(stmt):
                return
            self.visit_expr(stmt.test)
            self.visit_body(stmt.body, in_if=True)
            self.visit_body(stmt.orelse, in_if=True)
            return
        if isinstance(stmt, ast.Expr):
            if isinstance(stmt.value, (ast.Call, ast.Await)) and not _is_logging_call(stmt.value):
                self.add(stmt, "stmt_del", "pass")
            self.visit_expr(stmt.value)
            return
        if isinstance(stmt, ast.Return):
            if stmt.value is not None:
                is_none = isinstance(stmt.value, ast.Constant) and stmt.value.value is None
                if self._optional_stack and self._optional_stack[-1] and not is_none:
                    self.add(stmt.value, "return_none", "None")
                self.visit_expr(stmt.value)
            if in_if:
                self.add(stmt, "stmt_del", "pass")
            return
        if isinstance(stmt, ast.Raise):
            if in_if:
                self.add(stmt, "stmt_del", "pass")
            return  # the exception's message is not a rule
        if isinstance(stmt, ast.AnnAssign):
            if stmt.value is not None:
                self.visit_expr(stmt.value)
            return
        if isinstance(stmt, ast.AugAssign):
            if isinstance(stmt.op, (ast.Add, ast.Sub)) and not _is_str_operand(stmt.value):
                other: ast.operator = ast.Sub() if isinstance(stmt.op, ast.Add) else ast.Add()
                swapped = ast.AugAssign(stmt.target, other, stmt.value)
                self.add(stmt, "arith", ast.unparse(swapped))
            self.visit_expr(stmt.value)
            return
        for name, value in ast.iter_fields(stmt):
            if name == "decorator_list":
                continue
            if isinstance(value, ast.expr):
                self.visit_expr(value)
            elif isinstance(value, list):
                exprs = [v for v in value if isinstance(v, ast.expr)]
                stmts = [v for v in value if isinstance(v, ast.stmt)]
                for expr in exprs:
                    self.visit_expr(expr)
                self.visit_body(stmts)
                for handler in (v for v in value if isinstance(v, ast.ExceptHandler)):
                    self.visit_body(handler.body)
                for item in (v for v in value if isinstance(v, ast.withitem)):
                    self.visit_expr(item.context_expr)
                for case in (v for v in value if isinstance(v, ast.match_case)):
                    if case.guard is not None:
                        self.visit_expr(case.guard)
                    self.visit_body(case.body)

    # -- expressions ---------------------------------------------------------------------------

    def visit_expr(self, node: ast.expr) -> None:
        if isinstance(node, ast.JoinedStr):
            return  # messages are not rules
        if isinstance(node, ast.Compare):
            for i, cmp in enumerate(node.ops):
                flipped = CMP_FLIPS.get(type(cmp))
                if flipped is not None:
                    mutated = copy.deepcopy(node)
                    mutated.ops[i] = flipped()
                    self.add(node, "cmp_flip", ast.unparse(mutated))
        elif isinstance(node, ast.BoolOp):
            swap: ast.boolop = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            self.add(node, "bool_op", ast.unparse(ast.BoolOp(swap, node.values)))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            operand = ast.unparse(node.operand)
            if not isinstance(node.operand, _ATOMIC):
                operand = f"({operand})"
            self.add(node, "not_drop", operand)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            if not (_is_str_operand(node.left) or _is_str_operand(node.right)):
                arith: ast.operator = ast.Sub() if isinstance(node.op, ast.Add) else ast.Add()
                self.add(node, "arith", ast.unparse(ast.BinOp(node.left, arith, node.right)))
        elif isinstance(node, ast.Constant):
            self.visit_constant(node)
            return
        elif isinstance(node, ast.Lambda):
            self.visit_expr(node.body)
            return
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.visit_expr(child)
            elif isinstance(child, ast.comprehension):
                self.visit_expr(child.iter)
                for condition in child.ifs:
                    self.visit_expr(condition)
            elif isinstance(child, ast.keyword):
                self.visit_expr(child.value)

    def visit_constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bool):
            self.add(node, "const", repr(not value))
        elif isinstance(value, int):
            text = ast.get_source_segment(self.source, node) or ""
            bumped = hex(value + 1) if text.lower().startswith("0x") else str(value + 1)
            self.add(node, "const", bumped)
        elif isinstance(value, float):
            self.add(node, "const", repr(value + 1.0))


def enumerate_mutants(path: str, source: str) -> list[Mutant]:
    """Every mutant of one file, in source order; `path` is how ids name the file."""
    return _Enumerator(path, source).run()


# --- which tests ---------------------------------------------------------------------------


def selection_for(path: str, root: Path) -> Selection | None:
    for pattern, selection in SELECTIONS:
        if fnmatchcase(path, pattern):
            tests = expand_tests(selection.tests, root)
            if selection.own_test_first:
                own = f"tests/test_{Path(path).stem}.py"
                first = (own,) if (root / own).is_file() else ()
                tests = first + tuple(t for t in tests if t != own)
            return Selection(tests, selection.markers, selection.sim)
    return None


def expand_tests(tests: Sequence[str], root: Path) -> tuple[str, ...]:
    """Globs among the tests become the files they match under `root` (sorted), each file once,
    in the order of first mention; node ids (`file::test`) and plain paths stay as they are."""
    found: list[str] = []
    for test in tests:
        if "::" not in test and any(ch in test for ch in "*?["):
            matches = sorted(glob.glob(test, root_dir=root))
        else:
            matches = [test]
        found.extend(m for m in matches if m not in found)
    return tuple(found)


def expand_targets(patterns: Iterable[str], root: Path) -> list[str]:
    found: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, root_dir=root))
        if not matches and not any(ch in pattern for ch in "*?["):
            raise SystemExit(f"mutate: no such file {pattern} under {root}")
        found.extend(m for m in matches if m.endswith(".py") and m not in found)
    return found


# --- equivalents -----------------------------------------------------------------------------


def read_equivalents(path: Path) -> dict[str, str]:
    """`ID reason...` per line; '#' starts a comment line. Every entry needs its reason."""
    entries: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        ident, _, reason = line.partition(" ")
        if not reason.strip():
            raise SystemExit(f"mutate: {path}:{number}: equivalent mutant {ident} has no reason")
        entries[ident] = reason.strip()
    return entries


# --- a private copy of the repository per worker ---------------------------------------------

_SKIP_DIRS = frozenset(
    {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"}
)


def repo_files(root: Path) -> list[str]:
    """Tracked and new (not ignored) files; a plain walk when `root` is not a git work tree."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
        return sorted({p for p in out.decode("utf-8").split("\0") if p})
    except (OSError, subprocess.CalledProcessError):
        files: list[str] = []
        for folder, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
            files.extend(os.path.relpath(os.path.join(folder, n), root) for n in names)
        return sorted(files)


def copy_tree(root: Path, dest: Path, rev: str | None = None) -> None:
    """The work tree as it is now, or with `rev` the files of that commit (`git archive`)."""
    dest.mkdir(parents=True, exist_ok=True)
    if rev is not None:
        archive = subprocess.Popen(["git", "archive", rev], cwd=root, stdout=subprocess.PIPE)
        untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=False)
        if archive.stdout is not None:
            archive.stdout.close()
        if archive.wait() != 0 or untar.returncode != 0:
            raise SystemExit(f"mutate: cannot take the files of {rev!r} from {root}")
        return
    for rel in repo_files(root):
        source = root / rel
        if not source.is_file():
            continue  # deleted in the work tree, still in the index
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def write_source(root: Path, rel: str, text: str) -> None:
    """Write a file and drop its cached bytecode: a mutant of the same size written in the same
    second as the last one would otherwise run from the stale .pyc."""
    target = root / rel
    target.write_text(text, encoding="utf-8")
    for cached in (target.parent / "__pycache__").glob(f"{target.stem}.*.pyc"):
        cached.unlink(missing_ok=True)


# --- running ---------------------------------------------------------------------------------

SIM_TEST = "tests/test_simulation.py"
JUDGE_CONSTANT = "JUDGE_PASSING"


def judge_args(tree: Path) -> tuple[str, ...]:
    """The suite's year test enforces only the judge rules the engine keeps today
    (`JUDGE_PASSING` in tests/test_simulation.py, "holding"): so does the simulation run here,
    read from the same constant so the two cannot drift apart."""
    test_file = tree / SIM_TEST
    if not test_file.is_file():
        return ()
    for node in ast.parse(test_file.read_text(encoding="utf-8")).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == JUDGE_CONSTANT for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return ("--judge", node.value.value)
    return ()


@dataclass(frozen=True, slots=True)
class RunConfig:
    suite: Suite
    sim_seeds: int
    sim_days: int
    tests_override: tuple[str, ...] | None = None
    markers_override: str | None = None
    sim_args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Literal["passed", "failed", "timeout", "error"]
    seconds: float
    detail: str = ""


def command_for(selection: Selection, config: RunConfig) -> list[str]:
    if config.suite == "sim":
        return [
            sys.executable,
            "-m",
            "agent.simulation.cli",
            "--seeds",
            f"0-{config.sim_seeds - 1}",
            "--days",
            str(config.sim_days),
            "--jobs",
            "1",
            *config.sim_args,
        ]
    tests = config.tests_override or selection.tests
    markers = config.markers_override if config.markers_override is not None else selection.markers
    return [
        sys.executable,
        "-m",
        "pytest",
        *PYTEST_ARGS,
        *(("-m", markers) if markers else ()),
        *tests,
    ]


def run_command(argv: list[str], cwd: Path, config: RunConfig, timeout: float) -> Outcome:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"}
    # the copy comes before the editable install of the work tree on sys.path
    env["PYTHONPATH"] = os.pathsep.join([str(cwd), *filter(None, [env.get("PYTHONPATH")])])
    env["SIM_SEEDS"] = str(config.sim_seeds)
    env["SIM_DAYS"] = str(config.sim_days)
    started = time.monotonic()
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: a timeout ends all it started
    )
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return Outcome("timeout", time.monotonic() - started, f"no verdict after {timeout:.0f}s")
    seconds = time.monotonic() - started
    text = out.decode("utf-8", errors="replace")
    code = process.returncode
    if code == 0:
        return Outcome("passed", seconds)
    if config.suite == "sim":
        if code == 1:
            return Outcome("failed", seconds, _sim_detail(text))
        return Outcome("error", seconds, f"simulation exit {code}: {_tail(text)}")
    if code in (1, 2):  # tests failed, or collection failed (the mutant broke an import)
        return Outcome("failed", seconds, _pytest_detail(text))
    return Outcome("error", seconds, f"pytest exit {code}: {_tail(text)}")


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def _pytest_detail(text: str) -> str:
    for line in text.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0].split(" ", 1)[1]
    return _tail(text, 2)


def _sim_detail(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("seed ") and "VIOLATION" in line:
            return line
    return _tail(text, 2)


@dataclass(slots=True)
class Result:
    id: str
    path: str
    line: int
    status: Status
    seconds: float
    original: str
    mutated: str
    detail: str = ""


@dataclass(slots=True)
class ModuleReport:
    path: str
    mutants: int = 0
    equivalent: int = 0
    killed: int = 0
    timeouts: int = 0
    survived: int = 0
    errors: int = 0
    note: str = ""
    survivors: list[Result] = field(default_factory=list)

    @property
    def scored(self) -> int:
        return self.killed + self.timeouts + self.survived

    @property
    def score(self) -> float | None:
        return (self.killed + self.timeouts) / self.scored if self.scored else None


class Workers:
    """N private copies of the repository, each used by one run at a time."""

    def __init__(self, root: Path, rev: str | None) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="mutate-"))
        self.copies: queue.Queue[Path] = queue.Queue()
        first = self.base / "w0"
        copy_tree(root, first, rev)
        self.pristine = first  # mutants are enumerated from this snapshot
        self.copies.put(first)

    def add_copies(self, jobs: int) -> None:
        first = self.pristine
        for n in range(1, jobs):
            other = self.base / f"w{n}"
            shutil.copytree(first, other, symlinks=True)
            self.copies.put(other)

    def run(self, job: Callable[[Path], _T]) -> _T:
        copy_root = self.copies.get()
        try:
            return job(copy_root)
        finally:
            self.copies.put(copy_root)

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def run_mutant(
    copy_root: Path,
    *,
    mutant: Mutant,
    source: str,
    selection: Selection,
    config: RunConfig,
    timeout: float,
) -> Result:
    original_line = source.splitlines()[mutant.line - 1]
    write_source(copy_root, mutant.path, apply_mutant(source, mutant))
    try:
        outcome = run_command(command_for(selection, config), copy_root, config, timeout)
    finally:
        write_source(copy_root, mutant.path, source)
    status: Status = {
        "passed": "survived",
        "failed": "killed",
        "timeout": "timeout",
        "error": "error",
    }[outcome.status]  # type: ignore[assignment]
    return Result(
        mutant.id,
        mutant.path,
        mutant.line,
        status,
        outcome.seconds,
        original_line.strip(),
        mutated_line(source, mutant).strip(),
        outcome.detail,
    )


# --- the command -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/mutate.py",
        description="Mutation testing of the safety code (docs/mutation-testing.md).",
    )
    parser.add_argument(
        "--module",
        action="append",
        help="target file or glob, relative to the root; repeatable (default: the safety code)",
    )
    parser.add_argument("--suite", choices=("tests", "sim"), default="tests")
    parser.add_argument("--only", action="append", help="run this mutant id (repeatable)")
    parser.add_argument("--sample", type=int, help="pick N mutants at random (see --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --sample (default 0)")
    parser.add_argument("--max", type=int, help="run at most N mutants (after --sample)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run in parallel")
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds per mutant (default: 4 x the unmutated run's time + --timeout-margin)",
    )
    parser.add_argument(
        "--timeout-margin",
        type=float,
        default=TIMEOUT_MARGIN_S,
        help=f"seconds added to 4 x the unmutated run's time when there is no --timeout "
        f"(default {TIMEOUT_MARGIN_S:g}: a pytest start slowed by load is not a hang)",
    )
    parser.add_argument("--min-score", type=float, help="exit 1 if the score (%%) is lower")
    parser.add_argument(
        "--equivalent",
        type=Path,
        help=f"ids judged equivalent, one per line with a reason (default {DEFAULT_EQUIVALENTS})",
    )
    parser.add_argument(
        "--sim-seeds", type=int, default=10, help="seeds for the simulation (default 10)"
    )
    parser.add_argument(
        "--sim-days", type=int, default=90, help="days per simulated seed (default 90)"
    )
    parser.add_argument(
        "--sim-arg",
        action="append",
        help="extra argument for the simulation CLI, repeatable (default: --judge with the "
        f"rules {SIM_TEST} enforces)",
    )
    parser.add_argument("--list", action="store_true", help="list the mutants; run nothing")
    parser.add_argument(
        "--rev",
        help="mutate and test the files of this commit (e.g. HEAD) instead of the work tree",
    )
    parser.add_argument("--json", type=Path, help="write every result to this file")
    parser.add_argument("--root", type=Path, default=REPO, help=argparse.SUPPRESS)
    parser.add_argument(
        "--tests", nargs="+", help="override the test selection (pytest paths or node ids)"
    )
    parser.add_argument("--markers", help="override the pytest -m expression ('' for none)")
    args = parser.parse_args(argv)
    if args.jobs < 1 or (args.sim_seeds is not None and args.sim_seeds < 1):
        parser.error("--jobs and --sim-seeds must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        parser.error("--timeout must be more than 0 seconds")
    if args.timeout_margin < 0:
        parser.error("--timeout-margin must be 0 seconds or more")
    return args


def pick(mutants: list[Mutant], args: argparse.Namespace) -> list[Mutant]:
    if args.only:
        by_id = {m.id: m for m in mutants}
        missing = [i for i in args.only if i not in by_id]
        if missing:
            raise SystemExit(f"mutate: no mutant {', '.join(missing)} (has the file changed?)")
        return [by_id[i] for i in args.only]
    chosen = mutants
    if args.sample is not None and args.sample < len(chosen):
        chosen = sorted(
            random.Random(args.seed).sample(chosen, args.sample),
            key=lambda m: (m.path, m.line, m.col, m.operator, m.index),
        )
    if args.max is not None:
        chosen = chosen[: args.max]
    return chosen


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    stream = out if out is not None else sys.stdout
    args = parse_args(argv)
    workers = Workers(args.root.resolve(), args.rev)
    try:
        return _main(args, workers, stream)
    finally:
        workers.close()


def _main(args: argparse.Namespace, workers: Workers, stream: TextIO) -> int:
    tree = workers.pristine  # one snapshot: what is enumerated is what is tested
    config = RunConfig(
        args.suite,
        args.sim_seeds,
        args.sim_days,
        tuple(args.tests) if args.tests else None,
        args.markers,
        tuple(args.sim_arg) if args.sim_arg is not None else judge_args(tree),
    )
    equivalents_path: Path | None = args.equivalent
    default_path = args.root.resolve() / DEFAULT_EQUIVALENTS  # the work tree's, even with --rev
    if equivalents_path is None and default_path.is_file():
        equivalents_path = default_path
    equivalents = read_equivalents(equivalents_path) if equivalents_path else {}

    patterns = args.module or ([i.split(":", 1)[0] for i in args.only] if args.only else TARGETS)
    targets = expand_targets(patterns, tree)
    sources = {path: (tree / path).read_text(encoding="utf-8") for path in targets}
    reports = {path: ModuleReport(path) for path in targets}
    selections: dict[str, Selection] = {}
    population: list[Mutant] = []
    # each file is enumerated once (the slow part of a start: every mutant is checked to parse
    # and to change the program); the equivalents are checked against all of them
    every = {path: enumerate_mutants(path, sources[path]) for path in targets}
    for path in targets:
        selection = selection_for(path, tree)
        if selection is None and config.tests_override is None:
            raise SystemExit(f"mutate: no test selection for {path}: add it to SELECTIONS")
        selections[path] = selection or Selection(())
        if config.suite == "sim" and not selections[path].sim and not args.only:
            reports[path].note = "not exercised by the simulation: skipped"
            continue
        population.extend(every[path])

    known = {m.id for mutants in every.values() for m in mutants}
    for stale in sorted(set(equivalents) - known):
        if stale.split(":", 1)[0] in sources:
            print(f"warning: equivalent entry {stale} matches no mutant (stale?)", file=stream)

    chosen = pick(population, args)
    if args.list:
        for mutant in chosen:
            text = mutated_line(sources[mutant.path], mutant).strip()
            mark = "  [equivalent]" if mutant.id in equivalents else ""
            print(f"{mutant.id}{mark}\n    {text}", file=stream)
        print(f"{len(chosen)} mutants", file=stream)
        return 0
    to_run: list[Mutant] = []
    for mutant in chosen:
        report = reports[mutant.path]
        if mutant.id in equivalents and not args.only:
            report.equivalent += 1
        else:
            report.mutants += 1
            to_run.append(mutant)

    results: list[Result] = []
    workers.add_copies(args.jobs)
    timeouts, failed = baselines(workers, to_run, selections, config, args, stream)
    started = time.monotonic()
    for path in failed:
        reports[path].note = f"unmutated run failed: {failed[path]}"
    runnable = [m for m in to_run if m.path not in failed]
    print(f"running {len(runnable)} mutants, {args.jobs} at a time", file=stream)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [
            pool.submit(
                workers.run,
                partial(
                    run_mutant,
                    mutant=m,
                    source=sources[m.path],
                    selection=selections[m.path],
                    config=config,
                    timeout=timeouts[m.path],
                ),
            )
            for m in runnable
        ]
        for done, future in enumerate(as_completed(futures), 1):
            result = future.result()
            results.append(result)
            tail = f" by {result.detail}" if result.detail else ""
            print(
                f"[{done}/{len(runnable)}] {result.status:8} {result.id} "
                f"({result.seconds:.1f}s){tail}",
                file=stream,
                flush=True,
            )
    wall = time.monotonic() - started

    for result in results:
        report = reports[result.path]
        if result.status == "killed":
            report.killed += 1
        elif result.status == "timeout":
            report.timeouts += 1
        elif result.status == "survived":
            report.survived += 1
            report.survivors.append(result)
        else:
            report.errors += 1
    for path in failed:
        reports[path].errors += reports[path].mutants

    total = print_report(list(reports.values()), results, wall, args, stream)
    if args.json:
        document = {
            "suite": args.suite,
            "rev": args.rev,
            "wall_s": round(wall, 1),
            "score": total,
            "modules": [
                {k: v for k, v in asdict(r).items() if k != "survivors"} | {"score": r.score}
                for r in reports.values()
            ],
            "results": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if failed or any(r.status == "error" for r in results):
        return 2
    if args.min_score is not None and (total is None or total * 100 < args.min_score):
        print(f"score under --min-score {args.min_score:g}%", file=stream)
        return 1
    return 0


def baselines(
    workers: Workers,
    mutants: Sequence[Mutant],
    selections: dict[str, Selection],
    config: RunConfig,
    args: argparse.Namespace,
    stream: TextIO,
) -> tuple[dict[str, float], dict[str, str]]:
    """Run each distinct selection once unmutated: it must pass, and its time sets the timeout."""
    commands: dict[tuple[str, ...], list[str]] = {}
    for path in sorted({m.path for m in mutants}):
        argv = command_for(selections[path], config)
        commands.setdefault(tuple(sorted(argv)), []).append(path)
    timeouts: dict[str, float] = {}
    failed: dict[str, str] = {}
    for paths in commands.values():
        argv = command_for(selections[paths[0]], config)
        outcome = run_command(argv, workers.pristine, config, timeout=1800)
        shown = " ".join(argv[2:]) if len(argv) > 2 else " ".join(argv)
        print(f"unmutated: {outcome.status} in {outcome.seconds:.1f}s: {shown}", file=stream)
        for path in paths:
            if outcome.status != "passed":
                failed[path] = outcome.detail or outcome.status
            timeouts[path] = args.timeout or 4 * outcome.seconds + args.timeout_margin
    return timeouts, failed


def print_report(
    reports: list[ModuleReport],
    results: list[Result],
    wall: float,
    args: argparse.Namespace,
    stream: TextIO,
) -> float | None:
    width = max([len(r.path) for r in reports] + [6])
    print(f"\nsuite: {args.suite}", file=stream)
    header = f"{'module':{width}}  mutants  equiv  killed  timeout  survived  error   score"
    print(header, file=stream)
    totals = ModuleReport("total")
    for report in reports:
        if not (report.mutants or report.equivalent or report.note):
            continue
        for name in ("mutants", "equivalent", "killed", "timeouts", "survived", "errors"):
            setattr(totals, name, getattr(totals, name) + getattr(report, name))
        print(_row(report, width), file=stream)
        if report.note:
            print(f"{'':{width}}  ({report.note})", file=stream)
    print(_row(totals, width), file=stream)
    survivors = [s for r in reports for s in r.survivors]
    if survivors:
        print("\nsurvivors (no test failed):", file=stream)
        for s in sorted(survivors, key=lambda s: (s.path, s.line)):
            print(f"  {s.id}\n    - {s.original}\n    + {s.mutated}", file=stream)
    errors = [r for r in results if r.status != "killed" and r.status != "survived"]
    for r in errors:
        print(f"  {r.status}: {r.id}: {r.detail}", file=stream)
    if results:
        mean = sum(r.seconds for r in results) / len(results)
        print(
            f"\n{len(results)} mutants in {wall:.0f}s with --jobs {args.jobs}: "
            f"{wall / len(results):.1f}s per mutant (one run takes {mean:.1f}s on average)",
            file=stream,
        )
    return totals.score


def _row(report: ModuleReport, width: int) -> str:
    score = "-" if report.score is None else f"{100 * report.score:.1f}%"
    return (
        f"{report.path:{width}}  {report.mutants:7}  {report.equivalent:5}  {report.killed:6}  "
        f"{report.timeouts:7}  {report.survived:8}  {report.errors:5}  {score:>6}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
