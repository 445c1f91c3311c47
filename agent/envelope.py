"""Outbox rows -> the `EventEnvelope` JSON the response centre receives.

The outbox row holds what was true when the event happened (kind, seq, event id, time and its
trust, priority, VKP code, alert id, the agent's boot number, the event's data); `replayed` and
`session` (the MQTT connection this copy goes out on) are decided at publish time. The contract
model validates the envelope on the way out, so a malformed event fails loudly in tests instead of
reaching the response centre.
"""

from __future__ import annotations

from typing import Any

from agent.contract.events import EventEnvelope
from agent.store.outbox import OutboxEvent


def build_envelope(unit_id: str, event: OutboxEvent, replayed: bool, session: int) -> bytes:
    payload: dict[str, Any] = event.payload
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
