"""Signed commands on real parts (issue 10, items 1-2): the daemon in its own process, the
dispenser simulator on a pty, a private mosquitto on 127.0.0.1, and a response centre that signs
with its key (tests/e2e_support.py signs with RFC 8785 and cryptography, not with the agent's code).

Every attack an attacker with broker access tried is refused here, answered and reported as a
`command_unauthenticated` event: unsigned, forged, signed by an unknown key, addressed to another
unit, issued in the future, expired, replayed after a reset; and the unit answers only on its own
response topic.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker
from contract_check import validate
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from e2e_support import (
    CENTRE_KEY,
    CENTRE_KEY_ID,
    RATE,
    REPO,
    AgentProcess,
    WireRecorder,
    command,
    oslo,
    publish_command,
    sign_command,
    write_config,
)

from agent.config import load_config
from agent.daemon import _under_prefix
from agent.technician.presence import SignedReset
from agent.technician.reset import terminate
from hw.dispenser import DispenserIdentity, DispenserModel
from hw.wire import SimulatorRunner

pytestmark = pytest.mark.e2e
UNIT = "auth-unit-1"
OTHER_UNIT = "auth-unit-2"
WAIT_S = 30.0
INTRUDER = Ed25519PrivateKey.from_private_bytes(bytes.fromhex("77" * 32))


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

    def send(self, request: dict[str, Any], **options: Any) -> None:
        publish_command(self.broker.port, UNIT, json.dumps(request).encode(), **options)

    def command(self, name: str, **fields: Any) -> dict[str, Any]:
        """A command issued now by the unit's (scaled) clock."""
        return command(name, issued_at=self.agent.sim_now(), **fields)

    def answers(self) -> dict[str, list[dict[str, Any]]]:
        by_id: dict[str, list[dict[str, Any]]] = {}
        for response in self.wire.on("commands/response"):
            by_id.setdefault(response["command_id"], []).append(response)
        return by_id

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        self.wait(lambda w: request["command_id"] in self.answers())
        return self.answers()[request["command_id"]][0]

    def unauthenticated(self) -> dict[str, dict[str, Any]]:
        return {e["data"]["command_id"]: e for e in self.wire.events("command_unauthenticated")}


@contextmanager
def running(
    tmp_path: Path, broker: MosquittoBroker, start_at: datetime, rate: float = RATE
) -> Iterator[Rig]:
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
    runner = SimulatorRunner.on_pty(model, link_path=tmp_path / "tty")
    runner.start()
    wire = WireRecorder(broker.port, UNIT)
    wire.start()
    config = write_config(tmp_path, unit_id=UNIT, broker_port=broker.port, device=tmp_path / "tty")
    agent = AgentProcess(config, start_at, tmp_path / "agent.log", rate=rate)
    agent.start()
    made = Rig(runner, wire, agent, broker, tmp_path)
    try:
        made.wait(lambda w: any(s.get("link") == "up" for s in w.on("state/dispenser")))
        yield made
    finally:
        agent.stop()
        wire.stop()
        runner.stop()


@pytest.fixture
def rig(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Rig]:
    with running(tmp_path, mosquitto, oslo(7, 50)) as made:
        yield made


def refused_with(rig: Rig, request: dict[str, Any], code: str) -> None:
    """Answered rejected with `code`, reported as command_unauthenticated (medium) with it."""
    answer = rig.answer(request)
    assert (answer["status"], answer["error"]["code"]) == ("rejected", code), answer
    validate("commands/response", answer)
    rig.wait(lambda w: request["command_id"] in rig.unauthenticated())
    event = rig.unauthenticated()[request["command_id"]]
    assert (event["priority"], event["data"]["code"]) == ("medium", code)
    validate("events", event)


