"""The live event view: one line per message, Oslo time, gaps and duplicates by seq."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from test_demo_broker import WAIT_S, BrokerThread

from agent.centre.connect import BrokerOptions
from agent.centre.live_view import LiveView, SequenceTracker, contract_problem, format_message

UNIT = "demo-unit"
EVENTS = f"dispenser/v1/{UNIT}/events"
ESC = "\x1b"


def event(seq: int, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema": "dispenser-event/1",
        "event_id": f"0190f3a0-0000-7000-8000-{seq:012d}",
        "unit_id": UNIT,
        "seq": seq,
        "session": 1,
        "kind": "slot_outcome",
        "priority": "high",
        "vkp_code": "3.3",
        "occurred_at": "2026-11-23T07:03:12Z",
        "time_trust": "synchronised",
        "replayed": False,
        "alert_id": None,
        "data": {
            "slot_id": "2026-11-23T08:00",
            "outcome": "missed",
            "reason": "not taken in 60 min",
        },
    }
    base.update(overrides)
    return base


def payload(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def line_for(message: dict[str, Any], topic: str = EVENTS, **kwargs: bool) -> str:
    line = format_message(topic, payload(message), **kwargs)
    assert line is not None
    return line


# --- events ----------------------------------------------------------------------------------


def test_event_line_in_oslo_winter_time() -> None:
    assert line_for(event(12)) == (
        "08:03:12  demo-unit  #12  HIGH  3.3  slot_outcome"
        "  slot 2026-11-23T08:00 missed (not taken in 60 min)"
    )


def test_event_time_follows_oslo_summer_time() -> None:
    line = line_for(event(1, occurred_at="2026-07-01T06:00:00Z"))
    assert line.startswith("08:00:00  ")  # UTC+2 in summer, UTC+1 in winter


def test_event_time_with_an_offset_is_converted() -> None:
    line = line_for(event(1, occurred_at="2026-11-23T09:03:12+02:00"))
    assert line.startswith("08:03:12  ")


def test_naive_or_missing_time_is_left_blank_not_guessed() -> None:
    for occurred_at in ("2026-11-23T07:03:12", "yesterday", 17, None):
        line = line_for(event(1, occurred_at=occurred_at))
        assert line.startswith(" " * 8 + "  demo-unit"), line


def test_untrusted_time_is_marked_at_the_time_and_in_the_flags() -> None:
    line = line_for(event(3, time_trust="untrusted"))
    assert line.startswith("08:03:12?  ")
    assert line.endswith("[time untrusted]")


def test_replayed_and_alert_are_flagged() -> None:
    line = line_for(event(3, replayed=True, alert_id="alert-7"))
    assert line.endswith("[alert alert-7, replayed]")


def test_priority_is_coloured_only_when_asked() -> None:
    plain = line_for(event(1), color=False)
    coloured = line_for(event(1), color=True)
    assert ESC not in plain
    assert f"{ESC}[1;31mHIGH{ESC}[0m" in coloured
    assert coloured.replace(f"{ESC}[1;31m", "").replace(f"{ESC}[0m", "") == plain


@pytest.mark.parametrize(
    ("priority", "label"), [("high", "HIGH"), ("medium", "MED "), ("low", "LOW "), ("info", "INFO")]
)
def test_priority_labels(priority: str, label: str) -> None:
    assert f"  {label}  " in line_for(event(1, priority=priority))


def test_unknown_kind_shows_its_data() -> None:
    line = line_for(
        event(5, kind="lid_open", priority="medium", vkp_code=None, data={"duration_s": 30})
    )
    assert line.endswith("#5  MED   -  lid_open  duration_s=30")


def test_other_slot_events_show_the_slot() -> None:
    line = line_for(
        event(4, kind="dose_presented", priority="info", vkp_code=None, data={"slot_id": "X"})
    )
    assert line.endswith("dose_presented  slot X")


# --- state and commands ----------------------------------------------------------------------


def test_availability_online_and_offline() -> None:
    topic = f"dispenser/v1/{UNIT}/state/availability"
    online = {"state": "online", "session": 3, "at": "2026-11-23T06:59:00Z"}
    offline = {**online, "state": "offline", "reason": "connection_lost"}
    assert line_for(online, topic) == "07:59:00  demo-unit  availability online (session 3)"
    assert line_for(offline, topic) == (
        "07:59:00  demo-unit  availability OFFLINE (session 3, connection_lost)"
    )
    assert f"{ESC}[1;31mOFFLINE" in line_for(offline, topic, color=True)


def test_health_is_compact() -> None:
    health = {
        "at": "2026-11-23T07:00:00Z",
        "session": 3,
        "backlog_events": 2,
        "oldest_unsent_seq": 11,
        "oldest_unsent_age_s": 3.0,
        "dispenser_link": "up",
        "clock_trust": "synchronised",
        "disk_free_bytes": 12_300_000_000,
        "agent_version": "0.1.0",
        "active_alerts": ["alert-7"],
    }
    assert line_for(health, f"dispenser/v1/{UNIT}/state/health") == (
        "08:00:00  demo-unit  health backlog 2, oldest unsent #11, clock synchronised,"
        " dispenser up, disk 12.3 GB free, alerts alert-7"
    )


def test_dispenser_state_is_compact() -> None:
    state = {
        "link": "up",
        "model": "SIM-100",
        "serial_number": "S1",
        "firmware_version": "1.2",
        "roll_loaded": True,
        "sachets_remaining": 27,
    }
    assert line_for(state, f"dispenser/v1/{UNIT}/state/dispenser") == (
        " " * 8 + "  demo-unit  dispenser link up, roll loaded, 27 sachets left,"
        " model SIM-100, serial S1, fw 1.2"
    )


def test_command_response_and_request() -> None:
    response = {"command_id": "c-1", "status": "rejected", "reason": "expired", "x": 1}
    request = {"command_id": "c-2", "command": "pause", "expires_at": "2026-11-24T00:00:00Z"}
    assert line_for(response, f"dispenser/v1/{UNIT}/commands/response").endswith(
        "command response c-1 rejected expired x=1"
    )
    assert line_for(request, f"dispenser/v1/{UNIT}/commands/request").endswith(
        "command request c-2 pause expires_at=2026-11-24T00:00:00Z"
    )


def test_heartbeat_is_not_shown() -> None:
    assert format_message(f"dispenser/v1/{UNIT}/heartbeat", b'{"session":1}') is None


# --- garbage ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"not json", "events  unreadable payload: not json"),
        (b"\xff\xfe", "events  unreadable payload: \ufffd\ufffd"),
        (b"[1, 2]", "events  [1, 2]"),
        (b"", "events  (empty: retained state cleared)"),
    ],
)
def test_unreadable_payloads_are_shown_raw(raw: bytes, expected: str) -> None:
    assert format_message(EVENTS, raw) == " " * 8 + "  demo-unit  " + expected


def test_control_characters_cannot_reach_the_terminal() -> None:
    hostile = event(1, kind="lid_open", data={"note": f"{ESC}[2Jcleared"})
    line = line_for(hostile)
    assert ESC not in line
    assert "\\x1b[2Jcleared" in line
    assert ESC not in (format_message(EVENTS, f"{ESC}]0;title\x07".encode()) or "")


def test_foreign_topic_and_unknown_suffix_are_shown_raw() -> None:
    assert format_message("other/topic", b"hello") == " " * 8 + "  other/topic  hello"
    assert format_message(f"dispenser/v1/{UNIT}/new/thing", b'{"a":1}') == (
        " " * 8 + '  demo-unit  new/thing  {"a":1}'
    )


def test_wrongly_typed_fields_do_not_crash() -> None:
    odd = {"seq": "12", "priority": 5, "kind": ["x"], "data": [1], "replayed": "yes"}
    assert line_for(odd).startswith(" " * 8 + "  demo-unit  #?  5     -  ?  [1]")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
event_keys = st.sampled_from(
    ["seq", "priority", "kind", "vkp_code", "occurred_at", "time_trust", "data", "alert_id", "at"]
)


@settings(max_examples=100, deadline=None)
@given(
    suffix=st.sampled_from(
        ["events", "state/availability", "state/health", "state/dispenser", "commands/response"]
    ),
    message=st.dictionaries(event_keys | st.text(max_size=5), json_values, max_size=6),
)
def test_any_json_object_gives_one_printable_line(suffix: str, message: dict[str, Any]) -> None:
    line = format_message(f"dispenser/v1/{UNIT}/{suffix}", json.dumps(message).encode())
    assert line is not None
    assert line.isprintable()


@settings(max_examples=200, deadline=None)
@given(topic=st.text(max_size=40), raw=st.binary(max_size=80))
def test_any_bytes_on_any_topic_never_crash(topic: str, raw: bytes) -> None:
    line = format_message(topic, raw, color=True)
    assert line is None or "\n" not in line


# --- sequence checking -----------------------------------------------------------------------


def observe_all(tracker: SequenceTracker, seqs: list[int], replayed: bool = False) -> list[str]:
    notes: list[str] = []
    for seq in seqs:
        notes += tracker.observe(UNIT, seq, f"id-{seq}", replayed)
    return notes


def test_in_order_stream_has_no_notes() -> None:
    assert observe_all(SequenceTracker(), [7, 8, 9, 10]) == []


def test_gap_is_reported_with_its_range_and_once() -> None:
    tracker = SequenceTracker()
    assert observe_all(tracker, [12, 15, 16]) == [f"gap: {UNIT} seq 13-14 missing"]
    assert tracker.missing(UNIT) == [13, 14]


def test_single_missing_seq() -> None:
    assert observe_all(SequenceTracker(), [1, 3]) == [f"gap: {UNIT} seq 2 missing"]


def test_late_arrivals_close_the_gap() -> None:
    tracker = SequenceTracker()
    observe_all(tracker, [12, 15])
    assert tracker.observe(UNIT, 13, "id-13", True) == [
        f"late: {UNIT} seq 13 arrived (still missing: 1)"
    ]
    assert tracker.observe(UNIT, 14, "id-14", True) == [
        f"late: {UNIT} seq 14 arrived (no gap left)"
    ]
    assert tracker.missing(UNIT) == []


def test_duplicates_replayed_or_not() -> None:
    tracker = SequenceTracker()
    observe_all(tracker, [11, 12])
    assert tracker.observe(UNIT, 12, "id-12", True) == [f"duplicate {UNIT} seq 12 (replayed)"]
    assert tracker.observe(UNIT, 11, "id-11", False) == [
        f"duplicate {UNIT} seq 11 (NOT marked replayed)"
    ]


def test_same_seq_with_another_event_id_is_a_conflict() -> None:
    tracker = SequenceTracker()
    tracker.observe(UNIT, 4, "id-a", False)
    assert tracker.observe(UNIT, 4, "id-b", True) == [
        f"CONFLICT: {UNIT} seq 4 seen with two event ids (id-a, id-b)"
    ]


def test_first_seq_is_the_baseline_and_earlier_ones_are_not_gaps() -> None:
    tracker = SequenceTracker()
    # the view started while the agent was sending live seq 20 before its backlog 18-19
    assert observe_all(tracker, [20, 18, 19, 21]) == []
    assert tracker.observe(UNIT, 18, "id-18", True) == [f"duplicate {UNIT} seq 18 (replayed)"]


def test_units_are_tracked_separately() -> None:
    tracker = SequenceTracker()
    tracker.observe("unit-a", 1, None, False)
    tracker.observe("unit-b", 5, None, False)
    assert tracker.observe("unit-a", 2, None, False) == []
    assert tracker.observe("unit-b", 7, None, False) == ["gap: unit-b seq 6 missing"]


# --- end to end against the embedded broker --------------------------------------------------


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    running = BrokerThread()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def publisher(broker: BrokerThread) -> Iterator[paho.Client]:
    connected = threading.Event()
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="test-unit",
        protocol=MQTTProtocolVersion.MQTTv311,
    )

    def on_connect(
        _c: paho.Client, _u: object, _f: paho.ConnectFlags, rc: ReasonCode, _p: Properties | None
    ) -> None:
        if not rc.is_failure:
            connected.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert connected.wait(WAIT_S)
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def view(broker: BrokerThread) -> Iterator[tuple[LiveView, io.StringIO]]:
    out = io.StringIO()
    live = LiveView(BrokerOptions(port=broker.port), out, color=False)
    live.start()
    try:
        assert live.wait_subscribed(WAIT_S), live.snapshot()
        yield live, out
    finally:
        live.stop()


def publish(client: paho.Client, topic: str, message: dict[str, Any], retain: bool = False) -> None:
    info = client.publish(topic, payload(message), qos=1, retain=retain)
    info.wait_for_publish(WAIT_S)
    assert info.is_published()


def shown(lines: list[str]) -> list[str]:
    """Lines about messages, without the view's own connection status lines."""
    return [line for line in lines if not line.startswith("-- ")]


