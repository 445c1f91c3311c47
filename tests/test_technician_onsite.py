"""On site, on real parts (issue 9): `status` read beside the running agent, `pause`/`resume`
through its local control socket, `bind`/`rebind` with the agent stopped — the dispenser
simulator on a pty, mosquitto on 127.0.0.1, the agent in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker
from e2e_support import (
    OTHER_PATIENT,
    PATIENT,
    REPO,
    AgentProcess,
    EventStream,
    epoch,
    oslo,
    write_config,
)

from hw.dispenser import DispenserIdentity, DispenserModel, make_roll
from hw.wire import SimulatorRunner
from protocol.messages import DosePresented, Message

pytestmark = pytest.mark.e2e
UNIT = "e2e-onsite-1"


def cli(*args: str) -> tuple[int, dict[str, Any], str]:
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        report = json.loads(result.stdout)
    except ValueError:
        report = {}
    return result.returncode, report, result.stdout + result.stderr


def details(report: dict[str, Any]) -> dict[str, str]:
    return {i["name"]: ("PASS " if i["ok"] else "FAIL ") + i["detail"] for i in report["items"]}


class Unit:
    def __init__(self, tmp: Path, broker: MosquittoBroker, *, patient: str | None) -> None:
        self.tmp = tmp
        model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
        self.runner = SimulatorRunner.on_pty(model, link_path=tmp / "tty")
        self.runner.start()
        self.stream = EventStream(broker.port, UNIT)
        self.stream.start()
        self.config = write_config(tmp, unit_id=UNIT, broker_port=broker.port, device=tmp / "tty")
        raw = json.loads(self.config.read_text())
        if patient is None:
            del raw["patient_ref"]
        self.config.write_text(json.dumps(raw))
        self.agent = AgentProcess(self.config, oslo(7, 56), tmp / "agent.log")
        self.agent.start()
        self.stream.wait_for(lambda s: s.retained.get("state/dispenser", {}).get("link") == "up")

    def restart(self) -> None:
        self.agent.start_at = self.agent.sim_now()
        boots = len(self.stream.of_kind("agent_started")) + 1
        self.agent.start()
        self.stream.wait_for(lambda s: len(s.of_kind("agent_started")) >= boots)

    def insert_roll(self, patient: str, roll_id: str) -> None:
        roll = make_roll(roll_id, patient, epoch(oslo(8, 0)), 12 * 3600, 28)
        self.runner.call(lambda model: model.insert_roll(roll))

    def stop(self) -> None:
        self.agent.stop()
        self.stream.stop()
        self.runner.stop()


@pytest.fixture
def bound_unit(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Unit]:
    unit = Unit(tmp_path, mosquitto, patient=PATIENT)
    try:
        yield unit
    finally:
        unit.stop()


@pytest.fixture
def new_unit(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Unit]:
    unit = Unit(tmp_path, mosquitto, patient=None)
    try:
        yield unit
    finally:
        unit.stop()


def test_status_beside_the_running_agent_and_an_on_site_pause(bound_unit: Unit) -> None:
    unit = bound_unit

    def take(message: Message) -> None:
        if isinstance(message, DosePresented):
            unit.runner.call(lambda model: model.take_dose())

    unit.runner.add_listener(take)
    unit.insert_roll(PATIENT, "R-1")
    unit.stream.wait_for(lambda s: any(o["outcome"] == "taken" for o in s.outcomes()))
    config = str(unit.config)
    code, report, text = cli("status", "--config", config)
    assert code == 0, text
    seen = details(report)
    assert seen["agent"].startswith("PASS running (pid ")
    assert seen["binding"] == f"PASS bound to {PATIENT}"
    assert seen["roll"].startswith("PASS R-1: "), seen["roll"]
    assert "27 sachets left" in seen["roll"]
    assert seen["next dose"] == "PASS 2026-11-23 20:00 Europe/Oslo (2026-11-23T20:00)"
    assert seen["pause"] == "PASS not paused"
    assert "slot_outcome" in seen["last events"]
    # a pause on site takes the centre's path: one too long is refused by the same rule
    start = (unit.agent.sim_now() + timedelta(minutes=5)).isoformat()
    too_long = (unit.agent.sim_now() + timedelta(days=40)).isoformat()
    code, report, text = cli(
        "pause", "--config", config, "--by", "tech-7", "--start", start, "--end", too_long
    )
    assert code == 1, text
    assert "maximum is 30 days" in details(report)["pause"]
    base = ["--config", config, "--by", "tech-7", "--pause-id", "hosp-1"]
    code, report, text = cli("pause", *base, "--start", start, "--reason", "hospital")
    assert code == 0, text
    unit.stream.wait_for(lambda s: bool(s.of_kind("pause_started")))
    [started] = unit.stream.of_kind("pause_started")
    assert started["data"]["pause_id"] == "hosp-1"
    code, report, text = cli("status", "--config", config)
    assert details(report)["pause"] == "PASS paused (hosp-1)", text
    code, report, text = cli("resume", *base)
    assert code == 0, text
    unit.stream.wait_for(lambda s: bool(s.of_kind("pause_ended")))


def test_bind_from_the_first_roll_and_a_roll_of_another_patient(new_unit: Unit) -> None:
    unit = new_unit
    config = str(unit.config)
    unit.insert_roll(PATIENT, "R-1")
    # unbound, the roll is read and held back (roll_rejected, no_binding): its label is known
    unit.stream.wait_for(lambda s: bool(s.of_kind("roll_rejected")))
    assert unit.stream.of_kind("roll_rejected")[0]["data"]["reason"] == "no_binding"
    code, report, text = cli("status", "--config", config)
    assert code == 1
    assert details(report)["binding"] == "FAIL not bound: `dispenser-agent bind`"
    code, report, text = cli("bind", "--config", config, "--by", "tech-7", "--yes")
    assert code == 3, text  # the agent runs
    assert "the agent is running" in details(report)["agent stopped"]
    unit.agent.stop()
    # a reference given by hand that is not the loaded roll's patient: refused
    code, report, text = cli(
        "bind", "--config", config, "--by", "tech-7", "--patient", OTHER_PATIENT, "--yes"
    )
    assert code == 1, text
    assert "is for another patient" in details(report)["roll"]
    # not confirmed: nothing changes
    code, report, text = cli("bind", "--config", config, "--by", "tech-7")
    assert code == 1, text
    assert "not confirmed" in details(report)["confirmed"]
    assert "patient_ref" not in json.loads(unit.config.read_text())
    # from the roll's label, confirmed
    code, report, text = cli("bind", "--config", config, "--by", "tech-7", "--yes")
    assert code == 0, text
    assert json.loads(unit.config.read_text())["patient_ref"] == PATIENT
    unit.restart()
    unit.stream.wait_for(lambda s: any(e["data"]["bound"] for e in s.of_kind("binding_changed")))
    code, report, text = cli("status", "--config", config)
    assert details(report)["binding"] == f"PASS bound to {PATIENT}", text
    # a second bind is refused: a correction is a rebind
    unit.agent.stop()
    code, report, text = cli("bind", "--config", config, "--by", "tech-7", "--yes")
    assert code == 1, text
    assert "use `rebind`" in details(report)["unit unbound"]


def test_a_typo_fixed_in_the_config_stops_dispensing_until_a_rebind(bound_unit: Unit) -> None:
    unit = bound_unit
    config = str(unit.config)
    unit.agent.stop()
    raw = json.loads(unit.config.read_text())
    raw["patient_ref"] = OTHER_PATIENT
    unit.config.write_text(json.dumps(raw))
    code, report, text = cli("check-config", config)
    assert code == 1
    assert "rebind" in details(report)["patient"]
    unit.restart()
    unit.stream.wait_for(lambda s: bool(s.of_kind("binding_mismatch")))
    [mismatch] = unit.stream.of_kind("binding_mismatch")
    assert (mismatch["priority"], mismatch["vkp_code"]) == ("high", "3.4")
    assert PATIENT not in json.dumps(unit.stream.events)
    assert OTHER_PATIENT not in json.dumps(unit.stream.events)
    code, report, text = cli("status", "--config", config)
    assert details(report)["binding"].startswith("FAIL UNBOUND: the config named another"), text
    unit.agent.stop()
    code, report, text = cli(
        "rebind", "--config", config, "--by", "tech-7", "--patient", OTHER_PATIENT, "--yes"
    )
    assert code == 0, text
    unit.restart()
    unit.stream.wait_for(
        lambda s: len([e for e in s.of_kind("binding_changed") if e["data"]["bound"]]) >= 2
    )
    code, report, text = cli("status", "--config", config)
    assert details(report)["binding"] == f"PASS bound to {OTHER_PATIENT}", text
