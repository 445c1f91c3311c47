"""The event envelope sent on ``dispenser/v1/{unit_id}/events``, the event kinds and VKP codes.

Also the pieces every payload model shares: the strict base model and the datetime types that
refuse naive times (a time without an offset is ambiguous twice a year in Europe/Oslo).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue

from agent.clock import TimeTrust
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
    )

    def to_payload(self) -> bytes:
        """The MQTT payload: compact UTF-8 JSON with the wire (alias) field names."""
        return self.model_dump_json().encode()


# --- event kinds -----------------------------------------------------------------------------

# The one list of event kinds (kind -> meaning). The response-centre guide's table is generated
# from it. Receivers must accept kinds they do not know yet (forward compatible) and show them.
EVENT_KINDS: dict[str, str] = {
    "slot_outcome": (
        "A dose slot ended: data.outcome is taken, missed, refused or skipped_paused "
        "(exactly one per slot)."
    ),
    "dose_presented": "The dose of a slot was dispensed and is waiting to be taken.",
    "dose_not_taken": (
        "The presented dose is still not taken at an escalation step (before the slot ends)."
    ),
    "wrong_roll": "The loaded roll does not belong to this unit's binding; dispensing stopped.",
    "roll_inserted": "A multidose roll was loaded (roll facts in data, never patient data).",
    "roll_removed": "The roll was taken out of the dispenser.",
    "roll_expired": "The roll is past its use-by time; dispensing from it stopped.",
    "roll_period_passed": "The schedule has gone past the last date the roll covers.",
    "roll_empty": "The roll has no sachets left.",
    "low_supply": "Few doses left on the roll (count in data).",
    "sachet_discarded": "A sachet went to the discard bin instead of being handed over.",
    "sachet_mismatch": "A sachet's printed time does not match the due slot; not handed over.",
    "dispense_failed": "The dispenser could not dispense a due dose (reason in data).",
    "mains_lost": "The dispenser lost mains power and runs on battery.",
    "mains_restored": "Mains power is back.",
    "battery_low": "The dispenser's battery is running low.",
    "battery_empty": "The dispenser's battery is empty; the dispenser switched off.",
    "lid_open": "The dispenser is open.",
    "fault_raised": "The dispenser reported a technical fault (code in data).",
    "fault_cleared": "A technical fault reported earlier is gone.",
    "no_contact": "No contact with the dispenser for longer than the limit.",
    "contact_restored": "Contact with the dispenser is back.",
    "clock_untrusted": "The unit's clock cannot be trusted; occurred_at may be wrong.",
    "clock_trusted": "The unit's clock is trusted again (synchronised).",
    "clock_jumped": "The wall clock stepped (size in data); schedules follow the new time.",
    "no_schedule": "The unit has no schedule: no doses will be given.",
    "paused": "A temporary stop started: no doses and no missed-dose alerts until resumed.",
    "resumed": "The temporary stop ended; doses are given again.",
    "schedule_updated": "A new schedule version is in effect (version in data).",
    "alert_acknowledged": "A person acknowledged a latched alert (acknowledged is not resolved).",
    "command_rejected": "A command was refused; the reason also goes to commands/response.",
    "agent_started": "The agent started (version and start reason in data).",
    "outbox_dropped": "Superseded state events were dropped from a full backlog (seqs in data).",
    "factory_reset": "The unit was reset for a new patient; binding and schedule erased.",
}

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

    schema_: Literal["dispenser-event/1"] = Field(
        default=EVENT_SCHEMA,
        alias="schema",
        description="Payload format and major version; reject versions you do not know.",
    )
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
            "reset). A missing number is a gap, explained by an outbox_dropped event if dropped."
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
        description="VKP dispenser alert code (code system vkp-alert-code-v090) when one applies.",
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
        description="Set when the event raises (or refers to) a latched alert; see ack_alert.",
    )
    data: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Kind-specific facts (JSON values). Never a patient name or national id.",
    )
