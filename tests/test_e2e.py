"""End to end on real parts: simulator on a pty <-> agent process <-> mosquitto <-> subscriber.

The agent runs on a scaled clock (60x: a simulated minute per real second), everything else is the
production code path. Each test waits on conditions with bounded timeouts, never on fixed sleeps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker
from e2e_support import (
    OTHER_PATIENT,
    PATIENT,
    AgentOptions,
    AgentProcess,
    EventStream,
    command,
    epoch,
    oslo,
    publish_command,
    write_config,
)

from agent import local_control
from agent.store.db import Store
from hw.dispenser import DispenserIdentity, DispenserModel, make_roll
from hw.wire import SimulatorRunner
from protocol.messages import DosePresented, Message

pytestmark = pytest.mark.e2e
UNIT = "e2e-unit-1"
# The clock stands at 07:59:30 until the test has the roll in and announced (Rig.release): the
# 08:00 dose is due half a simulated minute later, whatever the machine's load.
HELD_AT_0759 = pytest.mark.agent(start_at=oslo(7, 59, 30), held=True)


@dataclass
class Rig:
    runner: SimulatorRunner
    stream: EventStream
    agent: AgentProcess
    broker: MosquittoBroker
    tmp: Path

    def wait(self, predicate: object, timeout: float = 20.0) -> None:
        try:
            self.stream.wait_for(predicate, timeout)  # type: ignore[arg-type]
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n--- agent log ---\n{self.agent.log_text()[-4000:]}"
            ) from None

    def link_up(self) -> None:
        self.wait(lambda s: s.retained.get("state/dispenser", {}).get("link") == "up")

    def insert_roll(self, patient_ref: str = PATIENT, roll_id: str = "R-1") -> None:
        roll = make_roll(roll_id, patient_ref, epoch(oslo(8, 0)), 12 * 3600, 28)
        self.runner.call(lambda model: model.insert_roll(roll))

    def release(self) -> None:
        """The roll is announced (checked and accepted): the held clock runs."""
        self.wait(lambda s: bool(s.of_kind("roll_inserted")))
        self.agent.release()

    def patient_takes_doses(self) -> None:
        def on_message(message: Message) -> None:
            if isinstance(message, DosePresented):
                self.runner.call(lambda model: model.take_dose())

        self.runner.add_listener(on_message)


@pytest.fixture
def rig(
    request: pytest.FixtureRequest, tmp_path: Path, mosquitto: MosquittoBroker
) -> Iterator[Rig]:
    options = AgentOptions.of(request, oslo(7, 56))
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
    runner = SimulatorRunner.on_pty(model, link_path=tmp_path / "tty")
    runner.start()
    stream = EventStream(mosquitto.port, UNIT)
    stream.start()
    config = write_config(
        tmp_path,
        unit_id=UNIT,
        broker_port=mosquitto.port,
        device=tmp_path / "tty",
        extra_engine=options.engine,
    )
    agent = AgentProcess(
        config, options.start_at, tmp_path / "agent.log", release_on_link=not options.held
    )
    agent.start()
    try:
        yield Rig(runner, stream, agent, mosquitto, tmp_path)
    finally:
        agent.stop()
        stream.stop()
        runner.stop()


def assert_gapless(rig: Rig) -> dict[int, dict[str, object]]:
    by_seq = rig.stream.unique_by_seq()
    assert sorted(by_seq) == list(range(1, max(by_seq) + 1)), "gap in the event sequence"
    return by_seq


@HELD_AT_0759
def test_dose_taken(rig: Rig) -> None:
    rig.link_up()
    rig.patient_takes_doses()
    rig.insert_roll()
    rig.release()
    rig.wait(lambda s: any(o["outcome"] == "taken" for o in s.outcomes()))
    [outcome] = rig.stream.outcomes()
    assert outcome["slot_id"] == "2026-11-23T08:00"
    snapshot = rig.runner.snapshot()
    assert len(snapshot.dispensed) == 1
    assert snapshot.tray is None
    assert_gapless(rig)


# The clock stands at 07:59:30 until the roll is in (the dose is due 30 s after), and the dose is
# missed one minute after it was presented: no simulated minutes spent waiting.
@pytest.mark.agent(start_at=oslo(7, 59, 30), engine={"grace_minutes": 1}, held=True)
def test_dose_missed_is_retained_and_reported_high_with_vkp_3_3(rig: Rig) -> None:
    rig.link_up()
    rig.insert_roll()
    rig.release()
    rig.wait(lambda s: any(o["outcome"] == "missed" for o in s.outcomes()))
    [event] = rig.stream.of_kind("slot_outcome")
    assert event["priority"] == "high"
    assert event["vkp_code"] == "3.3"
    assert event["alert_id"]
    rig.runner.wait_for(lambda model: len(model.bin) == 1)
    assert rig.runner.snapshot().bin[0].how == "retain"
    assert_gapless(rig)


# The clock stands at 07:59:30 until the foreign roll is refused and locked; the dose ends one
# minute after its time (the undispensed deadline) instead of ten.
@pytest.mark.agent(start_at=oslo(7, 59, 30), engine={"undispensed_deadline_minutes": 1}, held=True)
def test_wrong_roll_is_refused_locked_and_never_dispensed(rig: Rig) -> None:
    rig.link_up()
    rig.insert_roll(patient_ref=OTHER_PATIENT, roll_id="R-foreign")
    rig.wait(lambda s: bool(s.of_kind("wrong_roll")))
    [alert] = rig.stream.of_kind("wrong_roll")
    assert alert["vkp_code"] == "3.5"
    assert alert["priority"] == "high"
    assert OTHER_PATIENT not in json.dumps(alert)  # never a patient reference on the wire
    rig.runner.wait_for(lambda model: model.locked)
    rig.agent.release()
    # The 08:00 dose is due while the foreign roll is in: it must end without any dispense.
    rig.wait(lambda s: bool(s.outcomes()), timeout=90)
    # the roll was refused before the dose's time (the clock stood until then): so is the dose
    [outcome] = rig.stream.outcomes()
    assert (outcome["outcome"], outcome["reason"]) == ("refused", "foreign_roll"), outcome
    assert rig.runner.snapshot().dispensed == ()


def test_broker_restart_mid_day_loses_nothing_and_keeps_order(rig: Rig) -> None:
    rig.link_up()
    rig.patient_takes_doses()
    rig.wait(lambda s: bool(s.of_kind("agent_started")))
    rig.broker.stop()
    rig.insert_roll()  # roll_inserted, dose_presented, slot_outcome happen while offline
    rig.runner.wait_for(lambda model: len(model.dispensed) == 1 and model.tray is None, timeout=90)
    rig.broker.restart()
    rig.wait(lambda s: any(o["outcome"] == "taken" for o in s.outcomes()), timeout=90)
    by_seq = assert_gapless(rig)
    kinds = [by_seq[seq]["kind"] for seq in sorted(by_seq)]
    assert (
        kinds.index("roll_inserted") < kinds.index("dose_presented") < kinds.index("slot_outcome")
    ), kinds
    [outcome] = [e for e in by_seq.values() if e["kind"] == "slot_outcome"]
    assert outcome["replayed"] is True  # it waited in the backlog while the broker was down


@HELD_AT_0759
def test_agent_killed_and_restarted_never_dispenses_twice(rig: Rig) -> None:
    rig.link_up()
    rig.insert_roll()
    rig.release()
    rig.wait(lambda s: bool(s.of_kind("dose_presented")))
    resume_at = rig.agent.sim_now()
    rig.agent.kill()  # the dose is in the tray, the agent dies
    rig.agent.start_at = resume_at
    rig.agent.start()
    # by seq: the first start's events may come again right behind the new start's own
    rig.wait(lambda s: len({e["seq"] for e in s.of_kind("agent_started")}) == 2)
    rig.runner.call(lambda model: model.take_dose())
    rig.wait(lambda s: bool(s.outcomes()), timeout=90)
    assert [o["outcome"] for o in rig.stream.outcomes()] == ["taken"]
    assert len(rig.runner.snapshot().dispensed) == 1
    assert_gapless(rig)


def test_malformed_expired_and_duplicate_commands_are_answered_and_not_executed(rig: Rig) -> None:
    rig.link_up()
    port = rig.broker.port
    publish_command(port, UNIT, b"{not json")
    bad = command("silence", issued_at=rig.agent.sim_now(), minutes=9999)
    publish_command(port, UNIT, json.dumps(bad).encode())
    expired = command("silence", issued_at=rig.agent.sim_now(), minutes=5)
    expired["issued_at"] = "2020-01-01T00:00:00Z"
    expired["expires_at"] = "2020-01-01T01:00:00Z"
    publish_command(port, UNIT, json.dumps(expired).encode())
    # unauthorised-looking: a command the unit does not have, and one smuggling extra fields
    dispense_now = command("dispense_now", issued_at=rig.agent.sim_now())
    publish_command(port, UNIT, json.dumps(dispense_now).encode())
    smuggled = command("silence", issued_at=rig.agent.sim_now(), minutes=5)
    smuggled["as_unit"] = "another-unit"
    publish_command(port, UNIT, json.dumps(smuggled).encode())
    status = command("request_status", issued_at=rig.agent.sim_now())
    publish_command(port, UNIT, json.dumps(status).encode(), correlation=b"corr-1")
    publish_command(port, UNIT, json.dumps(status).encode(), correlation=b"corr-2")
    rig.wait(lambda s: len(s.responses) >= 6)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for response in rig.stream.responses:
        by_id.setdefault(response["command_id"], []).append(response)
    assert by_id[bad["command_id"]][0]["status"] == "rejected"
    assert "minutes" in by_id[bad["command_id"]][0]["error"]["message"]
    assert by_id[expired["command_id"]][0]["status"] == "expired"
    first, again = by_id[status["command_id"]]
    assert first["status"] == "ok"
    assert again == first  # one answer per command id: the first one again, never a rerun
    assert by_id[dispense_now["command_id"]][0]["error"]["code"] == "unknown_command"
    assert by_id[smuggled["command_id"]][0]["status"] == "rejected"
    assert "as_unit" in by_id[smuggled["command_id"]][0]["error"]["message"]
    assert by_id[status["command_id"]][0]["result"]["dispenser_link"] == "up"
    # the unreadable one has no id to answer; it is an event (and an audit record)
    rig.wait(lambda s: len(s.of_kind("command_rejected")) >= 5)
    codes = {e["data"]["code"] for e in rig.stream.of_kind("command_rejected")}
    assert {"malformed_json", "invalid_command", "expired", "unknown_command"} <= codes
    assert rig.runner.snapshot().dispensed == ()  # nothing a command said made it dispense


@HELD_AT_0759
def test_roll_loaded_while_the_agent_was_down_is_verified_on_reconnect(rig: Rig) -> None:
    rig.link_up()
    resume_at = rig.agent.sim_now()  # 07:59:30: the clock still stands
    rig.agent.kill()
    rig.insert_roll()  # nobody listens: the dispenser gives up on RollInserted after its retries
    rig.runner.wait_for_stats(lambda stats: stats.failures >= 2, timeout=90)
    rig.patient_takes_doses()
    rig.agent.start_at = resume_at
    rig.agent.start(held=True)
    # SPEC 4.1: the dispenser re-announces the loaded roll after Hello; the agent verifies it.
    rig.release()
    rig.wait(lambda s: any(o["outcome"] == "taken" for o in s.outcomes()), timeout=90)
    assert len(rig.runner.snapshot().dispensed) == 1
    assert_gapless(rig)


# --- hazard #4: a sachet the schedule lacks waits for a person's decision (SAFETY.md H6) -------


def hold_an_unplanned_sachet(rig: Rig) -> dict[str, object]:
    """The pharmacy's roll has 08:00, 14:00 and 20:00; the unit's schedule 08:00 and 20:00. After
    the 08:00 dose the 14:00 sachet is at the reader: held, with a latched HIGH alert."""
    rig.link_up()
    rig.patient_takes_doses()
    roll = make_roll("R-plan", PATIENT, epoch(oslo(8, 0)), 6 * 3600, 3)
    rig.runner.call(lambda model: model.insert_roll(roll))
    rig.release()
    rig.wait(lambda s: bool(s.of_kind("plan_mismatch")) and bool(s.outcomes()), timeout=90)
    [alert] = rig.stream.of_kind("plan_mismatch")
    assert (alert["priority"], alert["vkp_code"]) == ("high", "3.22")
    assert alert["alert_id"]
    assert alert["data"]["sachet_index"] == 1
    assert [o["outcome"] for o in rig.stream.outcomes()] == ["taken"]
    assert rig.runner.snapshot().bin == ()  # not cut into the bin on the agent's own initiative
    return alert


@HELD_AT_0759
def test_a_plan_mismatch_is_held_until_the_centre_decides_to_discard(rig: Rig) -> None:
    alert = hold_an_unplanned_sachet(rig)
    now = rig.agent.sim_now()
    refused = command("discard_unplanned", issued_at=now, roll_id="R-plan", sachet_index=2)
    publish_command(rig.broker.port, UNIT, json.dumps(refused).encode())
    decide = command("discard_unplanned", issued_at=now, roll_id="R-plan", sachet_index=1)
    publish_command(rig.broker.port, UNIT, json.dumps(decide).encode())
    rig.wait(lambda s: len(s.responses) >= 2)
    by_id = {r["command_id"]: r for r in rig.stream.responses}
    assert by_id[refused["command_id"]]["status"] == "rejected"
    assert by_id[refused["command_id"]]["error"]["code"] == "sachet_not_at_reader"
    assert by_id[decide["command_id"]]["status"] == "ok"
    rig.wait(lambda s: bool(s.of_kind("sachet_discarded")))
    [decided] = rig.stream.of_kind("plan_mismatch_decided")
    assert decided["data"]["alert_id"] == alert["alert_id"]
    assert (decided["data"]["by"], decided["data"]["source"]) == ("operator-17", "response_centre")
    [binned] = rig.stream.of_kind("sachet_discarded")
    assert binned["data"]["reason"] == "discard_decided"
    rig.runner.wait_for(lambda model: len(model.bin) == 1)
    assert [(e.sachet_index, e.how) for e in rig.runner.snapshot().bin] == [(1, "discard")]
    assert_gapless(rig)


@HELD_AT_0759
def test_a_technician_on_site_decides_through_the_local_control_socket(rig: Rig) -> None:
    alert = hold_an_unplanned_sachet(rig)
    config = str(rig.tmp / "config.json")
    shown = cli_run("plan", "show", "--config", config)
    assert shown.returncode == 0, shown.stderr
    held = json.loads(shown.stdout)
    assert (held["roll_id"], held["sachet_index"], held["alert_id"]) == (
        "R-plan",
        1,
        alert["alert_id"],
    )
    # on site: a plan decision, pause/resume and status; schedules and the like stay with the
    # response centre
    socket = local_control.socket_path(rig.tmp / "state")
    silence = command("silence", issued_at=rig.agent.sim_now(), minutes=5)
    answer = local_control.send_local_command(socket, json.dumps(silence).encode())
    assert answer["status"] == "rejected"
    assert '"code": "not_allowed_locally"' in json.dumps(answer["error"])
    garbage = local_control.send_local_command(socket, b"{not json")
    assert garbage["status"] == "rejected"
    wrong = cli_run("plan", "discard", "--config", config, "--by", "tech-3", "--roll", "R-9")
    assert wrong.returncode == 2  # argparse: --sachet or --all-unplanned is required
    refused = cli_run(
        "plan", "discard", "--config", config, "--by", "tech-3", "--roll", "R-9", "--sachet", "1"
    )
    assert refused.returncode == 1
    assert "roll_not_loaded" in refused.stderr
    decided = cli_run(
        "plan", "discard", "--config", config, "--by", "tech-3", "--roll", "R-plan",
        "--all-unplanned",
    )  # fmt: skip
    assert decided.returncode == 0, decided.stderr
    rig.wait(lambda s: bool(s.of_kind("sachet_discarded")))
    [event] = rig.stream.of_kind("plan_mismatch_decided")
    assert (event["data"]["by"], event["data"]["source"], event["data"]["sachet_index"]) == (
        "tech-3",
        "on_site",
        None,
    )
    rig.runner.wait_for(lambda model: len(model.bin) == 1)
    # the audit log has the technician's decision with its source
    rig.agent.stop()
    with Store.open(rig.tmp / "state" / "agent.sqlite3") as store:
        records = [r for r in store.audit_records(limit=1000) if r.kind == "command"]
    sources = [(r.body["name"], r.body["issued_by"], r.body["source"]) for r in records]
    assert ("discard_unplanned", "tech-3", "on_site") in sources


def cli_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
