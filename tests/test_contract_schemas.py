"""The published JSON Schemas say what the unit does (issue 8, items 11 and 12): checked with a
stock validator (`jsonschema`), as a response centre would, never with our pydantic models.

Where JSON Schema can express a rule of the unit, the schema refuses what the unit refuses; where
it cannot (comparing two fields, spacing of dose times), the schema's description says so.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from contract_check import REPO, errors, offset_times, schema

from agent.contract.commands import CommandInvalid, parse_command

OUTGOING = ("EventEnvelope", "Availability", "Health", "DispenserState", "Heartbeat")
ISSUED = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def _keys(node: object) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keys(v)}
    return set()


@pytest.mark.parametrize("name", [*OUTGOING, "CommandResponse"])
def test_every_payload_the_unit_sends_requires_a_schema_version(name: str) -> None:
    document = schema(name)
    assert "schema" in document["required"], f"{name}: schema version not required"
    version = document["properties"]["schema"]
    assert version.get("const", "").endswith("/1"), version


@pytest.mark.parametrize("name", [*OUTGOING, "CommandResponse"])
def test_every_field_the_unit_sends_is_required(name: str) -> None:
    """The unit always sends every field (null when it has no value): a centre may rely on it."""
    document = schema(name)
    assert set(document["required"]) == set(document["properties"]), name


def test_no_openapi_keywords_in_the_json_schemas() -> None:
    for name in (*OUTGOING, "CommandRequest", "CommandResponse"):
        assert "discriminator" not in _keys(schema(name)), name


def test_heartbeat_says_its_interval() -> None:
    assert "interval_s" in schema("Heartbeat")["required"]


def test_the_will_reason_is_one_of_a_documented_list() -> None:
    will = {
        "schema": "dispenser-availability/1",
        "state": "offline",
        "session": 3,
        "at": "2026-11-23T08:00:00Z",
        "reason": "connection_lost",
        "detail": None,
    }
    assert errors("Availability", will) == []
    assert errors("Availability", {**will, "reason": "connection lost"}) != []


def command(body: dict[str, Any], **changes: object) -> dict[str, Any]:
    return {
        "command_id": "0195d3a8-7c4e-7b21-9f3a-2c1d5e6f7a8b",
        "issued_at": "2026-11-23T09:00:00Z",
        "expires_at": "2026-11-23T21:00:00Z",
        "issued_by": "operator-0042",
        "command": body,
        **changes,
    }


def unit_accepts(payload: dict[str, Any]) -> bool:
    try:
        parse_command(json.dumps(payload).encode())
    except CommandInvalid:
        return False
    return True


PAUSE = {"name": "pause", "pause_id": "p-1", "start": "2026-11-24T09:00:00Z"}
SCHEDULE = {
    "name": "update_schedule",
    "version": 2,
    "rules": [{"effective_from": "2026-11-24", "times": ["08:00"]}],
}


def schedule(**rule: object) -> dict[str, Any]:
    return {**SCHEDULE, "rules": [{"effective_from": "2026-11-24", "times": [], **rule}]}


# Refused by the unit and expressible in JSON Schema: the schema refuses them too.
EXPRESSIBLE = {
    "take_along without travel": command(
        {**PAUSE, "end": "2026-11-25T09:00:00Z", "take_along": True}
    ),
    "take_along without end": command({**PAUSE, "reason": "travel", "take_along": True}),
    "time without an offset": command(PAUSE, issued_at="2026-11-23T09:00:00"),
    "pause start without an offset": command({**PAUSE, "start": "2026-11-24T09:00:00"}),
    "command id not a uuid": command(PAUSE, command_id="hello"),
    "effective_from not a date": command(
        {**SCHEDULE, "rules": [{"effective_from": "24.11.2026", "times": []}]}
    ),
    "weekday that does not exist": command(schedule(weekday_times={"sunday": []})),
    "unknown command": command({"name": "dispense_now"}),
    "silence too long": command({"name": "silence", "minutes": 121}),
}

# Refused by the unit, but JSON Schema cannot compare two values: the schema documents the rule.
NOT_EXPRESSIBLE = {
    "expires before it is issued": (
        command(PAUSE, expires_at="2026-11-23T08:00:00Z"),
        "CommandRequest",
        "after issued_at",
    ),
    "expires more than 7 days later": (
        command(PAUSE, expires_at="2026-12-01T09:00:00Z"),
        "CommandRequest",
        "7 days",
    ),
    "pause ends before it starts": (
        command({**PAUSE, "end": "2026-11-24T08:00:00Z"}),
        "PauseCommand",
        "after start",
    ),
    "doses closer than 30 minutes": (
        command(schedule(times=["08:00", "08:10"])),
        "UpdateScheduleCommand",
        "30 minutes",
    ),
}


@pytest.mark.parametrize("case", EXPRESSIBLE)
def test_what_the_unit_refuses_the_schema_refuses(case: str) -> None:
    payload = EXPRESSIBLE[case]
    assert not unit_accepts(payload)
    assert errors("CommandRequest", payload) != [], f"{case}: schema-valid, but refused"


@pytest.mark.parametrize("case", NOT_EXPRESSIBLE)
def test_rules_json_schema_cannot_express_are_written_in_the_schema(case: str) -> None:
    payload, where, words = NOT_EXPRESSIBLE[case]
    assert not unit_accepts(payload)
    document = schema("CommandRequest")
    node = document if where == "CommandRequest" else document["$defs"][where]
    assert words in node.get("description", ""), f"{where} does not document: {words}"


@pytest.mark.parametrize(
    "body",
    [
        PAUSE,
        {**PAUSE, "end": "2026-11-30T09:00:00+01:00", "reason": "travel", "take_along": True},
        SCHEDULE,
        {"name": "resume", "pause_id": None},
        {"name": "silence", "minutes": 5},
        {"name": "silence", "minutes": 5.0},  # an integer to JSON Schema, and to the unit
        {"name": "ack_alert", "alert_id": "alert-000001"},
        {"name": "discard_unplanned", "roll_id": "R-1", "sachet_index": None},
        {"name": "request_status"},
        {"name": "resend_from", "seq": 1},
    ],
)
def test_what_the_unit_accepts_the_schema_accepts(body: dict[str, Any]) -> None:
    payload = command(body)
    assert unit_accepts(payload)
    assert errors("CommandRequest", payload) == []


def test_a_command_names_exactly_one_branch() -> None:
    """Plain oneOf/const: a stock validator picks the branch by `command.name` alone."""
    branches = schema("CommandRequest")["properties"]["command"]["oneOf"]
    names = [schema("CommandRequest")["$defs"][b["$ref"].split("/")[-1]] for b in branches]
    assert all(n["properties"]["name"]["const"] for n in names)


def test_offset_times_finds_what_is_not_utc_z() -> None:
    assert offset_times({"due_utc": "2026-11-23T07:00:00+00:00"}) == [
        ("due_utc", "2026-11-23T07:00:00+00:00")
    ]
    assert offset_times({"due_local": "2026-11-23T08:00:00+01:00", "at": "2026-11-23T07:00Z"}) == []
    assert offset_times([{"x": (ISSUED + timedelta(0)).isoformat()}]) != []


GUIDE = (REPO / "docs" / "response-centre-guide.md").read_text(encoding="utf-8")
COMMANDS_SECTION = GUIDE[GUIDE.index("## Commands") :]


def test_the_guide_does_not_promise_an_answer_that_can_never_be_sent() -> None:
    """malformed_json: no command id can be read from a payload that is not JSON (item 6)."""
    assert "`error.code` `malformed_json`" not in GUIDE
    assert "`malformed_json` never appears on `commands/response`" in COMMANDS_SECTION
    assert "duplicate" not in schema("CommandResponse")["properties"]["status"]["enum"]


def test_the_guide_documents_the_clock_untrusted_refusal() -> None:
    assert "`clock_untrusted`" in COMMANDS_SECTION
    assert "final for that `command_id`" in COMMANDS_SECTION


def test_the_request_status_result_has_a_published_shape() -> None:
    result = schema("CommandResponse")["properties"]["result"]
    refs = {b.get("$ref", "").split("/")[-1] for b in result["anyOf"]}
    assert {"RequestStatusResult", "ResendFromResult"} <= refs
    assert "request_status" in COMMANDS_SECTION
    assert "RequestStatusResult" in COMMANDS_SECTION
