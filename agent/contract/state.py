"""Retained state of a unit (availability, health, dispenser) and the heartbeat.

Availability follows Sparkplug's bdSeq idea: a persisted session number, incremented on every
connect, is in the birth (online) and in the MQTT will (offline). A will that the broker fires late
can then never mark a unit offline that has already reconnected: see `supersedes`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from agent.clock import TimeTrust
from agent.contract.events import SEQ_MAX, ContractModel, LinkState, UtcDateTime


class Availability(ContractModel):
    """Retained on state/availability; the will is the offline copy of the same session."""

    state: Literal["online", "offline"]
    session: int = Field(
        ge=1,
        le=SEQ_MAX,
        description="Connection session number; grows by one per connect and is never reused.",
    )
    at: UtcDateTime = Field(
        description="When the unit published it (for the will: when it connected)."
    )
    reason: str | None = Field(
        default=None,
        max_length=200,
        description="Why offline: e.g. 'connection_lost' (the will), 'shutdown', 'restart'.",
    )


def supersedes(incoming: Availability, current: Availability | None) -> bool:
    """True when a receiver should replace `current` with `incoming`.

    An older session never wins, so a late will of session N cannot overwrite the online birth of
    session N+1. Within one session the later message wins (online, then the will's offline).
    """
    return current is None or incoming.session >= current.session


class Health(ContractModel):
    """Retained on state/health, published on change and periodically."""

    at: UtcDateTime
    session: int = Field(ge=1, le=SEQ_MAX)
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
        default_factory=list, description="alert_id of every latched, unacknowledged alert."
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

    at: UtcDateTime
    session: int = Field(ge=1, le=SEQ_MAX)
    uptime_s: float = Field(ge=0, description="Seconds since the agent started.")