def test_three_events_are_shown_in_order(
    view: tuple[LiveView, io.StringIO], publisher: paho.Client
) -> None:
    live, out = view
    kinds = ["dose_presented", "dose_not_taken", "slot_outcome"]
    for seq, kind in enumerate(kinds, start=1):
        publish(publisher, EVENTS, event(seq, kind=kind, data={"slot_id": "2026-11-23T08:00"}))

    assert live.wait_for(lambda lines: len(shown(lines)) >= 3, WAIT_S), live.snapshot()
    lines = shown(live.snapshot())
    assert [line.split("  ")[2] for line in lines] == ["#1", "#2", "#3"]
    assert [line.split("  ")[5] for line in lines] == kinds
    assert all(line.startswith("08:03:12  demo-unit  ") for line in lines)
    # what it recorded is what it printed
    assert out.getvalue() == "".join(f"{line}\n" for line in live.snapshot())


def test_gap_and_duplicate_are_printed_after_the_event(
    view: tuple[LiveView, io.StringIO], publisher: paho.Client
) -> None:
    live, _ = view
    for message in (event(12), event(15), event(12, replayed=True)):
        publish(publisher, EVENTS, message)

    assert live.wait_for(lambda lines: len(shown(lines)) >= 5, WAIT_S), live.snapshot()
    lines = shown(live.snapshot())
    assert [line.split("  ")[2] for line in lines if "#" in line] == ["#12", "#15", "#12"]
    assert lines[2] == " " * 8 + f"  !! gap: {UNIT} seq 13-14 missing"
    assert lines[4] == " " * 8 + f"  !! duplicate {UNIT} seq 12 (replayed)"


