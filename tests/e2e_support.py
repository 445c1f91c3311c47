"""Real parts for end-to-end tests: the agent as a process, the event stream as a subscriber.

The rig is: dispenser simulator on a pty (hw.wire.SimulatorRunner, in the test process) <-> the
agent (tests/agent_process.py, its own process, scaled clock) <-> a private mosquitto on 127.0.0.1
<-> `EventStream`, a paho subscriber standing in for the response centre.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import paho.mqtt.client as paho
import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

OSLO = ZoneInfo("Europe/Oslo")
DAY = date(2026, 11, 23)
PATIENT = "p-e2e-0001"
OTHER_PATIENT = "p-e2e-9999"
RATE = 60.0  # one simulated minute per real second
WAIT_S = 60.0  # generous: CI machines are loaded; every wait ends once its condition holds
REPO = Path(__file__).resolve().parents[1]

# The response centre's signing key in the e2e tests (a fixed seed; never a real key). The
# signature is made here from RFC 8785 and cryptography, not with the agent's own code.
CENTRE_KEY = Ed25519PrivateKey.from_private_bytes(bytes.fromhex("5a" * 32))
CENTRE_PUBLIC = base64.b64encode(CENTRE_KEY.public_key().public_bytes_raw()).decode()
CENTRE_KEY_ID = hashlib.sha256(CENTRE_KEY.public_key().public_bytes_raw()).hexdigest()[:16]


def sign_command(
    request: dict[str, Any], unit_id: str, key: Ed25519PrivateKey = CENTRE_KEY
) -> dict[str, Any]:
    """The request addressed to `unit_id` (unless it names a unit) and signed by `key`."""
    body = {k: v for k, v in request.items() if k != "signature"}
    body.setdefault("unit_id", unit_id)
    signature = key.sign(b"dispenser-command/1\n" + rfc8785.dumps(body))
    kid = hashlib.sha256(key.public_key().public_bytes_raw()).hexdigest()[:16]
    value = base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
    return {**body, "signature": {"alg": "ed25519", "key_id": kid, "value": value}}


def oslo(hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(DAY.year, DAY.month, DAY.day, hour, minute, second, tzinfo=OSLO)


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def write_config(
    directory: Path,
    *,
    unit_id: str,
    broker_port: int,
    device: Path,
    times: tuple[str, ...] = ("08:00", "20:00"),
    grace_minutes: float = 5,
    extra_engine: dict[str, Any] | None = None,
) -> Path:
    config = {
        "unit_id": unit_id,
        "state_dir": str(directory / "state"),
        "dispenser": {"device": str(device)},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "keepalive_s": 10},
        "engine": {
            "grace_minutes": grace_minutes,
            "undispensed_deadline_minutes": 10,
            **(extra_engine or {}),
        },
        "patient_ref": PATIENT,
        "schedule": {
            "version": 1,
            "rules": [{"effective_from": "2026-11-01", "times": list(times)}],
        },
        "centre_keys": [CENTRE_PUBLIC],
    }
    path = directory / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


@dataclass(frozen=True)
class AgentOptions:
    """How a rig fixture starts its agent; a test changes it with `@pytest.mark.agent(...)`."""

    start_at: datetime
    engine: dict[str, Any] | None = None  # engine settings over write_config's
    held: bool = False  # the clock stands at start_at until the test calls agent.release()

    @classmethod
    def of(cls, request: pytest.FixtureRequest, start_at: datetime) -> AgentOptions:
        marker = request.node.get_closest_marker("agent")
        return cls(**{"start_at": start_at, **(marker.kwargs if marker else {})})


# The agent's clock is held at start_at until both of its links are up (these lines in its log),
# then runs: a start slowed by a loaded machine never eats the minutes before the first dose.
LINKED_LINES = ("drivers.session INFO dispenser link up", "agent.mqtt.link INFO MQTT connected")
HOLD_AT_MOST_S = 30.0  # a test that keeps a link down on purpose: the clock runs after this


@dataclass
class AgentProcess:
    """The daemon in its own process; ended only by its PID.

    Its first start holds its clock at `start_at` until it has linked (LINKED_LINES), then the
    clock runs at `rate` from `start_at`; `sim_now()` reads the same clock. A restart (`start()`
    again, with `start_at` moved on) runs at once: the unit's time goes on from where it was;
    `start(held=True)` holds a restart's clock too (until this start's link lines). With
    `release_on_link` false a held clock runs only once the test calls `release()`: a test sets
    its scene (a roll in, checked) with the clock standing just before the moment under test,
    instead of giving it simulated minutes that a loaded machine could eat."""

    config: Path
    start_at: datetime
    log_path: Path
    rate: float = RATE
    process: subprocess.Popen[bytes] | None = None
    started_mono: float | None = None  # the monotonic reading at which the clock read start_at
    hold: bool = True
    release_on_link: bool = True

    def start(self, *, held: bool | None = None) -> None:
        if held is None:
            held = self.hold and self.process is None
        log = self.log_path.open("ab")
        log_start = log.tell()  # this start's lines come after it
        self.started_mono = None if held else time.monotonic()
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests" / "agent_process.py"),
                "--config",
                str(self.config),
                "--start",
                self.start_at.isoformat(),
                "--anchor",
                "stdin" if held else repr(self.started_mono),
                "--rate",
                str(self.rate),
            ],
            stdin=subprocess.PIPE if held else subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        if held and self.release_on_link:
            threading.Thread(
                target=self._release_once_linked, args=(log_start,), daemon=True
            ).start()

    def _release_once_linked(self, log_start: int) -> None:
        process = self.process
        assert process is not None
        deadline = time.monotonic() + HOLD_AT_MOST_S
        while time.monotonic() < deadline and process.poll() is None:
            with self.log_path.open("rb") as log:  # this start's lines, not an earlier one's
                log.seek(log_start)
                text = log.read().decode("utf-8", errors="replace")
            if all(line in text for line in LINKED_LINES):
                break
            time.sleep(0.05)  # a bounded poll of the agent's log file
        self.release()

    def release(self) -> None:
        """Let the held clock run: it reads `start_at` now."""
        process = self.process
        assert process is not None
        if process.stdin is None or process.stdin.closed:  # not held, or released already
            return
        anchor = time.monotonic()
        self.started_mono = anchor
        try:
            process.stdin.write(f"{anchor!r}\n".encode())
            process.stdin.close()
        except OSError:  # the agent is gone already: nothing to release
            pass

    def wait_until(self, moment: datetime, timeout: float = WAIT_S) -> None:
        """Until the agent's clock reads `moment` (it runs: released, or never held). The clock
        is computed here from the shared monotonic anchor, so this wait is exact, not a guess."""
        assert self.started_mono is not None, "the clock is held: release() it first"
        deadline = time.monotonic() + timeout
        while (left := (moment - self.sim_now()).total_seconds() / self.rate) > 0:
            assert time.monotonic() < deadline, f"the agent's clock did not reach {moment}"
            time.sleep(min(left, 0.5))

    def sim_now(self) -> datetime:
        """The agent's clock now (start_at while it is held)."""
        if self.started_mono is None:
            return self.start_at
        return self.start_at + timedelta(seconds=(time.monotonic() - self.started_mono) * self.rate)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no goodbye — a power cut as far as the agent knows."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._close_stdin()

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            self._close_stdin()
            return self.process.returncode if self.process else None
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            return self.process.wait(timeout=10)
        finally:
            self._close_stdin()

    def _close_stdin(self) -> None:
        """A clock never released leaves its pipe open: closed once the process is gone."""
        if self.process is not None and self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@dataclass
