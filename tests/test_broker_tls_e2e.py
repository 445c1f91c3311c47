"""The real daemon (its own process) on the example broker (docs/broker/, TLS + ACL): with the
certificate its config names it comes online; with a certificate of another CA it does not, and
its log says why."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from broker import find_mosquitto
from e2e_support import AgentProcess
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from tls_support import CENTRE_IDENTITY, Identity, TestCa, TlsBroker

from agent.config import load_config
from agent.technician.snapshot import SnapshotError
from agent.technician.status import unit_status

UNIT = "unit-tls-0001"
WAIT_S = 30.0
START = datetime.fromisoformat("2026-11-23T07:00:00+01:00")


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    return TestCa(tmp_path / "pki")


@pytest.fixture
def broker(tmp_path: Path, ca: TestCa) -> Iterator[TlsBroker]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run scripts/ensure-mosquitto.sh")
    tls_broker = TlsBroker(tmp_path / "broker", ca)
    tls_broker.start()
    try:
        yield tls_broker
    finally:
        tls_broker.stop()


def write_config(directory: Path, port: int, ca_file: Path, identity: Identity) -> Path:
    config = {
        "unit_id": UNIT,
        "state_dir": str(directory / "state"),
        "dispenser": {"device": str(directory / "no-dispenser")},
        "mqtt": {
            "host": "127.0.0.1",
            "port": port,
            "keepalive_s": 10,
            "tls": True,
            "ca_file": str(ca_file),
            "client_cert": str(identity.cert),
            "client_key": str(identity.key),
        },
    }
    path = directory / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def availability_seen(broker: TlsBroker, centre: Identity) -> dict[str, object] | None:
    """The unit's retained availability as the centre reads it (None: none within WAIT_S)."""
    got: list[dict[str, object]] = []
    arrived = threading.Event()
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="centre-e2e",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    context = ssl.create_default_context(cafile=str(broker.ca.cert_path))
    context.load_cert_chain(str(centre.cert), str(centre.key))
    client.tls_set_context(context)

    def on_message(_c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        payload = json.loads(msg.payload)
        if payload.get("state") == "online":
            got.append(payload)
            arrived.set()

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(f"dispenser/v1/{UNIT}/state/availability", qos=1)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        arrived.wait(WAIT_S)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0] if got else None


def test_the_daemon_comes_online_with_its_certificate(
    broker: TlsBroker, ca: TestCa, tmp_path: Path
) -> None:
    config = write_config(tmp_path, broker.port, ca.cert_path, ca.issue(UNIT))
    agent = AgentProcess(config, START, tmp_path / "agent.log", rate=1.0)
    agent.start()
    try:
        online = availability_seen(broker, ca.issue(CENTRE_IDENTITY))
        assert online is not None, agent.log_text()[-3000:]
    finally:
        agent.stop()


def test_the_daemon_with_a_foreign_certificate_stays_out_and_says_why(
    broker: TlsBroker, ca: TestCa, tmp_path: Path
) -> None:
    rogue = TestCa(tmp_path / "rogue", name="Rogue CA").issue(UNIT)
    config = write_config(tmp_path, broker.port, ca.cert_path, rogue)
    agent = AgentProcess(config, START, tmp_path / "agent.log", rate=1.0)
    agent.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while "MQTT TLS with 127.0.0.1" not in agent.log_text():  # bounded poll of its log
            assert time.monotonic() < deadline, agent.log_text()[-3000:]
            time.sleep(0.1)
        line = next(x for x in agent.log_text().splitlines() if "MQTT TLS with" in x)
        assert "ERROR" in line
        assert "client_cert" in line
        assert "MQTT connected" not in agent.log_text()
    finally:
        agent.stop()


def broker_item(config: Path, until: Callable[[str], bool]) -> str:
    """`dispenser-agent status`'s broker line, once `until` holds for it (bounded poll)."""
    deadline = time.monotonic() + WAIT_S
    detail = ""
    while time.monotonic() < deadline:
        try:
            report = unit_status(load_config(config))
        except SnapshotError:  # no store yet: the agent is starting
            time.sleep(0.2)
            continue
        found = {i.name: ("PASS " if i.ok else "FAIL ") + i.detail for i in report.items}
        detail = found.get("broker", "")
        if until(detail):
            return detail
        time.sleep(0.2)
    raise AssertionError(f"status never showed it: {detail!r}")


def test_status_tells_the_technician_tls_was_refused(
    broker: TlsBroker, ca: TestCa, tmp_path: Path
) -> None:
    rogue = TestCa(tmp_path / "rogue", name="Rogue CA").issue(UNIT)
    config = write_config(tmp_path, broker.port, ca.cert_path, rogue)
    agent = AgentProcess(config, START, tmp_path / "agent.log", rate=1.0)
    agent.start()
    try:
        line = broker_item(config, lambda d: "TLS" in d)
        print(line)
        assert line.startswith("FAIL not connected: TLS refused"), line
        assert "TLS failures since start" in line
    finally:
        agent.stop()
    # the agent stopped: the line says it is what the agent last saw
    line = broker_item(config, lambda d: bool(d))
    assert "as last seen by the agent" in line, line


def test_status_shows_the_broker_connected(broker: TlsBroker, ca: TestCa, tmp_path: Path) -> None:
    config = write_config(tmp_path, broker.port, ca.cert_path, ca.issue(UNIT))
    agent = AgentProcess(config, START, tmp_path / "agent.log", rate=1.0)
    agent.start()
    try:
        line = broker_item(config, lambda d: "connected to" in d)
        assert line == f"PASS connected to 127.0.0.1:{broker.port}", line
    finally:
        agent.stop()
