"""Events as published on MQTT -> FHIR R4 transaction bundles for the patient record (VKP).

Response-centre side: the unit never sends patient identity, so the centre's `CentreMapping`
places each event with a person. One event gives at most one bundle (`type: transaction`, every
entry a PUT with an id derived from the event), so converting a re-sent or replayed copy again
gives the same resources and the hub stores them once.

- `slot_outcome` taken / dispensed_for_travel -> `MedicationDispense` (status completed, category
  1.1 or 1.2 (assisted) / 2 (pre-dispensed for travel), `whenHandedOver` = when the dose was lifted
  out of the tray, the dispenser's serial number as performer).
- an alert (priority low or higher with a VKP code or a deviation category; never a `_cleared`
  event) -> `DetectedIssue` with the VKP alert code (3, the group, when no finer code applies)
  and the severity: low/medium/high = VKP 1/2/3 (green/yellow/red) = DetectedIssue severity
  low/moderate/high; info (VKP 0, not reported) gives no resource.
- a latched alert (one with an alert_id) -> also a `Flag` (active) that becomes inactive once the
  stream showed it both acknowledged and resolved (its priority as the standard flag-priority
  extension: PL/PM/PH).

Models are fhir.resources' R4B classes (FHIR 4.3.0): for these four resources HL7's R4B diff lists
no change from R4 (4.0.1), and fhir.resources has no R4 package on pydantic v2. Every resource is
validated by its model when made, and the bundle again as a whole; the library checks structure,
cardinality, types and formats, not code bindings, so the codes used here are constants.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.detectedissue import DetectedIssue
from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.medicationdispense import MedicationDispense
from pydantic import ValidationError

from agent.clock import TimeTrust
from agent.contract.events import VKP_CODE_SYSTEM, VKP_CODES, EventEnvelope
from agent.engine.catalogue import (
    CATALOGUE,
    CLEARED_SUFFIX,
    MISSED_VKP,
    documented_kinds,
    raises_latched_alert,
)
from agent.engine.deviation import DEVIATIONS, Deviation
from agent.engine.types import Priority
from agent.fhir.mapping import CentreMapping, UnitPeriod

Json = dict[str, Any]

VKP_CODE_VERSION = "0.9.0"
VKP_GROUP = "3"  # Medisindispenserhendelse: a dispenser deviation with no finer code
URN_RFC3986 = "urn:ietf:rfc:3986"
V2_IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
FLAG_PRIORITY_EXTENSION = "http://hl7.org/fhir/StructureDefinition/flag-priority"
FLAG_PRIORITY_CODES = "http://terminology.hl7.org/CodeSystem/flag-priority-code"
# ids of Flags: one per (unit, alert id), the same whatever event names the alert
FLAG_NAMESPACE = uuid.UUID("6f1f3f52-5a8e-4c36-9b0c-2b7d1d9f0a11")

# priority -> (VKP severity 0-3, DetectedIssue.severity, flag-priority code and display)
SEVERITY: dict[Priority, tuple[int, str, str, str]] = {
    Priority.LOW: (1, "low", "PL", "Low priority"),
    Priority.MEDIUM: (2, "moderate", "PM", "Medium priority"),
    Priority.HIGH: (3, "high", "PH", "High priority"),
}

# MedicationDispense category (shared/vkp-dispenser-alert-codes.md): code -> display
DISPENSE_CATEGORIES = {
    "1.1": "taken by the patient",
    "1.2": "assisted",
    "2": "pre-dispensed for travel",
}
HANDED_OVER = {"taken", "dispensed_for_travel"}

# events that resolve the latched alert named in data.alert_id (besides an acknowledgement
# that says resolved: true)
RESOLVING_KINDS = frozenset({"wrong_roll_cleared", "plan_mismatch_decided"})


class ConversionError(ValueError):
    """An input line is not an event of the contract."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """An event that gave no bundle, and why (no resource applies, or no person is known)."""

    seq: int
    kind: str
    reason: str


@dataclass
class _AlertSeen:
    kind: str
    vkp_code: str
    priority: Priority
    raised_at: datetime | None = None
    acknowledged: bool = False
    resolved: bool = False
    closed: bool = False


@dataclass
class FhirConverter:
    """Converts one stream of events (keep one converter per stream: it remembers alerts)."""

    mapping: CentreMapping
    skipped: list[Skipped] = field(default_factory=list)
    _seen_events: set[str] = field(default_factory=set)
    _alerts: dict[tuple[str, str], _AlertSeen] = field(default_factory=dict)

    def convert_line(self, line: str) -> Bundle | None:
        try:
            envelope = EventEnvelope.model_validate_json(line)
        except ValidationError as exc:
            raise ConversionError(f"not an event: {exc}") from exc
        return self.convert(envelope)

    def convert(self, event: EventEnvelope) -> Bundle | None:
        """The bundle for `event`, or None (then `skipped` says why)."""
        if event.event_id in self._seen_events:
            self._skip(event, "duplicate: this event_id was converted already")
            return None
        self._seen_events.add(event.event_id)
        if event.time_trust is TimeTrust.UNTRUSTED:
            # its time may be hours off: it cannot be placed with a person, nor in a record
            self._skip(event, "time untrusted: occurred_at cannot be placed in time")
            return None
        period = self.mapping.period_at(event.unit_id, event.occurred_at)
        if period is None:
            self._skip(event, f"no patient for unit {event.unit_id} at that time")
            return None
        resources = self._resources(event, period)
        if not resources:
            self._skip(event, "not for the patient record")
            return None
        return _bundle(event, resources)

    # -- which resources -------------------------------------------------------------------

    def _resources(self, event: EventEnvelope, period: UnitPeriod) -> list[Json]:
        data = event.data
        resources: list[Json] = []
        if event.kind == "slot_outcome" and data.get("outcome") in HANDED_OVER:
            resources.append(self._dispense(event, period))
        if _is_alert(event):
            resources.append(self._detected_issue(event, period))
            if event.alert_id is not None and raises_latched_alert(event.kind):
                key = (event.unit_id, event.alert_id)
                self._alerts[key] = _AlertSeen(
                    _alert_kind(event),
                    _vkp(event),
                    event.priority,
                    raised_at=event.occurred_at,
                    resolved=event.kind == "slot_outcome",  # the slot is settled already
                )
                resources.append(self._flag(event, period, key, active=True))
        closed = self._close_alert(event, period)
        if closed is not None:
            resources.append(closed)
        return resources

    def _close_alert(self, event: EventEnvelope, period: UnitPeriod) -> Json | None:
        alert_id = _named_alert(event)
        if alert_id is None:
            return None
        key = (event.unit_id, alert_id)
        if event.kind == "alert_acknowledged":
            seen = self._alerts.setdefault(key, _acked_unseen(event))
            seen.acknowledged = True
            seen.resolved = seen.resolved or event.data.get("resolved") is True
        elif event.kind in RESOLVING_KINDS:
            known = self._alerts.get(key)
            if known is None:
                return None  # its acknowledgement will close it (resolved: true)
            seen = known
            seen.resolved = True
        else:
            return None
        if not (seen.acknowledged and seen.resolved) or seen.closed:
            return None
        seen.closed = True
        return self._flag(event, period, key, active=False)

    # -- the resources ---------------------------------------------------------------------

    def _dispense(self, event: EventEnvelope, period: UnitPeriod) -> Json:
        data = event.data
        if data.get("outcome") == "dispensed_for_travel":
            category = "2"
        else:
            category = "1.2" if period.assisted else "1.1"
        # lifted out of the tray; else presented; else when the unit recorded the outcome
        handed_over = _when(data.get("taken_at")) or _when(data.get("presented_at"))
        sachet = f"roll {data.get('roll_id')}, sachet {data.get('sachet_index')}"
        resource: Json = {
            "resourceType": "MedicationDispense",
            "id": event.event_id,
            "identifier": [_event_identifier(event)],
            "status": "completed",
            "category": {
                "coding": [
                    {
                        "system": self.mapping.dispense_category_system,
                        "code": category,
                        "display": DISPENSE_CATEGORIES[category],
                    }
                ]
            },
            "medicationCodeableConcept": {
                "text": f"Multidose sachet ({sachet}, due {data.get('due_local')})"
            },
            "subject": self._patient(period),
            "performer": [{"actor": _device(period)}],
            "whenHandedOver": handed_over or _iso(event.occurred_at),
        }
        return _validated(MedicationDispense, resource)

    def _detected_issue(self, event: EventEnvelope, period: UnitPeriod) -> Json:
        vkp_severity, severity, _, _ = SEVERITY[event.priority]
        resource: Json = {
            "resourceType": "DetectedIssue",
            "id": event.event_id,
            "identifier": [_event_identifier(event)],
            "status": "final",
            "code": _vkp_concept(_vkp(event), event.kind),
            "severity": severity,
            "patient": self._patient(period),
            "identifiedDateTime": _iso(event.occurred_at),
            "author": _device(period),
            "detail": _detail(event, vkp_severity),
        }
        return _validated(DetectedIssue, resource)

    def _flag(
        self, event: EventEnvelope, period: UnitPeriod, key: tuple[str, str], *, active: bool
    ) -> Json:
        seen = self._alerts[key]
        _, _, priority_code, priority_display = SEVERITY[seen.priority]
        when: Json = {}
        if seen.raised_at is not None:
            when["start"] = _iso(seen.raised_at)
        if not active:
            when["end"] = _iso(event.occurred_at)
        flag_id = str(uuid.uuid5(FLAG_NAMESPACE, f"{key[0]}/{key[1]}"))
        resource: Json = {
            "resourceType": "Flag",
            "id": flag_id,
            "identifier": [{"system": URN_RFC3986, "value": f"urn:uuid:{flag_id}"}],
            "extension": [
                {
                    "url": FLAG_PRIORITY_EXTENSION,
                    "valueCodeableConcept": {
                        "coding": [
                            {
                                "system": FLAG_PRIORITY_CODES,
                                "code": priority_code,
                                "display": priority_display,
                            }
                        ]
                    },
                }
            ],
            "status": "active" if active else "inactive",
            "category": [
                {"coding": [{"system": FLAG_CATEGORY, "code": "drug", "display": "Drug"}]}
            ],
            "code": _vkp_concept(seen.vkp_code, seen.kind),
            "subject": self._patient(period),
            "author": _device(period),
        }
        if when:
            resource["period"] = when
        return _validated(Flag, resource)

    def _patient(self, period: UnitPeriod) -> Json:
        person = self.mapping.patients[period.patient_ref]
        reference: Json = {
            "type": "Patient",
            "identifier": person.identifier.model_dump(),
        }
        if person.reference is not None:
            reference["reference"] = person.reference
        if person.display is not None:
            reference["display"] = person.display
        return reference

    def _skip(self, event: EventEnvelope, reason: str) -> None:
        self.skipped.append(Skipped(event.seq, event.kind, reason))


# -- helpers --------------------------------------------------------------------------------


def _is_alert(event: EventEnvelope) -> bool:
    """Reported to the record: priority low or higher, a VKP code or a deviation, not a clear."""
    if event.priority is Priority.INFO or event.kind.endswith(CLEARED_SUFFIX):
        return False
    return event.vkp_code is not None or isinstance(event.data.get("deviation"), str)


def _named_alert(event: EventEnvelope) -> str | None:
    """The alert an event refers to: data.alert_id, or the envelope's."""
    named = event.data.get("alert_id")
    return named if isinstance(named, str) else event.alert_id


