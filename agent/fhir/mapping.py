"""The response centre's own mapping from a unit's events to a person, read from a JSON file.

The unit never sends patient identity: it knows a `patient_ref` (set at install, a pseudonym the
centre chose) and its events name only the `unit_id`. The centre keeps which unit served which
`patient_ref` when (a unit is reset and moves to the next patient), and who that is::

    {
      "units": [
        {"unit_id": "oslo-0001", "patient_ref": "patient-7f3a", "device_serial": "SN-000142",
         "from": "2026-03-01T00:00:00Z", "until": null, "assisted": false}
      ],
      "patients": {
        "patient-7f3a": {
          "identifier": {"system": "urn:oid:2.16.578.1.12.4.1.4.1", "value": "13097248022"},
          "reference": "Patient/4711", "display": "Kari Nordmann"
        }
      },
      "dispense_category_system": "<the hub's code system for dispense categories>"
    }

`assisted`: a person helps the patient take each dose (MedicationDispense category 1.2, else 1.1).
An event is given to a person only when exactly one period of its unit holds its time; in doubt it
is not converted (and the converter says why).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.contract.events import UNIT_ID_FIELD_PATTERN, UtcDateTime

# Until the hub's profile names it (shared/vkp-dispenser-alert-codes.md names only the alert code
# system): ours, clearly so, and the mapping file's `dispense_category_system` replaces it.
DEFAULT_DISPENSE_CATEGORY_SYSTEM = "urn:dispenser-agent:vkp-dispense-category"


class MappingError(ValueError):
    """The mapping file cannot be read or does not make sense."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PersonIdentifier(_Model):
    system: str = Field(min_length=1, description="e.g. urn:oid:2.16.578.1.12.4.1.4.1 (fnr)")
    value: str = Field(min_length=1)


class Person(_Model):
    identifier: PersonIdentifier
    reference: str | None = Field(default=None, description="e.g. Patient/4711 on the hub")
    display: str | None = None


class UnitPeriod(_Model):
    unit_id: str = Field(pattern=UNIT_ID_FIELD_PATTERN)
    patient_ref: str = Field(min_length=1)
    device_serial: str = Field(min_length=1, max_length=64)
    valid_from: UtcDateTime = Field(alias="from")
    until: UtcDateTime | None = None
    assisted: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> UnitPeriod:
        if self.until is not None and self.until <= self.valid_from:
            raise ValueError(f"{self.unit_id}: until must be after from")
        return self

    def holds(self, at: datetime) -> bool:
        return self.valid_from <= at and (self.until is None or at < self.until)


class CentreMapping(_Model):
    units: list[UnitPeriod]
    patients: dict[str, Person]
    dispense_category_system: str = Field(default=DEFAULT_DISPENSE_CATEGORY_SYSTEM, min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> CentreMapping:
        for period in self.units:
            if period.patient_ref not in self.patients:
                raise ValueError(f"{period.unit_id}: patient_ref {period.patient_ref!r} unknown")
        for i, first in enumerate(self.units):
            for second in self.units[i + 1 :]:
                if first.unit_id == second.unit_id and _overlap(first, second):
                    raise ValueError(f"{first.unit_id}: two periods overlap")
        return self

    def period_at(self, unit_id: str, at: datetime) -> UnitPeriod | None:
        """The one period of `unit_id` that holds `at` (periods never overlap), or None."""
        for period in self.units:
            if period.unit_id == unit_id and period.holds(at):
                return period
        return None


def _overlap(a: UnitPeriod, b: UnitPeriod) -> bool:
    a_ends_before_b = a.until is not None and a.until <= b.valid_from
    b_ends_before_a = b.until is not None and b.until <= a.valid_from
    return not (a_ends_before_b or b_ends_before_a)


def load_mapping(path: Path) -> CentreMapping:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return CentreMapping.model_validate(raw)
    except (OSError, json.JSONDecodeError) as exc:
        raise MappingError(f"{path}: {exc}") from exc
    except ValidationError as exc:
        raise MappingError(f"{path}: {exc}") from exc
