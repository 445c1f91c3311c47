"""Outbox rows -> the `EventEnvelope` JSON the response centre receives.

The outbox row holds what was true when the event happened (kind, seq, event id, time and its
trust, priority, VKP code, alert id, the agent's boot number, the event's data); `replayed` and
`session` (the MQTT connection this copy goes out on) are decided at publish time. The contract
model validates the envelope on the way out, so a malformed event fails loudly in tests instead of
reaching the response centre.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any

from pydantic import ValidationError

from agent.contract.events import UUID7_PATTERN, EventEnvelope
from agent.engine.catalogue import make_event
from agent.store.outbox import UNREADABLE_PAYLOAD, OutboxEvent

log = logging.getLogger(__name__)

UNREADABLE_KIND = "event_unreadable"
_STORED_TEXT_MAX = 1000  # characters of the stored payload sent along with event_unreadable


def build_envelope(unit_id: str, event: OutboxEvent, replayed: bool, session: int) -> bytes:
    """The event as the contract carries it; a stored event that does not fit the contract (bit
    rot, or a bug) goes out in its place as `event_unreadable` rather than blocking the outbox."""
    try:
        return _envelope(unit_id, event, replayed, session)
    except (ValidationError, KeyError, TypeError, ValueError) as exc:
        log.error("event seq %d (%s) does not fit the contract: %s", event.seq, event.kind, exc)
        return _unreadable_envelope(unit_id, event, replayed, session, exc)


def _envelope(unit_id: str, event: OutboxEvent, replayed: bool, session: int) -> bytes:
    payload: dict[str, Any] = event.payload
    if UNREADABLE_PAYLOAD in payload:
        raise ValueError("the stored payload is no JSON object")
    envelope = EventEnvelope.model_validate(
        {
            "schema": "dispenser-event/1",
            "event_id": event.event_id,
            "unit_id": unit_id,
            "seq": event.seq,
            "session": session,
            "kind": event.kind,
            "priority": payload["priority"],
            "vkp_code": payload.get("vkp_code"),
            "occurred_at": event.occurred_utc,
            "time_trust": event.trust,
            "replayed": replayed,
            "alert_id": payload.get("alert_id"),
            "data": payload.get("data", {}),
        },
        strict=False,  # stored values are JSON text: let the model parse times and enums
    )
    return envelope.model_dump_json(by_alias=True).encode()


def _unreadable_envelope(
    unit_id: str, event: OutboxEvent, replayed: bool, session: int, error: Exception
) -> bytes:
    """Keeps the seq (no gap for the centre) and, when it is well formed, the event id (a re-sent
    copy is still deduplicated); the time only when it can be read, else flagged untrusted."""
    spec = make_event(UNREADABLE_KIND)
    stored = event.payload.get(UNREADABLE_PAYLOAD)
    stored_text = stored if isinstance(stored, str) else repr(event.payload)
    event_id = event.event_id
    if not re.fullmatch(UUID7_PATTERN, event_id):
        event_id = _stand_in_event_id(unit_id, event.seq)
    fields: dict[str, Any] = {
        "schema": "dispenser-event/1",
        "event_id": event_id,
        "unit_id": unit_id,
        "seq": event.seq,
        "session": session,
        "kind": UNREADABLE_KIND,
        "priority": spec.priority.value,
        "vkp_code": spec.vkp_code,
        "occurred_at": event.occurred_utc,
        "time_trust": event.trust,
        "replayed": replayed,
        "data": {
            "stored_kind": event.kind[:64],
            "error": str(error)[:300],
            "stored": stored_text[:_STORED_TEXT_MAX],
            "stored_occurred_at": event.occurred_utc[:64],
        },
    }
    try:
        envelope = EventEnvelope.model_validate(fields, strict=False)
    except ValidationError:  # the time or its trust is unreadable too
        fields |= {"occurred_at": "1970-01-01T00:00:00Z", "time_trust": "untrusted"}
        envelope = EventEnvelope.model_validate(fields, strict=False)
    return envelope.model_dump_json(by_alias=True).encode()


def _stand_in_event_id(unit_id: str, seq: int) -> str:
    """A UUIDv7-shaped id that is the same at every re-send of this seq."""
    raw = bytearray(hashlib.sha256(f"{unit_id}/{seq}".encode()).digest()[:16])
    raw[6] = 0x70 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
