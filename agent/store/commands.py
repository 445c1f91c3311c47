"""Inbound commands already executed: a redelivered command gets the same answer, not a rerun.

The store does not audit commands by itself: the daemon appends a richer audit record (issuer,
arguments, status) in the same transaction as ``record_command``.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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


# Kept this long, then pruned: a command expires at most 7 days after it was issued, so a copy of
# a pruned one is refused as expired anyway; the command floor is raised past it as well, so
# it stays refused (as a replay) even on a unit whose clock was set back.
COMMAND_RETENTION = timedelta(days=30)


def prune_commands(conn: sqlite3.Connection, before: datetime, batch: int = 500) -> str | None:
    """Delete executed-command records recorded before `before`, oldest first (insertion
    order); return the newest pruned recorded_utc (None: nothing pruned). The caller holds the
    write transaction and raises the command floor to the returned time."""
    newest: str | None = None
    while True:
        rows = conn.execute(
            "SELECT rowid, recorded_utc FROM commands ORDER BY rowid LIMIT ?", (batch,)
        ).fetchall()
        old = [(rowid, at) for rowid, at in rows if _utc(at) < before]
        if old:
            conn.execute(
                f"DELETE FROM commands WHERE rowid IN ({','.join('?' * len(old))})",
                [rowid for rowid, _at in old],
            )
            newest = old[-1][1]
        if len(old) < len(rows) or len(rows) < batch:
            return newest


def _utc(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
