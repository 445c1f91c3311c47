"""A stored engine state that cannot be read, on real parts: a real SQLite store holding it, the
daemon in its own process (tests/agent_process.py), the dispenser simulator on a pty, a private
mosquitto and a subscriber standing in for the response centre.

What must hold (SAFETY.md, "silent hang or crash loop" and "corrupted state"): the daemon stays
up, locks the dispenser and sounds FAULT, dispenses nothing, and tells the centre with a HIGH
`state_unreadable` alert naming the reason; the patient binding is kept when it can be read, and
when it cannot the unit stays unbound (the config's binding is not quietly applied) and says so.
A person acknowledging the alert lifts the lock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from broker import MosquittoBroker
from e2e_support import (
    PATIENT,
    AgentProcess,
    EventStream,
    command,
    epoch,
    oslo,
    publish_command,
    write_config,
)

from agent.config import load_config
from agent.store.audit import Stamp
from agent.store.db import Store
from hw.dispenser import DispenserIdentity, DispenserModel, make_roll
from hw.wire import SimulatorRunner
from protocol.messages import AlertPattern

pytestmark = pytest.mark.e2e
UNIT = "state-unit-1"
WAIT_S = 60.0  # generous: both CPU cores may be busy; every wait ends once its condition holds

# What the daemon stored for this unit (bound, schedule version 1 as in the config), except that
# the roll's expiry is one past u64: no dispenser can have sent it, so the file is corrupt.
BOUND_WITH_CORRUPT_ROLL = json.dumps(
    {
        "binding": {"patient_ref": PATIENT},
        "schedule": {
            "zone": "Europe/Oslo",
            "rules": [
                {"effective_from": "2026-11-01", "times": ["08:00", "20:00"], "weekday_times": {}}
            ],
        },
        "schedule_version": 1,
        "next_dispense_id": 7,
        "next_alert_seq": 3,
        "roll": {
            "roll_id": "R-1",
            "patient_ref": PATIENT,
            "sachet_count": 28,
            "next_index": 0,
            "first_dose_utc_s": 1795417200,
            "last_dose_utc_s": 1796583600,
            "expiry_utc_s": 2**64,
            "unverified": False,
        },
    }
)
NOT_JSON = '{"binding": {"patient_ref": "p-e2e-0001"}, "sched'  # a torn write


@dataclass
class Rig:
    runner: SimulatorRunner
    stream: EventStream
    agent: AgentProcess
    broker: MosquittoBroker
    db: Path

    def wait(self, predicate: object, timeout: float = WAIT_S) -> None:
        try:
            self.stream.wait_for(predicate, timeout)  # type: ignore[arg-type]
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n--- agent log ---\n{self.agent.log_text()[-4000:]}"
            ) from None

    def alive(self) -> bool:
        assert self.agent.process is not None
        return self.agent.process.poll() is None


def store_state(db: Path, text: str) -> None:
    """Write `text` as the engine state, through the store, as the daemon would."""
    store = Store.open(db, stamp=lambda: Stamp("2026-11-23T06:00:00Z", "synchronised"))
    try:
        with store.transaction():
            store.set_kv("engine_state", text)
    finally:
        store.close()


@pytest.fixture
def start(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[object]:
    started: list[Rig] = []

    def run(stored: str) -> Rig:
        model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
        model.insert_roll(make_roll("R-1", PATIENT, epoch(oslo(8, 0)), 12 * 3600, 28))
        runner = SimulatorRunner.on_pty(model, link_path=tmp_path / "tty")
        runner.start()
        stream = EventStream(mosquitto.port, UNIT)
        stream.start()
        # the 08:00 dose ends a minute after its time (the undispensed deadline), and the clock
        # stands at 07:59:30 until the lock-down has been seen (assert_safe_and_said)
        config_path = write_config(
            tmp_path,
            unit_id=UNIT,
            broker_port=mosquitto.port,
            device=tmp_path / "tty",
            extra_engine={"undispensed_deadline_minutes": 1},
        )
        config = load_config(config_path)
        config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        store_state(config.db_path, stored)
        agent = AgentProcess(
            config_path, oslo(7, 59, 30), tmp_path / "agent.log", release_on_link=False
        )
        agent.start()
        rig = Rig(runner, stream, agent, mosquitto, config.db_path)
        started.append(rig)
        return rig

    yield run
    for rig in started:
        rig.agent.stop()
        rig.stream.stop()
        rig.runner.stop()


def assert_safe_and_said(rig: Rig, reason_names: str, binding: str) -> dict[str, object]:
    rig.wait(lambda s: bool(s.of_kind("state_unreadable")))
    [alert] = rig.stream.of_kind("state_unreadable")
    assert alert["priority"] == "high"
    assert alert["vkp_code"] == "3.4"
    assert alert["alert_id"]
    assert reason_names in alert["data"]["reason"]
    assert alert["data"]["binding"] == binding
    assert PATIENT not in json.dumps(alert)  # the reason never carries a stored value
    rig.runner.wait_for(lambda model: model.locked, timeout=WAIT_S)
    rig.runner.wait_for(lambda model: model.alert is AlertPattern.FAULT, timeout=WAIT_S)
    rig.agent.release()
    # The 08:00 dose falls due while locked down: it ends without a dispense, and the agent is
    # still the same process (no crash, no restart loop).
    rig.wait(lambda s: bool(s.outcomes()))
    [outcome] = rig.stream.outcomes()
    assert outcome["slot_id"] == "2026-11-23T08:00"
    assert outcome["reason"] == "not_dispensed:state_unreadable"
    assert rig.runner.snapshot().dispensed == ()
    assert rig.alive(), rig.agent.log_text()[-4000:]
    return alert


def test_corrupt_roll_in_the_stored_state_locks_keeps_the_binding_and_alerts(start: object) -> None:
    rig: Rig = start(BOUND_WITH_CORRUPT_ROLL)  # type: ignore[operator]
    alert = assert_safe_and_said(rig, "roll.expiry_utc_s", binding="kept")
    # no binding_changed: the stored binding was kept, the config's was not applied over it
    assert rig.stream.of_kind("binding_changed") == []
    assert rig.stream.of_kind("roll_rejected") == []  # the roll is checked afresh: it is fine

    # A person at the response centre decides: acknowledging the alert lifts the lock.
    ack = command("ack_alert", alert_id=alert["alert_id"], issued_at=rig.agent.sim_now())
    publish_command(rig.broker.port, UNIT, json.dumps(ack).encode())
    rig.wait(lambda s: any(r["command_id"] == ack["command_id"] for r in s.responses))
    [response] = [r for r in rig.stream.responses if r["command_id"] == ack["command_id"]]
    assert response["status"] == "ok"
    rig.runner.wait_for(lambda model: not model.locked, timeout=WAIT_S)
    assert rig.alive()


def test_unreadable_json_keeps_the_unit_unbound_and_locked_and_says_so(start: object) -> None:
    rig: Rig = start(NOT_JSON)  # type: ignore[operator]
    assert_safe_and_said(rig, "Invalid JSON", binding="unreadable")
    # the config names a patient, but the unit does not bind itself while locked down
    assert rig.stream.of_kind("binding_changed") == []
    assert rig.alive()
    assert rig.agent.stop() == 0
    # the unreadable text is kept for a person to look at; a readable state replaced it
    store = Store.open(rig.db, stamp=lambda: Stamp("2026-11-23T09:00:00Z", "synchronised"))
    try:
        assert store.get_kv("engine_state_unreadable") == NOT_JSON
        assert store.get_kv("engine_state") != NOT_JSON
    finally:
        store.close()
