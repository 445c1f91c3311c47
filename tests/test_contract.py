"""The MQTT contract: topics, payload models, command parsing, and the generated documents."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from pydantic import ValidationError

from agent.clock import TimeTrust
from agent.contract import generate
from agent.contract.commands import (
    INVALID_COMMAND,
    MALFORMED_JSON,
    UNKNOWN_COMMAND,
    CommandInvalid,
    CommandResponse,
    ResendFromResult,
    parse_command,
)
from agent.contract.events import (
    EVENT_KINDS,
    KIND_PATTERN,
    SEQ_MAX,
    VKP_CODE_PATTERN,
    VKP_CODES,
    EventEnvelope,
)
from agent.contract.state import Availability, DispenserState, Health, Heartbeat, supersedes
from agent.contract.topics import (
    CHANNELS,
    InvalidUnitId,
    UnitTopics,
    heartbeat_expiry_s,
    unit_id_from_topic,
    validate_unit_id,
    wildcard,
)
from agent.engine.types import (
    AcknowledgeAlert,
    DiscardUnplanned,
    EndPause,
    Priority,
    SetSchedule,
    Silence,
    StartPause,
)

COMMAND_ID = "0195d3a8-7c4e-7b21-9f3a-2c1d5e6f7a8b"
EVENT_ID = "0195d3a8-7c4e-7b21-9f3a-2c1d5e6f7a8c"

# --- topics ----------------------------------------------------------------------------------


def test_unit_topics_follow_the_v1_tree() -> None:
    topics = UnitTopics("oslo-0001")
    assert topics.events == "dispenser/v1/oslo-0001/events"
    assert topics.availability == "dispenser/v1/oslo-0001/state/availability"
    assert topics.health == "dispenser/v1/oslo-0001/state/health"
    assert topics.dispenser == "dispenser/v1/oslo-0001/state/dispenser"
    assert topics.heartbeat == "dispenser/v1/oslo-0001/heartbeat"
    assert topics.command_request == "dispenser/v1/oslo-0001/commands/request"
    assert topics.command_response == "dispenser/v1/oslo-0001/commands/response"
    assert set(topics.retained()) == {topics.availability, topics.health, topics.dispenser}


@pytest.mark.parametrize(
    "unit_id", ["ab", "Oslo-1", "a/b-c", "abc+", "abc#", "ab c", "æøå", "a" * 65, ""]
)
def test_unusable_unit_ids_are_refused(unit_id: str) -> None:
    with pytest.raises(InvalidUnitId, match="unit id"):
        UnitTopics(unit_id)
    with pytest.raises(ValueError, match="3 to 64"):
        validate_unit_id(unit_id)


def test_topic_helpers() -> None:
    assert validate_unit_id("a" * 64) == "a" * 64
    assert wildcard("events") == "dispenser/v1/+/events"
    assert unit_id_from_topic("dispenser/v1/bergen-7/state/health") == "bergen-7"
    assert unit_id_from_topic("dispenser/v2/bergen-7/events") is None
    assert unit_id_from_topic("dispenser/v1/bergen-7") is None
    assert heartbeat_expiry_s(300) == 600
    with pytest.raises(ValueError, match="positive"):
        heartbeat_expiry_s(0)


def test_channel_table_matches_the_contract() -> None:
    by_key = {c.key: c for c in CHANNELS}
    assert len(by_key) == len(CHANNELS)
    assert (by_key["events"].qos, by_key["events"].retain) == (1, False)
    assert (by_key["heartbeat"].qos, by_key["heartbeat"].retain) == (0, False)
    for key in ("availability", "health", "dispenser"):
        assert (by_key[key].qos, by_key[key].retain) == (1, True)
    assert by_key["command_request"].direction == "centre_to_unit"
    assert all(c.direction == "unit_to_centre" for c in CHANNELS if c.key != "command_request")


# --- events ----------------------------------------------------------------------------------


def envelope_fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "event_id": EVENT_ID,
        "unit_id": "oslo-0001",
        "seq": 42,
        "session": 3,
        "kind": "slot_outcome",
        "priority": "medium",
        "vkp_code": "3.3",
        "occurred_at": "2026-03-29T01:30:00Z",
        "time_trust": "synchronised",
        "replayed": False,
        "alert_id": "alert-1",
        "data": {"slot_id": "2026-03-29T02:30", "outcome": "missed", "n": [1, 2.5, None]},
    }
    fields.update(changes)
    return fields


def test_envelope_round_trips_with_wire_names() -> None:
    envelope = EventEnvelope.model_validate_json(json.dumps(envelope_fields()))
    wire = json.loads(envelope.to_payload())
    assert wire["schema"] == "dispenser-event/1"
    assert "schema_" not in wire
    assert wire["occurred_at"] == "2026-03-29T01:30:00Z"
    assert EventEnvelope.model_validate_json(envelope.to_payload()) == envelope


def test_envelope_built_in_python_from_engine_values() -> None:
    envelope = EventEnvelope(
        event_id=EVENT_ID,
        unit_id="oslo-0001",
        seq=SEQ_MAX,
        session=1,
        kind="dose_not_taken",
        priority=Priority.HIGH,
        occurred_at=datetime(2026, 3, 29, 3, 30, tzinfo=timezone(timedelta(hours=2))),
        time_trust=TimeTrust.UNTRUSTED,
        replayed=True,
    )
    assert envelope.priority == "high"
    from_strings = EventEnvelope.model_validate(
        envelope.model_dump() | {"priority": "low", "time_trust": "dispenser_rtc"}
    )
    assert from_strings.priority is Priority.LOW
    assert from_strings.time_trust is TimeTrust.DISPENSER_RTC
    assert json.loads(envelope.to_payload())["time_trust"] == "untrusted"
    assert envelope.occurred_at == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    assert envelope.occurred_at.utcoffset() == timedelta(0)
    assert envelope.vkp_code is None
    assert envelope.data == {}
    with pytest.raises(ValidationError):
        envelope.seq = 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq", 0),
        ("seq", SEQ_MAX + 1),
        ("seq", "42"),
        ("session", 0),
        ("vkp_code", "4"),
        ("vkp_code", "3.123"),
        ("vkp_code", "3."),
        ("kind", "SlotOutcome"),
        ("kind", "slot outcome"),
        ("priority", "critical"),
        ("time_trust", "ntp"),
        ("replayed", "false"),
        ("event_id", "3f2504e0-4f89-41d3-9a0c-0305e82c3301"),  # UUIDv4, not v7
        ("unit_id", "Oslo/1"),
        ("occurred_at", "2026-03-29T01:30:00"),
        ("occurred_at", 1774747800),
        ("schema", "dispenser-event/2"),
        ("alert_id", ""),
        ("surprise", 1),
    ],
)
def test_envelope_rejects(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        EventEnvelope.model_validate_json(json.dumps(envelope_fields(**{field: value})))


def test_envelope_accepts_every_vkp_code_and_rejects_non_json_data() -> None:
    for code in VKP_CODES:
        assert re.fullmatch(VKP_CODE_PATTERN, code)
        EventEnvelope.model_validate_json(json.dumps(envelope_fields(vkp_code=code)))
    with pytest.raises(ValidationError, match="data"):
        EventEnvelope.model_validate(envelope_fields(data={"when": datetime.now(UTC)}))


def test_naive_occurred_at_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValidationError, match="naive datetime"):
        EventEnvelope.model_validate(envelope_fields(occurred_at=datetime(2026, 3, 29, 2, 30)))


def test_event_kinds_cover_the_contract_list() -> None:
    # the kinds a response centre acts on; the full list is the engine's catalogue
    required = {
        "slot_outcome",
        "dose_presented",
        "dose_not_taken",
        "dose_held",
        "wrong_roll",
        "wrong_roll_cleared",
        "roll_inserted",
        "roll_removed",
        "roll_rejected",
        "roll_rejected_cleared",
        "roll_unverified",
        "roll_empty",
        "low_supply",
        "sachet_discarded",
        "sachet_rejected",
        "mains_lost",
        "mains_lost_cleared",
        "battery_low",
        "battery_empty",
        "lid_open",
        "fault_jam",
        "fault_jam_cleared",
        "fault_bin_full",
        "no_contact",
        "no_contact_cleared",
        "clock_untrusted",
        "clock_untrusted_cleared",
        "clock_jumped",
        "no_schedule",
        "pause_started",
        "pause_ended",
        "schedule_changed",
        "help_requested",
        "alert_acknowledged",
        "command_rejected",
        "agent_started",
    }
    assert required <= set(EVENT_KINDS)
    for kind, meaning in EVENT_KINDS.items():
        assert re.fullmatch(KIND_PATTERN, kind), kind
        assert len(kind) <= 64, kind  # EventEnvelope.kind max_length
        assert meaning.strip()
        assert "\n" not in meaning
        assert "|" not in meaning


# --- state -----------------------------------------------------------------------------------

AT = "2026-03-29T01:30:00Z"


def test_a_late_will_from_an_older_session_is_ignored() -> None:
    birth_2 = Availability.model_validate_json(
        json.dumps({"state": "online", "session": 2, "at": AT})
    )
    will_1 = Availability.model_validate_json(
        json.dumps({"state": "offline", "session": 1, "at": AT, "reason": "connection_lost"})
    )
    will_2 = birth_2.model_copy(update={"state": "offline"})
    assert supersedes(birth_2, None)
    assert not supersedes(will_1, birth_2)
    assert supersedes(will_2, birth_2)


def test_state_payloads_validate() -> None:
    health = Health.model_validate_json(
        json.dumps(
            {
                "at": AT,
                "session": 2,
                "backlog_events": 3,
                "oldest_unsent_seq": 40,
                "oldest_unsent_age_s": 12.5,
                "dispenser_link": "up",
                "clock_trust": "synchronised",
                "disk_free_bytes": 10**9,
                "agent_version": "0.1.0",
                "active_alerts": ["alert-1"],
            }
        )
    )
    assert health.oldest_unsent_seq == 40
    with pytest.raises(ValidationError, match="oldest_unsent_seq"):
        health.model_validate(health.model_dump() | {"backlog_events": 0})
    with pytest.raises(ValidationError, match="oldest_unsent_seq is required"):
        health.model_validate(health.model_dump() | {"oldest_unsent_seq": None})
    with pytest.raises(ValidationError, match="disk_free_bytes"):
        health.model_validate(health.model_dump() | {"disk_free_bytes": -1})

    unknown = DispenserState(link="down", roll_loaded=False)
    assert unknown.serial_number is None
    assert unknown.features == []
    with pytest.raises(ValidationError, match="patient_ref"):
        DispenserState.model_validate({"link": "up", "roll_loaded": True, "patient_ref": "p"})

    beat = Heartbeat(
        at=datetime(2026, 3, 29, 1, 30, tzinfo=UTC), session=2, uptime_s=5, interval_s=300
    )
    assert json.loads(beat.to_payload()) == {
        "schema": "dispenser-heartbeat/1",
        "at": AT,
        "session": 2,
        "uptime_s": 5.0,
        "interval_s": 300,
    }
    with pytest.raises(ValidationError, match="uptime_s"):
        Heartbeat.model_validate({"at": AT, "session": 2, "uptime_s": -1.0, "interval_s": 300})


# --- commands --------------------------------------------------------------------------------


def request(command: object, **changes: object) -> bytes:
    payload: dict[str, object] = {
        "command_id": COMMAND_ID,
        "issued_at": "2026-03-27T09:15:00Z",
        "expires_at": "2026-03-27T21:15:00+01:00",
        "issued_by": "operator-0042",
        "command": command,
    }
    payload.update(changes)
    return json.dumps(payload).encode()


SCHEDULE = {
    "name": "update_schedule",
    "version": 4,
    "rules": [
        {
            "effective_from": "2026-03-28",
            "times": ["08:00", "20:00"],
            "weekday_times": {"sun": ["10:00"]},
        }
    ],
}


@pytest.mark.parametrize(
    ("command", "engine_input"),
    [
        (SCHEDULE, SetSchedule),
        ({"name": "pause", "pause_id": "h1", "start": "2026-03-27T10:00:00+01:00"}, StartPause),
        ({"name": "resume", "pause_id": None}, EndPause),
        ({"name": "silence", "minutes": 120}, Silence),
        ({"name": "ack_alert", "alert_id": "alert-1"}, AcknowledgeAlert),
        ({"name": "discard_unplanned", "roll_id": "R1", "sachet_index": 4}, DiscardUnplanned),
        ({"name": "request_status"}, type(None)),
        ({"name": "resend_from", "seq": 17}, type(None)),
    ],
)
def test_every_command_parses_and_maps_to_its_engine_input(
    command: dict[str, object], engine_input: type
) -> None:
    parsed = parse_command(request(command))
    assert parsed.command_id == UUID(COMMAND_ID)
    assert parsed.command.name == command["name"]
    assert isinstance(parsed.to_engine_input(), engine_input)


def test_command_details_reach_the_engine() -> None:
    schedule = parse_command(request(SCHEDULE)).to_engine_input()
    assert isinstance(schedule, SetSchedule)
    assert schedule.version == 4
    assert schedule.schedule is not None
    assert schedule.schedule.zone == "Europe/Oslo"
    sunday = schedule.schedule.rules[0].times_for_weekday(6)
    assert [t.strftime("%H:%M") for t in sunday] == ["10:00"]
    assert schedule.schedule.min_interval is None  # the default: half the smallest spacing
    assert schedule.schedule.effective_min_interval == timedelta(hours=6)
    explicit = parse_command(request({**SCHEDULE, "min_interval_minutes": 720})).to_engine_input()
    assert isinstance(explicit, SetSchedule)
    assert explicit.schedule is not None
    assert explicit.schedule.min_interval == timedelta(hours=12)

    pause = parse_command(
        request({"name": "pause", "pause_id": "h1", "start": "2026-03-27T10:00:00+01:00"})
    ).to_engine_input()
    assert isinstance(pause, StartPause)
    assert pause.window.start_utc == datetime(2026, 3, 27, 9, 0, tzinfo=UTC)
    assert pause.window.end_utc is None
    assert (pause.window.reason, pause.window.take_along) == ("other", False)
    trip = parse_command(
        request(
            {
                "name": "pause",
                "pause_id": "t1",
                "start": "2026-03-27T10:00:00+01:00",
                "end": "2026-04-03T10:00:00+02:00",
                "reason": "travel",
                "take_along": True,
            }
        )
    ).to_engine_input()
    assert isinstance(trip, StartPause)
    assert (trip.window.reason, trip.window.take_along) == ("travel", True)
    assert trip.window.end_utc == datetime(2026, 4, 3, 8, 0, tzinfo=UTC)

    ack = parse_command(request({"name": "ack_alert", "alert_id": "a-9"})).to_engine_input()
    assert ack == AcknowledgeAlert(alert_id="a-9", by="operator-0042")
    silence = parse_command(request({"name": "silence", "minutes": 15})).to_engine_input()
    assert silence == Silence(timedelta(minutes=15))
    one = parse_command(
        request({"name": "discard_unplanned", "roll_id": "R1", "sachet_index": 4})
    ).to_engine_input()
    assert one == DiscardUnplanned("R1", 4, "operator-0042", "response_centre")
    whole = parse_command(request({"name": "discard_unplanned", "roll_id": "R1"}))
    assert whole.to_engine_input() == DiscardUnplanned(
        "R1", None, "operator-0042", "response_centre"
    )


def test_expiry() -> None:
    parsed = parse_command(request({"name": "request_status"}))
    assert parsed.expires_at == datetime(2026, 3, 27, 20, 15, tzinfo=UTC)
    assert not parsed.is_expired(datetime(2026, 3, 27, 20, 14, 59, tzinfo=UTC))
    assert parsed.is_expired(datetime(2026, 3, 27, 21, 15, tzinfo=timezone(timedelta(hours=1))))
    assert parsed.message_expiry_s(datetime(2026, 3, 27, 20, 14, tzinfo=UTC)) == 60
    assert parsed.message_expiry_s(datetime(2026, 3, 28, tzinfo=UTC)) == 0
    with pytest.raises(ValueError, match="aware"):
        parsed.is_expired(datetime(2026, 3, 27, 20, 0))
    seven_days = parse_command(
        request({"name": "request_status"}, expires_at="2026-04-03T09:15:00Z")
    )
    assert seven_days.expires_at - seven_days.issued_at == timedelta(days=7)


@pytest.mark.parametrize(
    ("command", "changes", "message"),
    [
        ({"name": "silence", "minutes": 121}, {}, "command.minutes: Input should be less"),
        ({"name": "silence", "minutes": 0}, {}, "command.minutes"),
        ({"name": "silence", "minutes": "5"}, {}, "command.minutes: Input should be a valid"),
        ({"name": "silence"}, {}, "command.minutes: Field required"),
        ({"name": "resend_from", "seq": 0}, {}, "command.seq"),
        ({"name": "discard_unplanned"}, {}, "command.roll_id: Field required"),
        ({"name": "discard_unplanned", "roll_id": ""}, {}, "command.roll_id"),
        ({"name": "discard_unplanned", "roll_id": "R1", "sachet_index": -1}, {}, "sachet_index"),
        ({"name": "discard_unplanned", "roll_id": "R1", "sachet_index": 65536}, {}, "sachet_index"),
        ({"name": "request_status", "x": 1}, {}, "command.x: Extra inputs"),
        ({"name": "pause", "pause_id": "p", "start": "2026-03-27T10:00:00"}, {}, "naive"),
        (
            {"name": "pause", "pause_id": "p", "start": AT, "end": AT},
            {},
            "end .* must be after start",
        ),
        (
            {"name": "pause", "pause_id": "p", "start": AT, "reason": "travel", "take_along": True},
            {},
            "take_along needs reason travel and an end",
        ),
        ({"name": "pause", "pause_id": "p", "start": AT, "reason": "holiday"}, {}, "reason"),
        ({"name": "request_status"}, {"issued_at": "2026-03-27T09:15:00"}, "issued_at: naive"),
        ({"name": "request_status"}, {"expires_at": "2026-03-27T09:15:00Z"}, "after issued_at"),
        ({"name": "request_status"}, {"expires_at": "2026-04-03T09:15:01Z"}, "at most 7 days"),
        ({"name": "request_status"}, {"issued_by": ""}, "issued_by"),
        ({"name": "request_status"}, {"command_id": "not-a-uuid"}, "command_id"),
        ({"name": "request_status"}, {"extra": True}, "extra: Extra inputs"),
        (
            {**SCHEDULE, "rules": [{"effective_from": "2026-03-28", "times": ["8:00"]}]},
            {},
            r"command.rules\[0\].times\[0\]: '8:00' is not a dose time",
        ),
        (
            {**SCHEDULE, "rules": [{"effective_from": "2026-03-28", "times": ["08:00", "08:10"]}]},
            {},
            "10 min apart",
        ),
        (
            {
                **SCHEDULE,
                "rules": [
                    {"effective_from": "2026-03-28", "times": [], "weekday_times": {"sunday": []}}
                ],
            },
            {},
            r"weekday_times.sunday \(key\)",
        ),
        ({**SCHEDULE, "zone": "Mars/Olympus"}, {}, "unknown time zone"),
        (
            {**SCHEDULE, "min_interval_minutes": 721},
            {},
            "min_interval: 721 min is longer than the 720 min between the 08:00 and 20:00 doses",
        ),
        ({**SCHEDULE, "min_interval_minutes": 14}, {}, "command.min_interval_minutes"),
        ({**SCHEDULE, "min_interval_minutes": "60"}, {}, "command.min_interval_minutes"),
        ({**SCHEDULE, "rules": []}, {}, "command.rules"),
        ({**SCHEDULE, "version": 0}, {}, "command.version"),
    ],
)
def test_invalid_commands_are_refused_readably_with_their_id(
    command: object, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(CommandInvalid, match=message) as caught:
        parse_command(request(command, **changes))
    assert caught.value.code == INVALID_COMMAND
    expected_id = None if changes.get("command_id") == "not-a-uuid" else COMMAND_ID
    assert caught.value.command_id == expected_id


def test_unknown_command_is_told_apart() -> None:
    with pytest.raises(CommandInvalid, match="unknown command 'reboot'") as caught:
        parse_command(request({"name": "reboot"}, command_id=COMMAND_ID.upper()))
    assert caught.value.code == UNKNOWN_COMMAND
    assert caught.value.command_id == COMMAND_ID  # canonical lowercase form


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{",
        b"\xff\xfe{}",
        b'{"command_id": NaN}',
        b'{"command_id": "a", "command_id": "b"}',
        b"[" * 50_000,  # nesting deeper than the parser's recursion limit
    ],
)
def test_malformed_json(payload: bytes) -> None:
    with pytest.raises(CommandInvalid) as caught:
        parse_command(payload)
    assert caught.value.code == MALFORMED_JSON
    assert caught.value.command_id is None


def test_oversized_payload_is_refused_before_parsing() -> None:
    with pytest.raises(CommandInvalid, match="at most 65536") as caught:
        parse_command(request({"name": "resume", "pause_id": "x" * 70_000}))
    assert caught.value.code == INVALID_COMMAND


@pytest.mark.parametrize("payload", [b"[]", b'"pause"', b"null", b'{"command": "pause"}'])
def test_not_an_object_or_no_command_object(payload: bytes) -> None:
    with pytest.raises(CommandInvalid) as caught:
        parse_command(payload)
    assert caught.value.code == INVALID_COMMAND


def test_responses() -> None:
    at = datetime(2026, 3, 27, 9, 16, tzinfo=UTC)
    resent = ResendFromResult(from_seq=9, until_seq=12)
    ok = CommandResponse(command_id=COMMAND_ID, status="ok", result=resent, responded_at=at)
    assert json.loads(ok.to_payload())["responded_at"] == "2026-03-27T09:16:00Z"
    assert json.loads(ok.to_payload())["result"] == {"from_seq": 9, "until_seq": 12}
    with pytest.raises(ValidationError, match="needs an error"):
        CommandResponse(command_id=COMMAND_ID, status="rejected", responded_at=at)
    with pytest.raises(ValidationError, match="no error"):
        CommandResponse.model_validate({**ok.model_dump(), "error": {"code": "x", "message": "y"}})
    try:
        parse_command(request({"name": "silence", "minutes": 500}))
    except CommandInvalid as problem:
        answer = CommandResponse.for_invalid(problem, at)
    assert answer is not None
    assert answer.status == "rejected"
    assert answer.command_id == COMMAND_ID
    assert answer.error is not None
    assert answer.error.code == INVALID_COMMAND
    assert "command.minutes" in answer.error.message
    assert CommandResponse.for_invalid(CommandInvalid(MALFORMED_JSON, "bad"), at) is None


# --- generated documents ---------------------------------------------------------------------


def test_committed_documents_match_the_code() -> None:
    """Fails when a model changed but `python -m agent.contract.generate` was not run."""
    assert generate.check(generate.REPO_ROOT) == []
    assert generate.main(["--check"]) == 0


@pytest.fixture
def docs_copy(tmp_path: Path) -> Path:
    shutil.copytree(generate.REPO_ROOT / "docs", tmp_path / "docs")
    return tmp_path


def test_check_names_the_file_that_drifted(
    docs_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = docs_copy / generate.SCHEMA_DIR / "Heartbeat.json"
    schema.write_text(schema.read_text().replace('"uptime_s"', '"uptime"'))
    (docs_copy / generate.SCHEMA_DIR / "Old.json").write_text("{}\n")
    guide = docs_copy / generate.GUIDE_PATH
    guide.write_text(guide.read_text().replace("| `agent_started` |", "| `started` |"))

    assert generate.main(["--check", "--root", str(docs_copy)]) == 1
    err = capsys.readouterr().err
    assert "docs/contract/schemas/Heartbeat.json: differs" in err
    assert "docs/contract/schemas/Old.json: not generated" in err
    assert "docs/response-centre-guide.md: differs" in err
    assert "asyncapi.json" not in err

    assert generate.main(["--root", str(docs_copy)]) == 0
    assert not (docs_copy / generate.SCHEMA_DIR / "Old.json").exists()
    assert generate.check(docs_copy) == []
    assert (docs_copy / generate.GUIDE_PATH).read_text() == guide_text()


def guide_text() -> str:
    return (generate.REPO_ROOT / generate.GUIDE_PATH).read_text(encoding="utf-8")


def test_missing_files_and_markers_are_reported(
    docs_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (docs_copy / generate.ASYNCAPI_PATH).unlink()
    assert generate.main(["--check", "--root", str(docs_copy)]) == 1
    assert "asyncapi.json: missing" in capsys.readouterr().err
    guide = docs_copy / generate.GUIDE_PATH
    guide.write_text(guide.read_text().replace("<!-- generated:vkp-codes:end -->", ""))
    assert generate.main(["--check", "--root", str(docs_copy)]) == 2
    assert "generated:vkp-codes" in capsys.readouterr().err


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(document: dict[str, Any], ref: str) -> object:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_asyncapi_document_is_complete_and_self_consistent() -> None:
    doc = json.loads((generate.REPO_ROOT / generate.ASYNCAPI_PATH).read_text())
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["version"] == "1.0.0"
    for ref in _refs(doc):
        _resolve(doc, ref)  # KeyError if any reference dangles
    assert "discriminator" not in json.dumps(doc["components"]["schemas"])
    operations = {op["channel"]["$ref"].split("/")[-1]: op for op in doc["operations"].values()}
    for channel in CHANNELS:
        address = doc["channels"][channel.key]["address"]
        assert address == f"dispenser/v1/{{unit_id}}/{channel.suffix}"
        operation = operations[channel.key]
        expected = "receive" if channel.key == "command_request" else "send"
        assert operation["action"] == expected
        mqtt = operation["bindings"]["mqtt"]
        assert (mqtt["qos"], mqtt["retain"], mqtt["bindingVersion"]) == (
            channel.qos,
            channel.retain,
            "0.2.0",
        )
    assert set(doc["components"]["messages"]) == set(generate.PAYLOAD_MODELS)


def test_schema_files_are_standalone_json_schemas() -> None:
    for name in generate.PAYLOAD_MODELS:
        schema = json.loads((generate.REPO_ROOT / generate.SCHEMA_DIR / f"{name}.json").read_text())
        assert schema["$schema"] == generate.JSON_SCHEMA_DIALECT
        assert schema["title"] == name
        assert schema["additionalProperties"] is False
        for ref in _refs(schema):
            _resolve(schema, ref)


def test_guide_example_is_a_valid_command_and_tables_list_everything() -> None:
    text = guide_text()
    example = re.search(r"```json\n(.*?)```", text, re.DOTALL)
    assert example is not None
    parsed = parse_command(example.group(1).encode())
    assert parsed.command.name == "pause"
    for kind in EVENT_KINDS:
        assert f"| `{kind}` |" in text
    for code in VKP_CODES:
        assert f"| `{code}` |" in text
    for channel in CHANNELS:
        assert f"| `{channel.suffix}` |" in text


def test_kinds_the_outbox_may_drop_are_real_low_value_kinds() -> None:
    from agent.engine.catalogue import documented_kinds, spec
    from agent.runtime import DROPPABLE_WHEN_FULL

    kinds = documented_kinds()
    for kind in DROPPABLE_WHEN_FULL:
        assert kind in kinds, kind
        base = kind.removesuffix("_cleared")
        assert spec(base).priority in ("info", "low"), kind
    assert "slot_outcome" not in DROPPABLE_WHEN_FULL