def test_forged_misaddressed_future_expired_and_unknown_key_commands_are_refused(
    rig: Rig,
) -> None:
    genuine = rig.command("silence", minutes=5)
    rig.send(genuine)
    assert rig.answer(genuine)["status"] == "ok"

    unsigned = rig.command("pause", pause_id="evil-1", start=oslo(9, 0).isoformat())
    rig.send(unsigned, sign=False)
    refused_with(rig, unsigned, "unsigned")

    forged = sign_command(rig.command("silence", minutes=5), UNIT)
    forged["command"]["minutes"] = 120  # changed after signing
    rig.send(forged)
    refused_with(rig, forged, "bad_signature")

    stranger = sign_command(rig.command("silence", minutes=5), UNIT, key=INTRUDER)
    rig.send(stranger)
    refused_with(rig, stranger, "unknown_key")

    # a genuine command for unit 2, replayed to unit 1 by someone on the broker
    elsewhere = sign_command(rig.command("silence", minutes=5), OTHER_UNIT)
    rig.send(elsewhere)
    refused_with(rig, elsewhere, "wrong_unit")

    ahead = command("silence", issued_at=rig.agent.sim_now() + timedelta(days=365), minutes=5)
    rig.send(ahead)
    refused_with(rig, ahead, "issued_in_future")

    # issued after the binding (commands from before it are replays), expired a minute later
    rig.wait(lambda w: bool(w.events("binding_changed")))
    bound_at = datetime.fromisoformat(rig.wire.events("binding_changed")[0]["occurred_at"])
    stale = command(
        "silence",
        issued_at=bound_at + timedelta(seconds=1),
        expires_in=timedelta(minutes=1),
        minutes=5,
    )
    # on the agent's clock, not on a message: nothing need arrive on the wire meanwhile
    rig.agent.wait_until(bound_at + timedelta(minutes=2))
    rig.send(stale)
    assert rig.answer(stale)["status"] == "expired"

    # signed before the unit was bound to this patient (waiting at the broker, or recorded)
    before_binding = command(
        "silence",
        issued_at=oslo(7, 50) - timedelta(hours=1),
        expires_in=timedelta(hours=3),
        minutes=5,
    )
    rig.send(before_binding)
    refused_with(rig, before_binding, "replayed")

    # the genuine command replayed: its first answer again, not executed a second time
    rig.send(genuine)
    rig.wait(lambda w: len(rig.answers()[genuine["command_id"]]) == 2)
    assert rig.answers()[genuine["command_id"]] == [rig.answer(genuine)] * 2
    assert len({e["event_id"] for e in rig.wire.events("alert_silenced")}) == 1
    assert rig.wire.events("pause_started") == []
    # every refusal is in the unit's audit log too, with its code
    with sqlite3.connect(f"file:{rig.tmp / 'state' / 'agent.sqlite3'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT body FROM audit WHERE kind = 'command_rejected'").fetchall()
    audited = {json.loads(body)["command_id"]: json.loads(body)["code"] for (body,) in rows}
    for request, code in [
        (unsigned, "unsigned"),
        (forged, "bad_signature"),
        (stranger, "unknown_key"),
        (elsewhere, "wrong_unit"),
        (ahead, "issued_in_future"),
        (stale, "expired"),
        (before_binding, "replayed"),
    ]:
        assert audited[request["command_id"]] == code


@pytest.mark.parametrize(
    ("topic", "allowed"),
    [
        ("centre/answers/unit-1", True),
        ("centre/answers/", False),
        ("centre/answers", False),
        ("centre/answersX/a", False),
        ("centre/answers/+", False),
        ("centre/answers/#", False),
        ("dispenser/v1/other-unit/state/health", False),
    ],
)
def test_a_named_response_topic_must_lie_under_the_configured_prefix(
    topic: str, allowed: bool
) -> None:
    assert _under_prefix(topic, "centre/answers/") is allowed
    assert _under_prefix(topic, "centre/answers") is allowed


