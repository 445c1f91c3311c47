"""Where the idle daemon's resident memory goes, stage by stage (bench/idle.py's RSS figure).

    python -m bench.rss_stages            # the import stages, then the daemon between doses
    python -m bench.rss_stages --imports  # the import stages only (a few seconds)

A fresh interpreter (the same python, the same environment: compiled or not, as the daemon is)
imports what `python -m agent.cli run` imports, group by group in the daemon's order, and
reads /proc/self/status after each group: VmRSS, and how much of each step is anonymous memory
(Python objects, the C libraries' heaps) and how much file pages (shared libraries' code and
data touched: libpython, libcrypto for ssl, pydantic_core's Rust library, libsqlite3). Each
group is cumulative: its cost is what it adds to the groups before it, so a module two groups
share is counted where it is first imported. "dependencies floor" is the sum before the first
line of the agent's own code: what any Python daemon built on asyncio, pydantic v2, paho-mqtt
and these drivers pays before it does anything. The last line is the real daemon started and
settled between doses (bench/idle.py), so its step over the imports is what starting adds:
models built on first use, the store's connections, the links and their buffers.

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

from bench.common import REPO, MeasurementError, Size, say

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


def measure(*, cached: bool = False) -> tuple[list[Stage], Stage]:
    """The daemon's import stages in a fresh interpreter, and gpiozero's cost after them.

    `cached`: with every module's bytecode already compiled (a private pycache, filled by a first
    run), so a stage costs what its objects cost. Otherwise as this environment runs the daemon:
    a module without a usable .pyc is compiled from source at import, and the compiler's peak
    stays in VmRSS (freed to the allocator, rarely back to the system), charged to its stage."""
    plan = [*STAGES, APART]
    env = dict(os.environ)
    if not cached:
        return _split(_run_child(plan, env))
    with tempfile.TemporaryDirectory(prefix="rss-stages-pyc-") as pycache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
        _run_child(plan, env)  # compiles and writes the bytecode
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
    cached: list[Stage] | None = None,
) -> list[str]:
    """The stage table as lines (MB = 10^6 bytes); `cached`: the same stages, bytecode cached."""
    head = f"  {'stage':<{WIDTH}} {'VmRSS':>6} {'+MB':>5} {'anon':>5} {'file':>5} {'mods':>4}"
    rows = [head + ("  cached  +MB" if cached else "")]
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
        if cached:
            step = cached[i].rss - cached[i - 1].rss if i else 0
            row += f"  {mb(cached[i].rss):>6} {mb(step) if i else '':>4}"
        rows.append(row)
        previous = stage
    assert previous is not None
    floor, code = floor_and_code(stages)
    rows.append(
        f"  {'= agent code imported':<{WIDTH}} {mb(code.rss):>6} {mb(code.rss - floor.rss):>5}"
    )
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


def summary(stages: list[Stage], daemon_rss: int, cached: list[Stage] | None = None) -> str:
    """One line for the idle RSS figure: the floor and what the agent adds to it."""
    interpreter = stages[0]
    floor, code = floor_and_code(stages)
    line = (
        f"interpreter {mb(interpreter.rss)}, dependencies floor {mb(floor.rss)}, "
        f"+ agent code {mb(code.rss - floor.rss)}, + start {mb(daemon_rss - code.rss)} MB"
    )
    if cached:
        cached_floor, cached_code = floor_and_code(cached)
        line += (
            f"; bytecode cached: floor {mb(cached_floor.rss)}, + agent code "
            f"{mb(cached_code.rss - cached_floor.rss)} MB"
        )
    return line + " (python -m bench.rss_stages)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rss_stages", description=__doc__)
    parser.add_argument("--imports", action="store_true", help="the import stages only")
    parser.add_argument(
        "--smoke", action="store_true", help="the daemon's window as brief as can be"
    )
    args = parser.parse_args(argv)
    daemon_rss = None
    if not args.imports:
        from bench import idle

        size: Size = "smoke" if args.smoke else "quick"
        figures = idle.run(size, stage_table=False)
        daemon_rss = round(next(f for f in figures if f.name == "idle RSS").value * 1e6)
    stages, apart = measure()
    cached, _ = measure(cached=True)
    say("resident memory by stage (MB = 10^6 bytes; cumulative, in the daemon's import order):")
    for line in table(stages, apart, daemon_rss, cached):
        say(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
