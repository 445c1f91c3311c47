"""The event envelope sent on ``dispenser/v1/{unit_id}/events``, the event kinds and VKP codes.

Also the pieces every payload model shares: the strict base model and the datetime types that
refuse naive times (a time without an offset is ambiguous twice a year in Europe/Oslo).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue

from agent.clock import TimeTrust
from agent.engine.catalogue import documented_kinds
from agent.engine.types import Priority

# --- shared by every payload model -----------------------------------------------------------

SEQ_MAX = 2**63 - 1  # the outbox sequence is a signed 64-bit SQLite integer that never wraps

NAIVE_DATETIME_MESSAGE = (
    "naive datetime (no UTC offset) is ambiguous: write it with an offset, "
    "e.g. 2026-03-29T08:00:00+02:00 or 2026-03-29T06:00:00Z"
)


def _to_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(NAIVE_DATETIME_MESSAGE)
    return value.astimezone(UTC)


# Any instant on the wire: must carry an offset; stored and re-sent as UTC ("...Z").
UtcDateTime = Annotated[datetime, AfterValidator(_to_utc)]

# Priority and TimeTrust are the agent's own StrEnums: on the wire they are their plain values.
LinkState = Literal["up", "down"]


class ContractModel(BaseModel):
    """Strict, closed and immutable: an unknown field or a wrongly typed value is an error.

    Strict mode still reads JSON strings as datetimes, dates and UUIDs, but never turns "5" into 5
    or a number into a datetime.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        # The unit always sends every field (null when it has no value): in the schema of what it
        # sends, every field is required.
        json_schema_serialization_defaults_required=True,
        # Validators and serializers are built on a model's first use: an idle unit that got no
        # command has built none of the command models (bench/rss_stages.py; about 0.6 MB).
        defer_build=True,
    )

    def to_payload(self) -> bytes:
        """The MQTT payload: compact UTF-8 JSON with the wire (alias) field names."""
        return self.model_dump_json().encode()


SCHEMA_VERSION_DESCRIPTION = (
    "Payload format and major version; reject versions you do not know. A new optional field "
    "keeps the version; a changed or removed one changes it (and the topic version)."
)


def schema_version(name: str) -> Any:
    """The `schema` field every payload the unit sends starts with (e.g. dispenser-event/1)."""
    return Field(default=name, alias="schema", description=SCHEMA_VERSION_DESCRIPTION)


# --- event kinds -----------------------------------------------------------------------------

# Every event kind (kind -> meaning), derived from the engine's catalogue (agent.engine.alerts),
# the one list: each kind there, and `<kind>_cleared` for each condition. The response-centre
# guide's table is generated from it. Receivers must accept kinds they do not know yet (forward
# compatible) and show them.
EVENT_KINDS: dict[str, str] = documented_kinds()

# Velferdsteknologisk knutepunkt alert codes for dispensers, code system version 0.9.0
# (http://ehelse.no/fhir/CodeSystem/vkp-alert-code-v090): code -> (display, meaning).
VKP_CODE_SYSTEM = "http://ehelse.no/fhir/CodeSystem/vkp-alert-code-v090"
VKP_CODES: dict[str, tuple[str, str]] = {
    "3": ("Medisindispenserhendelse", "deviation when using a dispenser (group)"),
    "3.3": ("medisin mangler bekreftelse", "no confirmation the dose was handed over (missed)"),
    "3.4": ("medisin teknisk feil", "technical fault, dispensing stopped"),
    "3.5": ("medisin feil rull", "fault with the roll (wrong roll), dispensing stopped"),
    "3.6": ("medisin mangler", "dispenser is empty"),
    "3.7": ("medisin mangler ikke utlevert", "dose not handed over: dispenser was empty"),
    "3.8": ("medisin mangler tidsplan", "dispenser has no schedule"),
    "3.9": ("medisin ikke tilkoblet", "not connected to mains power"),
    "3.10": ("medisin ingen kontakt", "no contact with the dispenser"),
    "3.11": ("medisin dispenser aapen", "dispenser is open"),
    "3.12": ("medisin innbrudd", "attempted forced opening"),
    "3.13": ("medisin utelatt full", "bin for missed doses is full, dispensing stopped"),
    "3.14": ("medisin rull stoppet", "roll is stuck, dispensing stopped"),
    "3.15": ("medisin mangler reise", "not enough doses for the planned trip"),
    "3.16": ("medisin ikke lest", "sachet could not be read, dispensing stopped"),
    "3.17": ("medisin batteri tomt", "battery empty, dispenser switched off"),
    "3.21": ("medisin rull behandlet", "sachets removed, new roll or dosing changed manually"),
    "3.22": ("medisin plan endret", "check the dosing plan after a change from the pharmacy"),
    "3.23": ("medisin melding ikke lest", "a message on the dispenser was not acknowledged"),
    "3.24": ("medisin venter", "medicine waiting"),
    "3.25": ("medisin behov pafyll", "few doses left"),
    "3.27": ("medisin batteri lavt", "battery running low"),
}

