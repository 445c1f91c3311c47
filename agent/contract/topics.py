"""The topic tree of one unit, ``dispenser/v1/{unit_id}/...``, and how each topic is published.

`CHANNELS` is the single table of topics: suffix, direction, QoS, retained flag and payload model
name. `UnitTopics` turns it into concrete topic names for one unit; the AsyncAPI generator and the
response-centre guide read the same table, so the three cannot disagree.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

TOPIC_ROOT = "dispenser/v1"
UNIT_ID_PATTERN = r"^[a-z0-9-]{3,64}$"
_UNIT_ID = re.compile(r"[a-z0-9-]{3,64}")


class InvalidUnitId(ValueError):  # noqa: N818 - reads better at the call site than ...Error
    """The unit id is not 3 to 64 characters of lowercase a-z, digits and '-'."""


def validate_unit_id(unit_id: str) -> str:
    """Return `unit_id` unchanged if it is usable in a topic; raise `InvalidUnitId` if not.

    The id is a topic level, so it must never contain '/', '+', '#' or anything a broker or a
    receiver could read differently; it is also never a patient reference.
    """
    if not isinstance(unit_id, str) or _UNIT_ID.fullmatch(unit_id) is None:
        raise InvalidUnitId(
            f"invalid unit id {unit_id!r}: expected 3 to 64 characters of a-z, 0-9 and '-'"
        )
    return unit_id


class TopicDirection(enum.StrEnum):
    UNIT_TO_CENTRE = "unit_to_centre"
    CENTRE_TO_UNIT = "centre_to_unit"


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """One topic under the unit's prefix and how it is used."""

    key: str  # stable identifier (AsyncAPI channel id, UnitTopics attribute)
    suffix: str  # topic levels after dispenser/v1/{unit_id}/
    direction: TopicDirection
    qos: int
    retain: bool
    message: str  # name of the payload model (a class in agent.contract)
    summary: str


CHANNELS: tuple[ChannelSpec, ...] = (
    ChannelSpec(
        key="events",
        suffix="events",
        direction=TopicDirection.UNIT_TO_CENTRE,
        qos=1,
        retain=False,
        message="EventEnvelope",
        summary="Every event of the unit, numbered by seq; at least once, deduplicate by event_id.",
    ),
    ChannelSpec(
        key="availability",
        suffix="state/availability",
        direction=TopicDirection.UNIT_TO_CENTRE,
        qos=1,
        retain=True,
        message="Availability",
        summary="Online (birth) / offline (clean stop or MQTT will), with the session number.",
    ),
    ChannelSpec(
        key="health",
        suffix="state/health",
        direction=TopicDirection.UNIT_TO_CENTRE,
        qos=1,
        retain=True,
        message="Health",
        summary="Backlog, clock trust, disk, dispenser link and active alerts of the agent.",
    ),
    ChannelSpec(
        key="dispenser",
        suffix="state/dispenser",
        direction=TopicDirection.UNIT_TO_CENTRE,
        qos=1,
        retain=True,
        message="DispenserState",
        summary="The dispenser's identity, link and roll state (no patient reference).",
    ),
    ChannelSpec(
        key="heartbeat",
        suffix="heartbeat",
        direction=TopicDirection.UNIT_TO_CENTRE,
        qos=0,
        retain=False,
        message="Heartbeat",
        summary="Liveness only; expires after two intervals, never stored or replayed.",
    ),
    ChannelSpec(
        key="command_request",
        suffix="commands/request",
        direction=TopicDirection.CENTRE_TO_UNIT,
        qos=1,
        retain=False,
        message="CommandRequest",
        summary="Commands from the response centre; they wait at the broker while the unit is off.",
    ),
    ChannelSpec(
        key="command_response",
        suffix="commands/response",
        direction=TopicDirection.UNIT_TO_CENTRE,
        qos=1,
        retain=False,
        message="CommandResponse",
        summary="One answer per command (default response topic; MQTT 5 response_topic wins).",
    ),
)

CHANNELS_BY_KEY: dict[str, ChannelSpec] = {channel.key: channel for channel in CHANNELS}


def heartbeat_expiry_s(interval_s: int) -> int:
    """MQTT 5 message expiry of a heartbeat: two intervals, so a stale one is never delivered."""
    if interval_s <= 0:
        raise ValueError(f"heartbeat interval must be positive, got {interval_s}")
    return 2 * interval_s


def wildcard(suffix: str) -> str:
    """Subscription filter for one topic of every unit, e.g. ``dispenser/v1/+/events``."""
    return f"{TOPIC_ROOT}/+/{suffix}"


def unit_id_from_topic(topic: str) -> str | None:
    """The unit id of a topic in our tree, or None when the topic is not ours."""
    parts = topic.split("/")
    root = TOPIC_ROOT.split("/")
    if len(parts) <= len(root) + 1 or parts[: len(root)] != root:
        return None
    unit_id = parts[len(root)]
    return unit_id if _UNIT_ID.fullmatch(unit_id) else None


@dataclass(frozen=True, slots=True)
class UnitTopics:
    """Concrete topic names of one unit; the unit id is validated on construction."""

    unit_id: str

    def __post_init__(self) -> None:
        validate_unit_id(self.unit_id)

    @property
    def prefix(self) -> str:
        return f"{TOPIC_ROOT}/{self.unit_id}"

    def topic(self, key: str) -> str:
        """Topic of the channel `key` (see `CHANNELS`); KeyError for an unknown key."""
        return f"{self.prefix}/{CHANNELS_BY_KEY[key].suffix}"

    @property
    def events(self) -> str:
        return self.topic("events")

    @property
    def availability(self) -> str:
        return self.topic("availability")

    @property
    def health(self) -> str:
        return self.topic("health")

    @property
    def dispenser(self) -> str:
        return self.topic("dispenser")

    @property
    def heartbeat(self) -> str:
        return self.topic("heartbeat")

    @property
    def command_request(self) -> str:
        return self.topic("command_request")

    @property
    def command_response(self) -> str:
        return self.topic("command_response")

    def retained(self) -> tuple[str, ...]:
        """Topics the unit republishes after every connect (a broker may have lost them)."""
        return tuple(self.topic(c.key) for c in CHANNELS if c.retain)
