"""A scripted day as the response centre sees it (issue 8, done-when): the real daemon against
mosquitto, recorded by the stock `mosquitto_sub` (MQTT 5, with content type and retained flag),
every message validated against the published JSON Schemas by a stock validator (`jsonschema`).

The day (scaled clock, 60x): a wrong roll (alert, acknowledged, removed), the right roll, the 08:00
dose taken, commands (status, silence, a pause cancelled, resend_from, a broken one, one that is
not JSON), the agent killed with SIGKILL (a power cut) and started again twenty minutes later on
its clock, the 08:30 dose missed, a clean stop.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker
from contract_check import offset_times, validate
from e2e_support import (
    OTHER_PATIENT,
    PATIENT,
    AgentProcess,
    WireRecorder,
    command,
    epoch,
    oslo,
    publish_command,
    write_config,
)

from hw.dispenser import DispenserIdentity, DispenserModel, make_roll
from hw.wire import SimulatorRunner
from protocol.messages import DosePresented, Message

pytestmark = pytest.mark.e2e
UNIT = "contract-day-1"
WAIT_S = 90.0  # simulated minutes pass at one a second; generous on a busy machine
HEARTBEAT_S = 10  # the smallest the config allows: a few beats in the day
# The power cut ends here on the agent's clock (later if the day runs late): the dead half hour
# between the doses passes while the agent is off instead of at 60x on the test's clock. Session
# 2 still lasts a heartbeat (10 s real) and still reaches the 08:30 dose and its 08:35 miss.
BACK_AT = oslo(8, 25)
UNIT_TOPICS = ("events", "state/#", "heartbeat", "commands/response")
FORMAT = "%t\t%r\t%C\t%p"  # topic, retained flag, MQTT 5 content type, payload (one line each)


@dataclass(frozen=True)
class Line:
    suffix: str
    retained: bool
    content_type: str
    payload: dict[str, Any]


class StockSubscriber:
    """`mosquitto_sub` as a response centre would run it, writing what it receives to a file."""

    def __init__(self, port: int, out: Path) -> None:
        binary = shutil.which("mosquitto_sub")
        if binary is None:
            pytest.fail("mosquitto_sub is not installed: run scripts/ensure-mosquitto.sh")
        topics = [arg for suffix in UNIT_TOPICS for arg in ("-t", f"dispenser/v1/{UNIT}/{suffix}")]
        self.out = out
        self._file = out.open("wb")
        self.process = subprocess.Popen(
            [binary, "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
             "-F", FORMAT, *topics],
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self._file.close()

    def lines(self) -> list[Line]:
        found = []
        for raw in self.out.read_text(encoding="utf-8").splitlines():
            topic, retained, content_type, payload = raw.split("\t", 3)
            suffix = topic.removeprefix(f"dispenser/v1/{UNIT}/")
            found.append(Line(suffix, retained == "1", content_type, json.loads(payload)))
        return found


@dataclass
class Day:
    runner: SimulatorRunner
    wire: WireRecorder  # only to know when to go on; the record is mosquitto_sub's
    agent: AgentProcess  # the one running now
    broker: MosquittoBroker
    config: Path
    started: list[AgentProcess] = field(default_factory=list)  # every one, to stop at the end

    def restart(self, at: datetime, log_path: Path) -> None:
        """The agent again on the same state, its clock held at `at` until it has linked, as at
        its first start: a slow start on a loaded machine never eats the minutes before a dose.
        A log of its own, so that the hold waits for this start's link lines."""
        self.agent = AgentProcess(self.config, at, log_path)
        self.started.append(self.agent)
        self.agent.start()

    def wait(self, predicate: Any, what: str) -> None:
        try:
            self.wire.wait_for(predicate, WAIT_S)
        except AssertionError as exc:
            log = self.agent.log_text()[-4000:]
            raise AssertionError(f"{what}: {exc}\n--- agent log ---\n{log}") from None

    def send(self, payload: dict[str, Any] | bytes) -> dict[str, Any] | bytes:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        publish_command(self.broker.port, UNIT, raw)
        return payload


@pytest.fixture
def day(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Day]:
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
    runner = SimulatorRunner.on_pty(model, link_path=tmp_path / "tty")
    runner.start()
    wire = WireRecorder(mosquitto.port, UNIT)
    wire.start()
    config = write_config(
        tmp_path,
        unit_id=UNIT,
        broker_port=mosquitto.port,
        device=tmp_path / "tty",
        times=("08:00", "08:30"),
    )
    settings = json.loads(config.read_text(encoding="utf-8"))
    settings["mqtt"]["heartbeat_s"] = HEARTBEAT_S
    config.write_text(json.dumps(settings), encoding="utf-8")
    agent = AgentProcess(config, oslo(7, 55), tmp_path / "agent.log")
    day = Day(runner, wire, agent, mosquitto, config, [agent])
    try:
        yield day
    finally:
        for started in day.started:
            started.stop()
        wire.stop()
        runner.stop()


def test_a_scripted_day_validates_message_by_message(day: Day, tmp_path: Path) -> None:
    centre = StockSubscriber(day.broker.port, tmp_path / "mosquitto_sub.txt")
    try:
        run_the_day(day)
    finally:
        centre.stop()
    lines = centre.lines()
    for line in lines:
        validate(line.suffix, line.payload)
        assert line.content_type == "application/json", line
        assert offset_times(line.payload) == [], line
    check_the_story(lines)


def outcomes(wire: WireRecorder) -> list[str]:
    return [o["data"]["outcome"] for o in wire.events("slot_outcome")]


def reasons(wire: WireRecorder) -> list[str | None]:
    return [a.get("reason") for a in wire.on("state/availability")]


