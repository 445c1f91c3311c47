"""Retention in the real SQLite store: the audit log keeps its newest records behind a
checkpoint that `audit verify` checks (and tampering still shows), executed-command records go
after their retention with the command floor raised past them."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.store.audit import Stamp
from agent.store.db import Store
from agent.store.verify import EXIT_OK, EXIT_TAMPERED, audit_verify_main

KEEP = 50
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def stamp(self) -> Stamp:
        return Stamp(self.now.isoformat(timespec="milliseconds"), "synchronised")


def count(db: Path, sql: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def tamper(db: Path, sql: str) -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(sql)
    finally:
        conn.close()


@pytest.fixture
def pruned(tmp_path: Path) -> Path:
    """400 events (each with its audit record) into a store that keeps 50 audit records."""
    db = tmp_path / "agent.sqlite3"
    clock = Clock()
    with Store.open(db, stamp=clock.stamp, audit_retention=KEEP) as store:
        for i in range(400):
            with store.transaction():
                store.append_event("dose_taken", {"i": i}, clock.stamp().at_utc, "synchronised")
    return db


def test_the_audit_log_stays_bounded_and_still_verifies(
    pruned: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept = count(pruned, "SELECT count(*) FROM audit")
    assert KEEP <= kept <= KEEP + 1 + KEEP // 10  # the newest, plus at most one batch
    assert count(pruned, "SELECT max(seq) FROM audit") > 400  # numbering goes on
    assert count(pruned, "SELECT count(*) FROM audit WHERE kind = 'audit.pruned'") >= 1
    assert audit_verify_main(pruned) == EXIT_OK
    assert "pruned behind a checkpoint" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        # a record kept after the prune is edited
        (
            "UPDATE audit SET body = '{\"i\":999}' WHERE seq = (SELECT max(seq) - 5 FROM audit)",
            "hash",
        ),
        # more of the head removed than the checkpoint says
        ("DELETE FROM audit WHERE seq = (SELECT min(seq) FROM audit)", "gap"),
        # the checkpoint itself edited: it claims a different pruned head
        (
            'UPDATE audit SET body = replace(body, \'"through_hash":"\', \'"through_hash":"0\')'
            " WHERE seq = (SELECT max(seq) FROM audit WHERE kind = 'audit.pruned')",
            "",
        ),
        # everything up to and including the latest checkpoint removed
        (
            "DELETE FROM audit WHERE seq <= "
            "(SELECT max(seq) FROM audit WHERE kind = 'audit.pruned')",
            "TAMPERED",
        ),
    ],
)
def test_tampering_after_a_prune_is_still_detected(
    pruned: Path, damage: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper(pruned, damage)
    assert audit_verify_main(pruned) == EXIT_TAMPERED
    assert why in capsys.readouterr().out


def test_executed_commands_are_pruned_after_retention_and_stay_refused(tmp_path: Path) -> None:
    db = tmp_path / "agent.sqlite3"
    clock = Clock()
    with Store.open(db, stamp=clock.stamp) as store:
        with store.transaction():
            store.record_command("old-1", "pause", '{"status":"accepted"}')
            store.record_command("old-2", "resume", '{"status":"accepted"}')
        recorded = clock.stamp().at_utc
        clock.now = T0 + timedelta(days=29)
        with store.transaction():
            store.record_command("newer", "pause", '{"status":"accepted"}')
        assert store.command_seen("old-1") is not None  # within 30 days: kept
        clock.now = T0 + timedelta(days=31)
        with store.transaction():
            store.set_kv("touch", "1")  # any later transaction prunes
        assert store.command_seen("old-1") is None
        assert store.command_seen("old-2") is None
        assert store.command_seen("newer") is not None
        # a copy of a pruned command is older than the floor: refused as a replay
        floor = store.command_floor()
        assert floor is not None
        assert floor >= datetime.fromisoformat(recorded)


def test_every_prune_tells_the_centre_the_checkpoint_the_chain_has(tmp_path: Path) -> None:
    """The anchor leaves the unit: an `audit_checkpoint` event per prune, carrying the seq and
    hash of the last pruned record and of the checkpoint record, as the chain itself has them
    (read here from the audit table before each prune removes them)."""
    db = tmp_path / "agent.sqlite3"
    clock = Clock()
    hashes: dict[int, str] = {}
    checkpoints: list[int] = []  # seqs of audit.pruned records
    with Store.open(db, stamp=clock.stamp, audit_retention=KEEP) as store:
        for i in range(400):
            with store.transaction():
                store.append_event("dose_taken", {"i": i}, clock.stamp().at_utc, "synchronised")
            for record in store.audit_records(after_seq=max(hashes, default=0), limit=1000):
                hashes[record.seq] = record.hash
                if record.kind == "audit.pruned":
                    checkpoints.append(record.seq)
        told = [e for e in store.pending_events(limit=10_000) if e.kind == "audit_checkpoint"]
        assert store.verify_audit().ok
    assert len(checkpoints) >= 3
    assert [e.payload["data"]["checkpoint_seq"] for e in told] == checkpoints  # type: ignore[index]
    for event in told:
        data = event.payload["data"]
        assert isinstance(data, dict)
        assert data["through_hash"] == hashes[data["through_seq"]]
        assert data["checkpoint_hash"] == hashes[data["checkpoint_seq"]]
        assert data["records"] == data["through_seq"] - data["first_seq"] + 1
        assert (event.payload["priority"], event.payload["vkp_code"]) == ("info", None)