def test_dose_stopping_commands_are_accepted_loudly_and_versions_advance_in_bounded_steps(
    rig: Rig,
) -> None:
    rules = [{"effective_from": "2026-11-01", "times": ["08:00", "20:00"]}]
    huge = rig.command("update_schedule", version=2**40, rules=rules)
    rig.send(huge)
    answer = rig.answer(huge)
    assert (answer["status"], answer["error"]["code"]) == ("rejected", "version_step_too_large")
    next_real = rig.command("update_schedule", version=2, rules=rules)
    rig.send(next_real)
    assert rig.answer(next_real)["status"] == "ok"  # not locked out by the huge one

    empty = rig.command(
        "update_schedule", version=3, rules=[{"effective_from": "2026-11-01", "times": []}]
    )
    rig.send(empty)
    assert rig.answer(empty)["status"] == "ok"
    rig.wait(lambda w: bool(w.events("schedule_empty")))
    [no_doses] = rig.wire.events("schedule_empty")
    assert (no_doses["priority"], no_doses["vkp_code"], no_doses["data"]["version"]) == (
        "high",
        "3.8",
        3,
    )

    open_ended = rig.command("pause", pause_id="hosp-1", start=oslo(9, 0).isoformat())
    rig.send(open_ended)
    assert rig.answer(open_ended)["status"] == "ok"
    rig.wait(lambda w: bool(w.events("pause_open_ended")))
    [paused] = rig.wire.events("pause_open_ended")
    assert (paused["priority"], paused["vkp_code"], paused["data"]["pause_id"]) == (
        "medium",
        "3",
        "hosp-1",
    )
    validate("events", paused)
    validate("events", no_doses)


def test_answers_go_only_to_the_units_own_response_topic(rig: Rig) -> None:
    other = WireRecorder(rig.broker.port, OTHER_UNIT)
    other.start()
    try:
        status = rig.command("request_status")
        rig.send(status, response_topic=f"dispenser/v1/{OTHER_UNIT}/state/health")
        silence = rig.command("silence", minutes=5)
        rig.send(silence, response_topic="anywhere/at/all")
        assert rig.answer(status)["status"] == "ok"
        assert rig.answer(silence)["status"] == "ok"
        assert [m for m in other.snapshot() if m.payload.get("command_id")] == []
    finally:
        other.stop()


def test_keys_rotate_through_a_signed_command_and_survive_a_restart(rig: Rig) -> None:
    successor = Ed25519PrivateKey.from_private_bytes(bytes.fromhex("31" * 32))
    new_public = base64.b64encode(successor.public_key().public_bytes_raw()).decode()
    retire_all = rig.command("rotate_centre_keys", retire=[CENTRE_KEY_ID])
    rig.send(retire_all)
    answer = rig.answer(retire_all)
    assert (answer["status"], answer["error"]["code"]) == ("rejected", "no_trusted_key_left")

    rotate = rig.command("rotate_centre_keys", add=[new_public], retire=[CENTRE_KEY_ID])
    rig.send(rotate)
    assert rig.answer(rotate)["status"] == "ok"
    rig.wait(lambda w: bool(w.events("centre_keys_changed")))
    [changed] = rig.wire.events("centre_keys_changed")
    assert changed["data"]["retired"] == [CENTRE_KEY_ID]

    rig.agent.stop()
    rig.agent.start_at = rig.agent.sim_now()
    rig.agent.start()
    rig.wait(lambda w: len(w.events("agent_started")) >= 2)

    old_key = rig.command("silence", minutes=5)
    rig.send(old_key)  # signed with the retired key (the one in the config)
    refused_with(rig, old_key, "unknown_key")
    new_key = sign_command(rig.command("silence", minutes=5), UNIT, key=successor)
    rig.send(new_key)
    assert rig.answer(new_key)["status"] == "ok"


