"""A command flood on real parts (issue 10, item 4): the daemon in its own process, the dispenser
simulator on a pty, a private mosquitto on 127.0.0.1.

2,000 junk commands (unreadable, schema-invalid, unsigned, forged, signed by a stranger) and
2,000 validly signed ones, interleaved, as fast as one MQTT client publishes them. The unit must
stay alive and answer a status probe and a real signed command afterwards; what it refused must
reach the centre as a bounded number of events (a few one by one, the rest counted in
`commands_refused_in_bulk`), and its store must grow by a bounded number of rows.

The oracle is the test's own count of what it sent: every message it sent is exactly one of
answered `ok`, refused with an event of its own (command_rejected / command_unauthenticated), or
counted in a bulk event.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from broker import MosquittoBroker
from contract_check import validate
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from e2e_support import (
    AgentProcess,
    WireRecorder,
    command,
    oslo,
    publish_command,
    sign_command,
    write_config,
)
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hw.dispenser import DispenserIdentity, DispenserModel
from hw.wire import SimulatorRunner

pytestmark = pytest.mark.e2e
UNIT = "flood-unit-1"
WAIT_S = 90.0  # generous: a bound on a condition, not a measured time
JUNK = 2_000
VALID = 2_000
WINDOW_S = 10  # the config's smallest fold window, so the test does not wait a minute
INTRUDER = Ed25519PrivateKey.from_private_bytes(bytes.fromhex("77" * 32))
REFUSAL_KINDS = ("command_rejected", "command_unauthenticated")
BULK = "commands_refused_in_bulk"
JUNK_REASONS = {"malformed_json", "invalid_command", "unsigned", "bad_signature", "unknown_key"}


@dataclass
class Rig:
    wire: WireRecorder
    agent: AgentProcess
    broker: MosquittoBroker
    db: Path

    def wait(self, predicate: Any, what: str, timeout: float = WAIT_S) -> None:
        try:
            self.wire.wait_for(predicate, timeout)
        except AssertionError:
            raise AssertionError(
                f"{what}: not within {timeout} s\n--- agent log ---\n"
                f"{self.agent.log_text()[-4000:]}"
            ) from None

    def command(self, name: str, **fields: Any) -> dict[str, Any]:
        return command(name, issued_at=self.agent.sim_now(), expires_in=timedelta(days=1), **fields)

    def high_water(self) -> tuple[int, int]:
        """(last audit seq, last event seq): growth is counted by seq, so pruning cannot hide it."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30) as db:
            audit = db.execute("SELECT max(seq) FROM audit").fetchone()[0]
            events = db.execute("SELECT max(seq) FROM outbox").fetchone()[0]
        return int(audit or 0), int(events or 0)


@contextmanager
def running(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Rig]:
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
    runner = SimulatorRunner.on_pty(model, link_path=tmp_path / "tty")
    runner.start()
    wire = WireRecorder(broker.port, UNIT)
    wire.start()
    config = write_config(tmp_path, unit_id=UNIT, broker_port=broker.port, device=tmp_path / "tty")
    values = json.loads(config.read_text(encoding="utf-8"))
    values["command_limits"] = {"window_s": WINDOW_S}
    config.write_text(json.dumps(values), encoding="utf-8")
    # real time (rate 1), at a morning hour with no dose due during the test
    agent = AgentProcess(config, oslo(10, 0), tmp_path / "agent.log", rate=1.0)
    agent.start()
    rig = Rig(wire, agent, broker, tmp_path / "state" / "agent.sqlite3")
    try:
        rig.wait(
            lambda w: any(s.get("link") == "up" for s in w.on("state/dispenser")), "dispenser up"
        )
        yield rig
    finally:
        agent.stop()
        wire.stop()
        runner.stop()


def junk(rig: Rig, n: int) -> bytes:
    """Five kinds of junk in turn; signed ones are signed here, not by the agent's code."""
    kind = n % 5
    if kind == 0:
        return f"{{not json {n}".encode()
    if kind == 1:
        return json.dumps(rig.command("silence", minutes=9999)).encode()  # schema-invalid
    if kind == 2:
        pause = rig.command("pause", pause_id=f"evil-{n}", start=oslo(12, 0).isoformat())
        return json.dumps({**pause, "unit_id": UNIT}).encode()  # unsigned
    if kind == 3:
        forged = sign_command(rig.command("silence", minutes=5), UNIT)
        forged["command"]["minutes"] = 120  # changed after signing
        return json.dumps(forged).encode()
    return json.dumps(sign_command(rig.command("silence", minutes=5), UNIT, key=INTRUDER)).encode()


def publish_all(port: int, payloads: list[bytes]) -> None:
    """One MQTT 5 client, QoS 1, as fast as it goes; returns once the broker has every one."""
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"flood-{uuid.uuid4().hex[:8]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho leaves it untyped
        properties.ResponseTopic = f"dispenser/v1/{UNIT}/commands/response"
        infos = [
            client.publish(
                f"dispenser/v1/{UNIT}/commands/request", payload, qos=1, properties=properties
            )
            for payload in payloads
        ]
        for info in infos:
            info.wait_for_publish(WAIT_S)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def unique_events(wire: WireRecorder, kind: str) -> list[dict[str, Any]]:
    return list({e["event_id"]: e for e in wire.events(kind)}.values())


