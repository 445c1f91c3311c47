"""`dispenser-agent check` on real parts (issue 9): the pty simulator, mosquitto on 127.0.0.1,
the agent process and its SQLite store; and what a technician meets: no dispenser on the port,
a broker that cannot be reached."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import MosquittoBroker
from e2e_support import PATIENT, REPO, AgentProcess, EventStream, epoch, oslo, write_config
from gpiozero.pins.mock import MockFactory

from agent.clock import ScaledClock
from agent.config import load_config
from agent.technician.check import install_check
from agent.technician.report import Report
from hw.dispenser import DispenserIdentity, DispenserModel, make_roll
from hw.wire import SimulatorRunner

pytestmark = pytest.mark.e2e
UNIT = "e2e-check-1"
ABSENT_TIMEOUT_S = 1.0  # per link probed when neither dispenser nor broker is there


def items(report: Report) -> dict[str, str]:
    return {i.name: ("PASS " if i.ok else "FAIL ") + i.detail for i in report.items}


@pytest.fixture
def installed(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[tuple[Path, SimulatorRunner]]:
    """A unit that ran once with its patient's roll loaded; the agent is stopped."""
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
    runner = SimulatorRunner.on_pty(model, link_path=tmp_path / "tty")
    runner.start()
    stream = EventStream(mosquitto.port, UNIT)
    stream.start()
    config = write_config(
        tmp_path, unit_id=UNIT, broker_port=mosquitto.port, device=tmp_path / "tty"
    )
    agent = AgentProcess(config, oslo(7, 10), tmp_path / "agent.log")
    agent.start()
    try:
        stream.wait_for(lambda s: s.retained.get("state/dispenser", {}).get("link") == "up")
        roll = make_roll("R-1", PATIENT, epoch(oslo(8, 0)), 12 * 3600, 28)
        runner.call(lambda m: m.insert_roll(roll))
        stream.wait_for(lambda s: bool(s.of_kind("roll_inserted")))
        assert agent.stop() == 0
        yield config, runner
    finally:
        agent.stop()
        stream.stop()
        runner.stop()


def check(config: Path, tmp_path: Path, timeout_s: float = 5.0, **kwargs: object) -> Report:
    watchdog = tmp_path / "watchdog"
    watchdog.touch()  # stands for /dev/watchdog
    return install_check(
        load_config(config),
        config,
        timeout_s=timeout_s,
        watchdog=watchdog,
        pin_factory=MockFactory(),
        clock=ScaledClock(oslo(7, 30), rate=1.0),
        **kwargs,  # type: ignore[arg-type]
    )


def test_an_installed_unit_passes_every_item(
    installed: tuple[Path, SimulatorRunner], tmp_path: Path
) -> None:
    config, _ = installed
    report = check(config, tmp_path)
    seen = items(report)
    assert report.ok, seen
    assert seen["dispenser"].startswith(f"PASS {tmp_path / 'tty'}: handshake done")
    assert seen["roll"] == "PASS R-1 loaded, 28 sachets left"
    assert seen["broker"].startswith("PASS connected to mqtt://127.0.0.1:")
    assert seen["store"].startswith("PASS ")
    assert seen["technician button"] == "PASS GPIO 27 wired, released"


def test_no_dispenser_and_no_broker_are_named(
    installed: tuple[Path, SimulatorRunner], tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    config, runner = installed
    runner.stop()  # unplugged
    mosquitto.stop()  # the network is down
    # nothing can answer: a short probe (`check --timeout`) fails as surely as a long one
    report = check(config, tmp_path, timeout_s=ABSENT_TIMEOUT_S)
    seen = items(report)
    assert not report.ok
    assert seen["dispenser"].startswith(f"FAIL no dispenser answered on {tmp_path / 'tty'}")
    assert "cable, power, or the device path" in seen["dispenser"]
    assert seen["broker"].startswith("FAIL broker mqtt://127.0.0.1:")
    # the check gives up after its attempts or at its timeout, whichever comes first
    assert re.search(
        rf"not reached (within {ABSENT_TIMEOUT_S:g} s|in \d+ attempts) ",
        seen["broker"],
    ), seen["broker"]
    assert seen["store"].startswith("PASS ")  # the rest is still checked


def test_a_refusing_broker_is_told_after_a_few_attempts_not_at_the_timeout(
    installed: tuple[Path, SimulatorRunner], tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    config, _runner = installed
    mosquitto.stop()  # every connect is refused at once: retrying until the timeout tells nothing
    report = check(config, tmp_path, timeout_s=120.0)  # the test's own timeout is shorter
    seen = items(report)
    assert seen["dispenser"].startswith("PASS "), seen["dispenser"]
    found = re.search(r"not reached in (\d+) attempts as ", seen["broker"])
    assert found is not None, seen["broker"]
    assert int(found.group(1)) >= 3, seen["broker"]  # a third may fail before the probe looks


def test_check_beside_the_running_agent_over_the_cli(
    installed: tuple[Path, SimulatorRunner], tmp_path: Path
) -> None:
    config, _ = installed
    agent = AgentProcess(config, oslo(7, 40), tmp_path / "agent2.log")
    agent.start()
    try:
        deadline = time.monotonic() + 120  # generous: a loaded machine starts the CLI slowly
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:  # until the agent's link is up
            result = subprocess.run(
                [sys.executable, "-m", "agent.cli", "check", "--config", str(config), "--json"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                cwd=REPO,
                env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"},
            )
            report = json.loads(result.stdout)
            seen = {
                i["name"]: ("PASS " if i["ok"] else "FAIL ") + i["detail"] for i in report["items"]
            }
            # (a check that ran before the agent took its lock did its own handshake: again)
            if seen["dispenser"].startswith("PASS the running agent's link"):
                break
            time.sleep(0.5)
        assert seen["dispenser"].startswith("PASS the running agent's link"), seen
        assert seen["broker"].startswith("PASS connected"), seen  # its own client id
        assert "-check" in seen["broker"]
        assert result.returncode == (0 if report["ok"] else 1)
        assert agent.process is not None
        assert agent.process.poll() is None  # the agent was not disturbed
    finally:
        agent.stop()


def test_the_broker_probe_can_stop_at_the_first_failed_attempts(tmp_path: Path) -> None:
    from agent.technician.links import probe_broker

    # port 1 on this host: nothing listens, every attempt is refused at once
    config = load_config(
        write_config(tmp_path, unit_id=UNIT, broker_port=1, device=tmp_path / "tty")
    )
    with pytest.raises(ValueError, match="attempts must be 1 or more"):
        probe_broker(config, attempts=0)
    probe = probe_broker(config, timeout_s=60.0, attempts=2)  # answers long before 60 s
    assert not probe.ok
    # two at least: a third may have failed before the probe looked
    found = re.match(
        r"broker mqtt://127\.0\.0\.1:1 not reached in (\d+) attempts as ", probe.detail
    )
    assert found is not None, probe.detail
    assert int(found.group(1)) >= 2, probe.detail
    assert "Connection refused" in probe.detail, probe.detail
