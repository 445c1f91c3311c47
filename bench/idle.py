"""Figure 3: what the running daemon costs while nothing happens.

The production entry point (`python -m agent.cli run --config`, real SystemClock) runs as its own
process with the simulated dispenser connected (a pty; the simulator runs in this process, so its
cost is not counted) and a private mosquitto up. Its schedule has one dose a day, 12 hours from
now, and a matching roll is loaded: a normal unit between doses. Once it is up and has settled,
over a window (60 s; `--quick`: 10 s; `--smoke`: 1 s) we read /proc before and after:

- wakeups/s: voluntary + nonvoluntary context switches summed over /proc/PID/task/*/status;
- CPU share: utime + stime from /proc/PID/stat over wall time (clock ticks: 10 ms resolution, so
  the 10 s quick window cannot resolve less than 0.1 %);
- RSS: VmRSS at the end.

Baselines, measured over the same window at the same time: an idle python process
(`time.sleep`) and a bare paho client connected to the same broker with loop_start() (the table's
baseline column; the idle python figures are in the detail line).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from bench import rss_stages
from bench.common import (
    REPO,
    WAIT_S,
    Figure,
    IdleCost,
    MeasurementError,
    Size,
    Subscriber,
    idle_cost,
    mosquitto,
    proc_sample,
    say,
)
from hw.dispenser import DispenserIdentity, DispenserModel, roll_from_dose_times
from hw.wire import SimulatorRunner

OSLO = ZoneInfo("Europe/Oslo")
UNIT_ID = "bench-idle"
PATIENT = "p-bench-idle-1"
KEEPALIVE_S = 30  # the agent's default; the bare paho baseline uses the same
TARGET_WAKEUPS = 0.1  # issue 12
TARGET_CPU_PERCENT = 0.1
TARGET_RSS_MB = 35.0  # issue 12
STOP_TIMEOUT_S = 10.0

BARE_PAHO = """
import sys, time
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                     client_id="bench-idle-bare-paho", protocol=MQTTProtocolVersion.MQTTv5)
client.connect("127.0.0.1", int(sys.argv[1]), keepalive=int(sys.argv[2]))
client.loop_start()
print("CONNECTED", flush=True)
time.sleep(3600)
"""


def _dose_time() -> str:
    """A daily dose time 12 hours from now (local): no dose in the measurement's next hours."""
    return (datetime.now(OSLO) + timedelta(hours=12)).strftime("%H:%M")


def _roll_doses(hhmm: str, days: int = 14) -> list[int]:
    hh, mm = (int(part) for part in hhmm.split(":"))
    today = datetime.now(OSLO).date()
    doses = []
    for offset in range(days):
        day = today + timedelta(days=offset)
        due = datetime(day.year, day.month, day.day, hh, mm, tzinfo=OSLO)
        if due > datetime.now(OSLO):
            doses.append(int(due.timestamp()))
    return doses


def _write_config(workdir: Path, port: int, device: Path, hhmm: str) -> Path:
    config = {
        "unit_id": UNIT_ID,
        "state_dir": str(workdir / "state"),
        "dispenser": {"device": str(device)},
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive_s": KEEPALIVE_S},
        "patient_ref": PATIENT,
        "schedule": {
            "version": 1,
            "rules": [
                {"effective_from": (date.today() - timedelta(days=1)).isoformat(), "times": [hhmm]}
            ],
        },
    }
    path = workdir / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