def test_a_flood_of_junk_and_signed_commands_is_bounded_counted_and_the_unit_still_answers(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    with running(tmp_path, mosquitto) as rig:
        audit_before, events_before = rig.high_water()
        flood: list[bytes] = []
        for n in range(JUNK):
            flood.append(junk(rig, n))
            flood.append(json.dumps(sign_command(rig.command("silence", minutes=5), UNIT)).encode())
        assert len(flood) == JUNK + VALID
        publish_all(mosquitto.port, flood)
        sent = len(flood)
        flood_sent = time.monotonic()

        # After the flood: a status probe and a real signed command. A command over the rate
        # limit gets no answer, so a centre sends it again: the probe under a new id every few
        # seconds, the signed command under the same id (it was never recorded).
        real = sign_command(rig.command("silence", minutes=7), UNIT)
        probes: list[str] = []
        answered_at: dict[str, float] = {}

        def answered(command_id: str) -> bool:
            return any(r["command_id"] == command_id for r in rig.wire.on("commands/response"))

        deadline = time.monotonic() + WAIT_S
        while not ("probe" in answered_at and "real" in answered_at):
            assert time.monotonic() < deadline, (
                f"probe/real command not answered within {WAIT_S} s\n{rig.agent.log_text()[-4000:]}"
            )
            if "probe" not in answered_at:
                probe = rig.command("request_status")
                probes.append(probe["command_id"])
                publish_command(mosquitto.port, UNIT, json.dumps(probe).encode(), sign=False)
                sent += 1
            if "real" not in answered_at:
                publish_command(mosquitto.port, UNIT, json.dumps(real).encode(), sign=False)
                sent += 1

            def news(_w: WireRecorder) -> bool:
                probe_news = "probe" not in answered_at and any(map(answered, probes))
                return probe_news or ("real" not in answered_at and answered(real["command_id"]))

            with contextlib.suppress(AssertionError):  # not yet: send again
                rig.wire.wait_for(news, 3.0)
            now = time.monotonic()
            if "probe" not in answered_at and any(map(answered, probes)):
                answered_at["probe"] = now
            if "real" not in answered_at and answered(real["command_id"]):
                answered_at["real"] = now

        def accounted(w: WireRecorder) -> int:
            ok = sum(1 for r in w.on("commands/response") if r["status"] == "ok")
            refused = sum(len(unique_events(w, kind)) for kind in REFUSAL_KINDS)
            folded: int = sum(e["data"]["total"] for e in unique_events(w, BULK))
            return ok + refused + folded

        # every sent message is accounted for once the last window has been told
        rig.wait(lambda w: accounted(w) >= sent, f"{sent} commands accounted for")
        assert rig.agent.process is not None
        assert rig.agent.process.poll() is None

        wire = rig.wire
        ok = [r for r in wire.on("commands/response") if r["status"] == "ok"]
        refusals = [e for kind in REFUSAL_KINDS for e in unique_events(wire, kind)]
        bulk = unique_events(wire, BULK)
        folded: dict[str, int] = {}
        for event in bulk:
            validate("events", event)
            assert (event["priority"], event["vkp_code"]) == ("medium", None)
            assert sum(event["data"]["counts"].values()) == event["data"]["total"]
            for reason, count in event["data"]["counts"].items():
                folded[reason] = folded.get(reason, 0) + count
        # (a) the counts sum to exactly what was sent less what was answered or told one by one
        assert sum(folded.values()) == sent - len(ok) - len(refusals), (folded, len(ok))
        assert set(folded) <= JUNK_REASONS | {"rate_limited"}, folded
        assert folded.get("rate_limited", 0) > 0
        assert unique_events(wire, "mqtt_inbound_dropped") == []
        # executed: every ok answer is a signed silence or a status probe, far fewer than sent
        assert len(ok) < VALID // 4, len(ok)

        # (b) the store grew by a bounded number of rows, not one or two per message
        audit_after, events_after = rig.high_water()
        audit_rows, event_rows = audit_after - audit_before, events_after - events_before
        told = len(refusals) + len(bulk)
        print(
            f"sent {sent} ({JUNK} junk + {VALID} signed + probes/real {sent - JUNK - VALID}); "
            f"ok {len(ok)}, refused one by one {len(refusals)}, bulk events {len(bulk)} "
            f"folding {sum(folded.values())} {folded}; audit rows +{audit_rows}, "
            f"event rows +{event_rows}; probe answered after "
            f"{answered_at['probe'] - flood_sent:.1f} s, real command after "
            f"{answered_at['real'] - flood_sent:.1f} s (from the flood's last PUBACK)"
        )
        # one audit record per executed command, per individual refusal, per bulk report and
        # per event
        assert audit_rows <= len(ok) + told + event_rows + 5, (audit_rows, len(ok), told)
        # events: one per individual refusal and bulk report, at most one per executed command
        assert event_rows <= len(ok) + told + 5, (event_rows, len(ok), told)
        assert audit_rows < 400
        assert event_rows < 400
