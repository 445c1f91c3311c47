"""The MQTT contract as a response centre meets it (issue 8): the real daemon in its own process
(killed with SIGKILL, stopped with SIGTERM), the dispenser simulator on a pty, a private mosquitto
on 127.0.0.1, and an MQTT 5 subscriber that records every message with its properties. Every
payload is checked against the published JSON Schemas with a stock validator.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker
from contract_check import offset_times, validate
from e2e_support import (
    OTHER_PATIENT,
    PATIENT,
    AgentProcess,
    Received,
    WireRecorder,
    command,
    epoch,
    oslo,
    publish_command,
    write_config,
)

from hw.dispenser import DispenserIdentity, DispenserModel, make_roll
from hw.wire import SimulatorRunner

pytestmark = pytest.mark.e2e
UNIT = "contract-unit-1"
WAIT_S = 30.0


@dataclass
class Rig:
    runner: SimulatorRunner
    wire: WireRecorder
    agent: AgentProcess
    broker: MosquittoBroker
    tmp: Path

    def wait(self, predicate: Callable[[WireRecorder], bool], timeout: float = WAIT_S) -> None:
        try:
            self.wire.wait_for(predicate, timeout)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n--- agent log ---\n{self.agent.log_text()[-5000:]}"
            ) from None

    def availability(self) -> list[dict[str, Any]]:
        return self.wire.on("state/availability")

    def link_up(self) -> None:
        self.wait(lambda w: any(s.get("link") == "up" for s in w.on("state/dispenser")))

    def insert_roll(self, patient_ref: str = PATIENT, roll_id: str = "R-1") -> None:
        roll = make_roll(roll_id, patient_ref, epoch(oslo(8, 0)), 12 * 3600, 28)
        self.runner.call(lambda model: model.insert_roll(roll))

    def send(self, payload: dict[str, Any] | bytes) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        publish_command(self.broker.port, UNIT, raw)

    def restart(self) -> None:
        self.agent.start_at = self.agent.sim_now()
        self.agent.start()


def make_rig(tmp_path: Path, broker: MosquittoBroker, *, start_agent: bool = True) -> Rig:
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
    runner = SimulatorRunner.on_pty(model, link_path=tmp_path / "tty")
    runner.start()
    wire = WireRecorder(broker.port, UNIT)
    wire.start()
    config = write_config(tmp_path, unit_id=UNIT, broker_port=broker.port, device=tmp_path / "tty")
    agent = AgentProcess(config, oslo(7, 50), tmp_path / "agent.log")
    if start_agent:
        agent.start()
    return Rig(runner, wire, agent, broker, tmp_path)


@pytest.fixture
def rig(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Rig]:
    made = make_rig(tmp_path, mosquitto)
    try:
        yield made
    finally:
        made.agent.stop()
        made.wire.stop()
        made.runner.stop()


def check_every_message(messages: list[Received]) -> None:
    """What a centre validating everything it receives would find."""
    for message in messages:
        if message.suffix == "commands/request":
            continue  # the centre's own commands, some broken on purpose
        validate(message.suffix, message.payload)
        assert message.content_type == "application/json", message
        assert offset_times(message.payload) == [], message


def position(messages: list[Received], match: Callable[[Received], bool]) -> int:
    return next(i for i, m in enumerate(messages) if match(m))


def booted(boot: int) -> Callable[[WireRecorder], bool]:
    return lambda w: any(e["data"].get("boot") == boot for e in w.events("agent_started"))


def is_birth(session: int) -> Callable[[Received], bool]:
    return lambda m: (
        m.suffix == "state/availability"
        and m.payload.get("state") == "online"
        and m.payload.get("session") == session
    )


# --- sessions, birth, replayed (items 7, 9, 10) -----------------------------------------------


def test_a_new_unit_says_online_first_and_its_first_events_are_live(rig: Rig) -> None:
    rig.link_up()
    rig.wait(lambda w: bool(w.events("agent_started")))
    messages = rig.wire.snapshot()
    birth = position(messages, is_birth(1))
    first_event = position(messages, lambda m: m.suffix == "events")
    assert birth < first_event, [(m.suffix, m.payload.get("kind")) for m in messages]
    [started] = rig.wire.events("agent_started")
    assert started["session"] == 1
    assert started["replayed"] is False  # recorded at boot, sent on the first connection
    check_every_message(messages)


def test_a_new_units_first_connect_after_a_broker_outage_is_session_1(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    mosquitto.stop()
    made = make_rig_without_wire(tmp_path, mosquitto)
    try:
        made.agent.start()
        # several connect attempts fail while the broker is down
        deadline = time.monotonic() + WAIT_S
        while made.agent.log_text().count("MQTT connect to") < 3:
            assert time.monotonic() < deadline, made.agent.log_text()[-3000:]
            time.sleep(0.2)
        mosquitto.restart()
        made.wire.start()
        made.wait(lambda w: any(a.get("state") == "online" for a in w.on("state/availability")))
        [birth] = [a for a in made.availability() if a["state"] == "online"]
        assert birth["session"] == 1
    finally:
        made.agent.stop()
        made.wire.stop()
        made.runner.stop()


def make_rig_without_wire(tmp_path: Path, broker: MosquittoBroker) -> Rig:
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
    runner = SimulatorRunner.on_pty(model, link_path=tmp_path / "tty")
    runner.start()
    config = write_config(tmp_path, unit_id=UNIT, broker_port=broker.port, device=tmp_path / "tty")
    agent = AgentProcess(config, oslo(7, 50), tmp_path / "agent.log")
    return Rig(runner, WireRecorder(broker.port, UNIT), agent, broker, tmp_path)


# --- will, clean stop (items 1, 2) ------------------------------------------------------------


def test_kill_9_leaves_the_will_and_the_restart_says_online_before_its_events(rig: Rig) -> None:
    rig.link_up()
    rig.wait(lambda w: bool(w.events("agent_started")))
    rig.agent.kill()
    rig.wait(lambda w: any(a.get("state") == "offline" for a in w.on("state/availability")))
    [will] = [a for a in rig.availability() if a["state"] == "offline"]
    assert (will["reason"], will["session"]) == ("connection_lost", 1)
    rig.restart()
    rig.wait(booted(2))
    messages = rig.wire.snapshot()
    birth = position(messages, is_birth(2))
    restarted = position(messages, lambda m: m.payload.get("kind") == "agent_started"
                         and m.payload.get("data", {}).get("boot") == 2)  # fmt: skip
    assert birth < restarted
    check_every_message(messages)


def test_a_clean_stop_publishes_offline_itself(rig: Rig) -> None:
    rig.link_up()
    rig.wait(lambda w: bool(w.events("agent_started")))
    assert rig.agent.stop() == 0
    # a sentinel through the same broker: everything the stop caused has arrived before it
    publish_command(rig.broker.port, UNIT, b"sentinel")
    rig.wait(lambda w: any(r.get("raw") == "sentinel" for r in w.on("commands/request")))
    [offline] = [a for a in rig.availability() if a["state"] == "offline"]  # and no will
    assert (offline["reason"], offline["session"]) == ("shutdown", 1)
    check_every_message(rig.wire.snapshot())


# --- commands: one answer per id for ever (items 5, 6, 12) ------------------------------------


def test_a_command_id_gets_its_first_answer_again_even_after_a_kill_9(rig: Rig) -> None:
    rig.link_up()
    silence = command("silence", issued_at=rig.agent.sim_now(), minutes=5)
    status = command("request_status", issued_at=rig.agent.sim_now())
    rig.send(silence)
    rig.send(status)
    rig.wait(lambda w: len(w.on("commands/response")) >= 2)
    first = {r["command_id"]: r for r in rig.wire.on("commands/response")}
    assert first[silence["command_id"]]["status"] == "ok"
    # A command is acked after its answer is out: a kill -9 right after the answer may leave it
    # unacked (the broker redelivers it). Commands are handled in order and paho writes in
    # order, so a third one's answer means the first two's PUBACKs were written before it.
    rig.send(command("request_status", issued_at=rig.agent.sim_now()))
    rig.wait(lambda w: len(w.on("commands/response")) >= 3)
    rig.agent.kill()
    rig.restart()
    rig.wait(booted(2))
    rig.send(silence)  # as a broker redelivers it, or a centre that lost the answer sends it
    rig.send(status)

    def answered_twice(w: WireRecorder) -> bool:
        ids = [r["command_id"] for r in w.on("commands/response")]
        return ids.count(silence["command_id"]) >= 2 and ids.count(status["command_id"]) >= 2

    rig.wait(answered_twice)
    answers: dict[str, list[dict[str, Any]]] = {}
    for response in rig.wire.on("commands/response"):
        answers.setdefault(response["command_id"], []).append(response)
    assert answers[silence["command_id"]] == [first[silence["command_id"]]] * 2
    assert answers[status["command_id"]] == [first[status["command_id"]]] * 2
    silenced = {e["event_id"] for e in rig.wire.events("alert_silenced")}
    assert len(silenced) == 1  # executed once (a copy may be re-sent: at least once)
    check_every_message(rig.wire.snapshot())


def test_unreadable_commands_are_events_only_and_readable_names_are_kept(rig: Rig) -> None:
    rig.link_up()
    rig.send(b"{not json")
    bad = command("silence", issued_at=rig.agent.sim_now(), minutes=9999)
    rig.send(bad)
    # Events go out right after their commit, so the answer may follow them: wait for both.
    # Commands are handled in order, so an answer to the first would come before this one.
    rig.wait(
        lambda w: (
            len(w.events("command_rejected")) >= 2
            and any(r["command_id"] == bad["command_id"] for r in w.on("commands/response"))
        )
    )
    rejected = {e["data"]["code"]: e["data"] for e in rig.wire.events("command_rejected")}
    assert rejected["malformed_json"]["command_id"] is None  # nothing to answer
    assert rejected["invalid_command"]["name"] == "silence"
    [answer] = rig.wire.on("commands/response")  # only the one whose id could be read
    assert answer["command_id"] == bad["command_id"]
    assert answer["error"]["code"] == "invalid_command"
    check_every_message(rig.wire.snapshot())


# --- alerts: bare ids, the envelope names the alert (items 3, 4) ------------------------------


def test_a_wrong_roll_alert_is_named_by_its_id_everywhere(rig: Rig) -> None:
    rig.link_up()
    rig.insert_roll(patient_ref=OTHER_PATIENT, roll_id="R-foreign")
    rig.wait(lambda w: bool(w.events("wrong_roll")))
    [alert] = rig.wire.events("wrong_roll")
    alert_id = alert["alert_id"]
    rig.wait(lambda w: any(alert_id in h.get("active_alerts", []) for h in w.on("state/health")))
    health = [h for h in rig.wire.on("state/health") if alert_id in h["active_alerts"]][-1]
    assert health["active_alerts"] == [alert_id]  # the bare id, as ack_alert takes it
    rig.send(command("ack_alert", issued_at=rig.agent.sim_now(), alert_id=alert_id))
    rig.runner.call(lambda model: model.remove_roll())
    rig.wait(
        lambda w: bool(w.events("alert_acknowledged")) and bool(w.events("wrong_roll_cleared"))
    )
    [acked] = rig.wire.events("alert_acknowledged")
    [cleared] = rig.wire.events("wrong_roll_cleared")
    assert acked["alert_id"] == cleared["alert_id"] == alert_id
    assert cleared["vkp_code"] is None  # not a second wrong-roll alert
    rig.send(command("request_status", issued_at=rig.agent.sim_now()))
    rig.wait(lambda w: bool(w.on("commands/response")) and len(w.on("commands/response")) >= 2)
    [status] = [r for r in rig.wire.on("commands/response") if r["result"] is not None]
    assert status["result"]["health"]["active_alerts"] == []  # acknowledged and removed
    check_every_message(rig.wire.snapshot())


# --- the adherence-and-deviation summary on request (item 2) ----------------------------------


def test_a_summary_on_request_is_answered_for_a_running_day_and_month_and_refused_ahead(
    rig: Rig,
) -> None:
    rig.link_up()
    rig.insert_roll(patient_ref=OTHER_PATIENT, roll_id="R-foreign")  # a deviation: roll_fault
    rig.wait(lambda w: bool(w.events("wrong_roll")))
    today = command(
        "request_summary", issued_at=rig.agent.sim_now(), period="day", label="2026-11-23"
    )
    month = command(
        "request_summary", issued_at=rig.agent.sim_now(), period="month", label="2026-11"
    )
    ahead = command(
        "request_summary", issued_at=rig.agent.sim_now(), period="day", label="2026-11-24"
    )
    no_day = command(
        "request_summary", issued_at=rig.agent.sim_now(), period="day", label="2026-11-31"
    )
    for request in (today, month, ahead, no_day):
        publish_command(rig.broker.port, UNIT, json.dumps(request).encode(), sign=False)
    rig.wait(lambda w: len(w.on("commands/response")) >= 4)
    answers = {r["command_id"]: r for r in rig.wire.on("commands/response")}
    day_result = answers[today["command_id"]]["result"]
    assert answers[today["command_id"]]["status"] == "ok"  # read-only: no signature needed
    # the local day 2026-11-23 in Oslo (CET) is 23:00Z the day before to 23:00Z
    assert (day_result["period_start"], day_result["period_end"]) == (
        "2026-11-22T23:00:00Z",
        "2026-11-23T23:00:00Z",
    )
    assert day_result["deviations_by_category"] == {"roll_fault": 1}
    assert [d["kind"] for d in day_result["deviations"]] == ["wrong_roll"]
    month_result = answers[month["command_id"]]["result"]
    assert month_result["period_start"] == "2026-10-31T23:00:00Z"
    assert month_result["deviations_by_category"] == {"roll_fault": 1}
    for refused in (ahead, no_day):
        answer = answers[refused["command_id"]]
        assert (answer["status"], answer["error"]["code"]) == ("rejected", "invalid_command")
    check_every_message(rig.wire.snapshot())
