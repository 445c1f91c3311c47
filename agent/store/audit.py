"""Append-only, hash-chained audit log.

Each record's hash is SHA-256 over the canonical JSON (sorted keys, no spaces, ASCII only, no NaN)
of ``{"seq", "at_utc", "trust", "kind", "body", "prev_hash"}``; the first record's ``prev_hash``
is 64 zeros. So editing a record breaks its hash; removing or reordering records breaks the links.

Truncating the *tail* leaves a valid shorter chain, so the last ``(seq, hash)`` is also kept as the
*chain anchor* in the kv table, written in the same transaction as the record. New records continue
from the anchor, not from the table's last row, so a truncated tail stays detectable after further
appends (it shows up as a gap).

Retention (``prune_audit``): only the newest records are kept. A prune first appends a
*checkpoint* record (kind ``audit.pruned``) carrying the seq and hash of the last record it
removes, then deletes every record up to that one. The chain that remains starts right after the
checkpoint's ``through_seq`` and its first ``prev_hash`` must be the checkpoint's
``through_hash``; the checkpoint itself is inside the chain, so it cannot be edited unseen, and
removing more of the head than it states (or the checkpoint with it) is detected.

Limits (be honest about them): this makes accidental damage and naive edits evident. Someone
who can rewrite the whole file can also recompute every hash and the anchor; to defend against that
the chain has to leave the device. Each checkpoint does: the store reports it to the centre as an
``audit_checkpoint`` event (``outbox.append_checkpoint_event``) in the prune's transaction. The
newest records after the last checkpoint are still held only on the unit.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.store.kv import AUDIT_ANCHOR, get_kv, set_kv

ZERO_HASH = "0" * 64
AUDIT_KIND_PRUNED = "audit.pruned"
# Records kept (about 0.3-1 KB each): months of a unit's life. Pruned in batches, not per record.
AUDIT_RETENTION = 100_000
AUDIT_PRUNE_BATCH = 1_000


@dataclass(frozen=True)
class Stamp:
    """When something happened by the Pi's wall clock, and how far that clock can be trusted."""

    at_utc: str
    trust: str


def system_stamp() -> Stamp:
    """Default stamp: system UTC, trust "untrusted" (unknown here); inject the daemon's clock."""
    return Stamp(datetime.now(UTC).isoformat(timespec="milliseconds"), "untrusted")


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at_utc: str
    trust: str
    kind: str
    body: dict[str, object]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class ChainAnchor:
    seq: int
    hash: str


def canonical_json(value: object) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def record_hash(seq: int, at_utc: str, trust: str, kind: str, body: object, prev_hash: str) -> str:
    encoded = canonical_json(
        {
            "seq": seq,
            "at_utc": at_utc,
            "trust": trust,
            "kind": kind,
            "body": body,
            "prev_hash": prev_hash,
        }
    )
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()


def read_anchor(conn: sqlite3.Connection) -> ChainAnchor | None:
    raw = get_kv(conn, AUDIT_ANCHOR)
    if raw is None:
        return None
    data = json.loads(raw)
    return ChainAnchor(seq=int(data["seq"]), hash=str(data["hash"]))


def _write_anchor(conn: sqlite3.Connection, anchor: ChainAnchor) -> None:
    set_kv(conn, AUDIT_ANCHOR, canonical_json({"seq": anchor.seq, "hash": anchor.hash}))


def audit_append(
    conn: sqlite3.Connection, kind: str, body: dict[str, object], at_utc: str, trust: str
) -> AuditRecord:
    """Append one record after the anchor. The caller holds the write transaction."""
    if not kind:
        raise ValueError("audit kind must not be empty")
    anchor = read_anchor(conn)
    seq = 1 if anchor is None else anchor.seq + 1
    prev_hash = ZERO_HASH if anchor is None else anchor.hash
    body_text = canonical_json(body)
    # Hash what was stored (the JSON round trip), so verification recomputes the same value.
    stored_body: dict[str, object] = json.loads(body_text)
    digest = record_hash(seq, at_utc, trust, kind, stored_body, prev_hash)
    conn.execute(
        "INSERT INTO audit (seq, at_utc, trust, kind, body, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (seq, at_utc, trust, kind, body_text, prev_hash, digest),
    )
    _write_anchor(conn, ChainAnchor(seq, digest))
    return AuditRecord(seq, at_utc, trust, kind, stored_body, prev_hash, digest)


def audit_records(
    conn: sqlite3.Connection, after_seq: int = 0, limit: int = 100
) -> list[AuditRecord]:
    rows = conn.execute(
        "SELECT seq, at_utc, trust, kind, body, prev_hash, hash FROM audit "
        "WHERE seq > ? ORDER BY seq LIMIT ?",
        (after_seq, limit),
    ).fetchall()
    return [AuditRecord(int(r[0]), r[1], r[2], r[3], json.loads(r[4]), r[5], r[6]) for r in rows]