@contextmanager
def _process(
    args: list[str], log_path: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, ended by its own PID (SIGTERM, then SIGKILL if it hangs)."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(STOP_TIMEOUT_S)


def _wait_for_line(log_path: Path, process: subprocess.Popen[bytes], text: str) -> None:
    """Bounded wait for a child's readiness line (a short poll of its log file)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if text in log_path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise MeasurementError(f"{log_path.name}: no {text!r} within {WAIT_S:.0f} s")


def _describe(name: str, cost: IdleCost) -> str:
    return (
        f"{name} {cost.wakeups_per_s:.2f} wakeups/s, {cost.cpu_percent:.3f} % CPU, "
        f"{cost.rss_mb:.1f} MB RSS, threads {cost.threads[0]}->{cost.threads[1]}"
    )


# size -> (settle, window) in seconds
SIZES: dict[Size, tuple[float, float]] = {
    "full": (5.0, 60.0),
    "quick": (3.0, 10.0),
    "smoke": (0.5, 1.0),
}


def run(size: Size = "full", *, stage_table: bool = True) -> list[Figure]:
    settle_s, window_s = SIZES[size]
    say(
        f"idle: daemon subprocess, real clock, next dose in 12 h; settle {settle_s:g} s, "
        f"measure {window_s:g} s"
    )
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        workdir = Path(tmp)
        model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
        device = workdir / "dispenser-tty"
        hhmm = _dose_time()
        # The daemon runs with its bytecode compiled, as on a unit (flash.sh compiles the site):
        # a module compiled from source at start leaves the compiler's peak resident.
        daemon_env = rss_stages.bytecode_env(workdir / "pycache")
        rss_stages.compile_daemon(daemon_env)
        with (
            mosquitto(workdir) as broker,
            SimulatorRunner.on_pty(model, link_path=device) as runner,
            Subscriber(broker.port, f"dispenser/v1/{UNIT_ID}/#") as centre,
            _process(
                [sys.executable, "-c", "import time; time.sleep(3600)"],
                workdir / "python.log",
            ) as bare_python,
            _process(
                [sys.executable, "-c", BARE_PAHO, str(broker.port), str(KEEPALIVE_S)],
                workdir / "paho.log",
            ) as bare_paho,
            _process(
                [
                    sys.executable,
                    "-m",
                    "agent.cli",
                    "run",
                    "--config",
                    str(_write_config(workdir, broker.port, device, hhmm)),
                ],
                workdir / "agent.log",
                daemon_env,
            ) as agent,
        ):
            centre.wait_for(
                lambda got: any(
                    r.topic.endswith("/state/dispenser") and r.json().get("link") == "up"
                    for r in got
                ),
                WAIT_S,
                "idle daemon up (dispenser link and MQTT)",
            )
            doses = _roll_doses(hhmm)
            roll = roll_from_dose_times("R-BENCH-IDLE", PATIENT, doses, doses[-1] + 30 * 86400)
            runner.call(lambda m: m.insert_roll(roll))
            centre.wait_for(
                lambda got: any(
                    r.topic.endswith("/events") and r.json().get("kind") == "roll_inserted"
                    for r in got
                ),
                WAIT_S,
                "roll_inserted event",
            )
            _wait_for_line(workdir / "paho.log", bare_paho, "CONNECTED")
            time.sleep(settle_s)  # let start-up work finish: we measure the quiet state
            pids = {"agent": agent.pid, "python": bare_python.pid, "paho": bare_paho.pid}
            before = {name: proc_sample(pid) for name, pid in pids.items()}
            time.sleep(window_s)  # the measurement window itself
            after = {name: proc_sample(pid) for name, pid in pids.items()}
            if agent.poll() is not None:
                raise MeasurementError(f"the daemon exited during the window ({agent.returncode})")
            costs = {name: idle_cost(before[name], after[name]) for name in pids}
    agent_cost, paho_cost, python_cost = costs["agent"], costs["paho"], costs["python"]
    say("  " + _describe("daemon:", agent_cost))
    say("  " + _describe("bare paho client:", paho_cost))
    say("  " + _describe("idle python:", python_cost))
    rss_note = f"idle python {python_cost.rss_mb:.1f} MB"
    if stage_table:  # where the daemon's RSS goes, measured now (bench/rss_stages.py)
        stages, apart = rss_stages.measure()
        from_source, _ = rss_stages.measure(compiled=False)
        daemon_rss = round(agent_cost.rss_mb * 1e6)
        say("  resident memory by stage (cumulative, in the daemon's import order):")
        for line in rss_stages.table(stages, apart, daemon_rss, from_source):
            say("  " + line)
        rss_note += "; " + rss_stages.summary(stages, daemon_rss, from_source)
    return [
        Figure(
            "idle wakeups",
            agent_cost.wakeups_per_s,
            paho_cost.wakeups_per_s,
            "/s",
            f"<= {TARGET_WAKEUPS:g} /s",
            agent_cost.wakeups_per_s <= TARGET_WAKEUPS,
            f"over {window_s:g} s; baseline bare paho loop_start(); idle python "
            f"{python_cost.wakeups_per_s:.2f} /s",
        ),
        Figure(
            "idle CPU",
            agent_cost.cpu_percent,
            paho_cost.cpu_percent,
            "%",
            f"<= {TARGET_CPU_PERCENT:g} %",
            agent_cost.cpu_percent <= TARGET_CPU_PERCENT,
            f"utime+stime over wall (10 ms ticks); idle python {python_cost.cpu_percent:.3f} %",
        ),
        Figure(
            "idle RSS",
            agent_cost.rss_mb,
            paho_cost.rss_mb,
            "MB",
            f"<= {TARGET_RSS_MB:g} MB",
            agent_cost.rss_mb <= TARGET_RSS_MB,
            f"VmRSS (MB = 10^6 bytes); {rss_note}",
        ),
    ]
