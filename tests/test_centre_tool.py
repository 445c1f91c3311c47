"""`dispenser-agent centre watch` and `centre units` on real parts: the tool as its own process
against a private mosquitto on 127.0.0.1 (and the repo's TLS broker example), with messages
published in the contract's shapes by the test or by real daemons. Expected lines are written
out here, not produced by the tool's own formatting."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as paho
import pytest
from broker import MosquittoBroker, free_port
from e2e_support import OSLO, AgentProcess, write_config
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from tls_support import CENTRE_IDENTITY, TestCa, TlsBroker

from agent.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 60.0  # generous bounds; every wait ends as soon as its condition holds


def centre(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "centre", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )


class Watch:
    """`centre watch` as a process; its stderr read line by line on a thread."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "centre", "watch", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.notices: list[str] = []
        self.out: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.process.stderr is not None
        assert self.process.stdout is not None
        self._stderr = threading.Thread(target=self._read, args=(self.process.stderr,))
        self._stderr.start()
        self._stdout = threading.Thread(target=self._collect, args=(self.process.stdout,))
        self._stdout.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _collect(self, stream: IO[str]) -> None:
        self.out.extend(line.rstrip("\n") for line in stream)

    def wait_notice(self, text: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not any(text in line for line in self.notices):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {text!r} on stderr: {self.notices}"
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line is not None, f"watch ended before {text!r}: {self.notices}"
            self.notices.append(line)

    def finish(self) -> tuple[int, list[str]]:
        code = self.process.wait(timeout=WAIT_S)
        self._stdout.join(WAIT_S)
        return code, self.out

    def end(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=WAIT_S)
        for thread in (self._stdout, self._stderr):
            thread.join(WAIT_S)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def watching(*args: str) -> Iterator[Watch]:
    watch = Watch(*args)
    try:
        yield watch
    finally:
        watch.end()


@contextmanager
def publisher(port: int, **tls: Any) -> Iterator[paho.Client]:
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"test-publisher-{os.getpid()}",
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    if tls:
        client.tls_set(**tls)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def publish(client: paho.Client, topic: str, payload: bytes, retain: bool = False) -> None:
    info = client.publish(topic, payload, qos=1, retain=retain)
    info.wait_for_publish(WAIT_S)
    assert info.is_published()


def event(unit: str, seq: int, **overrides: Any) -> bytes:
    message: dict[str, Any] = {
        "schema": "dispenser-event/1",
        "event_id": f"0190f3a0-0000-7000-8000-{seq:012d}",
        "unit_id": unit,
        "seq": seq,
        "session": 1,
        "kind": "slot_outcome",
        "priority": "high",
        "vkp_code": "3.3",
        "occurred_at": "2026-11-23T07:03:12Z",
        "time_trust": "synchronised",
        "replayed": False,
        "alert_id": None,
        "data": {"slot_id": "2026-11-23T08:00", "outcome": "missed", "reason": "not taken"},
    }
    message.update(overrides)
    return json.dumps(message).encode()


def availability(state: str, session: int, at: str, reason: str | None = None) -> bytes:
    return json.dumps(
        {
            "schema": "dispenser-availability/1",
            "state": state,
            "session": session,
            "at": at,
            "reason": reason,
            "detail": None,
        }
    ).encode()


def health(at: str, backlog: int = 0, **overrides: Any) -> bytes:
    message: dict[str, Any] = {
        "schema": "dispenser-health/1",
        "at": at,
        "session": 1,
        "backlog_events": backlog,
        "oldest_unsent_seq": None,
        "oldest_unsent_age_s": None,
        "dispenser_link": "up",
        "clock_trust": "synchronised",
        "disk_free_bytes": 10**9,
        "agent_version": "0.1.0",
        "active_alerts": [],
        "active_conditions": [],
    }
    message.update(overrides)
    return json.dumps(message).encode()


class StateRecorder:
    """The state messages of one unit as the test sees them (its own subscriber; paho's loop
    runs in a thread of ours, so no wake-up socket is left behind)."""

    def __init__(self, port: int, unit: str) -> None:
        self._changed = threading.Condition()
        self._seen: list[tuple[str, dict[str, Any]]] = []
        self._subscribed = threading.Event()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"test-recorder-{unit}",
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        self._client.on_connect = lambda c, *_: c.subscribe(f"dispenser/v1/{unit}/state/#", 1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._port = port
        self._thread = threading.Thread(target=self._client.loop_forever)

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        with self._changed:
            suffix = message.topic.split("/", 3)[3]  # after dispenser/v1/{unit}/
            self._seen.append((suffix, json.loads(message.payload)))
            self._changed.notify_all()

    def start(self) -> None:
        self._client.connect("127.0.0.1", self._port)
        self._thread.start()
        assert self._subscribed.wait(WAIT_S)

    def stop(self) -> None:
        self._client.disconnect()
        self._thread.join(WAIT_S)

    def on(self, suffix: str) -> list[dict[str, Any]]:
        with self._changed:
            return [payload for topic, payload in self._seen if topic == suffix]

    def wait_for(self, predicate: Callable[[StateRecorder], bool], timeout: float) -> None:
        with self._changed:
            met = self._changed.wait_for(lambda: predicate(self), timeout)
            assert met, (self._thread.is_alive(), self._seen)


# --- watch -----------------------------------------------------------------------------------


def test_watch_prints_one_line_per_event_and_marks_the_invalid_one(
    mosquitto: MosquittoBroker,
) -> None:
    port = str(mosquitto.port)
    with watching("--port", port, "--count", "3", "--for", "60") as watch:
        watch.wait_notice("-- subscribed")
        with publisher(mosquitto.port) as client:
            publish(client, "dispenser/v1/unit-a/events", event("unit-a", 1))
            publish(client, "dispenser/v1/unit-b/events", event("unit-b", 0, priority="urgent"))
            publish(
                client,
                "dispenser/v1/unit-a/events",
                event("unit-a", 2, kind="lid_open", priority="medium", vkp_code=None, data={}),
            )
        code, lines = watch.finish()
    assert code == 0
    assert lines == [
        "08:03:12  unit-a  #1  HIGH  3.3  slot_outcome  slot 2026-11-23T08:00 missed (not taken)",
        "08:03:12  unit-b  #0  urgent  3.3  slot_outcome  slot 2026-11-23T08:00 missed"
        " (not taken)  INVALID: seq: Input should be greater than or equal to 1;"
        " priority: Input should be 'info', 'low', 'medium' or 'high'",
        "08:03:12  unit-a  #2  MED   -  lid_open",
    ]


def test_watch_shows_only_the_named_units_and_unreadable_payloads_as_invalid(
    mosquitto: MosquittoBroker,
) -> None:
    port = str(mosquitto.port)
    with watching("--port", port, "--unit", "unit-a", "--unit", "unit-c", "--count", "2") as watch:
        watch.wait_notice("-- subscribed")
        with publisher(mosquitto.port) as client:
            publish(client, "dispenser/v1/unit-b/events", event("unit-b", 1))  # not watched
            publish(client, "dispenser/v1/unit-c/events", b"not json")
            publish(client, "dispenser/v1/unit-a/heartbeat", b'{"session": 1}')
        code, lines = watch.finish()
    assert code == 0
    assert lines == [
        "          unit-c  events  unreadable payload: not json  INVALID: not UTF-8 JSON",
        "          unit-a  heartbeat  INVALID: at: Field required; uptime_s: Field required;"
        " interval_s: Field required",
    ]
    assert any("watching dispenser/v1/unit-a/#, dispenser/v1/unit-c/#" in n for n in watch.notices)


def test_watch_ends_on_sigterm_and_after_its_time(mosquitto: MosquittoBroker) -> None:
    with watching("--port", str(mosquitto.port)) as watch:
        watch.wait_notice("-- subscribed")
        watch.process.send_signal(signal.SIGTERM)
        code, lines = watch.finish()
    assert (code, lines) == (0, [])
    short = centre("watch", "--port", str(mosquitto.port), "--count", "2", "--for", "0.5")
    assert short.returncode == 1  # --count not reached: a script can tell
    assert short.stdout == ""
    assert short.stderr.splitlines()[-1] == "watch: 0 of 2 messages in 0.5 s"


# --- units -----------------------------------------------------------------------------------


def test_units_one_line_each_and_the_exit_code_says_whether_all_are_online(
    mosquitto: MosquittoBroker,
) -> None:
    with publisher(mosquitto.port) as client:
        for unit, suffix, payload in [
            ("unit-a", "availability", availability("online", 4, "2026-11-23T07:00:00Z")),
            ("unit-a", "health", health("2026-11-23T07:05:00Z", pause_id="hospital-1")),
            # unit-b's will: the session began 06:30, its last health came 07:04
            ("unit-b", "availability", availability("online", 2, "2026-11-23T06:30:00Z")),
            (
                "unit-b",
                "availability",
                availability("offline", 2, "2026-11-23T06:30:00Z", "connection_lost"),
            ),
            (
                "unit-b",
                "health",
                health(
                    "2026-11-23T07:04:00Z",
                    backlog=3,
                    oldest_unsent_seq=12,
                    active_alerts=["slot-2026-11-23T08:00"],
                    active_conditions=["clock_untrusted"],
                    clock_trust="untrusted",
                    dispenser_link="down",
                ),
            ),
            (
                "unit-c",
                "availability",
                availability("offline", 7, "2026-11-22T21:15:00Z", "shutdown"),
            ),
            ("unit-c", "health", health("2026-11-22T21:14:00Z")),
            ("unit-d", "availability", b'{"state": "sleeping"}'),
            ("unit-d", "health", health("2026-11-23T07:00:00Z", backlog=-1)),
        ]:
            publish(client, f"dispenser/v1/{unit}/state/{suffix}", payload, retain=True)

    port = str(mosquitto.port)
    every = ["--unit", "unit-a", "--unit", "unit-b", "--unit", "unit-c", "--unit", "unit-d"]
    listed = centre("units", "--port", port, "--wait", "30", *every)
    assert listed.returncode == 1, listed.stderr
    assert listed.stdout.splitlines() == [
        "unit-a  online   since 2026-11-23 08:00:00 (session 4)  |  backlog 0, alerts 0,"
        " conditions none, paused hospital-1, clock synchronised, dispenser up,"
        " health at 2026-11-23 08:05:00",
        "unit-b  OFFLINE  connection lost (session 2 from 2026-11-23 07:30:00, last health"
        " 2026-11-23 08:04:00)  |  backlog 3 (oldest #12), alerts 1 (slot-2026-11-23T08:00),"
        " conditions clock_untrusted, clock untrusted, dispenser down,"
        " health at 2026-11-23 08:04:00",
        "unit-c  OFFLINE  since 2026-11-22 22:15:00 (shutdown, session 7)  |  backlog 0,"
        " alerts 0, conditions none, clock synchronised, dispenser up,"
        " health at 2026-11-22 22:14:00",
        "unit-d  invalid  availability INVALID: state: Input should be 'online' or 'offline';"
        " session: Field required; at: Field required  |  health INVALID: backlog_events:"
        " Input should be greater than or equal to 0",
    ]
    online = centre("units", "--port", port, "--unit", "unit-a")
    assert online.returncode == 0, online.stderr
    assert online.stdout.startswith("unit-a  online   since 2026-11-23 08:00:00 (session 4)  |")
    # without --unit: every unit with retained state, after --wait
    everyone = centre("units", "--port", port, "--wait", "3")  # retained: sent on subscribing
    assert everyone.returncode == 1
    assert [line.split()[0] for line in everyone.stdout.splitlines()] == [
        "unit-a",
        "unit-b",
        "unit-c",
        "unit-d",
    ]
    unknown = centre("units", "--port", port, "--unit", "unit-x", "--wait", "0.5")
    assert unknown.returncode == 1
    assert unknown.stdout == "unit-x  unknown  no availability message  |  no health message\n"


def test_units_of_two_real_daemons_one_killed(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    """Two daemons (no dispenser attached: its link stays down); one killed, so the broker sends
    its will."""
    start_at = datetime(2026, 11, 23, 7, 0, tzinfo=OSLO)
    agents, recorders = {}, {}
    try:
        for unit in ("units-live", "units-dead"):
            folder = tmp_path / unit
            folder.mkdir()
            config = write_config(
                folder, unit_id=unit, broker_port=mosquitto.port, device=folder / "no-tty"
            )
            recorders[unit] = StateRecorder(mosquitto.port, unit)
            recorders[unit].start()
            agents[unit] = AgentProcess(config, start_at, folder / "agent.log")
            agents[unit].start()
        for recorder in recorders.values():
            recorder.wait_for(lambda r: bool(r.on("state/health")), WAIT_S)
        agents["units-dead"].kill()
        recorders["units-dead"].wait_for(
            lambda r: any(a["state"] == "offline" for a in r.on("state/availability")), WAIT_S
        )
        shown = centre(
            "units", "--port", str(mosquitto.port), "--unit", "units-live", "--unit", "units-dead"
        )
        live = centre("units", "--port", str(mosquitto.port), "--unit", "units-live")
    finally:
        for agent in agents.values():
            agent.stop()
        for recorder in recorders.values():
            recorder.stop()

    def local(text: str) -> str:
        return datetime.fromisoformat(text).astimezone(OSLO).strftime("%Y-%m-%d %H:%M:%S")

    birth = recorders["units-live"].on("state/availability")[0]  # then its clean stop
    [dead_birth, will] = recorders["units-dead"].on("state/availability")
    assert (birth["state"], dead_birth["state"], will["reason"]) == (
        "online",
        "online",
        "connection_lost",
    )
    dead_health = recorders["units-dead"].on("state/health")[-1]
    assert shown.returncode == 1, shown.stderr
    dead_line, live_line = shown.stdout.splitlines()  # sorted by unit id
    assert live_line.startswith(
        f"units-live  online   since {local(birth['at'])} (session {birth['session']})  |  backlog"
    )
    assert dead_line.startswith(
        f"units-dead  OFFLINE  connection lost (session {will['session']} from"
        f" {local(will['at'])}, last health {local(dead_health['at'])})  |  backlog"
    )
    assert dead_line.endswith(f"dispenser down, health at {local(dead_health['at'])}")
    assert live.returncode == 0, live.stderr


# --- TLS, and a tool that is total ------------------------------------------------------------


def test_units_and_watch_over_tls_with_the_centres_certificate(tmp_path: Path) -> None:
    ca = TestCa(tmp_path / "ca")
    centre_id = ca.issue(CENTRE_IDENTITY)
    unit_id = ca.issue("tls-unit-1")
    with TlsBroker(tmp_path / "broker", ca) as broker:
        at = (datetime.now(UTC) - timedelta(minutes=1)).replace(microsecond=0)
        with publisher(
            broker.port,
            ca_certs=str(ca.cert_path),
            certfile=str(unit_id.cert),
            keyfile=str(unit_id.key),
        ) as unit:
            stamp = at.isoformat().replace("+00:00", "Z")
            payload = availability("online", 1, stamp)
            publish(unit, "dispenser/v1/tls-unit-1/state/availability", payload, retain=True)
            publish(unit, "dispenser/v1/tls-unit-1/state/health", health(stamp), retain=True)
        tls = ["--host", "127.0.0.1", "--port", str(broker.port), "--tls"]
        tls += ["--ca-file", str(ca.cert_path)]
        identity = ["--client-cert", str(centre_id.cert), "--client-key", str(centre_id.key)]
        shown = centre("units", *tls, *identity, "--unit", "tls-unit-1", "--wait", "30")
        assert shown.returncode == 0, shown.stderr
        since = at.astimezone(OSLO).strftime("%Y-%m-%d %H:%M:%S")
        assert shown.stdout == (
            f"tls-unit-1  online   since {since} (session 1)  |  backlog 0, alerts 0, conditions"
            f" none, clock synchronised, dispenser up, health at {since}\n"
        )
        watched = centre(
            "watch", *tls, *identity, "--unit", "tls-unit-1", "--count", "2", "--for", "30"
        )
        assert watched.returncode == 0, watched.stderr
        clock = f"{at.astimezone(OSLO):%H:%M:%S}"
        assert sorted(watched.stdout.splitlines()) == [  # the broker's order of retained topics
            f"{clock}  tls-unit-1  availability online (session 1)  (retained)",
            f"{clock}  tls-unit-1  health backlog 0, clock synchronised, dispenser up,"
            " disk 1.0 GB free  (retained)",
        ]
        # without the centre's certificate the broker refuses the handshake: one line, exit 2
        for action in ("units", "watch"):
            refused = centre(action, *tls, "--timeout", "20")
            assert refused.returncode == 2, refused.stderr
            [line] = refused.stderr.splitlines()
            assert line.startswith(f"error: TLS with 127.0.0.1:{broker.port} failed: "), line
            assert "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["units", "--unit", "Bad/Unit"], "error: invalid unit id 'Bad/Unit'"),
        (["watch", "--unit", "a+"], "error: invalid unit id 'a+'"),
        (["units", "--client-cert", "c.pem"], "error: --client-cert and --client-key go together"),
        (["watch", "--ca-file", "ca.pem"], "error: --ca-file, --client-cert and --client-key"),
        (
            ["units", "--host", "broker.example", "--username", "centre"],
            "error: refusing to send a password in plaintext to broker.example",
        ),
        (["watch", "--count", "0"], "argument --count: --count is at least 1"),
        (["units", "--wait", "nan"], "argument --wait: nan is not a positive number"),
        (["units", "--port", "70000"], "error: --port 70000 is not a TCP port"),
        (
            ["units", "--tls", "--ca-file", "/nonexistent/ca.pem"],
            "error: TLS files (/nonexistent/ca.pem) not usable",
        ),
        (["keygen", "--out", "/nonexistent/dir/k.pem"], "error: cannot write the key: "),
        (
            ["sign", "--key", "/", "--unit", "unit-a", "--by", "op-1", '{"name": "resume"}'],
            "error: cannot read the key: ",
        ),
        (
            ["sign", "--key", "k", "--unit", "unit-a", "--by", "op-1", "@/nonexistent.json"],
            "error: cannot read the command: ",
        ),
        (["sign", "--key", "k", "--unit", "unit-a", "--by", "o", "--lifetime", "nan", "{}"], "nan"),
        (
            ["send", "--unit", "unit-a", "--signed", "/nonexistent.json"],
            "error: /nonexistent.json: [Errno 2]",
        ),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code: str | int | None
    try:
        code = cli_main(["centre", *args])
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err.strip().splitlines()[-1]


def test_an_unreachable_broker_is_one_line_and_exit_2() -> None:
    port = free_port()  # nothing listens there
    for action in ("units", "watch"):
        result = centre(action, "--port", str(port), "--timeout", "5")
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            f"error: cannot connect to 127.0.0.1:{port}: [Errno 111] Connection refused"
        ]
        assert result.stdout == ""