def run_the_day(day: Day) -> None:
    taken = {"count": 0}

    def patient(message: Message) -> None:  # takes the 08:00 dose only
        if isinstance(message, DosePresented) and taken["count"] == 0:
            taken["count"] += 1
            day.runner.call(lambda model: model.take_dose())

    day.agent.start()
    day.wait(lambda w: any(s.get("link") == "up" for s in w.on("state/dispenser")), "link up")
    # a wrong roll: alarm, acknowledged by the centre, removed
    foreign = make_roll("R-foreign", OTHER_PATIENT, epoch(oslo(8, 0)), 1800, 2)
    day.runner.call(lambda model: model.insert_roll(foreign))
    day.wait(lambda w: bool(w.events("wrong_roll")), "wrong roll")
    [alert] = day.wire.events("wrong_roll")
    day.send(command("ack_alert", issued_at=day.agent.sim_now(), alert_id=alert["alert_id"]))
    day.wait(lambda w: bool(w.events("alert_acknowledged")), "acknowledged")
    day.runner.call(lambda model: model.remove_roll())
    # the right roll; the 08:00 dose is taken
    day.runner.add_listener(patient)
    roll = make_roll("R-1", PATIENT, epoch(oslo(8, 0)), 1800, 2)
    day.runner.call(lambda model: model.insert_roll(roll))
    # commands: status, silence, a pause cancelled before it begins, resend_from, broken ones
    day.send(command("request_status", issued_at=day.agent.sim_now()))
    day.send(command("silence", issued_at=day.agent.sim_now(), minutes=5))
    day.send(
        command(
            "pause",
            issued_at=day.agent.sim_now(),
            pause_id="p-later",
            start="2026-11-25T09:00:00+01:00",
        )
    )
    day.send(command("resume", issued_at=day.agent.sim_now(), pause_id="p-later"))
    day.send(command("resend_from", issued_at=day.agent.sim_now(), seq=1))
    day.send(command("silence", issued_at=day.agent.sim_now(), minutes=9999))
    day.send(b"{not json")
    day.wait(lambda w: len(w.on("commands/response")) >= 6, "six answers")
    day.wait(lambda w: "taken" in outcomes(w), "taken")
    day.wait(lambda w: len(w.on("heartbeat")) >= 1, "a heartbeat")
    # a power cut: SIGKILL, and the agent starts again twenty minutes on, by its clock
    day.agent.kill()
    day.wait(lambda w: "connection_lost" in reasons(w), "the will")
    day.restart(max(day.agent.sim_now(), BACK_AT), day.agent.log_path.with_name("agent-2.log"))
    day.wait(lambda w: any(e["data"].get("boot") == 2 for e in w.events("agent_started")), "boot 2")
    # the 08:30 dose is not taken: missed
    day.wait(lambda w: "missed" in outcomes(w), "missed")
    day.wait(lambda w: len(w.on("heartbeat")) >= 2, "a heartbeat of session 2")
    assert day.agent.stop() == 0  # a clean stop
    day.send(b"sentinel")  # through the same broker: what the stop caused has arrived before it
    day.wait(
        lambda w: any(r.get("raw") == "sentinel" for r in w.on("commands/request")), "sentinel"
    )


def check_the_story(lines: list[Line]) -> None:
    """What the centre can tell from the record alone."""
    events: dict[int, dict[str, Any]] = {}
    for line in lines:
        if line.suffix == "events":
            seen = events.setdefault(line.payload["seq"], line.payload)
            assert seen["event_id"] == line.payload["event_id"]  # a copy, never another event
    assert sorted(events) == list(range(1, max(events) + 1))  # no gap
    kinds = [events[seq]["kind"] for seq in sorted(events)]
    for kind in ("wrong_roll", "alert_acknowledged", "wrong_roll_cleared", "roll_inserted",
                 "dose_presented", "pause_started", "pause_ended", "alert_silenced",
                 "command_rejected", "agent_started", "adherence_summary"):  # fmt: skip
        assert kind in kinds, kind
    # the day before is summarised once: on the first start, not again after the power cut
    summaries = [e["data"] for e in events.values() if e["kind"] == "adherence_summary"]
    assert [(s["period"], s["label"]) for s in summaries] == [("day", "2026-11-22")]
    outcomes = [e["data"]["outcome"] for e in events.values() if e["kind"] == "slot_outcome"]
    assert outcomes == ["taken", "missed"]
    availability = [(x.payload["state"], x.payload["session"], x.payload["reason"])
                    for x in lines if x.suffix == "state/availability"]  # fmt: skip
    assert availability[0] == ("online", 1, None)
    assert ("offline", 1, "connection_lost") in availability  # the will, after SIGKILL
    assert ("online", 2, None) in availability
    assert availability[-1] == ("offline", 2, "shutdown")  # the clean stop said it itself
    beats = [x.payload for x in lines if x.suffix == "heartbeat"]
    assert {b["interval_s"] for b in beats} == {HEARTBEAT_S}
    answers = [x.payload for x in lines if x.suffix == "commands/response"]
    assert {a["status"] for a in answers} == {"ok", "rejected"}
    [status] = [a for a in answers if a["result"] is not None and "engine" in a["result"]]
    assert status["result"]["health"]["schema"] == "dispenser-health/1"
    # every session's online comes before that session's events
    for session in (1, 2):
        births = [
            i
            for i, x in enumerate(lines)
            if x.suffix == "state/availability"
            and x.payload["session"] == session
            and x.payload["state"] == "online"
        ]
        first = next(
            i
            for i, x in enumerate(lines)
            if x.suffix == "events" and x.payload["session"] == session
        )
        birth = births[0]
        assert birth < first, session