def _alert_kind(event: EventEnvelope) -> str:
    """The latched alert's kind as the unit names it (dose_<outcome> for a slot outcome)."""
    if event.kind == "slot_outcome":
        return f"dose_{event.data.get('outcome')}"
    return event.kind


def _vkp(event: EventEnvelope) -> str:
    return event.vkp_code if event.vkp_code is not None else VKP_GROUP


def _acked_unseen(event: EventEnvelope) -> _AlertSeen:
    """An acknowledgement of an alert raised before this stream: its code from the kind."""
    kind = str(event.data.get("kind", "alert"))
    spec = CATALOGUE.get(kind)
    if spec is not None:
        vkp, priority = spec.vkp_code or VKP_GROUP, spec.priority
    elif kind in ("dose_missed", "dose_refused"):
        vkp, priority = MISSED_VKP, Priority.HIGH
    else:
        vkp, priority = VKP_GROUP, Priority.MEDIUM
    return _AlertSeen(kind, vkp, priority if priority in SEVERITY else Priority.LOW)


def _vkp_concept(code: str, kind: str) -> Json:
    display = VKP_CODES[code][0]
    return {
        "coding": [
            {
                "system": VKP_CODE_SYSTEM,
                "version": VKP_CODE_VERSION,
                "code": code,
                "display": display,
            }
        ],
        "text": kind,
    }


