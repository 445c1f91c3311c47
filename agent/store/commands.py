"""Inbound commands already executed: a redelivered command gets the same answer, not a rerun.

The store does not audit commands by itself: the daemon appends a richer audit record (issuer,
arguments, status) in the same transaction as ``record_command``.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from agent.store.audit import Stamp
from agent.store.errors import CommandAlreadyRecordedError


@dataclass(frozen=True)
class CommandRecord:
    command_id: str
    name: str
    response_json: str
    recorded_utc: str


def command_seen(conn: sqlite3.Connection, command_id: str) -> CommandRecord | None:
    row = conn.execute(
        "SELECT command_id, name, response_json, recorded_utc FROM commands WHERE command_id = ?",
        (command_id,),
    ).fetchone()
    return None if row is None else CommandRecord(*row)


def record_command(
    conn: sqlite3.Connection, stamp: Stamp, command_id: str, name: str, response_json: str
) -> CommandRecord:
    """Record an executed command. The caller holds the write transaction (and audits it)."""
    if not command_id:
        raise ValueError("command id must not be empty")
    json.loads(response_json)  # refuse a response we could not replay
    if command_seen(conn, command_id) is not None:
        raise CommandAlreadyRecordedError(command_id)
    conn.execute(
        "INSERT INTO commands (command_id, name, response_json, recorded_utc) VALUES (?, ?, ?, ?)",
        (command_id, name, response_json, stamp.at_utc),
    )
    return CommandRecord(command_id, name, response_json, stamp.at_utc)
