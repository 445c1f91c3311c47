"""Checks a response centre would run on what it receives: the published JSON Schemas
(docs/contract/schemas/*.json) with a stock validator (`jsonschema`), never our pydantic models.

`validate(suffix, payload)` picks the schema by topic, as an integrator reading the AsyncAPI
document would; `offset_times(payload)` lists every time that is not UTC with `Z`.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "docs" / "contract" / "schemas"

# topic suffix (after dispenser/v1/{unit_id}/) -> published schema, read from the AsyncAPI doc
SCHEMA_BY_SUFFIX = {
    "events": "EventEnvelope",
    "state/availability": "Availability",
    "state/health": "Health",
    "state/dispenser": "DispenserState",
    "heartbeat": "Heartbeat",
    "commands/request": "CommandRequest",
    "commands/response": "CommandResponse",
}

# An RFC 3339 date-time anywhere in a string value.
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?")


@cache
def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
    return loaded


@cache
def validator(name: str) -> Draft202012Validator:
    document = schema(name)
    Draft202012Validator.check_schema(document)
    return Draft202012Validator(document, format_checker=FormatChecker())


def errors(name: str, payload: object) -> list[str]:
    """Every reason the stock validator gives for refusing `payload` (empty: valid)."""
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator(name).iter_errors(payload)
    ]


def validate(suffix: str, payload: object) -> None:
    name = SCHEMA_BY_SUFFIX[suffix]
    problems = errors(name, payload)
    assert not problems, f"{suffix} payload does not match {name}.json: {problems}\n{payload}"


def offset_times(node: object, key: str = "") -> list[tuple[str, str]]:
    """(key, text) of every date-time that is not UTC with `Z`. Keys ending in `_local` are
    local wall times and carry their offset on purpose; a `slot_id` is a local date and time
    used as a name (2026-11-23T08:00)."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for name, value in node.items():
            found += offset_times(value, str(name))
    elif isinstance(node, list):
        for item in node:
            found += offset_times(item, key)
    elif isinstance(node, str) and not key.endswith("_local") and key != "slot_id":
        match = _DATE_TIME.fullmatch(node)
        if match is not None and match.group(3) != "Z":
            found.append((key, node))
    return found