class EventStream:
    """What the response centre sees: every message under dispenser/v1/<unit>/#.

    Persistent session (clean_session off, fixed client id) so nothing is missed across a broker
    restart with persistence on.
    """

    port: int
    unit_id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)
    retained: dict[str, dict[str, Any]] = field(default_factory=dict)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _client: paho.Client | None = None

    def start(self) -> None:
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"centre-{self.unit_id}",
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        subscribed = threading.Event()
        client.on_connect = lambda c, *_: c.subscribe(f"dispenser/v1/{self.unit_id}/#", qos=1)
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = self._on_message
        # paho annotates int seconds but waits on any number: sub-second retries keep tests short
        client.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]
        client.connect("127.0.0.1", self.port, keepalive=10)
        client.loop_start()
        self._client = client
        assert subscribed.wait(WAIT_S), "subscriber did not subscribe"

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            payload = {"raw": msg.payload.decode(errors="replace")}
        with self._cond:
            suffix = msg.topic.split(f"dispenser/v1/{self.unit_id}/", 1)[-1]
            if suffix == "events":
                self.events.append(payload)
            elif suffix == "commands/response":
                self.responses.append(payload)
            elif suffix.startswith("state/"):
                self.retained[suffix] = payload
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[EventStream], bool], timeout: float = WAIT_S) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), timeout):
                kinds = [(e.get("seq"), e.get("kind")) for e in self.events]
                raise AssertionError(f"condition not met within {timeout} s; events: {kinds}")

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e.get("kind") == kind]

    def outcomes(self) -> list[dict[str, Any]]:
        return [e["data"] for e in self.of_kind("slot_outcome")]

    def unique_by_seq(self) -> dict[int, dict[str, Any]]:
        """Deduplicate as the response centre must: by seq, checking the event id agrees."""
        with self._cond:
            events = list(self.events)
        by_seq: dict[int, dict[str, Any]] = {}
        for event in events:
            seen = by_seq.setdefault(event["seq"], event)
            assert seen["event_id"] == event["event_id"], f"seq {event['seq']} reused"
        return by_seq


