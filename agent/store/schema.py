"""Schema of the store file, versioned with `PRAGMA user_version`.

Tables are STRICT (SQLite >= 3.37, Raspberry Pi OS bookworm ships 3.40) so a wrong type is an error,
not silently stored. A new version must add a migration here; an older agent refuses a newer file.
"""

from __future__ import annotations

import sqlite3

from agent.store.errors import SchemaTooNewError, StoreError

SCHEMA_VERSION = 1
MIN_SQLITE = (3, 37, 0)

_SCHEMA_V1 = """
CREATE TABLE kv (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY,
    event_id     TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    occurred_utc TEXT NOT NULL,
    trust        TEXT NOT NULL,
    delivered    INTEGER NOT NULL DEFAULT 0 CHECK (delivered IN (0, 1))
) STRICT;
CREATE INDEX outbox_undelivered ON outbox (seq) WHERE delivered = 0;
CREATE INDEX outbox_delivered ON outbox (seq) WHERE delivered = 1;

CREATE TABLE ledger (
    slot_id       TEXT PRIMARY KEY,
    dispense_id   INTEGER UNIQUE,
    sachet_index  INTEGER,
    due_utc       TEXT,
    begun_utc     TEXT,
    presented_utc TEXT,
    outcome       TEXT,
    reason        TEXT,
    outcome_utc   TEXT,
    CHECK ((dispense_id IS NULL) = (begun_utc IS NULL)),
    CHECK (begun_utc IS NOT NULL OR outcome IS NOT NULL)
) STRICT;
CREATE INDEX ledger_open ON ledger (slot_id) WHERE begun_utc IS NOT NULL AND outcome IS NULL;

CREATE TABLE commands (
    command_id    TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    response_json TEXT NOT NULL,
    recorded_utc  TEXT NOT NULL
) STRICT;

CREATE TABLE binding (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    patient_ref   TEXT NOT NULL,
    schedule_json TEXT NOT NULL,
    updated_utc   TEXT NOT NULL
) STRICT;

CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    at_utc    TEXT NOT NULL,
    trust     TEXT NOT NULL,
    kind      TEXT NOT NULL,
    body      TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
) STRICT;
"""


def check_sqlite_version() -> None:
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise StoreError(
            f"SQLite {sqlite3.sqlite_version} is too old; the store needs "
            f"{'.'.join(map(str, MIN_SQLITE))} or newer (STRICT tables)"
        )


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def create_schema(conn: sqlite3.Connection) -> None:
    """Create version 1 on an empty file. The caller holds the write transaction."""
    for statement in _SCHEMA_V1.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def require_known_version(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"store schema version {version} is newer than this agent understands "
            f"({SCHEMA_VERSION}); upgrade the agent, do not downgrade the data"
        )
