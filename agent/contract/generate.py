"""Generate the contract documents from the code, or check that the committed ones match.

    python -m agent.contract.generate           # write docs/contract/** and the guide's tables
    python -m agent.contract.generate --check   # exit 1 and name every file that drifted

Generated: ``docs/contract/asyncapi.json`` (AsyncAPI 3.0.0), ``docs/contract/schemas/<Model>.json``
(JSON Schema 2020-12 of every payload, from ``model_json_schema()``) and the tables between the
``<!-- generated:NAME:start -->`` / ``<!-- generated:NAME:end -->`` markers of
``docs/response-centre-guide.md`` (the prose around them is written by hand). Output is
deterministic (sorted keys, two-space indent, trailing newline) so the check is an exact compare.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from agent.contract.commands import CommandRequest, CommandResponse
from agent.contract.events import EVENT_KINDS, VKP_CODES, ContractModel, EventEnvelope
from agent.contract.state import Availability, DispenserState, Health, Heartbeat
from agent.contract.topics import CHANNELS, TOPIC_ROOT, UNIT_ID_PATTERN, ChannelSpec, TopicDirection
from agent.engine.catalogue import documented_deviations
from agent.engine.deviation import DEVIATIONS

REPO_ROOT = Path(__file__).resolve().parents[2]
ASYNCAPI_PATH = Path("docs/contract/asyncapi.json")
SCHEMA_DIR = Path("docs/contract/schemas")
GUIDE_PATH = Path("docs/response-centre-guide.md")

CONTRACT_VERSION = "1.0.0"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
MQTT_BINDING_VERSION = "0.2.0"

PAYLOAD_MODELS: dict[str, type[ContractModel]] = {
    "EventEnvelope": EventEnvelope,
    "Availability": Availability,
    "Health": Health,
    "DispenserState": DispenserState,
    "Heartbeat": Heartbeat,
    "CommandRequest": CommandRequest,
    "CommandResponse": CommandResponse,
}

# What the unit receives is described as it is validated; what it sends, as it is serialised
# (every field present, times in UTC with Z).
INCOMING: frozenset[str] = frozenset({"CommandRequest"})

Json = dict[str, Any]
SchemaMode = Literal["validation", "serialization"]

# Stock validators do not check `format` unless asked to: each format the contract uses also gets
# a pattern, so a payload that passes the schema is one the unit reads the same way.
UUID_TEXT = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
DATE_TEXT = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_CLOCK = "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]+)?"
DATE_TIME_TEXT: dict[SchemaMode, str] = {
    "validation": f"^{_CLOCK}(Z|[+-][0-9]{{2}}:[0-9]{{2}})$",  # any offset, never none
    "serialization": f"^{_CLOCK}Z$",  # the unit always sends UTC with Z
}


class GenerateError(RuntimeError):
    """The inputs cannot be turned into documents (e.g. the guide lost a marker)."""


def dumps(document: object) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --- JSON Schemas ----------------------------------------------------------------------------


def _mode(name: str) -> SchemaMode:
    return "validation" if name in INCOMING else "serialization"


def plain_json_schema(node: object, mode: SchemaMode) -> Any:
    """pydantic's schema as plain JSON Schema 2020-12: without OpenAPI's ``discriminator`` (the
    ``oneOf`` of ``const`` names already selects exactly one branch, and JSON Schema validators
    ignore it) and with a pattern beside every ``format`` the contract uses."""
    if isinstance(node, list):
        return [plain_json_schema(item, mode) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {
        key: plain_json_schema(value, mode)
        for key, value in node.items()
        if not (key == "discriminator" and isinstance(value, dict))
    }
    pattern = {
        "date-time": DATE_TIME_TEXT[mode],
        "date": DATE_TEXT,
        "uuid": UUID_TEXT,
    }.get(converted.get("format", "") if converted.get("type") == "string" else "")
    if pattern is not None:
        converted.setdefault("pattern", pattern)
    return converted


def payload_schema(name: str, model: type[ContractModel]) -> Json:
    """Standalone JSON Schema of one payload (its sub-schemas under ``$defs``)."""
    mode = _mode(name)
    schema: Json = plain_json_schema(model.model_json_schema(mode=mode), mode)
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def schema_files() -> dict[Path, str]:
    return {
        SCHEMA_DIR / f"{name}.json": dumps(payload_schema(name, model))
        for name, model in PAYLOAD_MODELS.items()
    }


# --- AsyncAPI --------------------------------------------------------------------------------


def _component_schemas() -> Json:
    """All payload schemas and their sub-schemas, flat under ``components.schemas``."""
    schemas: Json = {}
    for name, model in PAYLOAD_MODELS.items():
        mode = _mode(name)
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
        defs: Json = schema.pop("$defs", {})
        for def_name, definition in [*defs.items(), (name, schema)]:
            converted = plain_json_schema(definition, mode)
            if def_name in schemas and schemas[def_name] != converted:
                raise GenerateError(f"two different schemas are both named {def_name!r}")
            schemas[def_name] = converted
    return schemas


def _first_line(model: type[ContractModel]) -> str:
    return (model.__doc__ or model.__name__).strip().splitlines()[0]


def _operation_id(channel: ChannelSpec) -> str:
    verb = "send" if channel.direction is TopicDirection.UNIT_TO_CENTRE else "receive"
    return f"{verb}{channel.message}"


def _operation_bindings(channel: ChannelSpec) -> Json:
    mqtt: Json = {
        "qos": channel.qos,
        "retain": channel.retain,
        "bindingVersion": MQTT_BINDING_VERSION,
    }
    if channel.key == "heartbeat":
        mqtt["messageExpiryInterval"] = {
            "type": "integer",
            "minimum": 1,
            "description": "Two heartbeat intervals, so a stale heartbeat is never delivered.",
        }
    if channel.key == "command_request":
        mqtt["messageExpiryInterval"] = {
            "type": "integer",
            "minimum": 1,
            "maximum": 604800,
            "description": "The sender sets it to the seconds left until expires_at.",
        }
    return {"mqtt": mqtt}


def _messages() -> Json:
    messages: Json = {}
    for name, model in PAYLOAD_MODELS.items():
        message: Json = {
            "name": name,
            "title": name,
            "summary": _first_line(model),
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }
        if name in ("CommandRequest", "CommandResponse"):
            message["correlationId"] = {
                "description": "The command id, in the payload for MQTT 3.1.1 receivers too.",
                "location": "$message.payload#/command_id",
            }
        if name == "CommandRequest":
            message["bindings"] = {
                "mqtt": {
                    "bindingVersion": MQTT_BINDING_VERSION,
                    "correlationData": {
                        "description": "Optional (MQTT 5); echoed unchanged on the response."
                    },
                    "responseTopic": {
                        "type": "string",
                        "description": (
                            "Optional (MQTT 5). Without it the response goes to "
                            f"{TOPIC_ROOT}/{{unit_id}}/commands/response."
                        ),
                    },
                }
            }
        messages[name] = message
    return messages


def asyncapi_document() -> Json:
    channels: Json = {}
    operations: Json = {}
    for channel in CHANNELS:
        channels[channel.key] = {
            "address": f"{TOPIC_ROOT}/{{unit_id}}/{channel.suffix}",
            "description": channel.summary,
            "messages": {channel.message: {"$ref": f"#/components/messages/{channel.message}"}},
            "parameters": {"unit_id": {"$ref": "#/components/parameters/unit_id"}},
        }
        operation: Json = {
            "action": "send" if channel.direction is TopicDirection.UNIT_TO_CENTRE else "receive",
            "bindings": _operation_bindings(channel),
            "channel": {"$ref": f"#/channels/{channel.key}"},
            "messages": [{"$ref": f"#/channels/{channel.key}/messages/{channel.message}"}],
            "summary": channel.summary,
        }
        if channel.key == "command_request":
            operation["reply"] = {
                "channel": {"$ref": "#/channels/command_response"},
                "messages": [{"$ref": "#/channels/command_response/messages/CommandResponse"}],
            }
        operations[_operation_id(channel)] = operation
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Dispenser edge agent: MQTT contract",
            "version": CONTRACT_VERSION,
            "description": (
                "What one medication-dispenser unit publishes to, and accepts from, the municipal "
                "response centre over MQTT. Events are QoS 1 and at least once: deduplicate by "
                "event_id, order and detect gaps by (unit_id, seq). Availability carries a session "
                "number; ignore an offline message from an older session. Commands carry an id and "
                "an expiry and are answered on commands/response. No payload ever carries a "
                "patient name or national id. See docs/response-centre-guide.md."
            ),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": _messages(),
            "parameters": {
                "unit_id": {
                    "description": (
                        f"The unit's id, {UNIT_ID_PATTERN} (never a patient reference)."
                    ),
                    "examples": ["oslo-0001"],
                }
            },
            "schemas": _component_schemas(),
        },
    }


# --- the guide's generated tables ------------------------------------------------------------


def _topics_table() -> str:
    rows = [
        "| topic (after `dispenser/v1/{unit_id}/`) | direction | QoS | retained | payload |",
        "|---|---|---|---|---|",
    ]
    for channel in CHANNELS:
        direction = (
            "unit → centre"
            if channel.direction is TopicDirection.UNIT_TO_CENTRE
            else "centre → unit"
        )
        retained = "yes" if channel.retain else "no"
        schema = f"[{channel.message}](contract/schemas/{channel.message}.json)"
        rows.append(f"| `{channel.suffix}` | {direction} | {channel.qos} | {retained} | {schema} |")
    return "\n".join(rows)


def _event_kinds_table() -> str:
    deviations = documented_deviations()
    rows = ["| kind | deviation | meaning |", "|---|---|---|"]
    rows += [
        f"| `{kind}` | {deviations[kind]} | {meaning} |" for kind, meaning in EVENT_KINDS.items()
    ]
    return "\n".join(rows)


def _deviation_table() -> str:
    rows = ["| deviation | display (nb) | meaning |", "|---|---|---|"]
    rows += [
        f"| `{code.value}` | {info.display_nb} | {info.meaning} |"
        for code, info in DEVIATIONS.items()
    ]
    return "\n".join(rows)


def _vkp_table() -> str:
    rows = ["| vkp_code | display (nb) | meaning |", "|---|---|---|"]
    rows += [
        f"| `{code}` | {display} | {meaning} |" for code, (display, meaning) in VKP_CODES.items()
    ]
    return "\n".join(rows)


GUIDE_SECTIONS = {
    "topics": _topics_table,
    "event-kinds": _event_kinds_table,
    "deviation-categories": _deviation_table,
    "vkp-codes": _vkp_table,
}


def render_guide(text: str) -> str:
    """`text` with every generated section replaced by what the code says now."""
    for name, render in GUIDE_SECTIONS.items():
        start, end = f"<!-- generated:{name}:start -->", f"<!-- generated:{name}:end -->"
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
        matches = list(pattern.finditer(text))
        if len(matches) != 1:
            raise GenerateError(f"{GUIDE_PATH}: expected exactly one {start} ... {end} section")
        found = matches[0]
        text = f"{text[: found.start()]}{start}\n{render()}\n{end}{text[found.end() :]}"
    return text


# --- write / check ---------------------------------------------------------------------------


def expected_files(root: Path) -> dict[Path, str]:
    """Every generated file (relative path -> exact content) for the tree at `root`."""
    guide = root / GUIDE_PATH
    if not guide.is_file():
        raise GenerateError(f"{GUIDE_PATH} is missing: it holds the hand-written prose")
    files = {ASYNCAPI_PATH: dumps(asyncapi_document()), **schema_files()}
    files[GUIDE_PATH] = render_guide(guide.read_text(encoding="utf-8"))
    return files


def _stray_schemas(root: Path, expected: dict[Path, str]) -> list[Path]:
    directory = root / SCHEMA_DIR
    if not directory.is_dir():
        return []
    return sorted(
        path.relative_to(root)
        for path in directory.glob("*.json")
        if path.relative_to(root) not in expected
    )


def check(root: Path) -> list[str]:
    """One line per drifted file; empty when the documents match the code."""
    expected = expected_files(root)
    problems = []
    for relative, content in sorted(expected.items()):
        path = root / relative
        if not path.is_file():
            problems.append(f"{relative}: missing")
        elif path.read_text(encoding="utf-8") != content:
            problems.append(f"{relative}: differs from the code")
    problems += [
        f"{path}: not generated by the code (stale)" for path in _stray_schemas(root, expected)
    ]
    return problems


def write(root: Path) -> list[Path]:
    """Write every file that changed and delete stale schema files; returns what was touched."""
    expected = expected_files(root)
    touched = []
    for relative, content in sorted(expected.items()):
        path = root / relative
        if not path.is_file() or path.read_text(encoding="utf-8") != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
            touched.append(relative)
    for stray in _stray_schemas(root, expected):
        (root / stray).unlink()
        touched.append(stray)
    return touched


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent.contract.generate",
        description="Generate the MQTT contract documents from agent.contract.",
    )
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if any document drifted"
    )
    parser.add_argument(
        "--root", type=Path, default=REPO_ROOT, help="repository root (default: this checkout)"
    )
    args = parser.parse_args(argv)
    root: Path = args.root
    try:
        if args.check:
            problems = check(root)
            for problem in problems:
                print(f"contract drift: {problem}", file=sys.stderr)
            if problems:
                print("run: python -m agent.contract.generate", file=sys.stderr)
                return 1
            print("contract documents match the code")
            return 0
        for relative in write(root):
            print(f"wrote {relative}")
    except GenerateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
