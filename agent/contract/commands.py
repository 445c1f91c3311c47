"""Commands from the response centre (``commands/request``) and the unit's answers.

Every command has an id, an issue time and an expiry at most seven days later, so a "pause" that
waited at the broker while the unit was offline never runs days too late. `parse_command` turns a
payload into a `CommandRequest` or raises `CommandInvalid` with a code, a readable message and,
whenever it could be read, the command id, so that even a broken command gets an answer.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from typing import Annotated, Literal, get_args
from uuid import UUID

from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from agent.contract.events import SEQ_MAX, ContractModel, LinkState, UtcDateTime, schema_version
from agent.contract.state import Health
from agent.engine.schedule import (
    MAX_DOSES_PER_DAY,
    MIN_INTERVAL_FLOOR,
    MIN_INTERVAL_MAX,
    Schedule,
    ScheduleRule,
    parse_time,
)
from agent.engine.types import (
    FROM_RESPONSE_CENTRE,
    AcknowledgeAlert,
    DiscardUnplanned,
    EndPause,
    EngineInput,
    PauseWindow,
    SetSchedule,
    Silence,
    StartPause,
)

MAX_COMMAND_LIFETIME = timedelta(days=7)  # matches the broker session expiry
MAX_COMMAND_BYTES = 64 * 1024

# CommandInvalid / CommandResponse.error codes produced by parsing
MALFORMED_JSON = "malformed_json"
INVALID_COMMAND = "invalid_command"
UNKNOWN_COMMAND = "unknown_command"

HHMM_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
DoseTime = Annotated[str, Field(pattern=HHMM_PATTERN, description="Local time, 24-hour HH:MM.")]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAY_INDEX: dict[str, int] = {name: index for index, name in enumerate(get_args(Weekday))}
DayTimes = Annotated[list[DoseTime], Field(max_length=MAX_DOSES_PER_DAY)]
OperatorId = Annotated[str, Field(min_length=1, max_length=64)]

# --- the commands ----------------------------------------------------------------------------


class ScheduleRuleSpec(ContractModel):
    """Dose times from `effective_from` (local date, inclusive) until the next rule's date."""

    effective_from: date
    times: DayTimes = Field(description="Every day's dose times; [] means no doses.")
    weekday_times: dict[Weekday, DayTimes] = Field(
        default_factory=dict, description="Replaces `times` on the given weekdays."
    )

    def to_rule(self) -> ScheduleRule:
        """The engine's rule; raises ScheduleError (a ValueError) with a readable message."""
        return ScheduleRule(
            effective_from=self.effective_from,
            times=tuple(parse_time(t) for t in self.times),
            weekday_times={
                WEEKDAY_INDEX[day]: tuple(parse_time(t) for t in day_times)
                for day, day_times in self.weekday_times.items()
            },
        )


class UpdateScheduleCommand(ContractModel):
    """Desired schedule, versioned: the unit keeps the highest version it has accepted.

    Rules JSON Schema cannot express, checked by the unit (`invalid_command` otherwise): no two
    doses closer than 30 minutes (across midnight too), nor closer than `min_interval_minutes`;
    `zone` is an IANA time zone the unit knows; no two rules with the same `effective_from`.
    """

    name: Literal["update_schedule"]
    version: int = Field(ge=1, le=SEQ_MAX)
    zone: str = Field(default="Europe/Oslo", min_length=1, max_length=64)
    rules: list[ScheduleRuleSpec] = Field(min_length=1, max_length=100)
    min_interval_minutes: int | None = Field(
        default=None,
        ge=MIN_INTERVAL_FLOOR // timedelta(minutes=1),
        le=MIN_INTERVAL_MAX // timedelta(minutes=1),
        description=(
            "Shortest time from an intake to the next dose the unit makes available (an early "
            "TAKE included). null: half the smallest spacing between two doses, at most 12 h. "
            "No two doses of the schedule may be closer than it."
        ),
    )

    @model_validator(mode="after")
    def _valid_schedule(self) -> UpdateScheduleCommand:
        self.to_schedule()  # the engine's checks: zone, spacing, duplicate dates ...
        return self

    def to_schedule(self) -> Schedule:
        interval = self.min_interval_minutes
        return Schedule.build(
            zone=self.zone,
            rules=[rule.to_rule() for rule in self.rules],
            min_interval=None if interval is None else timedelta(minutes=interval),
        )


