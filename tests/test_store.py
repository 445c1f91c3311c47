"""The durable store: outbox, dose ledger, commands, kv, binding, schema, factory reset."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.store import ledger
from agent.store.audit import Stamp
from agent.store.db import Store
from agent.store.errors import (
    AlreadyDispensed,
    BacklogNotEmptyError,
    CommandAlreadyRecordedError,
    OutcomeAlreadyRecorded,
    SchemaTooNewError,
    StoreCorrupt,
    StoreError,
    StoreUsageError,
    UnknownEventError,
    UnknownSlotError,
)
from agent.store.ledger import SlotRecord
from agent.store.uuid7 import Uuid7Factory

AT = "2026-03-01T08:00:00.000+00:00"
TRUST = "synchronised"


def fixed_stamp() -> Stamp:
    return Stamp(AT, TRUST)


def open_store(
    path: Path,
    *,
    outbox_limit: int = 50_000,
    delivered_retention: int = 10_000,
    droppable_kinds: frozenset[str] = frozenset({"heartbeat", "status", "link_state"}),
) -> Store:
    return Store.open(
        path,
        stamp=fixed_stamp,
        outbox_limit=outbox_limit,
        delivered_retention=delivered_retention,
        droppable_kinds=droppable_kinds,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "agent.sqlite3"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with open_store(db_path) as s:
        yield s


def append(store: Store, kind: str = "dose_taken", **payload: object) -> int:
    with store.transaction():
        return store.append_event(kind, dict(payload), AT, TRUST).seq


def raw(db_path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def slot_row(db_path: Path, slot_id: str) -> SlotRecord | None:
    conn = sqlite3.connect(db_path)
    try:
        return ledger.slot_state(conn, slot_id)
    finally:
        conn.close()


# -- opening -------------------------------------------------------------------------------------


def test_open_sets_durability_pragmas_and_schema_version(store: Store, db_path: Path) -> None:
    conn = store._db()  # the pragmas but journal_mode hold per connection: ask the store's own
    settings = {
        name: conn.execute(f"PRAGMA {name}").fetchone()[0]
        for name in ("journal_mode", "synchronous", "foreign_keys", "secure_delete")
    }
    assert settings == {
        "journal_mode": "wal",
        "synchronous": 2,  # FULL
        "foreign_keys": 1,
        "secure_delete": 1,
    }
    assert raw(db_path, "PRAGMA user_version") == [(1,)]


def test_open_refuses_a_file_that_is_not_sqlite(db_path: Path) -> None:
    db_path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreCorrupt):
        open_store(db_path)


def test_open_refuses_a_damaged_database(db_path: Path) -> None:
    with open_store(db_path) as s:
        for i in range(300):
            append(s, pad="x" * 300, i=i)
    size = db_path.stat().st_size
    page = 4096
    assert size > 10 * page
    with db_path.open("r+b") as f:  # scribble over interior pages, keep the header intact
        f.seek(3 * page)
        f.write(b"\xa5" * (4 * page))
    with pytest.raises(StoreCorrupt):
        open_store(db_path)


def test_open_refuses_a_newer_schema(db_path: Path) -> None:
    open_store(db_path).close()
    raw(db_path, "PRAGMA user_version = 99")
    with pytest.raises(SchemaTooNewError, match="99"):
        open_store(db_path)


def test_open_refuses_a_foreign_sqlite_file(db_path: Path) -> None:
    raw(db_path, "CREATE TABLE something (x)")
    with pytest.raises(StoreError, match="not an agent store"):
        open_store(db_path)


def test_open_without_create_does_not_create(db_path: Path) -> None:
    with pytest.raises(StoreError):
        Store.open(db_path, create=False)
    assert not db_path.exists()


def test_closed_store_refuses_use(db_path: Path) -> None:
    s = open_store(db_path)
    s.close()
    with pytest.raises(StoreUsageError):
        s.backlog()


# -- transactions --------------------------------------------------------------------------------


def test_failed_transaction_leaves_no_event_audit_or_sequence(store: Store, db_path: Path) -> None:
    audit_before = len(store.audit_records(limit=1000))

    def failing_engine_step() -> None:
        with store.transaction():
            store.append_event("dose_taken", {"slot": "a"}, AT, TRUST)
            store.begin_dispense("slot-a", 1, 0, AT)
            store.record_command("cmd-1", "pause", "{}")
            raise RuntimeError("engine step failed")

    with pytest.raises(RuntimeError, match="engine step failed"):
        failing_engine_step()
    assert store.events_from(0) == []
    assert len(store.audit_records(limit=1000)) == audit_before
    assert raw(db_path, "SELECT count(*) FROM ledger") == [(0,)]
    assert store.command_seen("cmd-1") is None
    assert append(store) == 1  # the rolled-back number was not consumed


def test_a_payload_that_is_not_json_consumes_nothing(store: Store) -> None:
    with pytest.raises(TypeError), store.transaction():
        store.append_event("dose_taken", {"bad": object()}, AT, TRUST)
    assert append(store) == 1


MUTATORS: dict[str, Callable[[Store], object]] = {
    "append_event": lambda s: s.append_event("k", {}, AT, TRUST),
    "mark_delivered": lambda s: s.mark_delivered(1),
    "begin_dispense": lambda s: s.begin_dispense("slot", 1, 0, AT),
    "record_presented": lambda s: s.record_presented("slot"),
    "record_outcome": lambda s: s.record_outcome("slot", "taken", None),
    "next_dispense_id": lambda s: s.next_dispense_id(),
    "record_command": lambda s: s.record_command("c", "n", "{}"),
    "set_kv": lambda s: s.set_kv("k", "v"),
    "next_session_counter": lambda s: s.next_session_counter(),
    "audit_append": lambda s: s.audit_append("note", {}, AT, TRUST),
}


@pytest.mark.parametrize("name", sorted(MUTATORS))
def test_mutating_outside_a_transaction_is_refused(store: Store, name: str) -> None:
    with pytest.raises(StoreUsageError, match="transaction"):
        MUTATORS[name](store)


def test_transactions_do_not_nest(store: Store) -> None:
    with store.transaction(), pytest.raises(StoreUsageError), store.transaction():
        pass


def test_one_transaction_groups_several_records(store: Store, db_path: Path) -> None:
    with store.transaction():
        store.append_event("dispense_started", {"slot": "s1"}, AT, TRUST)
        store.begin_dispense("s1", store.next_dispense_id(), 3, AT)
        # Not visible to another connection before commit.
        assert raw(db_path, "SELECT count(*) FROM outbox") == [(0,)]
    assert raw(db_path, "SELECT count(*) FROM outbox") == [(1,)]
    assert raw(db_path, "SELECT count(*) FROM ledger") == [(1,)]


# -- outbox --------------------------------------------------------------------------------------


def test_sequences_strictly_increase_without_gaps_across_reopen(db_path: Path) -> None:
    with open_store(db_path) as s:
        first = [append(s, i=i) for i in range(5)]
    with open_store(db_path) as s:
        second = [append(s, i=i) for i in range(5)]
        assert first + second == list(range(1, 11))
        assert [e.seq for e in s.events_from(1)] == list(range(1, 11))
        assert [e.payload["i"] for e in s.events_from(1)] == [0, 1, 2, 3, 4] * 2


def test_last_event_seq_counts_every_assigned_number(db_path: Path) -> None:
    with open_store(db_path, delivered_retention=0) as s:
        assert s.last_event_seq() == 0
        for _ in range(3):
            seq = append(s)
            with s.transaction():
                s.mark_delivered(seq)
        append(s)  # prunes 1..3
        assert s.last_event_seq() == 4
    with open_store(db_path) as s:
        assert s.last_event_seq() == 4


def test_sequence_is_never_reused_after_rows_are_pruned(db_path: Path) -> None:
    with open_store(db_path, delivered_retention=0) as s:
        for _ in range(3):
            seq = append(s)
            with s.transaction():
                s.mark_delivered(seq)
        append(s)  # prunes the delivered rows
        assert [e.seq for e in s.events_from(0)] == [4]
    with open_store(db_path, delivered_retention=0) as s:
        assert append(s) == 5


def test_event_ids_are_unique_uuid7_and_time_ordered(store: Store) -> None:
    with store.transaction():
        events = [store.append_event("status", {"i": i}, AT, TRUST) for i in range(300)]
    ids = [uuid.UUID(e.event_id) for e in events]
    assert len(set(ids)) == 300
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)
    assert ids == sorted(ids)  # seq order == id order


def test_uuid7_is_monotonic_when_the_clock_stands_still_or_steps_back() -> None:
    readings = iter([1_000, 1_000, 1_000, 999, 500, 1_001])
    factory = Uuid7Factory(now_ms=lambda: next(readings))
    ids = [factory.new_uuid() for _ in range(6)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 6
    assert [u.int >> 80 for u in ids] == [1_000] * 5 + [1_001]


def test_uuid7_counter_overflow_borrows_the_next_millisecond() -> None:
    # A counter that starts at the top of its range overflows on the second id in the same ms.
    factory = Uuid7Factory(now_ms=lambda: 42, randbits=lambda bits: (1 << bits) - 1)
    first, second = factory.new_uuid(), factory.new_uuid()
    factory_full = Uuid7Factory(now_ms=lambda: 42, randbits=lambda bits: (1 << bits) - 1)
    factory_full._counter = (1 << 42) - 1  # force the overflow path
    factory_full._last_ms = 42
    third = factory_full.new_uuid()
    assert first < second
    assert third.int >> 80 == 43
    assert third.version == 7


def test_payload_is_stored_as_compact_json(store: Store, db_path: Path) -> None:
    append(store, slot="2026-03-01T08:00", note="tatt ✓")
    [(text,)] = raw(db_path, "SELECT payload FROM outbox")
    assert text == '{"note":"tatt ✓","slot":"2026-03-01T08:00"}'
    assert store.events_from(1)[0].payload == {"note": "tatt ✓", "slot": "2026-03-01T08:00"}


def test_pending_mark_delivered_and_backlog(store: Store) -> None:
    assert store.backlog().count == 0
    assert store.backlog().oldest_seq is None
    for i in range(4):
        with store.transaction():
            store.append_event("dose_taken", {"i": i}, f"2026-03-01T0{i}:00:00Z", TRUST)
    info = store.backlog()
    assert (info.count, info.oldest_seq, info.oldest_occurred_utc) == (4, 1, "2026-03-01T00:00:00Z")
    with store.transaction():
        store.mark_delivered(1)
        store.mark_delivered(3)
        store.mark_delivered(3)  # a re-sent event acked twice is harmless
    assert [e.seq for e in store.pending_events()] == [2, 4]
    assert [e.seq for e in store.pending_events(after_seq=2)] == [4]
    assert [e.seq for e in store.pending_events(limit=1)] == [2]
    info = store.backlog()
    assert (info.count, info.oldest_seq, info.oldest_occurred_utc) == (2, 2, "2026-03-01T01:00:00Z")
    with pytest.raises(UnknownEventError), store.transaction():
        store.mark_delivered(99)


def test_events_from_returns_delivered_and_undelivered(store: Store) -> None:
    for _ in range(5):
        append(store)
    with store.transaction():
        for seq in (1, 2, 3):
            store.mark_delivered(seq)
    events = store.events_from(2)
    assert [(e.seq, e.delivered) for e in events] == [(2, True), (3, True), (4, False), (5, False)]
    assert [e.seq for e in store.events_from(2, limit=2)] == [2, 3]


def test_delivered_rows_are_pruned_to_the_retention_window(db_path: Path) -> None:
    with open_store(db_path, delivered_retention=3) as s:
        for _ in range(10):
            append(s)
        with s.transaction():
            for seq in range(1, 11):
                s.mark_delivered(seq)
        assert len(s.events_from(1)) == 10  # pruning happens with the next append
        append(s)
        assert [(e.seq, e.delivered) for e in s.events_from(1)] == [
            (8, True),
            (9, True),
            (10, True),
            (11, False),
        ]
        # The audit trail of the pruned events remains.
        event_audits = [r for r in s.audit_records(limit=100) if r.kind == "event"]
        assert [r.body["seq"] for r in event_audits] == list(range(1, 12))


def test_full_outbox_drops_oldest_droppable_and_never_a_dose_outcome(db_path: Path) -> None:
    with open_store(db_path, outbox_limit=3, droppable_kinds=frozenset({"heartbeat"})) as s:
        append(s, "heartbeat")  # 1
        append(s, "dose_missed")  # 2
        append(s, "heartbeat")  # 3
        assert append(s, "dose_taken") == 4  # drops 1
        assert [e.seq for e in s.pending_events()] == [2, 3, 4]
        assert append(s, "dose_taken") == 5  # drops 3
        assert [e.seq for e in s.pending_events()] == [2, 4, 5]
        assert append(s, "dose_taken") == 6  # nothing droppable: appended over the limit
        assert [(e.seq, e.kind) for e in s.pending_events()] == [
            (2, "dose_missed"),
            (4, "dose_taken"),
            (5, "dose_taken"),
            (6, "dose_taken"),
        ]
        dropped = [r.body for r in s.audit_records(limit=100) if r.kind == "outbox.dropped"]
        assert [(d["seq"], d["kind"]) for d in dropped] == [(1, "heartbeat"), (3, "heartbeat")]
        assert s.verify_audit().ok


def test_delivered_events_do_not_count_against_the_limit(db_path: Path) -> None:
    with open_store(db_path, outbox_limit=2) as s:
        append(s, "heartbeat")
        append(s, "heartbeat")
        with s.transaction():
            s.mark_delivered(1)
        append(s, "heartbeat")
        assert [e.seq for e in s.events_from(0)] == [1, 2, 3]


# -- dose ledger ---------------------------------------------------------------------------------


def test_begin_dispense_twice_raises_even_after_reopen(db_path: Path) -> None:
    with open_store(db_path) as s:
        with s.transaction():
            s.begin_dispense("2026-03-01T08:00", s.next_dispense_id(), 7, AT)
        with pytest.raises(AlreadyDispensed), s.transaction():
            s.begin_dispense("2026-03-01T08:00", s.next_dispense_id(), 7, AT)
    with open_store(db_path) as s, pytest.raises(AlreadyDispensed), s.transaction():
        s.begin_dispense("2026-03-01T08:00", 99, 7, AT)


def test_one_outcome_per_slot(store: Store, db_path: Path) -> None:
    with store.transaction():
        store.begin_dispense("s1", 1, 0, AT)
        store.record_presented("s1")
        record = store.record_outcome("s1", "taken", None)
    assert (record.outcome, record.presented_utc, record.dispense_id) == ("taken", AT, 1)
    with pytest.raises(OutcomeAlreadyRecorded), store.transaction():
        store.record_outcome("s1", "missed", "timeout")
    assert slot_row(db_path, "s1") == record
    with pytest.raises(OutcomeAlreadyRecorded), store.transaction():
        store.record_presented("s1")


def test_a_slot_resolved_without_dispensing_can_never_be_begun(store: Store) -> None:
    with store.transaction():
        store.record_outcome("s1", "skipped", "paused: hospital stay")
    with pytest.raises(AlreadyDispensed, match="skipped"), store.transaction():
        store.begin_dispense("s1", 1, 0, AT)
    assert store.open_slots() == []


def test_unknown_slot_is_reported(store: Store, db_path: Path) -> None:
    assert slot_row(db_path, "nope") is None
    with pytest.raises(UnknownSlotError), store.transaction():
        store.record_presented("nope")


def test_dispense_id_must_be_u32_and_unused(store: Store) -> None:
    with pytest.raises(ValueError, match="u32"), store.transaction():
        store.begin_dispense("s1", 1 << 32, 0, AT)
    with store.transaction():
        store.begin_dispense("s1", 5, 0, AT)
    with pytest.raises(ValueError, match="already used"), store.transaction():
        store.begin_dispense("s2", 5, 0, AT)


def test_open_slots_survive_reopen(db_path: Path) -> None:
    with open_store(db_path) as s, s.transaction():
        s.begin_dispense("b", 1, 0, "2026-03-01T12:00:00Z")
        s.begin_dispense("a", 2, 1, "2026-03-01T08:00:00Z")
        s.begin_dispense("c", 3, 2, "2026-03-01T16:00:00Z")
        s.record_outcome("c", "taken", None)
    with open_store(db_path) as s:
        assert [(r.slot_id, r.dispense_id, r.is_open) for r in s.open_slots()] == [
            ("a", 2, True),
            ("b", 1, True),
        ]


def test_next_dispense_id_is_persisted_and_never_reused(db_path: Path) -> None:
    with open_store(db_path) as s, s.transaction():
        assert [s.next_dispense_id() for _ in range(3)] == [1, 2, 3]
    with open_store(db_path) as s:

        def take_and_fail() -> None:
            with s.transaction():
                s.next_dispense_id()
                raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            take_and_fail()
        with s.transaction():
            assert s.next_dispense_id() == 4


# -- commands, kv, binding -----------------------------------------------------------------------


def test_executed_commands_are_remembered_across_reopen(db_path: Path) -> None:
    with open_store(db_path) as s, s.transaction():
        s.record_command("cmd-7", "pause", '{"ok":true,"until":"2026-03-04"}')
    with open_store(db_path) as s:
        seen = s.command_seen("cmd-7")
        assert seen is not None
        assert (seen.name, seen.response_json) == ("pause", '{"ok":true,"until":"2026-03-04"}')
        assert s.command_seen("cmd-8") is None
        with pytest.raises(CommandAlreadyRecordedError), s.transaction():
            s.record_command("cmd-7", "pause", "{}")
        assert s.command_seen("cmd-7") == seen


def test_a_response_that_is_not_json_is_refused(store: Store) -> None:
    with pytest.raises(json.JSONDecodeError), store.transaction():
        store.record_command("cmd-1", "pause", "not json")
    assert store.command_seen("cmd-1") is None


def test_kv_and_session_counter_persist(db_path: Path) -> None:
    with open_store(db_path) as s, s.transaction():
        s.set_kv("paused_until", "2026-03-04")
        assert s.next_session_counter() == 1
        assert s.next_session_counter() == 2
    with open_store(db_path) as s:
        assert s.get_kv("paused_until") == "2026-03-04"
        assert s.get_kv("missing") is None
        with s.transaction():
            assert s.next_session_counter() == 3


@pytest.mark.parametrize("key", ["audit_anchor", "next_event_seq", "session_counter"])
def test_store_managed_keys_cannot_be_overwritten(store: Store, key: str) -> None:
    with pytest.raises(StoreUsageError), store.transaction():
        store.set_kv(key, "1")


# -- factory reset -------------------------------------------------------------------------------

MARKER = "PATIENT-MARKER-4711"  # ASCII: found in raw bytes even inside escaped JSON


def _fill_with_patient_data(s: Store, db_path: Path) -> None:
    # Nothing in the agent writes the binding table (the engine state keeps the binding); the
    # reset empties it all the same, so a row is put there by hand.
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(
            "INSERT INTO binding VALUES (1, ?, ?, ?)", (MARKER, '{"patient": "' + MARKER + '"}', AT)
        )
    conn.close()
    with s.transaction():
        s.set_kv("note", MARKER)
        s.next_session_counter()
        for i in range(200):
            s.append_event("dose_taken", {"who": MARKER, "i": i}, AT, TRUST)
        s.begin_dispense(MARKER, s.next_dispense_id(), 0, AT)
        s.record_outcome(MARKER, "taken", MARKER)
        s.record_command(MARKER, "ack", '{"by": "' + MARKER + '"}')
        for seq in range(1, 201):
            s.mark_delivered(seq)


def test_wipe_for_new_patient_leaves_no_patient_data(db_path: Path) -> None:
    wal = db_path.with_name(db_path.name + "-wal")
    with open_store(db_path) as s:
        _fill_with_patient_data(s, db_path)
        # A unit that ran for weeks has its data checkpointed into the main file: show it is there.
        raw(db_path, "PRAGMA wal_checkpoint(TRUNCATE)")
        assert MARKER.encode() in db_path.read_bytes()
        reset = s.wipe_for_new_patient()
        for table in ("ledger", "outbox", "commands", "binding"):
            assert raw(db_path, f"SELECT count(*) FROM {table}") == [(0,)], table
        assert [r.kind for r in s.audit_records()] == ["reset"]
        assert (reset.seq, reset.prev_hash) == (1, "0" * 64)
        assert s.verify_audit().ok
        assert sorted(str(k) for (k,) in raw(db_path, "SELECT key FROM kv")) == [
            "audit_anchor",
            "command_floor",  # commands signed before the reset are refused after it
            "next_dispense_id",
            "next_event_seq",
            "session_counter",
        ]
        # Not in the file, not in the WAL, not in free pages: no trace at the byte level.
        for name in (db_path, wal):
            if name.exists():
                data = name.read_bytes()
                assert MARKER.encode() not in data, name
        # Unit counters continue, so the response centre never sees a reused number.
        assert append(s) == 201
        with s.transaction():
            assert s.next_dispense_id() == 2
            assert s.next_session_counter() == 2
    with open_store(db_path) as s:
        assert s.verify_audit().ok


def test_wipe_refuses_while_events_are_undelivered(store: Store) -> None:
    append(store, who=MARKER)
    with pytest.raises(BacklogNotEmptyError):
        store.wipe_for_new_patient()
    assert len(store.events_from(0)) == 1
    assert store.verify_audit().ok
    reset = store.wipe_for_new_patient(force=True)
    assert reset.body["undelivered_discarded"] == 1
    assert store.events_from(0) == []


def test_wipe_inside_a_transaction_is_refused(store: Store) -> None:
    with store.transaction(), pytest.raises(StoreUsageError):
        store.wipe_for_new_patient()