def test_a_signed_reset_on_site_and_no_command_from_before_it_runs_again(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    # The unit's clock is the wall clock here (rate 1), as the reset tool's is.
    with running(tmp_path, mosquitto, datetime.now(UTC), rate=1.0) as rig:
        now, week = datetime.now(UTC), timedelta(days=7)
        before = command("silence", issued_at=now, expires_in=week, minutes=5)
        rig.send(before)
        assert rig.answer(before)["status"] == "ok"
        reset_order = sign_command(command("reset_unit", issued_at=now), UNIT)
        rig.send(reset_order)  # over MQTT: refused, the unit is not wiped from a distance
        refused = rig.answer(reset_order)
        assert (refused["status"], refused["error"]["code"]) == ("rejected", "on_site_only")
        rig.agent.stop()

        def reset_with(order: dict[str, Any], name: str) -> tuple[Any, int]:
            signed_file = tmp_path / name
            signed_file.write_text(json.dumps(order), encoding="utf-8")
            config = load_config(rig.agent.config)
            return terminate(
                config,
                rig.agent.config,
                export_to=tmp_path / f"export-{name}",
                presence=SignedReset(str(signed_file), config),
                by="tech-7",
                unit_key=None,
            )

        for order, code_word in [
            (sign_command(command("reset_unit", issued_at=now), UNIT, key=INTRUDER), "unknown_key"),
            (sign_command(command("reset_unit", issued_at=now), OTHER_UNIT), "wrong_unit"),
        ]:
            report, code = reset_with(order, f"{code_word}.json")
            assert code != 0
            assert f"signed reset refused ({code_word})" in json.dumps(report.to_json())
        report, code = reset_with(reset_order, "reset.json")
        assert code == 0, report.to_json()
        report, code = reset_with(reset_order, "reset.json")  # the same order again
        assert code != 0
        assert "signed reset refused (replayed)" in json.dumps(report.to_json())

        rig.agent.start_at = datetime.now(UTC)
        rig.agent.start()
        rig.wait(lambda w: len(w.events("agent_started")) >= 2)
        rig.send(before)  # the same signed bytes, recorded from the broker and sent again
        rig.wait(lambda w: len(rig.answers()[before["command_id"]]) >= 2)
        again = rig.answers()[before["command_id"]][1]
        assert (again["status"], again["error"]["code"]) == ("rejected", "replayed")
        rig.wait(lambda w: before["command_id"] in rig.unauthenticated())
        fresh = rig.command("silence", minutes=5)  # the centre's new commands are carried out
        rig.send(fresh)
        assert rig.answer(fresh)["status"] == "ok"
        rig.wait(lambda w: len({e["event_id"] for e in w.events("alert_silenced")}) == 2)


def centre_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "centre", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_operator_tool_signs_and_sends_a_command_the_unit_carries_out(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    key_file = tmp_path / "centre.key"  # the e2e centre key, as the tool stores keys
    key_file.write_bytes(
        CENTRE_KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # The tool stamps commands with the wall clock: the unit's runs a minute behind it here, at
    # real speed (within the 5-minute skew), so its binding, at start, comes before the commands
    # and they are not expired when they arrive.
    start = datetime.now(UTC) - timedelta(minutes=1)
    with running(tmp_path, mosquitto, start, rate=1.0) as rig:
        port = str(mosquitto.port)
        signed = centre_tool(
            "sign", "--key", str(key_file), "--unit", UNIT, "--by", "operator-17",
            '{"name": "silence", "minutes": 5}',
        )  # fmt: skip
        assert signed.returncode == 0, signed.stderr
        request = json.loads(signed.stdout)
        assert (request["unit_id"], request["signature"]["key_id"]) == (UNIT, CENTRE_KEY_ID)
        (tmp_path / "signed.json").write_text(signed.stdout, encoding="utf-8")
        sent = centre_tool(
            "send", "--port", port, "--unit", UNIT, "--signed", str(tmp_path / "signed.json")
        )
        assert sent.returncode == 0, sent.stderr + rig.agent.log_text()[-3000:]
        assert json.loads(sent.stdout)["command_id"] == request["command_id"]
        resume = centre_tool(
            "send", "--port", port, "--unit", UNIT, "--key", str(key_file), "--by", "op-2",
            '{"name": "resume", "pause_id": "none-such"}',
        )  # fmt: skip
        assert resume.returncode == 1, resume.stderr  # refused by the engine, and said so
        assert json.loads(resume.stdout)["status"] == "rejected"
        other = centre_tool(
            "send", "--port", port, "--unit", "auth-unit-9", "--timeout", "2",
            "--signed", str(tmp_path / "signed.json"),
        )  # fmt: skip
        assert other.returncode == 2  # a request for another unit is not sent
        assert "not a request for unit auth-unit-9" in other.stderr


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    made = centre_tool("keygen", "--out", str(tmp_path / "k.pem"))
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    public = re.search(r"public key:\s+(\S+)", made.stdout)
    assert public is not None
    loaded = serialization.load_pem_private_key((tmp_path / "k.pem").read_bytes(), None)
    assert isinstance(loaded, Ed25519PrivateKey)
    raw = loaded.public_key().public_bytes_raw()
    assert public.group(1) == base64.b64encode(raw).decode()
    again = centre_tool("keygen", "--out", str(tmp_path / "k.pem"))
    assert again.returncode == 2  # never overwrites a key