def _detail(event: EventEnvelope, vkp_severity: int) -> str:
    parts = [documented_kinds().get(event.kind, event.kind)]
    deviation = event.data.get("deviation")
    if isinstance(deviation, str) and deviation in DEVIATIONS:
        parts.append(f"Avvik: {DEVIATIONS[Deviation(deviation)].display_nb} ({deviation}).")
    for key in ("outcome", "reason", "slot_id", "roll_id"):
        value = event.data.get(key)
        if value is not None:
            parts.append(f"{key}: {value}.")
    parts.append(f"VKP severity {vkp_severity}. Unit {event.unit_id}, event seq {event.seq}.")
    return " ".join(parts)


def _event_identifier(event: EventEnvelope) -> Json:
    return {"system": URN_RFC3986, "value": f"urn:uuid:{event.event_id}"}


def _device(period: UnitPeriod) -> Json:
    return {
        "type": "Device",
        "identifier": {
            "type": {"coding": [{"system": V2_IDENTIFIER_TYPE, "code": "SNO"}]},
            "value": period.device_serial,
        },
        "display": f"Medication dispenser {period.device_serial} (unit {period.unit_id})",
    }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _when(value: object) -> str | None:
    """A time from the event's data in UTC ("...Z"), or None if absent or without an offset."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return None if parsed.tzinfo is None else _iso(parsed)


def _validated(model: Any, resource: Json) -> Json:
    """`resource` checked by its fhir.resources model, as the model writes it."""
    parsed = model.model_validate(resource)
    dumped: Json = parsed.model_dump(mode="json", exclude_none=True)
    return dumped


def _bundle(event: EventEnvelope, resources: list[Json]) -> Bundle:
    entries = [
        {
            "resource": resource,
            "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
        }
        for resource in resources
    ]
    bundle: Bundle = Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "identifier": _event_identifier(event),
            "type": "transaction",
            "timestamp": _iso(event.occurred_at),
            "entry": entries,
        }
    )
    return bundle
