"""Retained state of a unit (availability, health, dispenser) and the heartbeat.

Availability follows Sparkplug's bdSeq idea: a persisted session number, incremented on every
connect, is in the birth (online) and in the MQTT will (offline). A will that the broker fires late
can then never mark a unit offline that has already reconnected: see `supersedes`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from agent.clock import TimeTrust
from agent.contract.events import (
    SEQ_MAX,
    ContractModel,
    LinkState,
    UtcDateTime,
    schema_version,
)

AVAILABILITY_SCHEMA = "dispenser-availability/1"
HEALTH_SCHEMA = "dispenser-health/1"
DISPENSER_STATE_SCHEMA = "dispenser-state/1"
HEARTBEAT_SCHEMA = "dispenser-heartbeat/1"

# Why a unit is offline: the MQTT will (the broker lost the connection), a clean stop (the unit
# said goodbye itself), or the fail-safe after a state fault (the unit locked the dispenser and
# restarts).
OfflineReason = Literal["connection_lost", "shutdown", "state_fault"]
CONNECTION_LOST: OfflineReason = "connection_lost"
SHUTDOWN: OfflineReason = "shutdown"
STATE_FAULT: OfflineReason = "state_fault"


class Availability(ContractModel):
    """Retained on state/availability; the will is the offline copy of the same session."""

    schema_: Literal["dispenser-availability/1"] = schema_version(AVAILABILITY_SCHEMA)
    state: Literal["online", "offline"]
    session: int = Field(
        ge=1,
        le=SEQ_MAX,
        description=(
            "Connection session number: one more than the previous connection the broker "
            "accepted. It never goes back and is never reused; it can skip a number (the unit "
            "stopped between choosing it and connecting, or a connect attempt the broker may "
            "have seen was never confirmed)."
        ),
    )
    at: UtcDateTime = Field(
        description=(
            "When the unit published it; for the will, when the unit registered it (just "
            "before that session's connect), not when the broker sent it."
        )
    )
    reason: OfflineReason | None = Field(
        default=None,
        description=(
            "null when online. Offline: connection_lost (the MQTT will: the broker lost the "
            "connection), shutdown (a clean stop; the unit published it itself), state_fault "
            "(the unit locked the dispenser after a storage fault and restarts; see detail)."
        ),
    )
    detail: str | None = Field(
        default=None, max_length=200, description="For people, with state_fault; do not parse."
    )

    @model_validator(mode="after")
    def _reason_matches_state(self) -> Availability:
        if (self.state == "offline") != (self.reason is not None):
            raise ValueError("an offline message has a reason, an online one none")
        return self


def supersedes(incoming: Availability, current: Availability | None) -> bool:
    """True when a receiver should replace `current` with `incoming`.

    An older session never wins, so a late will of session N cannot overwrite the online birth of
    session N+1. Within one session the later message wins (online, then the will's offline).
    """
    return current is None or incoming.session >= current.session


class Health(ContractModel):
    """Retained on state/health, published on change and periodically."""

    schema_: Literal["dispenser-health/1"] = schema_version(HEALTH_SCHEMA)
    at: UtcDateTime
    session: int = Field(
        ge=0, le=SEQ_MAX, description="As availability; 0 only before the first connection."
    )
    backlog_events: int = Field(ge=0, description="Events recorded but not yet acknowledged.")
    oldest_unsent_seq: int | None = Field(
        default=None, ge=1, le=SEQ_MAX, description="seq of the oldest unacknowledged event."
    )
    oldest_unsent_age_s: float | None = Field(
        default=None, ge=0, description="Age of the oldest unacknowledged event, in seconds."
    )
    dispenser_link: LinkState
    clock_trust: TimeTrust = Field(strict=False)
    disk_free_bytes: int = Field(ge=0)
    agent_version: str = Field(min_length=1, max_length=64)
    active_alerts: list[str] = Field(
        default_factory=list,
        description=(
            "The bare alert_id (as in events and ack_alert) of every latched alert still "
            "active: not yet acknowledged, or acknowledged while its cause persists (a wrong "
            "roll still loaded)."
        ),
    )
    active_conditions: list[str] = Field(
        default_factory=list,
        description=(
            "The kind of every condition raised and not yet cleared (e.g. clock_untrusted, "
            "mains_lost): it ends with the matching <kind>_cleared event; conditions have no "
            "alert_id and need no acknowledgement."
        ),
    )
    pause_id: str | None = Field(
        default=None,
        max_length=64,
        description=(
            "The pause in force now (as in pause_started), null when doses are given: a unit "
            "that is quiet because its patient is away is told apart from one that is stuck."
        ),
    )

    mqtt_tls_failures: int = Field(
        default=0,
        ge=0,
        description=(
            "Connect attempts since the agent started that failed in the TLS handshake (a "
            "certificate of another CA, an expired one): a unit that had to retry is seen here "
            "once it is through. On site, `dispenser-agent status` shows the refusal itself."
        ),
    )

    @model_validator(mode="after")
    def _backlog_consistent(self) -> Health:
        if self.backlog_events == 0 and self.oldest_unsent_seq is not None:
            raise ValueError("oldest_unsent_seq must be null when backlog_events is 0")
        if self.backlog_events > 0 and self.oldest_unsent_seq is None:
            raise ValueError("oldest_unsent_seq is required when backlog_events > 0")
        return self


class DispenserState(ContractModel):
    """Retained on state/dispenser. Identity fields are null until the first link came up."""

    schema_: Literal["dispenser-state/1"] = schema_version(DISPENSER_STATE_SCHEMA)
    link: LinkState
    model: str | None = Field(default=None, max_length=64)
    serial_number: str | None = Field(default=None, max_length=64)
    firmware_version: str | None = Field(default=None, max_length=64)
    protocol_version: int | None = Field(default=None, ge=0, le=255)
    features: list[str] = Field(default_factory=list, description="Capabilities, e.g. 'rtc'.")
    roll_loaded: bool
    sachets_remaining: int | None = Field(default=None, ge=0, description="null when unknown.")


class Heartbeat(ContractModel):
    """QoS 0 on heartbeat, MQTT 5 message expiry 2x the interval; never stored or replayed."""

    schema_: Literal["dispenser-heartbeat/1"] = schema_version(HEARTBEAT_SCHEMA)
    at: UtcDateTime
    session: int = Field(ge=1, le=SEQ_MAX)
    uptime_s: float = Field(ge=0, description="Seconds since the agent started.")
    interval_s: int = Field(
        ge=1,
        description=(
            "Seconds between two heartbeats: a unit with no heartbeat for two intervals (and "
            "not offline) has gone silent."
        ),
    )
