"""The binding of this unit to one patient: patient reference and schedule (JSON text)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass

from agent.store.audit import Stamp, audit_append


@dataclass(frozen=True)
class Binding:
    patient_ref: str
    schedule_json: str
    updated_utc: str


def get_binding(conn: sqlite3.Connection) -> Binding | None:
    row = conn.execute(
        "SELECT patient_ref, schedule_json, updated_utc FROM binding WHERE id = 1"
    ).fetchone()
    return None if row is None else Binding(*row)


def set_binding(
    conn: sqlite3.Connection, stamp: Stamp, patient_ref: str, schedule_json: str
) -> Binding:
    """Replace the binding and audit the change (a configuration change)."""
    schedule: object = json.loads(schedule_json)  # refuse text the daemon could not read back
    conn.execute(
        "INSERT INTO binding (id, patient_ref, schedule_json, updated_utc) VALUES (1, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET patient_ref = excluded.patient_ref, "
        "schedule_json = excluded.schedule_json, updated_utc = excluded.updated_utc",
        (patient_ref, schedule_json, stamp.at_utc),
    )
    audit_append(
        conn,
        "config.binding",
        {
            "patient_ref": patient_ref,
            "schedule": schedule,
            "schedule_sha256": hashlib.sha256(schedule_json.encode()).hexdigest(),
        },
        stamp.at_utc,
        stamp.trust,
    )
    return Binding(patient_ref, schedule_json, stamp.at_utc)