# --- the envelope ----------------------------------------------------------------------------

EVENT_SCHEMA: Literal["dispenser-event/1"] = "dispenser-event/1"
UUID7_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
KIND_PATTERN = r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$"
VKP_CODE_PATTERN = r"^3(\.[0-9]{1,2})?$"
UNIT_ID_FIELD_PATTERN = r"^[a-z0-9-]{3,64}$"  # same rule as topics.validate_unit_id


class EventEnvelope(ContractModel):
    """One event of one unit. Receivers deduplicate by `event_id` and order by (unit_id, seq)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_: Literal["dispenser-event/1"] = schema_version(EVENT_SCHEMA)
    event_id: str = Field(
        pattern=UUID7_PATTERN,
        description="UUIDv7 in lowercase text; the same event re-sent keeps its event_id.",
    )
    unit_id: str = Field(pattern=UNIT_ID_FIELD_PATTERN, description="The unit, as in the topic.")
    seq: int = Field(
        ge=1,
        le=SEQ_MAX,
        description=(
            "Per-unit sequence number, +1 per event, never reset (not by restart, not by factory "
            "reset). A missing number is a gap: ask for it again with resend_from."
        ),
    )
    session: int = Field(
        ge=1,
        le=SEQ_MAX,
        description="The availability session of the connection this copy was published on.",
    )
    kind: str = Field(
        pattern=KIND_PATTERN,
        max_length=64,
        description="snake_case event kind (see the guide); accept and show kinds not yet known.",
    )
    # strict=False on the enums: their plain string values are as good as the members
    priority: Priority = Field(strict=False, description="info < low < medium < high.")
    vkp_code: str | None = Field(
        default=None,
        pattern=VKP_CODE_PATTERN,
        description=(
            "VKP dispenser alert code (code system vkp-alert-code-v090) when the event is itself "
            "such an alert; null on events that clear, acknowledge or decide one (file one alert "
            "per event with a vkp_code, or per alert_id when it has one)."
        ),
    )
    occurred_at: UtcDateTime = Field(
        description="When it happened, by the unit's clock, in UTC; see time_trust."
    )
    time_trust: TimeTrust = Field(
        strict=False,
        description=(
            "How far occurred_at can be believed: synchronised (NTP), dispenser_rtc (set from the "
            "dispenser's clock), untrusted (neither; may be hours off)."
        ),
    )
    replayed: bool = Field(
        description=(
            "false: published on the connection during which the event was recorded. true: "
            "recorded before this connection came up (backlog) or re-sent on a resend_from "
            "command. A replayed copy may duplicate one already received."
        )
    )
    alert_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description=(
            "The latched alert this event raises or refers to (an acknowledgement, a clearing, "
            "a decision, a late intake of a missed dose): the same id as in ack_alert and "
            "health.active_alerts. The first event with an alert_id raises that alert; later "
            "ones are news about it, never a new alert."
        ),
    )
    data: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Kind-specific facts (JSON values). Never a patient name or national id.",
    )