PauseReason = Literal["hospital", "respite", "travel", "other"]


class PauseCommand(ContractModel):
    """Temporary stop: slots due in [start, end) are skipped without missed-dose alarms.

    A pause lasts at most the unit's maximum (30 days by default; a longer one is refused). A
    travel pause with `take_along` has the trip's sachets dispensed one after another from its
    start, for the patient to take along (each slot ends `dispensed_for_travel`).

    Rules JSON Schema cannot express, checked by the unit (`invalid_command` otherwise): `end`
    must be after start; end - start at most the unit's maximum pause."""

    # take_along needs reason travel and an end: JSON Schema can say that much
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"take_along": {"const": True}}, "required": ["take_along"]},
            "then": {
                "properties": {"reason": {"const": "travel"}, "end": {"type": "string"}},
                "required": ["reason", "end"],
            },
        }
    )

    name: Literal["pause"]
    pause_id: str = Field(min_length=1, max_length=64)
    start: UtcDateTime
    end: UtcDateTime | None = Field(default=None, description="null: until a resume command.")
    reason: PauseReason = Field(default="other", description="Why the patient is away.")
    take_along: bool = Field(
        default=False,
        description="Travel only, with an end: dispense the trip's sachets at its start.",
    )

    @model_validator(mode="after")
    def _end_after_start(self) -> PauseCommand:
        if self.end is not None and self.end <= self.start:
            raise ValueError(
                f"end ({self.end.isoformat()}) must be after start ({self.start.isoformat()})"
            )
        if self.take_along and (self.reason != "travel" or self.end is None):
            raise ValueError("take_along needs reason travel and an end")
        return self


class ResumeCommand(ContractModel):
    name: Literal["resume"]
    pause_id: str | None = Field(
        default=None, min_length=1, max_length=64, description="null: whichever pause is active."
    )


class SilenceCommand(ContractModel):
    """Silence local sound and light for a while; no alert is cleared."""

    name: Literal["silence"]
    minutes: int = Field(ge=1, le=120)


class AckAlertCommand(ContractModel):
    """A person acknowledged a latched alert (acknowledged is not resolved)."""

    name: Literal["ack_alert"]
    alert_id: str = Field(min_length=1, max_length=128)


class DiscardUnplannedCommand(ContractModel):
    """A person decided that sachets packed for a time the schedule lacks (a `plan_mismatch`
    alert, VKP 3.22) go to the discard bin. The unit never discards such a sachet on its own: it
    holds it, and every dose behind it, until this command or an `update_schedule` that has the
    sachet's time.

    Refused (`rejected`, `error.code`): `roll_not_loaded` (another roll, or none, is loaded),
    `foreign_roll` (the loaded roll is another patient's: never cut), `sachet_not_at_reader`
    (`sachet_index` is not the sachet at the reader now), `sachet_planned` (that sachet is
    packed for a dose time of the schedule: it is given, not discarded). Answered `ok` once the
    decision is recorded; the discard follows as `plan_mismatch_decided` and `sachet_discarded`
    (reason `discard_decided`) events.
    """

    name: Literal["discard_unplanned"]
    roll_id: str = Field(min_length=1, max_length=64, description="The loaded roll's id.")
    sachet_index: int | None = Field(
        default=None,
        ge=0,
        le=0xFFFF,
        description="The sachet at the reader (the alert's data.sachet_index); null: every "
        "sachet of this roll that is packed for no dose time of the schedule.",
    )


class RequestStatusCommand(ContractModel):
    """Republish the retained state topics and answer with a status summary."""

    name: Literal["request_status"]


