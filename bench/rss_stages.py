"""Where the idle daemon's resident memory goes, stage by stage (bench/idle.py's RSS figure).

    python -m bench.rss_stages      # the import stages (a few seconds)
    python -m bench --only idle     # the same table, with the daemon started between doses

A fresh interpreter imports what `python -m agent.cli run` imports, group by group in the
daemon's order, with every module's bytecode compiled beforehand (a private pycache: a unit has
its site compiled by flash.sh), and reads /proc/self/status after each group: VmRSS, and how much
of each step is anonymous memory (Python objects, the C libraries' heaps) and how much file pages
(shared libraries' code and data touched: libpython, libcrypto for ssl, pydantic_core's Rust
library, libsqlite3). Groups are cumulative: a group costs what it adds to the groups before it,
so a module two groups share is counted where it is first imported. "dependencies floor" is the
sum before the agent's own code: what any Python daemon built on asyncio, pydantic v2, paho-mqtt
and these drivers pays before it does anything. The daemon's line is the real daemon started and
settled between doses (bench/idle.py, which prints this table with its figure; also run with its
bytecode compiled): its step over the imports is what starting adds (models built on first use,
the store's connections, the links). bench/idle.py imports this module, not the other way round.

The "no .pyc" columns repeat the stages with nothing compiled beforehand and nothing written:
every module compiled from source at import, as a unit whose site has no bytecode does at every
start. The compiler's peak is freed to the allocator but mostly stays resident, charged to the
stage that compiled (agent/engine/engine.py is the longest file).

gpiozero is measured after the daemon's groups and reported apart: a unit without GPIO device
nodes (this bench's host, usually) does not import it, a unit with its panel does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.common import REPO, MeasurementError, say

# (label, modules imported at that stage), in the order the daemon's import graph reaches them.
# A module imported by an earlier stage costs nothing again; "pydantic: first model class" makes
# pydantic load its schema machinery and touch pydantic_core, which the first BaseModel subclass
# of any program does.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("interpreter (python, site)", ()),
    ("asyncio (ssl, socket, concurrent.futures)", ("asyncio", "ssl")),
    (
        "stdlib: sqlite3, zoneinfo, json, logging ...",
        (
            "argparse",
            "base64",
            "bisect",
            "hashlib",
            "hmac",
            "json",
            "logging",
            "pathlib",
            "secrets",
            "shutil",
            "sqlite3",
            "uuid",
            "zoneinfo",
        ),
    ),
    ("pydantic, pydantic_core (importlib.metadata)", ("pydantic.main",)),
    ("pydantic: first model class", ("<first-model>",)),
    ("paho-mqtt", ("paho.mqtt.client",)),
    ("tenacity, pyserial, cobs", ("tenacity", "serial", "cobs.cobs")),
    ("protocol/ (messages, framing)", ("protocol.messages", "protocol.framing")),
    ("agent.engine (+ its state models)", ("agent.engine.engine",)),
    ("agent.contract, agent.config", ("agent.contract.events", "agent.config")),
    ("agent.store", ("agent.store.db",)),
    ("drivers/ (session, serial)", ("drivers.session", "drivers.serial_port")),
    ("agent.mqtt, agent.publisher", ("agent.mqtt.link", "agent.publisher")),
    ("agent.daemon, runtime, cli", ("agent.daemon", "agent.runtime", "agent.cli")),
)
FIRST_AGENT_STAGE = "protocol/ (messages, framing)"
APART = ("gpiozero (with the panel; not here)", ("gpiozero",))
WIDTH = 46  # the label column
# Imported by the daemon after it started (the first connect, the executor thread): compiled too
# before the measured daemon starts.
RUNTIME_IMPORTS = ("concurrent.futures.thread", "encodings.idna", "queue", "stringprep")

CHILD = """
def status():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
    return fields

started = status()  # before this script imports anything: the interpreter alone
import importlib, json, sys

for label, modules in json.loads(sys.argv[1]):
    if not modules:
        print(json.dumps({"label": label, "modules": len(sys.modules), **started}), flush=True)
        continue
    count = len(sys.modules)
    for name in modules:
        if name == "<first-model>":
            from pydantic import BaseModel
            type("FirstModel", (BaseModel,), {"__annotations__": {"x": int}})
        else:
            importlib.import_module(name)
    print(json.dumps({"label": label, "modules": len(sys.modules) - count, **status()}), flush=True)
"""


@dataclass(frozen=True, slots=True)
class Stage:
    label: str
    rss: int  # bytes, VmRSS after this stage
    anon: int  # RssAnon
    file: int  # RssFile
    modules: int  # modules this stage added to sys.modules


def _run_child(plan: list[tuple[str, tuple[str, ...]]], env: dict[str, str]) -> list[Stage]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(plan)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or len(lines) != len(plan):
        raise MeasurementError(f"rss_stages: the import child failed: {done.stderr[-2000:]}")
    return [Stage(x["label"], x["VmRSS"], x["RssAnon"], x["RssFile"], x["modules"]) for x in lines]


def bytecode_env(pycache: Path) -> dict[str, str]:
    """This environment with bytecode read from and written to `pycache` (a private prefix)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def compile_daemon(env: dict[str, str]) -> None:
    """Writes the bytecode of every module the daemon imports (its stages, gpiozero, what it
    imports once started) into env's pycache: a daemon started with env then compiles nothing."""
    _run_child([*STAGES, APART, ("runtime imports", RUNTIME_IMPORTS)], env)