def test_retained_state_is_shown_and_marked(broker: BrokerThread, publisher: paho.Client) -> None:
    topic = f"dispenser/v1/{UNIT}/state/availability"
    online = {"state": "online", "session": 2, "at": "2026-11-23T06:59:00Z", "reason": None}
    publish(publisher, topic, online, retain=True)

    live = LiveView(BrokerOptions(port=broker.port), io.StringIO(), color=False)
    live.start()
    try:
        assert live.wait_for(lambda lines: len(shown(lines)) >= 1, WAIT_S), live.snapshot()
    finally:
        live.stop()
    assert shown(live.snapshot())[0] == (
        f"07:59:00  {UNIT}  availability online (session 2)  (retained)"
    )
    assert live.snapshot()[-1] == "-- view stopped"


def test_view_started_before_the_broker_connects_when_it_comes_up() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    live = LiveView(BrokerOptions(port=port), io.StringIO(), color=False)
    live.start()
    try:
        assert live.wait_for(lambda lines: any("cannot reach" in x for x in lines), WAIT_S)
        broker = BrokerThread(port=port)
        try:
            assert live.wait_subscribed(WAIT_S), live.snapshot()
        finally:
            broker.close()
    finally:
        live.stop()
    lines = live.snapshot()
    assert lines[0] == f"-- cannot reach the broker at 127.0.0.1:{port} yet; retrying"
    assert lines[1] == f"-- connected to 127.0.0.1:{port}, watching dispenser/v1/+/#"