class RequestSummaryCommand(ContractModel):
    """Answer with the adherence-and-deviation summary of one local day or month (the same data
    as the `adherence_summary` event), up to now if the period is still running."""

    name: Literal["request_summary"]
    period: Literal["day", "month"]
    label: str = Field(
        pattern=r"^\d{4}-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?$",
        description="The local day (YYYY-MM-DD) for period day, the month (YYYY-MM) for month.",
    )

    @model_validator(mode="after")
    def _label_fits_period(self) -> RequestSummaryCommand:
        try:
            if self.period == "day":
                date.fromisoformat(self.label)
            else:
                date.fromisoformat(f"{self.label}-01")
        except ValueError:
            raise ValueError(f"label {self.label!r} is no {self.period}") from None
        if (self.period == "day") != (len(self.label) == 10):
            raise ValueError(f"label {self.label!r} is no {self.period}")
        return self


class ResendFromCommand(ContractModel):
    """Publish again, with replayed=true, every event still kept from `seq` on."""

    name: Literal["resend_from"]
    seq: int = Field(ge=1, le=SEQ_MAX)


PublicKeyText = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9+/]{43}=$",
        description="An Ed25519 public key: standard base64 of its 32 raw bytes.",
    ),
]
KeyId = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$", description="As signature.key_id.")]


class RotateCentreKeysCommand(ContractModel):
    """Change the response-centre keys the unit trusts (signed by a key it trusts now).

    The keys from the unit's configuration and every key added here are trusted until retired
    here; a retired key is never trusted again, even if the configuration still lists it. Refused
    (`rejected`, `no_trusted_key_left`) when no trusted key would remain. The change survives a
    restart and a reset (keys belong to the centre, not to a patient)."""

    name: Literal["rotate_centre_keys"]
    add: list[PublicKeyText] = Field(default_factory=list, max_length=8)
    retire: list[KeyId] = Field(default_factory=list, max_length=8)

    @model_validator(mode="after")
    def _changes_something(self) -> RotateCentreKeysCommand:
        if not self.add and not self.retire:
            raise ValueError("add or retire at least one key")
        return self


class ResetUnitCommand(ContractModel):
    """End of service: every trace of the patient is removed from the unit.

    Only on site: a technician presents the signed command instead of holding the technician
    button (`dispenser-agent reset --termination --signed-reset FILE`), as proof that the
    response centre ordered it. Sent over MQTT it is refused (`on_site_only`): the unit must not
    erase its data at a distance."""

    name: Literal["reset_unit"]


AnyCommand = (
    UpdateScheduleCommand
    | PauseCommand
    | ResumeCommand
    | SilenceCommand
    | AckAlertCommand
    | DiscardUnplannedCommand
    | RequestStatusCommand
    | RequestSummaryCommand
    | ResendFromCommand
    | RotateCentreKeysCommand
    | ResetUnitCommand
)
CentreCommand = Annotated[AnyCommand, Field(discriminator="name")]
COMMAND_NAMES: tuple[str, ...] = tuple(
    get_args(model.model_fields["name"].annotation)[0] for model in get_args(AnyCommand)
)


class CommandSignature(ContractModel):
    """An Ed25519 signature by a response-centre key (agent/contract/signing.py: what it covers)."""

    alg: Literal["ed25519"]
    key_id: str = Field(min_length=1, max_length=64, description="SHA-256 of the key, 16 hex.")
    value: str = Field(min_length=1, max_length=200, description="base64url, no padding.")