def measure(*, compiled: bool = True) -> tuple[list[Stage], Stage]:
    """The daemon's import stages in a fresh interpreter, and gpiozero's cost after them.

    `compiled`: every module's bytecode compiled beforehand, so a stage costs what its objects
    cost. Otherwise nothing is (an empty pycache, nothing written): every module is compiled
    from source at import, and the compiler's peak, freed to the allocator but rarely back to
    the system, stays in VmRSS, charged to its stage."""
    plan = [*STAGES, APART]
    with tempfile.TemporaryDirectory(prefix="rss-stages-pyc-") as pycache:
        env = bytecode_env(Path(pycache))
        if compiled:
            compile_daemon(env)
        else:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        return _split(_run_child(plan, env))


def _split(stages: list[Stage]) -> tuple[list[Stage], Stage]:
    return stages[:-1], stages[-1]


def mb(n: int) -> str:
    return f"{n / 1e6:.1f}"


def floor_and_code(stages: list[Stage]) -> tuple[Stage, Stage]:
    """The last stage before the agent's own code (the dependencies floor) and the last stage."""
    first = next(i for i, s in enumerate(stages) if s.label == FIRST_AGENT_STAGE)
    return stages[first - 1], stages[-1]


def table(
    stages: list[Stage],
    apart: Stage,
    daemon_rss: int | None = None,
    from_source: list[Stage] | None = None,
) -> list[str]:
    """The stage table as lines (MB = 10^6 bytes); `from_source`: the same stages, no .pyc."""
    head = f"  {'stage':<{WIDTH}} {'VmRSS':>6} {'+MB':>5} {'anon':>5} {'file':>5} {'mods':>4}"
    rows = [head + ("  no .pyc  +MB" if from_source else "")]
    previous: Stage | None = None
    for i, stage in enumerate(stages):
        if stage.label == FIRST_AGENT_STAGE and previous is not None:
            rows.append(f"  {'= dependencies floor':<{WIDTH}} {mb(previous.rss):>6}")
        if previous is None:
            row = f"  {stage.label:<{WIDTH}} {mb(stage.rss):>6} {'':>5} {'':>5} {'':>5} {'':>4}"
        else:
            row = (
                f"  {stage.label:<{WIDTH}} {mb(stage.rss):>6} {mb(stage.rss - previous.rss):>5} "
                f"{mb(stage.anon - previous.anon):>5} {mb(stage.file - previous.file):>5} "
                f"{stage.modules:>4}"
            )
        if from_source:
            step = mb(from_source[i].rss - from_source[i - 1].rss) if i else ""
            row += f"  {mb(from_source[i].rss):>8} {step:>4}"
        rows.append(row)
        previous = stage
    assert previous is not None
    floor, code = floor_and_code(stages)
    row = f"  {'= agent code imported':<{WIDTH}} {mb(code.rss):>6} {mb(code.rss - floor.rss):>5}"
    if from_source:
        source_floor, source_code = floor_and_code(from_source)
        row += f"{'':>17}  {mb(source_code.rss):>8} {mb(source_code.rss - source_floor.rss):>4}"
    rows.append(row)
    if daemon_rss is not None:
        rows.append(
            f"  {'daemon started, between doses (idle.py)':<{WIDTH}} {mb(daemon_rss):>6} "
            f"{mb(daemon_rss - code.rss):>5}"
        )
    rows.append(
        f"  {apart.label:<{WIDTH}} {'':>6} {mb(apart.rss - previous.rss):>5} "
        f"{mb(apart.anon - previous.anon):>5} {mb(apart.file - previous.file):>5} "
        f"{apart.modules:>4}"
    )
    return rows


def summary(stages: list[Stage], daemon_rss: int, from_source: list[Stage] | None = None) -> str:
    """One line for the idle RSS figure: the floor and what the agent adds to it."""
    interpreter = stages[0]
    floor, code = floor_and_code(stages)
    line = (
        f"interpreter {mb(interpreter.rss)}, dependencies floor {mb(floor.rss)}, "
        f"+ agent code {mb(code.rss - floor.rss)}, + start {mb(daemon_rss - code.rss)} MB"
    )
    if from_source:
        source_floor, source_code = floor_and_code(from_source)
        line += (
            f"; with no .pyc: floor {mb(source_floor.rss)}, agent code imported "
            f"{mb(source_code.rss)} MB"
        )
    return line + " (python -m bench.rss_stages)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rss_stages", description=__doc__)
    parser.parse_args(argv)
    stages, apart = measure()
    from_source, _ = measure(compiled=False)
    say("resident memory by stage (MB = 10^6 bytes; cumulative, in the daemon's import order):")
    for line in table(stages, apart, None, from_source):
        say(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
