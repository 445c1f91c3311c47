"""The hash-chained audit log: what it records, how tampering shows, the `audit verify` verdict."""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
from pathlib import Path

import pytest

from agent.store.audit import ZERO_HASH, Stamp, prune_audit
from agent.store.db import Store
from agent.store.verify import audit_verify_main, verify_audit

AT = "2026-03-01T08:00:00.000+00:00"
TRUST = "synchronised"


def open_store(path: Path) -> Store:
    return Store.open(path, stamp=lambda: Stamp(AT, TRUST))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "agent.sqlite3"


@pytest.fixture
def filled(db_path: Path) -> Path:
    """A store with 1 creation record, 8 events, a command and an acknowledgement: 11 records."""
    with open_store(db_path) as s:
        for i in range(8):
            with s.transaction():
                s.append_event("dose_taken", {"i": i}, AT, TRUST)
        with s.transaction():
            s.record_command("cmd-1", "ack_alarm", '{"ok":true}')
            s.audit_append("command", {"command_id": "cmd-1", "name": "ack_alarm"}, AT, TRUST)
            s.audit_append("alarm.acknowledged", {"alarm": "missed", "by": "nurse"}, AT, TRUST)
        assert len(s.audit_records(limit=100)) == 11
    return db_path


def tamper(db_path: Path, sql: str, params: tuple[object, ...] = ()) -> None:
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def report_of(db_path: Path) -> tuple[bool, int, int | None, str | None]:
    with open_store(db_path) as s:
        r = verify_audit(s)
    return (r.ok, r.records_checked, r.first_bad_seq, r.reason)


def test_intact_chain_verifies(filled: Path) -> None:
    assert report_of(filled) == (True, 11, None, None)


def test_every_event_is_audited_in_the_same_transaction(db_path: Path) -> None:
    with open_store(db_path) as s:
        with s.transaction():
            e = s.append_event(
                "dose_missed", {"slot": "08:00"}, "2026-03-01T09:00:00Z", "untrusted"
            )
        [record] = [r for r in s.audit_records() if r.kind == "event"]
        assert record.body == {
            "seq": e.seq,
            "event_id": e.event_id,
            "kind": "dose_missed",
            "payload": {"slot": "08:00"},
        }
        assert (record.at_utc, record.trust) == ("2026-03-01T09:00:00Z", "untrusted")