class CommandRequest(ContractModel):
    """A command addressed to one unit, named by the topic and, when signed, by `unit_id`.

    Every command but request_status and resend_from must be signed (`signature`) and name its
    target unit; the unit refuses it otherwise (docs/response-centre-guide.md, "Signed commands").

    Rules JSON Schema cannot express, checked by the unit (`invalid_command` otherwise):
    `expires_at` must be after issued_at and at most 7 days after it."""

    command_id: UUID = Field(description="Chosen by the sender; echoed in the response.")
    unit_id: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9-]{3,64}$",
        description="The unit the command is for; required in a signed command.",
    )
    issued_at: UtcDateTime
    expires_at: UtcDateTime = Field(
        description="After issued_at, at most 7 days later; an expired command is not executed."
    )
    issued_by: OperatorId = Field(description="Operator id at the response centre (no names).")
    command: CentreCommand
    signature: CommandSignature | None = Field(
        default=None, description="Required for every command but request_status, resend_from."
    )
    # the request as received (parsed JSON): the signature covers these values, not a re-encoding
    _wire: dict[str, object] = PrivateAttr(default_factory=dict)

    @property
    def wire(self) -> dict[str, object]:
        return self._wire

    @model_validator(mode="after")
    def _expiry_window(self) -> CommandRequest:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        if self.expires_at - self.issued_at > MAX_COMMAND_LIFETIME:
            raise ValueError("expires_at must be at most 7 days after issued_at")
        return self

    def is_expired(self, now: datetime) -> bool:
        """True from `expires_at` on; `now` must be an aware datetime."""
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        return now >= self.expires_at

    def message_expiry_s(self, now: datetime) -> int:
        """Seconds left until expiry (for an MQTT 5 message expiry), at least 0."""
        return max(0, int((self.expires_at - now).total_seconds()))

    def to_engine_input(self, source: str = FROM_RESPONSE_CENTRE) -> EngineInput | None:
        """The engine input this command becomes; None for commands the shell answers itself
        (request_status, request_summary, resend_from). `source` says who decides (on site or
        the centre)."""
        command = self.command
        if isinstance(command, UpdateScheduleCommand):
            return SetSchedule(schedule=command.to_schedule(), version=command.version)
        if isinstance(command, PauseCommand):
            return StartPause(
                PauseWindow(
                    command.pause_id,
                    command.start,
                    command.end,
                    reason=command.reason,
                    take_along=command.take_along,
                )
            )
        if isinstance(command, ResumeCommand):
            return EndPause(command.pause_id)
        if isinstance(command, SilenceCommand):
            return Silence(timedelta(minutes=command.minutes))
        if isinstance(command, AckAlertCommand):
            return AcknowledgeAlert(alert_id=command.alert_id, by=self.issued_by)
        if isinstance(command, DiscardUnplannedCommand):
            return DiscardUnplanned(command.roll_id, command.sachet_index, self.issued_by, source)
        return None


# --- the answers -----------------------------------------------------------------------------


class CommandError(ContractModel):
    code: str = Field(min_length=1, max_length=64, description="Stable snake_case reason.")
    message: str = Field(max_length=2000, description="For people; do not parse.")


CommandStatus = Literal["ok", "rejected", "expired", "error"]
_STATUSES_WITH_ERROR = frozenset({"rejected", "expired", "error"})
COMMAND_RESPONSE_SCHEMA = "dispenser-command-response/1"


class NextSlotView(ContractModel):
    slot_id: str = Field(description="The slot's local date and time, e.g. 2026-11-23T08:00.")
    due_utc: UtcDateTime


class OpenSlotView(ContractModel):
    slot_id: str
    phase: str = Field(description="Where the slot is: e.g. due, dispensing, presented.")
    dispense_id: int | None
    held_reason: str | None = Field(description="Why it waits (as in dose_held), or null.")


class UnplannedSachetView(ContractModel):
    roll_id: str
    sachet_index: int = Field(ge=0)
    intended_utc: UtcDateTime | None = Field(description="The time the sachet is packed for.")
    alert_id: str = Field(description="The plan_mismatch alert waiting for a decision.")


class LatchedAlertView(ContractModel):
    alert_id: str
    kind: str
    raised_at: UtcDateTime
    acknowledged_by: str | None
    resolved: bool = Field(description="Its cause is gone (a missed dose: at once).")