def prune_audit(
    conn: sqlite3.Connection, keep: int, at_utc: str, trust: str, *, batch: int = 1
) -> AuditRecord | None:
    """Keep the newest `keep` records (once more than `keep + batch` - 1 exist): append the
    checkpoint, then delete the head it covers. Returns the checkpoint, or None when nothing was
    pruned. The caller holds the write transaction."""
    if keep < 1:
        raise ValueError("keep at least one record")
    anchor = read_anchor(conn)
    first = conn.execute("SELECT min(seq) FROM audit").fetchone()[0]
    if anchor is None or first is None or anchor.seq - int(first) + 1 < keep + batch:
        return None
    # The checkpoint is one more record: the newest `keep` after it include it.
    through = anchor.seq + 1 - keep
    row = conn.execute("SELECT hash FROM audit WHERE seq = ?", (through,)).fetchone()
    if row is None:  # a damaged chain is for verify to report, not to paper over
        return None
    checkpoint = audit_append(
        conn,
        AUDIT_KIND_PRUNED,
        {
            "first_seq": int(first),
            "through_seq": through,
            "through_hash": str(row[0]),
            "records": through - int(first) + 1,
        },
        at_utc,
        trust,
    )
    conn.execute("DELETE FROM audit WHERE seq <= ?", (through,))
    return checkpoint


def _chain_start(conn: sqlite3.Connection) -> tuple[int, str, int | None] | AuditReport:
    """Where the walk starts: (seq 1, zero hash) for a whole chain, or right after the latest
    checkpoint's `through_seq` with its `through_hash`; an AuditReport when the head is missing
    and no checkpoint accounts for it."""
    head = conn.execute("SELECT seq, prev_hash FROM audit ORDER BY seq LIMIT 1").fetchone()
    if head is None or int(head[0]) == 1:
        return 1, ZERO_HASH, None
    row = conn.execute(
        "SELECT body FROM audit WHERE kind = ? ORDER BY seq DESC LIMIT 1", (AUDIT_KIND_PRUNED,)
    ).fetchone()
    try:
        body: Any = json.loads(row[0]) if row is not None else {}
        through, through_hash = int(body["through_seq"]), str(body["through_hash"])
    except (TypeError, ValueError, KeyError):
        return AuditReport(False, 0, 1, "gap in sequence: records before the first are missing")
    if int(head[0]) != through + 1:
        return AuditReport(
            False, 0, through + 1, f"gap in sequence: the checkpoint pruned through {through}"
        )
    if head[1] != through_hash:
        return AuditReport(False, 0, int(head[0]), "broken link: differs from the checkpoint")
    return through + 1, through_hash, through


@dataclass(frozen=True)
class AuditReport:
    ok: bool
    records_checked: int
    first_bad_seq: int | None = None
    reason: str | None = None  # "hash mismatch", "broken link", "gap in sequence", "truncated: ..."
    pruned_through: int | None = None  # records up to this seq were pruned behind a checkpoint


def verify_chain(conn: sqlite3.Connection) -> AuditReport:
    """Walk the whole chain in seq order and compare its end with the anchor.

    The caller provides a consistent snapshot (a read or write transaction).
    """
    start = _chain_start(conn)
    if isinstance(start, AuditReport):
        return start
    expected_seq, prev_hash, pruned_through = start
    checked = 0
    cursor = conn.execute(
        "SELECT seq, at_utc, trust, kind, body, prev_hash, hash FROM audit ORDER BY seq"
    )
    for seq, at_utc, trust, kind, body_text, stored_prev, stored_hash in cursor:
        if seq != expected_seq:
            return AuditReport(False, checked, expected_seq, "gap in sequence")
        if stored_prev != prev_hash:
            return AuditReport(False, checked, seq, "broken link")
        try:
            body: object = json.loads(body_text)
            digest = record_hash(seq, at_utc, trust, kind, body, stored_prev)
        except (ValueError, TypeError):
            return AuditReport(False, checked, seq, "hash mismatch")
        if digest != stored_hash:
            return AuditReport(False, checked, seq, "hash mismatch")
        checked += 1
        prev_hash = stored_hash
        expected_seq += 1
    last_seq = expected_seq - 1
    anchor = read_anchor(conn)
    if anchor is None:
        if checked == 0:
            return AuditReport(True, 0)
        return AuditReport(False, checked, 1, "missing anchor")
    if anchor.seq > last_seq:
        return AuditReport(False, checked, last_seq + 1, f"truncated: anchor says seq {anchor.seq}")
    if anchor.seq < last_seq:
        return AuditReport(False, checked, anchor.seq + 1, "anchor mismatch: records after anchor")
    if anchor.hash != prev_hash:
        return AuditReport(False, checked, anchor.seq, "anchor mismatch: hash differs")
    return AuditReport(True, checked, pruned_through=pruned_through)
