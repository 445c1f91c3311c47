"""The store's disk ceiling: the SQLite file's used pages stay under `max_bytes`.

Checked at the end of every write transaction (PRAGMA page_count and freelist_count: cheap).
Once the pages in use reach the ceiling, room is made down to 90 % of it, in this order:
1. delivered outbox rows (the centre has them; kept only for "re-send from N"),
2. undelivered events of droppable kinds, oldest first (button presses, lid open/close, ...:
   nothing about a dose), each kind counted,
3. the older half of the audit log, behind a checkpoint (``prune_audit``: still verifiable).
Dose outcomes, alarms and every other event that is not droppable are never removed: they are
appended above the ceiling if nothing else is left, the disk itself being the last bound.

The centre is told with a ``store_ceiling`` event (medium) with what was removed: at the first
time, then at most once a day while room is still being made (each time is in the audit log).
Freed pages are reused by SQLite, so the file stops growing at about the ceiling.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from agent.store import audit, kv, outbox
from agent.store.audit import Stamp

STORE_MAX_BYTES = 256 * 1024 * 1024  # of a 16-32 GB SD card shared with the system and logs
CEILING_EVENT = "store_ceiling"
AUDIT_KIND_CEILING = "store.ceiling"
_REPORTED = "store_ceiling_reported"  # kv: when the centre was last told
_REPORT_EVERY = timedelta(days=1)
_TARGET = 0.9  # make room down to this fraction of the ceiling
_BATCH = 200
_AUDIT_KEEP_MIN = 1_000


def used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes in pages that hold data (the file may be larger: free pages are reused)."""
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    return (pages - free) * size


def keep_under_ceiling(
    conn: sqlite3.Connection,
    max_bytes: int,
    policy: outbox.OutboxPolicy,
    new_event_id: Callable[[], str],
    stamp: Stamp,
) -> dict[str, object] | None:
    """Make room when the ceiling is reached (see the module doc); returns what was removed,
    or None when under the ceiling. The caller holds the write transaction."""
    used = used_bytes(conn)
    if used < max_bytes:
        return None
    target = int(max_bytes * _TARGET)
    delivered = conn.execute("DELETE FROM outbox WHERE delivered = 1").rowcount
    dropped: Counter[str] = Counter()
    kinds = sorted(policy.droppable_kinds)
    marks = ",".join("?" * len(kinds))
    while kinds and used_bytes(conn) > target:
        rows = conn.execute(
            f"SELECT seq, kind FROM outbox WHERE delivered = 0 AND kind IN ({marks}) "
            "ORDER BY seq LIMIT ?",
            (*kinds, _BATCH),
        ).fetchall()
        if not rows:
            break
        conn.execute(
            f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(rows))})",
            [seq for seq, _kind in rows],
        )
        dropped.update(kind for _seq, kind in rows)
    audit_pruned = 0
    if used_bytes(conn) > target:
        count = int(conn.execute("SELECT count(*) FROM audit").fetchone()[0])
        keep = max(_AUDIT_KEEP_MIN, count // 2)
        checkpoint = audit.prune_audit(conn, keep, stamp.at_utc, stamp.trust)
        if checkpoint is not None:
            outbox.append_checkpoint_event(conn, policy, new_event_id, checkpoint, stamp)
            records = checkpoint.body.get("records")
            audit_pruned = records if isinstance(records, int) else 0
    removed: dict[str, object] = {
        "used_bytes": used,
        "ceiling_bytes": max_bytes,
        "delivered_rows_removed": delivered,
        "undelivered_dropped": dict(sorted(dropped.items())),
        "audit_records_pruned": audit_pruned,
        "used_bytes_after": used_bytes(conn),
    }
    audit.audit_append(conn, AUDIT_KIND_CEILING, removed, stamp.at_utc, stamp.trust)
    reported = kv.get_kv(conn, _REPORTED)
    if reported is None or _utc(stamp.at_utc) - _utc(reported) >= _REPORT_EVERY:
        kv.set_kv(conn, _REPORTED, stamp.at_utc)
        payload: dict[str, object] = {
            "priority": "medium",
            "vkp_code": None,
            "alert_id": None,
            "boot": kv.peek_counter(conn, kv.BOOT_COUNTER) - 1,
            "data": removed,
        }
        outbox.append_event(
            conn, policy, new_event_id, CEILING_EVENT, payload, stamp.at_utc, stamp.trust
        )
    return removed


def _utc(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