class EngineStatusView(ContractModel):
    """What the dose engine knows now."""

    bound: bool = Field(description="The unit is bound to a patient (never who).")
    schedule_version: int = Field(ge=0, description="0: no schedule yet.")
    link: LinkState = Field(description="The dispenser link as the engine sees it.")
    roll_id: str | None
    roll_state: str | None = Field(description="null: no roll; else e.g. ok, foreign.")
    sachets_remaining: int | None = Field(ge=0)
    next_slot: NextSlotView | None
    open_slots: list[OpenSlotView]
    pause_id: str | None = Field(description="The pause in force now, if any.")
    unplanned_sachet: UnplannedSachetView | None = Field(
        description="A sachet held for a plan decision (VKP 3.22), if any."
    )
    conditions: list[str] = Field(description="As health.active_conditions.")
    active_alerts: list[str] = Field(description="As health.active_alerts (bare alert ids).")
    latched_alerts: list[LatchedAlertView]


class RequestStatusResult(ContractModel):
    """The result of request_status: the engine's view, the health payload, the link."""

    engine: EngineStatusView
    health: Health
    dispenser_link: LinkState


class ResendFromResult(ContractModel):
    """The result of resend_from: the events from_seq..until_seq are published again."""

    from_seq: int = Field(ge=1, le=SEQ_MAX)
    until_seq: int = Field(ge=0, le=SEQ_MAX, description="The last event recorded when asked.")


class SummaryDoses(ContractModel):
    planned: int = Field(ge=0)
    given: int = Field(ge=0)
    taken: int = Field(ge=0)
    taken_unconfirmed: int = Field(ge=0)
    late: int = Field(ge=0)
    missed: int = Field(ge=0)
    refused: int = Field(ge=0)
    skipped_paused: int = Field(ge=0)
    dispensed_for_travel: int = Field(ge=0)
    open: int = Field(ge=0)


class SummaryDeviation(ContractModel):
    category: str
    kind: str
    seq: int = Field(ge=1, le=SEQ_MAX)
    event_id: str
    at: UtcDateTime
    priority: str
    vkp_code: str | None
    alert_id: str | None
    slot_id: str | None
    outcome: str
    acknowledged_by: str | None
    acknowledged_at: UtcDateTime | None
    resolved_at: UtcDateTime | None
    resolved_by: str | None


class SummaryResult(ContractModel):
    """The result of request_summary: as the data of an `adherence_summary` event."""

    period: Literal["day", "month"]
    label: str
    period_start: UtcDateTime
    period_end: UtcDateTime
    made_at: UtcDateTime
    ack_limit_s: int = Field(ge=0)
    doses: SummaryDoses
    adherence: float | None = Field(ge=0, le=1)
    deviations_by_category: dict[str, int]
    deviations: list[SummaryDeviation]
    deviations_not_listed: int = Field(ge=0)


class CommandResponse(ContractModel):
    """Exactly one answer per command id, for ever: a command id seen before (a broker
    redelivery, or the same id sent again) gets its first answer again, byte for byte, and is
    not executed twice. The same answer can therefore arrive more than once: keep one per
    command_id."""

    schema_: Literal["dispenser-command-response/1"] = schema_version(COMMAND_RESPONSE_SCHEMA)
    command_id: str = Field(min_length=1, max_length=64, description="The request's command_id.")
    status: CommandStatus
    error: CommandError | None = Field(
        default=None, description="Required for rejected, expired and error; null for ok."
    )
    result: RequestStatusResult | ResendFromResult | SummaryResult | None = Field(
        default=None,
        description="request_status, request_summary and resend_from: their result; every other "
        "command: null.",
    )
    responded_at: UtcDateTime

    @model_validator(mode="after")
    def _error_matches_status(self) -> CommandResponse:
        if self.status == "ok" and self.error is not None:
            raise ValueError("status ok carries no error")
        if self.status in _STATUSES_WITH_ERROR and self.error is None:
            raise ValueError(f"status {self.status} needs an error {{code, message}}")
        return self

    @classmethod
    def for_invalid(cls, problem: CommandInvalid, at: datetime) -> CommandResponse | None:
        """The `rejected` answer to an unparsable command, or None if its id was unreadable."""
        if problem.command_id is None:
            return None
        return cls(
            command_id=problem.command_id,
            status="rejected",
            error=CommandError(code=problem.code, message=problem.message),
            responded_at=at,
        )


