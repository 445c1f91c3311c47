"""Dose ledger: one row per slot id, the guard against dispensing a slot twice.

Order of work for one dose (the daemon's contract):
1. ``begin_dispense`` is committed *before* the DISPENSE command goes to the dispenser. A power
   cut after that commit leaves an open slot, never a second dispense: a later ``begin_dispense``
   for the same slot raises ``AlreadyDispensed``.
2. ``record_presented`` when the dispenser reports the sachet presented (optional, idempotent).
3. ``record_outcome`` exactly once (taken, missed, failed, skipped...). A slot can also be resolved
   without ever being begun (e.g. skipped while paused); such a slot can no longer be begun either.

``open_slots`` lists slots begun but without an outcome: what a restarted daemon must resolve by
asking the dispenser, never by dispensing again. Each transition is also audited in the same
transaction. Dispense ids come from a persisted u32 counter that never wraps or repeats: one
counter for the life of the unit (a unit key: a factory reset keeps it), which the daemon advances
in the same transaction as the engine step that took the ids.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from agent.store.audit import Stamp, audit_append
from agent.store.errors import AlreadyDispensed, OutcomeAlreadyRecorded, UnknownSlotError
from agent.store.kv import NEXT_DISPENSE_ID, U32_MAX, advance_counter, peek_counter, take_counter


@dataclass(frozen=True)
class SlotRecord:
    slot_id: str
    dispense_id: int | None  # None when resolved without being dispensed
    sachet_index: int | None
    due_utc: str | None
    begun_utc: str | None
    presented_utc: str | None
    outcome: str | None
    reason: str | None
    outcome_utc: str | None

    @property
    def is_open(self) -> bool:
        return self.begun_utc is not None and self.outcome is None


_COLUMNS = (
    "slot_id, dispense_id, sachet_index, due_utc, begun_utc, presented_utc, outcome, reason, "
    "outcome_utc"
)


def _row_to_slot(row: tuple[Any, ...]) -> SlotRecord:
    return SlotRecord(*row)


def slot_state(conn: sqlite3.Connection, slot_id: str) -> SlotRecord | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM ledger WHERE slot_id = ?", (slot_id,)).fetchone()
    return None if row is None else _row_to_slot(row)


def _require_slot(conn: sqlite3.Connection, slot_id: str) -> SlotRecord:
    record = slot_state(conn, slot_id)
    if record is None:
        raise UnknownSlotError(slot_id)
    return record


def next_dispense_id(conn: sqlite3.Connection) -> int:
    return take_counter(conn, NEXT_DISPENSE_ID, U32_MAX)


def first_unused_dispense_id(conn: sqlite3.Connection) -> int:
    """The unit's dispense-id counter, and never below an id the ledger holds."""
    highest = conn.execute("SELECT max(dispense_id) FROM ledger").fetchone()[0]
    return max(peek_counter(conn, NEXT_DISPENSE_ID), 1 if highest is None else int(highest) + 1)


def advance_dispense_ids(conn: sqlite3.Connection, next_unused: int) -> None:
    advance_counter(conn, NEXT_DISPENSE_ID, next_unused, U32_MAX)


def begin_dispense(
    conn: sqlite3.Connection,
    stamp: Stamp,
    slot_id: str,
    dispense_id: int,
    sachet_index: int,
    due_utc: str,
) -> SlotRecord:
    if not 0 <= dispense_id <= U32_MAX:
        raise ValueError(f"dispense id {dispense_id} is not a u32")
    existing = slot_state(conn, slot_id)
    if existing is not None:
        what = (
            "was begun" if existing.begun_utc is not None else f"is resolved ({existing.outcome})"
        )
        raise AlreadyDispensed(f"slot {slot_id!r} {what}; it must not be dispensed again")
    reused = conn.execute(
        "SELECT slot_id FROM ledger WHERE dispense_id = ?", (dispense_id,)
    ).fetchone()
    if reused is not None:
        raise ValueError(f"dispense id {dispense_id} already used for slot {reused[0]!r}")
    conn.execute(
        "INSERT INTO ledger (slot_id, dispense_id, sachet_index, due_utc, begun_utc) "
        "VALUES (?, ?, ?, ?, ?)",
        (slot_id, dispense_id, sachet_index, due_utc, stamp.at_utc),
    )
    audit_append(
        conn,
        "ledger.begin",
        {
            "slot_id": slot_id,
            "dispense_id": dispense_id,
            "sachet_index": sachet_index,
            "due_utc": due_utc,
        },
        stamp.at_utc,
        stamp.trust,
    )
    return _require_slot(conn, slot_id)


def record_presented(conn: sqlite3.Connection, stamp: Stamp, slot_id: str) -> SlotRecord:
    record = _require_slot(conn, slot_id)
    if record.outcome is not None:
        raise OutcomeAlreadyRecorded(f"slot {slot_id!r} already resolved ({record.outcome})")
    if record.begun_utc is None:
        raise UnknownSlotError(f"slot {slot_id!r} was never begun")
    if record.presented_utc is not None:
        return record  # the dispenser may repeat its report; the first time stands
    conn.execute("UPDATE ledger SET presented_utc = ? WHERE slot_id = ?", (stamp.at_utc, slot_id))
    audit_append(conn, "ledger.presented", {"slot_id": slot_id}, stamp.at_utc, stamp.trust)
    return _require_slot(conn, slot_id)


def record_outcome(
    conn: sqlite3.Connection, stamp: Stamp, slot_id: str, outcome: str, reason: str | None
) -> SlotRecord:
    if not outcome:
        raise ValueError("outcome must not be empty")
    record = slot_state(conn, slot_id)
    if record is not None and record.outcome is not None:
        raise OutcomeAlreadyRecorded(
            f"slot {slot_id!r} already has outcome {record.outcome!r}; refusing {outcome!r}"
        )
    if record is None:
        conn.execute(
            "INSERT INTO ledger (slot_id, outcome, reason, outcome_utc) VALUES (?, ?, ?, ?)",
            (slot_id, outcome, reason, stamp.at_utc),
        )
    else:
        conn.execute(
            "UPDATE ledger SET outcome = ?, reason = ?, outcome_utc = ? WHERE slot_id = ?",
            (outcome, reason, stamp.at_utc, slot_id),
        )
    audit_append(
        conn,
        "ledger.outcome",
        {"slot_id": slot_id, "outcome": outcome, "reason": reason},
        stamp.at_utc,
        stamp.trust,
    )
    return _require_slot(conn, slot_id)


def open_slots(conn: sqlite3.Connection) -> list[SlotRecord]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM ledger WHERE begun_utc IS NOT NULL AND outcome IS NULL "
        "ORDER BY due_utc, slot_id"
    ).fetchall()
    return [_row_to_slot(r) for r in rows]