def test_hash_follows_the_documented_canonical_encoding(filled: Path) -> None:
    with open_store(filled) as s:
        records = s.audit_records(limit=100)
        anchor = s.audit_anchor()
    assert records[0].prev_hash == ZERO_HASH
    for previous, record in itertools.pairwise(records):
        assert record.prev_hash == previous.hash
    for r in records:
        canonical = json.dumps(
            {
                "seq": r.seq,
                "at_utc": r.at_utc,
                "trust": r.trust,
                "kind": r.kind,
                "body": r.body,
                "prev_hash": r.prev_hash,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        assert hashlib.sha256(canonical.encode()).hexdigest() == r.hash
    assert anchor is not None
    assert (anchor.seq, anchor.hash) == (records[-1].seq, records[-1].hash)


def test_modified_body_is_a_hash_mismatch_at_that_seq(filled: Path) -> None:
    tamper(filled, "UPDATE audit SET body = replace(body, '\"i\":3', '\"i\":4') WHERE seq = 5")
    assert report_of(filled) == (False, 4, 5, "hash mismatch")


def test_replaced_hash_is_a_hash_mismatch(filled: Path) -> None:
    tamper(filled, "UPDATE audit SET kind = 'forged', hash = ? WHERE seq = 5", ("f" * 64,))
    assert report_of(filled) == (False, 4, 5, "hash mismatch")


def test_forger_recomputing_the_hash_is_caught_at_the_next_link(filled: Path) -> None:
    conn = sqlite3.connect(filled)
    row = conn.execute("SELECT seq, at_utc, trust, kind, body, prev_hash FROM audit WHERE seq = 5")
    seq, at_utc, trust, _, body, prev = row.fetchone()
    forged = json.dumps(
        {
            "seq": seq,
            "at_utc": at_utc,
            "trust": trust,
            "kind": "forged",
            "body": json.loads(body),
            "prev_hash": prev,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    with conn:
        conn.execute(
            "UPDATE audit SET kind = 'forged', hash = ? WHERE seq = 5",
            (hashlib.sha256(forged.encode()).hexdigest(),),
        )
    conn.close()
    assert report_of(filled) == (False, 5, 6, "broken link")


def _forged_hash(seq: int, at_utc: str, trust: str, kind: str, body: str, prev: str) -> str:
    """SHA-256 of the canonical JSON as `docs`/the module docstring define it, computed here."""
    canonical = json.dumps(
        {
            "seq": seq,
            "at_utc": at_utc,
            "trust": trust,
            "kind": kind,
            "body": json.loads(body),
            "prev_hash": prev,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def test_last_record_rewritten_with_a_recomputed_hash_is_caught_by_the_anchor(
    filled: Path,
) -> None:
    # The last record has no next link to break: only the anchor can tell.
    conn = sqlite3.connect(filled)
    row = conn.execute("SELECT seq, at_utc, trust, body, prev_hash FROM audit WHERE seq = 11")
    seq, at_utc, trust, body, prev = row.fetchone()
    with conn:
        conn.execute(
            "UPDATE audit SET kind = 'forged', hash = ? WHERE seq = 11",
            (_forged_hash(seq, at_utc, trust, "forged", body, prev),),
        )
    conn.close()
    assert report_of(filled) == (False, 11, 11, "anchor mismatch: hash differs")


def test_deleted_anchor_is_caught(filled: Path) -> None:
    tamper(filled, "DELETE FROM kv WHERE key = 'audit_anchor'")
    assert report_of(filled) == (False, 11, 1, "missing anchor")


def test_record_appended_behind_the_anchors_back_is_caught(filled: Path) -> None:
    conn = sqlite3.connect(filled)
    last_hash = conn.execute("SELECT hash FROM audit WHERE seq = 11").fetchone()[0]
    body = "{}"
    digest = _forged_hash(12, AT, TRUST, "forged", body, last_hash)
    with conn:
        conn.execute(
            "INSERT INTO audit (seq, at_utc, trust, kind, body, prev_hash, hash) "
            "VALUES (12, ?, ?, 'forged', ?, ?, ?)",
            (AT, TRUST, body, last_hash, digest),
        )
    conn.close()
    assert report_of(filled) == (False, 12, 12, "anchor mismatch: records after anchor")


def test_empty_store_without_anchor_verifies(db_path: Path) -> None:
    with open_store(db_path):
        pass
    tamper(db_path, "DELETE FROM audit")
    tamper(db_path, "DELETE FROM kv WHERE key = 'audit_anchor'")
    assert report_of(db_path) == (True, 0, None, None)


def test_deleted_middle_row_is_a_gap(filled: Path) -> None:
    tamper(filled, "DELETE FROM audit WHERE seq = 6")
    assert report_of(filled) == (False, 5, 6, "gap in sequence")


def test_deleted_tail_is_caught_by_the_anchor(filled: Path) -> None:
    tamper(filled, "DELETE FROM audit WHERE seq >= 9")
    assert report_of(filled) == (False, 8, 9, "truncated: anchor says seq 11")


def test_truncation_stays_visible_after_new_records(filled: Path) -> None:
    tamper(filled, "DELETE FROM audit WHERE seq >= 9")
    with open_store(filled) as s, s.transaction():
        record = s.audit_append("note", {}, AT, TRUST)
    assert record.seq == 12  # continues from the anchor, not from the table
    assert report_of(filled) == (False, 8, 9, "gap in sequence")


def test_emptied_audit_table_is_caught(filled: Path) -> None:
    tamper(filled, "DELETE FROM audit")
    assert report_of(filled) == (False, 0, 1, "truncated: anchor says seq 11")


def test_verify_main_ok(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert audit_verify_main(filled) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "OK" in out
    assert "11 records" in out


def test_verify_main_tampered(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tamper(filled, "UPDATE audit SET trust = 'untrusted' WHERE seq = 3")
    assert audit_verify_main(filled) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "TAMPERED at seq 3: hash mismatch" in out


def test_verify_main_truncated(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tamper(filled, "DELETE FROM audit WHERE seq = 11")
    assert audit_verify_main(filled) == 1
    assert "truncated: anchor says seq 11" in capsys.readouterr().out


def test_verify_main_cannot_open(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.sqlite3"
    assert audit_verify_main(missing) == 2
    assert "cannot open" in capsys.readouterr().out
    assert not missing.exists()  # verifying never creates a store
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"\x00garbage" * 512)
    assert audit_verify_main(garbage) == 2
    assert "cannot open" in capsys.readouterr().out
    empty = tmp_path / "empty.sqlite3"
    empty.touch()
    assert audit_verify_main(empty) == 2
    assert "no agent store schema" in capsys.readouterr().out
    assert empty.stat().st_size == 0  # verifying never initialises a store


def test_an_audit_record_without_a_kind_is_refused(db_path: Path) -> None:
    with (
        open_store(db_path) as s,
        s.transaction(),
        pytest.raises(ValueError, match="audit kind must not be empty"),
    ):
        s.audit_append("", {"command_id": "cmd-2"}, AT, TRUST)


def test_a_head_deleted_without_a_checkpoint_is_a_gap_from_seq_1(filled: Path) -> None:
    tamper(filled, "DELETE FROM audit WHERE seq <= 2")
    assert report_of(filled) == (
        False,
        0,
        1,
        "gap in sequence: records before the first are missing",
    )


def test_the_log_is_pruned_once_keep_plus_batch_records_exist(filled: Path) -> None:
    conn = sqlite3.connect(filled)
    try:
        through_hash = conn.execute("SELECT hash FROM audit WHERE seq = 4").fetchone()[0]
        with conn:
            assert prune_audit(conn, 8, AT, TRUST, batch=4) is None  # 11 records, one short of 12
        with conn:
            checkpoint = prune_audit(conn, 8, AT, TRUST, batch=3)  # 11 = 8 + 3: pruned
        assert checkpoint is not None
        assert (checkpoint.seq, checkpoint.kind) == (12, "audit.pruned")
        assert checkpoint.body == {
            "first_seq": 1,
            "through_seq": 4,
            "through_hash": through_hash,
            "records": 4,
        }
        seqs = [row[0] for row in conn.execute("SELECT seq FROM audit ORDER BY seq")]
        assert seqs == list(range(5, 13))  # the newest 8, the checkpoint among them
    finally:
        conn.close()
    assert report_of(filled)[0] is True