# --- checked against the contract -------------------------------------------------------------


def test_a_valid_event_and_a_cleared_retained_message_have_no_problem() -> None:
    assert contract_problem(EVENTS, payload(event(1))) is None
    assert contract_problem(f"dispenser/v1/{UNIT}/state/health", b"") is None
    assert contract_problem("other/topic", b"anything") is None


def test_contract_problems_name_the_field() -> None:
    assert contract_problem(EVENTS, payload(event(1, time_trust="maybe"))) == (
        "time_trust: Input should be 'synchronised', 'dispenser_rtc' or 'untrusted'"
    )
    assert contract_problem(EVENTS, b"\xff") == "not UTF-8 JSON"
    assert contract_problem(f"dispenser/v1/{UNIT}/commands/request", b"{}") == (
        "command_id: Field required; issued_at: Field required; expires_at: Field required;"
        " issued_by: Field required; command: Field required"
    )


def test_a_wrong_heartbeat_is_shown_and_marked() -> None:
    out = io.StringIO()
    live = LiveView(BrokerOptions(port=1), out, color=False)
    live._show(f"dispenser/v1/{UNIT}/heartbeat", b'{"session": 0}', retained=False)
    live._show(EVENTS, payload(event(0)), retained=True)
    assert out.getvalue().splitlines() == [
        " " * 8 + f"  {UNIT}  heartbeat  INVALID: at: Field required; session: Input should be"
        " greater than or equal to 1; uptime_s: Field required; interval_s: Field required",
        f"08:03:12  {UNIT}  #0  HIGH  3.3  slot_outcome  slot 2026-11-23T08:00 missed"
        " (not taken in 60 min)  (retained)  INVALID: seq: Input should be greater than or"
        " equal to 1",
    ]
