"""Hazard #5 on real parts: pause commands over MQTT to the agent process, the dispenser simulator
on a pty, mosquitto on 127.0.0.1 (same rig as test_e2e.py, agent started at 08:05 Oslo time)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
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
from test_e2e import Rig

from hw.dispenser import DispenserIdentity, DispenserModel, make_roll
from hw.wire import SimulatorRunner

pytestmark = pytest.mark.e2e
UNIT = "e2e-pause-1"


@pytest.fixture
def rig(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Rig]:
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
    runner = SimulatorRunner.on_pty(model, link_path=tmp_path / "tty")
    runner.start()
    stream = EventStream(mosquitto.port, UNIT)
    stream.start()
    config = write_config(
        tmp_path, unit_id=UNIT, broker_port=mosquitto.port, device=tmp_path / "tty"
    )
    # held at 08:09:30 until the test has the roll in and the trip accepted: the trip starts at
    # 08:10, half a simulated minute after the clock runs
    agent = AgentProcess(config, oslo(8, 9, 30), tmp_path / "agent.log", release_on_link=False)
    agent.start()
    try:
        yield Rig(runner, stream, agent, mosquitto, tmp_path)
    finally:
        agent.stop()
        stream.stop()
        runner.stop()


def test_travel_pause_over_mqtt_dispenses_the_trip_and_a_too_long_pause_is_refused(
    rig: Rig,
) -> None:
    rig.link_up()
    roll = make_roll("R-1", PATIENT, epoch(oslo(20, 0)), 12 * 3600, 28)
    rig.runner.call(lambda model: model.insert_roll(roll))
    rig.patient_takes_doses()  # here: whoever packs lifts each sachet out as it comes
    port, now = rig.broker.port, rig.agent.sim_now()
    too_long = command(
        "pause",
        issued_at=now,
        pause_id="rehab",
        start=oslo(9, 0).isoformat(),
        end=(oslo(9, 0) + timedelta(days=31)).isoformat(),
    )
    publish_command(port, UNIT, json.dumps(too_long).encode())
    trip_start = oslo(8, 10)
    trip = command(
        "pause",
        issued_at=now,
        pause_id="trip-1",
        start=trip_start.isoformat(),
        end=(trip_start + timedelta(days=2)).isoformat(),
        reason="travel",
        take_along=True,
    )
    publish_command(port, UNIT, json.dumps(trip).encode())
    rig.wait(lambda s: len(s.responses) >= 2)
    rig.release()
    rig.wait(lambda s: bool(s.of_kind("travel_dispensed")), timeout=60.0)
    # the retained health says the patient is away: a quiet unit told apart from a stuck one
    rig.wait(lambda s: s.retained.get("state/health", {}).get("pause_id") == "trip-1")
    answers = {r["command_id"]: r for r in rig.stream.responses}
    assert answers[too_long["command_id"]]["status"] == "rejected"
    assert "maximum is 30 days" in answers[too_long["command_id"]]["error"]["message"]
    assert answers[trip["command_id"]]["status"] == "ok"
    # 23 Nov 20:00, 24 Nov 08:00 and 20:00, 25 Nov 08:00: four sachets, each recorded
    taken_along = [o for o in rig.stream.outcomes() if o["outcome"] == "dispensed_for_travel"]
    assert [o["slot_id"] for o in taken_along] == [
        "2026-11-23T20:00",
        "2026-11-24T08:00",
        "2026-11-24T20:00",
        "2026-11-25T08:00",
    ]
    assert [index for _, index in rig.runner.snapshot().dispensed] == [0, 1, 2, 3]
    [done] = rig.stream.of_kind("travel_dispensed")
    assert (done["data"]["planned"], done["data"]["dispensed"]) == (4, 4)
