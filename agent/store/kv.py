"""The small key/value table and the persisted counters kept in it."""

from __future__ import annotations

import sqlite3

from agent.store.errors import StoreError

# Unit-level keys: not patient data, so a factory reset keeps them (sequence numbers and ids must
# never be reused, or the response centre would deduplicate a new patient's events away).
NEXT_EVENT_SEQ = "next_event_seq"
NEXT_DISPENSE_ID = "next_dispense_id"
SESSION_COUNTER = "session_counter"
BOOT_COUNTER = "boot_counter"
AUDIT_ANCHOR = "audit_anchor"
# Signed commands (agent/commands.py): commands issued before this UTC time are refused as replays
# (raised by every reset, so nothing from a previous binding runs again), and the response-centre
# keys added or retired by signed commands. Both belong to the unit, not the patient.
COMMAND_FLOOR = "command_floor"
CENTRE_KEYS = "centre_keys"
UNIT_KEYS = frozenset(
    {NEXT_EVENT_SEQ, NEXT_DISPENSE_ID, SESSION_COUNTER, BOOT_COUNTER, COMMAND_FLOOR, CENTRE_KEYS}
)

U32_MAX = (1 << 32) - 1
I64_MAX = (1 << 63) - 1


def get_kv(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_kv(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO kv (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def take_counter(conn: sqlite3.Connection, key: str, maximum: int) -> int:
    """Return the counter's current value (starting at 1) and store the next one.

    Never wraps: running out is an error, because a reused number is worse than a refusal.
    """
    raw = get_kv(conn, key)
    value = 1 if raw is None else int(raw)
    if value > maximum:
        raise StoreError(f"counter {key!r} exhausted at {maximum}")
    set_kv(conn, key, str(value + 1))
    return value


def peek_counter(conn: sqlite3.Connection, key: str) -> int:
    raw = get_kv(conn, key)
    return 1 if raw is None else int(raw)


def advance_counter(conn: sqlite3.Connection, key: str, next_value: int, maximum: int) -> None:
    """Set the counter so that `next_value` is the next value it gives; never backwards (a
    number handed out twice is worse than a refusal), never past `maximum` + 1."""
    current = peek_counter(conn, key)
    if next_value < current:
        raise StoreError(f"counter {key!r} would go back from {current} to {next_value}")
    if next_value > maximum + 1:
        raise StoreError(f"counter {key!r} past its maximum {maximum}: {next_value}")
    if next_value != current:
        set_kv(conn, key, str(next_value))
