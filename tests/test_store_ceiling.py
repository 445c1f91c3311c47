"""The store's disk ceiling on a real SQLite file: a unit offline under a flood of low-value
events stays at its ceiling by dropping those (counted, told to the centre once), never a dose
outcome or an alarm; past that, dose outcomes are still kept."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from agent.engine.catalogue import documented_kinds, raises_latched_alert
from agent.runtime import DROPPABLE_WHEN_FULL
from agent.store.audit import Stamp
from agent.store.ceiling import CEILING_EVENT
from agent.store.db import Store

CEILING = 2 * 1024 * 1024
AT = "2026-03-01T08:00:00.000Z"
PAD = "p" * 400  # a realistic event is a few hundred bytes


def open_store(db: Path) -> Store:
    return Store.open(
        db,
        stamp=lambda: Stamp(AT, "synchronised"),
        droppable_kinds=DROPPABLE_WHEN_FULL,
        max_bytes=CEILING,
    )


def kinds_pending(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT kind, count(*) FROM outbox WHERE delivered = 0 GROUP BY kind")
        return {str(kind): int(n) for kind, n in rows}
    finally:
        conn.close()


def used(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        pages, free, size = (
            int(conn.execute(f"PRAGMA {name}").fetchone()[0])
            for name in ("page_count", "freelist_count", "page_size")
        )
        return (pages - free) * size
    finally:
        conn.close()


def flood(store: Store, rounds: int, presses_per_round: int) -> None:
    for n in range(rounds):
        with store.transaction():
            store.append_event("slot_outcome", {"data": {"n": n, "outcome": "taken"}}, AT, "x")
            for m in range(presses_per_round):
                store.append_event("button_pressed", {"data": {"m": m, "pad": PAD}}, AT, "x")


def test_the_store_stays_at_its_ceiling_dropping_only_droppable_kinds(tmp_path: Path) -> None:
    db = tmp_path / "agent.sqlite3"
    with open_store(db) as store:
        # offline: nothing is ever delivered. 300 dose outcomes among 6,000 button presses
        # (about 6 MB of events and audit records without a ceiling).
        flood(store, rounds=300, presses_per_round=20)
        assert store.verify_audit().ok
    pending = kinds_pending(db)
    assert pending["slot_outcome"] == 300  # every dose outcome kept
    assert 0 < pending["button_pressed"] < 6000  # the oldest presses made room
    assert pending[CEILING_EVENT] == 1  # the centre is told (at most once a day)
    assert used(db) <= CEILING * 1.05  # at the ceiling, give or take a transaction
    assert db.stat().st_size <= CEILING * 1.25  # freed pages are reused: the file stops growing

    with open_store(db) as store:
        ceiling_event = next(
            e for e in store.pending_events(limit=10_000) if e.kind == CEILING_EVENT
        )
        data = ceiling_event.payload["data"]
        assert isinstance(data, dict)
        assert data["ceiling_bytes"] == CEILING
        assert data["undelivered_dropped"]["button_pressed"] > 0
        assert ceiling_event.payload["priority"] == "medium"


def test_past_the_ceiling_with_nothing_droppable_dose_outcomes_are_still_kept(
    tmp_path: Path,
) -> None:
    db = tmp_path / "agent.sqlite3"
    big = "d" * 2000
    with open_store(db) as store:
        for n in range(150):  # about 2 x 2,000 bytes each (outbox + audit): past 2 MiB
            with store.transaction():
                for k in range(5):
                    store.append_event(
                        "slot_outcome", {"data": {"n": n, "k": k, "note": big}}, AT, "x"
                    )
        assert store.verify_audit().ok
    pending = kinds_pending(db)
    assert pending["slot_outcome"] == 750  # none dropped, none refused
    assert pending[CEILING_EVENT] == 1


def test_every_kind_dropped_when_full_is_a_catalogued_event_that_latches_no_alert() -> None:
    # a misspelt kind would silently drop nothing; an alarm must never be dropped
    assert sorted(DROPPABLE_WHEN_FULL - set(documented_kinds())) == []
    assert not [kind for kind in DROPPABLE_WHEN_FULL if raises_latched_alert(kind)]


def test_audit_records_pruned_at_the_ceiling_leave_their_checkpoint_with_the_centre(
    tmp_path: Path,
) -> None:
    """Audit records only (refused commands, say): at the ceiling the older half goes behind a
    checkpoint, and an `audit_checkpoint` event carries the hash the checkpoint record has."""
    db = tmp_path / "agent.sqlite3"
    with open_store(db) as store:
        for n in range(300):
            with store.transaction():
                for k in range(10):
                    body: dict[str, object] = {"n": n, "k": k, "pad": PAD * 2}
                    store.audit_append("command_rejected", body, AT, "x")
        assert store.verify_audit().ok
        told: dict[int, Any] = {  # each checkpoint's event data, by the checkpoint's seq
            e.payload["data"]["checkpoint_seq"]: e.payload["data"]  # type: ignore[index]
            for e in store.pending_events(limit=10_000)
            if e.kind == "audit_checkpoint"
        }
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT seq, hash, body FROM audit WHERE kind = 'audit.pruned'"
        ).fetchall()
    finally:
        conn.close()
    assert rows  # the ceiling pruned the audit log
    for seq, digest, stored in rows:
        assert told[seq]["through_hash"] == json.loads(stored)["through_hash"]
        assert told[seq]["checkpoint_hash"] == digest
