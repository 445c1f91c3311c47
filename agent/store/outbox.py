"""Event outbox: every event for the response centre, numbered, kept until the broker acked it.

Sequence numbers: a per-unit 64-bit counter kept in the kv table, starting at 1, taken in the same
transaction as the row. It is never reused: deleting rows does not move it, a restart reads it back,
and a factory reset keeps it. A rolled-back transaction consumes nothing, which is safe because the
caller publishes an event only after its transaction committed.

Each append also writes an audit record of the event in the same transaction.

Delivery: ``mark_delivered`` is called only once the broker acknowledged the event (PUBACK). The row
is **kept and marked** delivered, not deleted, so "re-send from sequence N" (``events_from``) can
still answer. Delivered rows are kept for a retention window: the newest ``delivered_retention``
(default 10,000) delivered rows; older delivered rows are pruned in the same transaction as each new
append (no extra commit, no extra SD-card write). The audit record of an event stays regardless.

Bound (``outbox_limit``, default 50,000 *undelivered* events): when an append finds the outbox full,
it deletes the oldest undelivered event whose kind is in ``droppable_kinds`` (the daemon passes
the engine's low-value kinds: button presses, lid open/close, ...) and audits what was dropped
(seq, id, kind, occurred time): the receiver sees a gap in seq, and the audit log explains it.
If nothing droppable is left, the new event is **still appended** over the limit: a dose outcome
or alarm is never dropped, the disk is the last bound. Dropped sequence numbers are not reused.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.store.audit import AuditRecord, Stamp, audit_append
from agent.store.errors import UnknownEventError
from agent.store.kv import BOOT_COUNTER, I64_MAX, NEXT_EVENT_SEQ, peek_counter, take_counter

OUTBOX_LIMIT = 50_000
DELIVERED_RETENTION = 10_000

AUDIT_KIND_EVENT = "event"
AUDIT_KIND_DROPPED = "outbox.dropped"


@dataclass(frozen=True)
class OutboxEvent:
    seq: int
    event_id: str
    kind: str
    payload: dict[str, object]
    occurred_utc: str
    trust: str
    delivered: bool


@dataclass(frozen=True)
class BacklogInfo:
    count: int
    oldest_seq: int | None
    oldest_occurred_utc: str | None


@dataclass(frozen=True)
class OutboxPolicy:
    limit: int = OUTBOX_LIMIT
    delivered_retention: int = DELIVERED_RETENTION
    # kinds that may go when the outbox is full; none unless the opener names them (the daemon
    # passes agent.runtime.DROPPABLE_WHEN_FULL)
    droppable_kinds: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError("outbox limit must be at least 1")
        if self.delivered_retention < 0:
            raise ValueError("delivered retention must not be negative")


_COLUMNS = "seq, event_id, kind, payload, occurred_utc, trust, delivered"


UNREADABLE_PAYLOAD = "unreadable_payload"  # payload key: the stored text that is no JSON object


def _payload(text: str) -> dict[str, object]:
    """The stored payload; text that is no JSON object any more (bit rot on the SD card) is kept
    as it is under UNREADABLE_PAYLOAD, so one bad row never stops a read of the outbox."""
    try:
        payload = json.loads(text)
    except ValueError:
        return {UNREADABLE_PAYLOAD: text}
    return payload if isinstance(payload, dict) else {UNREADABLE_PAYLOAD: text}


def _row_to_event(row: tuple[Any, ...]) -> OutboxEvent:
    seq, event_id, kind, payload, occurred_utc, trust, delivered = row
    return OutboxEvent(
        seq=int(seq),
        event_id=str(event_id),
        kind=str(kind),
        payload=_payload(str(payload)),
        occurred_utc=str(occurred_utc),
        trust=str(trust),
        delivered=bool(delivered),
    )


def _undelivered_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM outbox WHERE delivered = 0").fetchone()[0])


def _may_be_full(conn: sqlite3.Connection, limit: int) -> bool:
    """False when the undelivered events cannot reach `limit`: they all lie between the oldest
    undelivered seq and the last seq taken. Two index lookups instead of counting every pending
    row on each append (a count that grows with the backlog: 50,000 rows at the limit)."""
    row = conn.execute("SELECT min(seq) FROM outbox WHERE delivered = 0").fetchone()
    if row is None or row[0] is None:
        return limit <= 0
    return last_event_seq(conn) - int(row[0]) + 1 >= limit


def _drop_for_room(
    conn: sqlite3.Connection, policy: OutboxPolicy, occurred_utc: str, trust: str
) -> None:
    if not policy.droppable_kinds:
        return
    if not _may_be_full(conn, policy.limit):
        return
    kinds = sorted(policy.droppable_kinds)
    marks = ",".join("?" * len(kinds))
    while _undelivered_count(conn) >= policy.limit:
        victim = conn.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE delivered = 0 AND kind IN ({marks}) "
            "ORDER BY seq LIMIT 1",
            kinds,
        ).fetchone()
        if victim is None:
            return  # nothing droppable: the caller's event is appended over the limit
        dropped = _row_to_event(victim)
        conn.execute("DELETE FROM outbox WHERE seq = ?", (dropped.seq,))
        audit_append(
            conn,
            AUDIT_KIND_DROPPED,
            {
                "seq": dropped.seq,
                "event_id": dropped.event_id,
                "kind": dropped.kind,
                "occurred_utc": dropped.occurred_utc,
                "reason": f"outbox full ({policy.limit} undelivered)",
            },
            occurred_utc,
            trust,
        )


def _prune_delivered(conn: sqlite3.Connection, retention: int) -> None:
    if retention == 0:
        conn.execute("DELETE FROM outbox WHERE delivered = 1")
        return
    # Everything older than the retention-th newest delivered row goes.
    conn.execute(
        "DELETE FROM outbox WHERE delivered = 1 AND seq < ("
        "  SELECT seq FROM outbox WHERE delivered = 1 ORDER BY seq DESC LIMIT 1 OFFSET ?"
        ")",
        (retention - 1,),
    )


def append_event(
    conn: sqlite3.Connection,
    policy: OutboxPolicy,
    new_event_id: Callable[[], str],
    kind: str,
    payload: dict[str, object],
    occurred_utc: str,
    trust: str,
) -> OutboxEvent:
    """Append one event and its audit record. The caller holds the write transaction."""
    if not kind:
        raise ValueError("event kind must not be empty")
    # Encode first: a payload that is not JSON fails before anything is written or numbered.
    payload_text = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    stored_payload: dict[str, object] = json.loads(payload_text)
    _drop_for_room(conn, policy, occurred_utc, trust)
    seq = take_counter(conn, NEXT_EVENT_SEQ, I64_MAX)
    event_id = new_event_id()
    conn.execute(
        f"INSERT INTO outbox ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 0)",
        (seq, event_id, kind, payload_text, occurred_utc, trust),
    )
    audit_append(
        conn,
        AUDIT_KIND_EVENT,
        {"seq": seq, "event_id": event_id, "kind": kind, "payload": stored_payload},
        occurred_utc,
        trust,
    )
    _prune_delivered(conn, policy.delivered_retention)
    return OutboxEvent(seq, event_id, kind, stored_payload, occurred_utc, trust, delivered=False)


def last_event_seq(conn: sqlite3.Connection) -> int:
    """The highest sequence number ever assigned (0 before the first event), delivered or not."""
    return peek_counter(conn, NEXT_EVENT_SEQ) - 1


def pending_events(
    conn: sqlite3.Connection, after_seq: int = 0, limit: int = 100
) -> list[OutboxEvent]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM outbox WHERE delivered = 0 AND seq > ? ORDER BY seq LIMIT ?",
        (after_seq, limit),
    ).fetchall()
    return [_row_to_event(r) for r in rows]


def mark_delivered(conn: sqlite3.Connection, seq: int) -> None:
    """Mark one event acknowledged by the broker. Marking it again is harmless (a re-sent event)."""
    cursor = conn.execute("UPDATE outbox SET delivered = 1 WHERE seq = ?", (seq,))
    if cursor.rowcount == 0:
        raise UnknownEventError(seq)


def mark_delivered_many(conn: sqlite3.Connection, seqs: Sequence[int]) -> None:
    """`mark_delivered` for a batch in one statement execution per row, no Python loop around
    cursors; UnknownEventError names the first seq that is not in the outbox."""
    cursor = conn.executemany("UPDATE outbox SET delivered = 1 WHERE seq = ?", [(s,) for s in seqs])
    if cursor.rowcount != len(seqs):
        for seq in seqs:
            if conn.execute("SELECT 1 FROM outbox WHERE seq = ?", (seq,)).fetchone() is None:
                raise UnknownEventError(seq)


def backlog(conn: sqlite3.Connection) -> BacklogInfo:
    count = _undelivered_count(conn)
    row = conn.execute(
        "SELECT seq, occurred_utc FROM outbox WHERE delivered = 0 ORDER BY seq LIMIT 1"
    ).fetchone()
    if row is None:
        return BacklogInfo(count=0, oldest_seq=None, oldest_occurred_utc=None)
    return BacklogInfo(count=count, oldest_seq=int(row[0]), oldest_occurred_utc=str(row[1]))


def events_from(conn: sqlite3.Connection, seq: int, limit: int | None = None) -> list[OutboxEvent]:
    """Delivered and undelivered events with sequence >= seq, in order (for "re-send from N")."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM outbox WHERE seq >= ? ORDER BY seq LIMIT ?",
        (seq, -1 if limit is None else limit),
    ).fetchall()
    return [_row_to_event(r) for r in rows]


CHECKPOINT_EVENT = "audit_checkpoint"


def append_checkpoint_event(
    conn: sqlite3.Connection,
    policy: OutboxPolicy,
    new_event_id: Callable[[], str],
    checkpoint: AuditRecord,
    stamp: Stamp,
) -> OutboxEvent:
    """Tell the centre an audit prune's checkpoint (the chain's new start), so the anchor is held
    off the unit too: the pruned head (first_seq, through_seq, through_hash, records) and the
    checkpoint record's own seq and hash. The caller holds the write transaction."""
    payload: dict[str, object] = {
        "priority": "info",
        "vkp_code": None,
        "alert_id": None,
        "boot": peek_counter(conn, BOOT_COUNTER) - 1,  # the boot that is running
        "data": {
            **checkpoint.body,
            "checkpoint_seq": checkpoint.seq,
            "checkpoint_hash": checkpoint.hash,
        },
    }
    return append_event(
        conn, policy, new_event_id, CHECKPOINT_EVENT, payload, stamp.at_utc, stamp.trust
    )
