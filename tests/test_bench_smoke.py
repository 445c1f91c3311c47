"""The benchmarks cannot silently rot: `python -m bench --smoke` runs every benchmark on the real
parts (pty, mosquitto, SQLite, the daemon in- and out-of-process) and prints every figure of the
final table with a number. `--smoke` takes the same figures on the same rigs as `--quick` and the
full run, from fewer samples and shorter windows. Speed targets are not checked here (benchmarks
report, not gate)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from broker import find_mosquitto

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
FIGURES = (
    "taken latency p50",
    "taken latency p99",
    "missed lateness p50",
    "missed lateness p99",
    "idle wakeups",
    "idle CPU",
    "idle RSS",
    "outbox drain rate",
    "outbox drain rate (broker nodelay)",
    "outbox drain rate (broker nodelay), slow fsync",
    "loop stall p99 (taken run)",
    "longest loop stall (taken run)",
    "loop stall p99 (drain run)",
    "longest loop stall (drain run)",
    "loop stall p99 (slow-fsync drain)",
    "longest loop stall (slow-fsync drain)",
    "back online after outage, max",
    "simulated year",
)
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")


def _rows(table: str) -> dict[str, list[str]]:
    """Table rows by figure name: cells are separated by two or more spaces."""
    rows = {}
    for line in table.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 6:
            rows[cells[0]] = cells
    return rows


# Bounds, not targets: every benchmark's rig starts processes and waits on them; on a loaded
# machine (both cores busy) a smoke run is several times slower than on an idle one.
@pytest.mark.timeout(620)
def test_smoke_run_prints_every_figure_with_a_number() -> None:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run scripts/ensure-mosquitto.sh")
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"a measurement failed:\n{output[-6000:]}"
    assert "results (" in result.stdout, output[-4000:]
    rows = _rows(result.stdout.split("results (", 1)[1])
    assert rows.get("figure") == ["figure", "value", "baseline", "ratio", "target", "met"]
    for name in FIGURES:
        assert name in rows, f"{name!r} missing from the table:\n{result.stdout[-4000:]}"
        _, value, baseline, ratio, _target, met = rows[name]
        assert NUMBER.fullmatch(value.split()[0]), f"{name}: value {value!r} is not a number"
        assert NUMBER.fullmatch(baseline.split()[0]), f"{name}: no baseline ({baseline!r})"
        assert ratio == "-" or ratio.endswith("x"), f"{name}: ratio {ratio!r}"
        assert met in ("yes", "NO", "-"), f"{name}: met {met!r}"