def command(
    name: str,
    *,
    issued_at: datetime,
    expires_in: timedelta = timedelta(hours=1),
    command_id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    # stamped with the agent's clock, never the host's: the agents under test run on a clock of
    # their own (2026-11-23 on a fast clock), and a command from another day is refused
    issued = issued_at
    return {
        "command_id": command_id or str(uuid.uuid4()),
        "issued_at": issued.isoformat(),
        "expires_at": (issued + expires_in).isoformat(),
        "issued_by": "operator-17",
        "command": {"name": name, **fields},
    }


def publish_command(
    port: int,
    unit_id: str,
    payload: bytes,
    correlation: bytes = b"",
    *,
    sign: bool = True,
    response_topic: str | None = None,
) -> None:
    """Publish one command as the response centre does (MQTT 5, response topic, correlation):
    a JSON object not yet signed is addressed to `unit_id` and signed with CENTRE_KEY unless
    `sign` is false (bytes that are not a JSON object go out as they are)."""
    if sign:
        try:
            request = json.loads(payload)
        except ValueError:
            request = None
        if isinstance(request, dict) and "signature" not in request:
            payload = json.dumps(sign_command(request, unit_id)).encode()
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"operator-{uuid.uuid4().hex[:8]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho leaves it untyped
        properties.ResponseTopic = response_topic or f"dispenser/v1/{unit_id}/commands/response"
        if correlation:
            properties.CorrelationData = correlation
        info = client.publish(
            f"dispenser/v1/{unit_id}/commands/request", payload, qos=1, properties=properties
        )
        info.wait_for_publish(WAIT_S)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


@dataclass(frozen=True)
class Received:
    """One message as a response centre's MQTT 5 client sees it."""

    suffix: str  # the topic after dispenser/v1/{unit_id}/
    payload: dict[str, Any]
    retained: bool
    content_type: str | None


@dataclass
class WireRecorder:
    """Every message under dispenser/v1/<unit>/#, in arrival order, with the MQTT 5 properties a
    centre relies on (content type) and the retained flag. A clean MQTT 5 session of its own, so
    it sees the retained state as it is when it subscribes."""

    port: int
    unit_id: str
    received: list[Received] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _client: paho.Client | None = None

    def start(self) -> None:
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"recorder-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        subscribed = threading.Event()
        client.on_connect = lambda c, *_: c.subscribe(f"dispenser/v1/{self.unit_id}/#", qos=1)
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = self._on_message
        # paho annotates int seconds but waits on any number: sub-second retries keep tests short
        client.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]
        client.connect("127.0.0.1", self.port, keepalive=10)
        client.loop_start()
        self._client = client
        assert subscribed.wait(WAIT_S), "recorder did not subscribe"

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        props = msg.properties
        content_type = getattr(props, "ContentType", None) if props is not None else None
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            payload = {"raw": msg.payload.decode(errors="replace")}
        suffix = msg.topic.split(f"dispenser/v1/{self.unit_id}/", 1)[-1]
        with self._cond:
            self.received.append(Received(suffix, payload, bool(msg.retain), content_type))
            self._cond.notify_all()

    def snapshot(self) -> list[Received]:
        with self._cond:
            return list(self.received)

    def on(self, suffix: str) -> list[dict[str, Any]]:
        return [r.payload for r in self.snapshot() if r.suffix == suffix]

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.on("events") if kind is None or e.get("kind") == kind]

    def wait_for(self, predicate: Callable[[WireRecorder], bool], timeout: float = WAIT_S) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), timeout):
                seen = [
                    (r.suffix, r.payload.get("kind") or r.payload.get("state"))
                    for r in self.received
                ]
                raise AssertionError(f"condition not met within {timeout} s; received: {seen}")