# --- parsing ---------------------------------------------------------------------------------


class CommandInvalid(ValueError):  # noqa: N818 - the name the daemon's API uses
    """A command payload that cannot be executed.

    `code` is malformed_json, invalid_command or unknown_command; `command_id` is the canonical
    text of the payload's command_id when that much was readable (so the unit can still answer),
    `name` the command's name when it was a readable string.
    """

    def __init__(
        self, code: str, message: str, command_id: str | None = None, name: str | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.command_id = command_id
        self.name = name


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _integral_number(text: str) -> int | float:
    """JSON Schema counts 5.0 as an integer; so does the unit (a fraction stays a float)."""
    value = float(text)
    return int(value) if value.is_integer() else value


def _readable_command_id(value: object) -> str | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return str(UUID(value))
    except ValueError:
        return None


def _where(loc: tuple[int | str, ...]) -> str:
    parts = list(loc)
    # drop the discriminator tag pydantic inserts: command.silence.minutes -> command.minutes
    if len(parts) >= 2 and parts[0] == "command" and parts[1] in COMMAND_NAMES:
        del parts[1]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "[key]":  # a bad key of a mapping, e.g. weekday_times.sunday
            text += " (key)"
        else:
            text += f".{part}" if text else part
    return text or "payload"


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, e.g. ``command.minutes: Input should be less than or equal to 120``."""
    lines = []
    for problem in error.errors(include_url=False):
        message = problem["msg"].removeprefix("Value error, ")
        if (
            problem["type"] == "string_pattern_mismatch"
            and problem.get("ctx", {}).get("pattern") == HHMM_PATTERN
        ):
            message = f"{problem['input']!r:.40} is not a dose time; expected HH:MM, e.g. '08:00'"
        lines.append(f"{_where(problem['loc'])}: {message}")
    return "; ".join(lines)


def parse_command(payload: bytes) -> CommandRequest:
    """Parse and validate one commands/request payload; raise `CommandInvalid` if it is unusable.

    Expiry is not checked here (it needs the clock): call `CommandRequest.is_expired(now)`.
    """
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandInvalid(
            INVALID_COMMAND, f"payload is {len(payload)} bytes; at most {MAX_COMMAND_BYTES}"
        )
    try:
        raw = json.loads(
            payload.decode("utf-8"),
            object_pairs_hook=_reject_duplicate_keys,
            parse_constant=_reject_constant,
            parse_float=_integral_number,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CommandInvalid(MALFORMED_JSON, f"payload is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise CommandInvalid(
            INVALID_COMMAND, f"expected a JSON object, got {type(raw).__name__} ({raw!r:.60})"
        )
    command_id = _readable_command_id(raw.get("command_id"))
    command = raw.get("command")
    name = None
    if isinstance(command, dict):
        raw_name = command.get("name")
        if isinstance(raw_name, str) and len(raw_name) <= 64:
            name = raw_name
        if raw_name is None:
            raise CommandInvalid(
                INVALID_COMMAND,
                f"command.name is missing; expected one of {', '.join(COMMAND_NAMES)}",
                command_id,
            )
        if isinstance(raw_name, str) and raw_name not in COMMAND_NAMES:
            raise CommandInvalid(
                UNKNOWN_COMMAND,
                f"unknown command {raw_name!r:.80}; expected one of {', '.join(COMMAND_NAMES)}",
                command_id,
                name,
            )
    try:
        # validated from the parsed value, so that 5.0 is read as 5 as JSON Schema reads it
        request = CommandRequest.model_validate_json(json.dumps(raw))
    except (ValidationError, ValueError) as exc:
        message = describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
        raise CommandInvalid(INVALID_COMMAND, message, command_id, name) from None
    request._wire = raw
    return request
