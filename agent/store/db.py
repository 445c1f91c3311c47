"""The `Store`: one SQLite file holding everything the unit must not lose.

Durability settings: WAL journal, ``synchronous=FULL`` (a commit survives a power cut),
``foreign_keys=ON``; ``PRAGMA quick_check`` at every open (``StoreCorrupt`` if it fails). A leftover
``-wal`` file is never deleted by this code: SQLite replays it on open, that is where the last
commits live.

Every mutating method must run inside ``transaction()`` (``StoreUsageError`` otherwise), so the
daemon groups one engine step into one commit: few, small writes for the SD card. Writes come from
one thread only, the store's owner: the one that opened it, or the daemon's writer thread once it
has claimed the store (``claim_for_this_thread``, agent/store/writer.py). Reads from any other
thread go through a read-only connection of their own and see committed data only. Never use a
store across ``fork``.

Factory reset (``wipe_for_new_patient``): the response centre should have received everything before
a reset, so the daemon checks ``backlog()`` first; the store also refuses while undelivered events
remain unless ``force=True``. The reset deletes ledger, outbox, commands, binding, audit and every
kv key except the unit counters (event sequence, dispense id, session counter: reusing those would
make the response centre drop a new patient's events as duplicates), VACUUMs, truncates the WAL,
and starts a fresh audit chain whose first record is the reset itself (with the old chain's anchor,
so the history of the unit stays linkable without any patient data).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from agent.store import audit, ceiling, commands, kv, ledger, outbox, schema
from agent.store.audit import AuditRecord, AuditReport, ChainAnchor, Stamp, system_stamp
from agent.store.commands import CommandRecord
from agent.store.errors import BacklogNotEmptyError, StoreCorrupt, StoreError, StoreUsageError
from agent.store.ledger import SlotRecord
from agent.store.outbox import (
    DELIVERED_RETENTION,
    OUTBOX_LIMIT,
    BacklogInfo,
    OutboxEvent,
    OutboxPolicy,
)
from agent.store.uuid7 import Uuid7Factory

_COMMANDS_CHECK = timedelta(hours=1)  # how often a transaction looks for old command records
_INTERNAL_KEYS = frozenset({*kv.UNIT_KEYS, kv.AUDIT_ANCHOR})
_PATIENT_TABLES = ("ledger", "outbox", "commands", "binding", "audit")


STORE_FILE_MODE = 0o600  # patient data: the agent's user only, whatever the umask


def _private_files(path: Path, create: bool) -> None:
    """Make the database file 0600 before SQLite opens it: SQLite gives the -wal and -shm files
    it creates the database file's mode (not the umask's), so all three stay private. A store
    left wider by an older version is narrowed, its -wal and -shm too."""
    if create and not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, STORE_FILE_MODE)
        try:
            os.fchmod(fd, STORE_FILE_MODE)  # the umask may have taken bits O_CREAT asked for
            if os.geteuid() == 0:
                # a tool run with sudo: the file belongs to the folder's owner (the agent's user),
                # not to root, or the agent could not open it (SQLite does the same for -wal/-shm)
                folder = path.parent.stat()
                os.fchown(fd, folder.st_uid, folder.st_gid)
        finally:
            os.close(fd)
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        candidate = path.with_name(name)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_IMODE(candidate.stat().st_mode) != STORE_FILE_MODE:
                candidate.chmod(STORE_FILE_MODE)


def _utc_key(iso: str) -> datetime:
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _connect(path: Path, create: bool) -> sqlite3.Connection:
    if not create and not path.is_file():
        raise StoreError(f"no store at {path}")
    try:
        _private_files(path, create)
    except PermissionError:
        pass  # a read-only look by another user (a tool): SQLite itself says if it cannot open
    except OSError as exc:
        raise StoreError(f"cannot create store {path}: {exc}") from exc
    uri = f"file:{quote(str(path.absolute()))}?mode={'rwc' if create else 'rw'}"
    try:
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves. Not sqlite3's
        # same-thread check: the store checks its owner thread itself (it may be handed over).
        return sqlite3.connect(
            uri, uri=True, isolation_level=None, timeout=5.0, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from exc


def _check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        raise StoreCorrupt(f"store {path} is not a readable SQLite database: {exc}") from exc
    if [tuple(r) for r in rows] != [("ok",)]:
        problems = "; ".join(str(r[0]) for r in rows[:5])
        raise StoreCorrupt(f"store {path} failed quick_check: {problems}")


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(f"store {path}: could not switch to WAL (journal_mode={mode})")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    # Deleted rows (pruned events, a reset) are overwritten with zeros, not left in free pages.
    # Debian's SQLite already defaults to this; other builds may not.
    conn.execute("PRAGMA secure_delete = ON")


def _ensure_schema(conn: sqlite3.Connection, path: Path, stamp: Stamp) -> None:
    schema.require_known_version(schema.schema_version(conn))
    if schema.schema_version(conn) == schema.SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = schema.schema_version(conn)  # another process may have created it meanwhile
        if version == 0:
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise StoreError(f"{path} is a SQLite file but not an agent store")
            schema.create_schema(conn)
            audit.audit_append(
                conn,
                "store.created",
                {"schema_version": schema.SCHEMA_VERSION},
                stamp.at_utc,
                stamp.trust,
            )
        conn.execute("COMMIT")
    except BaseException:  # whatever stopped it: no half-made schema is committed; re-raised
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class Store:
    """Durable state of the unit. Open with `Store.open`; mutate only inside `transaction()`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        policy: OutboxPolicy,
        stamp: Callable[[], Stamp],
        new_event_id: Callable[[], str],
        audit_retention: int = audit.AUDIT_RETENTION,
        max_bytes: int | None = None,
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._path = path
        self._policy = policy
        self._stamp = stamp
        self._new_event_id = new_event_id
        self._in_tx = False
        self._audit_retention = audit_retention
        self._max_bytes = max_bytes
        self._commands_checked: datetime | None = None
        self._owner = threading.get_ident()  # the one thread that may write
        # other threads read through this one (opened on first use); None: an in-memory store,
        # which has no second connection (its readers share the one, see `_db`)
        self._read_uri: str | None = None
        self._reader: sqlite3.Connection | None = None

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        create: bool = True,
        outbox_limit: int = OUTBOX_LIMIT,
        delivered_retention: int = DELIVERED_RETENTION,
        droppable_kinds: frozenset[str] = frozenset(),
        stamp: Callable[[], Stamp] = system_stamp,
        new_event_id: Callable[[], str] | None = None,
        audit_retention: int = audit.AUDIT_RETENTION,
        max_bytes: int | None = ceiling.STORE_MAX_BYTES,
    ) -> Store:
        """Open (and on first use create) the store at `path`.

        `create=False` refuses to create a missing file (for read-mostly tools such as
        `audit verify`). `stamp` gives the wall time and its trust for records the store writes by
        itself (ledger, commands, reset); inject the daemon's clock here.
        """
        schema.check_sqlite_version()
        policy = OutboxPolicy(outbox_limit, delivered_retention, frozenset(droppable_kinds))
        conn = _connect(path, create)
        try:
            _check_integrity(conn, path)
            # Checked before WAL is switched on: that alone would write to the file.
            if schema.schema_version(conn) == 0:
                if not create:
                    raise StoreError(f"{path} has no agent store schema (and create=False)")
                if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    raise StoreError(f"{path} is a SQLite file but not an agent store")
            _configure(conn, path)
            _ensure_schema(conn, path, stamp())
        except BaseException:  # whatever stopped it: the connection is not leaked; re-raised
            conn.close()
            raise
        store = cls(
            conn, path, policy, stamp, new_event_id or Uuid7Factory(), audit_retention, max_bytes
        )
        store._read_uri = f"file:{quote(str(path.absolute()))}?mode=ro"
        return store

    @classmethod
    def scratch(cls, stand_in_for: Path, *, stamp: Callable[[], Stamp] = system_stamp) -> Store:
        """An empty store in memory, standing in for the one at `stand_in_for` that could not be
        opened: it carries only the fail-safe's bookkeeping (nothing in it is kept)."""
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys = ON")
        _ensure_schema(conn, stand_in_for, stamp())
        policy = OutboxPolicy(OUTBOX_LIMIT, DELIVERED_RETENTION)
        return cls(conn, stand_in_for, policy, stamp, Uuid7Factory())

    @property
    def path(self) -> Path:
        return self._path

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        if self._in_tx:
            raise StoreUsageError("close() inside a transaction")
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def claim_for_this_thread(self) -> None:
        """Make the calling thread the store's owner, the only one that may write (the daemon's
        writer thread calls this first). Other threads keep reading, committed data only."""
        if self._in_tx:
            raise StoreUsageError("claim_for_this_thread() inside a transaction")
        self._owner = threading.get_ident()

    @property
    def in_transaction(self) -> bool:
        return self._in_tx

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    @property
    def owned_here(self) -> bool:
        """The calling thread is the store's owner (it may write)."""
        return threading.get_ident() == self._owner

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _db(self) -> sqlite3.Connection:
        """The connection for this thread: the owner's, or the read-only one of the others."""
        if self._conn is None:
            raise StoreUsageError("store is closed")
        if self.owned_here or self._read_uri is None:
            return self._conn
        if self._reader is None:
            try:
                # query_only: this connection never writes, whatever a caller attempts
                reader = sqlite3.connect(
                    self._read_uri,
                    uri=True,
                    isolation_level=None,
                    timeout=5.0,
                    check_same_thread=False,
                )
                reader.execute("PRAGMA query_only = ON")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open store {self._path} for reading: {exc}") from exc
            self._reader = reader
        return self._reader

    def _owned(self) -> sqlite3.Connection:
        if not self.owned_here:
            raise StoreUsageError(
                "only the store's owner thread writes (see agent/store/writer.py)"
            )
        return self._db()

    def _writer(self) -> sqlite3.Connection:
        conn = self._owned()
        if not self._in_tx:
            raise StoreUsageError("mutating the store needs an open transaction()")
        return conn

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside commits atomically (BEGIN IMMEDIATE … COMMIT), or nothing on error."""
        conn = self._owned()
        if self._in_tx:
            raise StoreUsageError("transactions do not nest; group the work in one transaction()")
        conn.execute("BEGIN IMMEDIATE")
        self._in_tx = True
        try:
            yield
            self._keep_bounded(conn)
            conn.execute("COMMIT")
        except BaseException:  # whatever ended the block (cancel too): roll back, re-raise
            # SQLite may already have rolled back by itself (disk full, I/O error).
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            self._in_tx = False

    def _keep_bounded(self, conn: sqlite3.Connection) -> None:
        """Retention, in the transaction that grew the store (no commit of its own): the audit
        log behind a checkpoint, executed-command records past their retention."""
        stamp = self._stamp()
        checkpoint = audit.prune_audit(
            conn,
            self._audit_retention,
            stamp.at_utc,
            stamp.trust,
            batch=min(audit.AUDIT_PRUNE_BATCH, 1 + self._audit_retention // 10),
        )
        if checkpoint is not None:
            outbox.append_checkpoint_event(
                conn, self._policy, self._new_event_id, checkpoint, stamp
            )
        if self._max_bytes is not None:
            ceiling.keep_under_ceiling(
                conn, self._max_bytes, self._policy, self._new_event_id, stamp
            )
        now = _utc_key(stamp.at_utc)
        if self._commands_checked is None or now - self._commands_checked > _COMMANDS_CHECK:
            self._commands_checked = now
            newest = commands.prune_commands(conn, now - commands.COMMAND_RETENTION)
            if newest is not None:
                self.raise_command_floor(newest)

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A consistent read across several statements (inside a write transaction: that one)."""
        conn = self._db()
        if self._in_tx and conn is self._conn:
            yield conn
            return
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    # -- outbox --------------------------------------------------------------------------------

    def append_event(
        self, kind: str, payload: dict[str, object], occurred_utc: str, trust: str
    ) -> OutboxEvent:
        """Number, store and audit one event. Publish it only after the transaction committed."""
        return outbox.append_event(
            self._writer(), self._policy, self._new_event_id, kind, payload, occurred_utc, trust
        )

    def pending_events(self, after_seq: int = 0, limit: int = 100) -> list[OutboxEvent]:
        return outbox.pending_events(self._db(), after_seq, limit)

    def mark_delivered(self, seq: int) -> None:
        """Call only once the broker acknowledged the event. UnknownEventError for a missing seq."""
        outbox.mark_delivered(self._writer(), seq)

    def mark_delivered_many(self, seqs: Sequence[int]) -> None:
        """`mark_delivered` for a batch (one executemany)."""
        outbox.mark_delivered_many(self._writer(), seqs)

    def backlog(self) -> BacklogInfo:
        with self._snapshot() as conn:
            return outbox.backlog(conn)

    def last_event_seq(self) -> int:
        """Highest sequence number ever assigned (0 before the first event); survives pruning."""
        return outbox.last_event_seq(self._db())

    def events_from(self, seq: int, limit: int | None = None) -> list[OutboxEvent]:
        return outbox.events_from(self._db(), seq, limit)

    # -- dose ledger ---------------------------------------------------------------------------

    def begin_dispense(
        self, slot_id: str, dispense_id: int, sachet_index: int, due_utc: str
    ) -> SlotRecord:
        """Commit this BEFORE sending DISPENSE. A second begin for a slot: AlreadyDispensed."""
        return ledger.begin_dispense(
            self._writer(), self._stamp(), slot_id, dispense_id, sachet_index, due_utc
        )

    def record_presented(self, slot_id: str) -> SlotRecord:
        return ledger.record_presented(self._writer(), self._stamp(), slot_id)

    def record_outcome(self, slot_id: str, outcome: str, reason: str | None) -> SlotRecord:
        """Exactly one terminal outcome per slot; a second raises OutcomeAlreadyRecorded."""
        return ledger.record_outcome(self._writer(), self._stamp(), slot_id, outcome, reason)

    def open_slots(self) -> list[SlotRecord]:
        return ledger.open_slots(self._db())

    def next_dispense_id(self) -> int:
        """Take one id from the unit's dispense-id counter."""
        return ledger.next_dispense_id(self._writer())

    def first_unused_dispense_id(self) -> int:
        """The unit's dispense-id counter (kept across a factory reset): no id at or above it
        has ever been used on this unit, and none in the ledger is."""
        with self._snapshot() as conn:
            return ledger.first_unused_dispense_id(conn)

    def advance_dispense_ids(self, next_unused: int) -> None:
        """Record that ids below `next_unused` are used. Refuses to go back (StoreError)."""
        ledger.advance_dispense_ids(self._writer(), next_unused)

    # -- executed commands ---------------------------------------------------------------------

    def command_seen(self, command_id: str) -> CommandRecord | None:
        return commands.command_seen(self._db(), command_id)

    def record_command(self, command_id: str, name: str, response_json: str) -> CommandRecord:
        return commands.record_command(
            self._writer(), self._stamp(), command_id, name, response_json
        )

    # -- key/value -----------------------------------------------------------------------------

    def get_kv(self, key: str) -> str | None:
        return kv.get_kv(self._db(), key)

    def set_kv(self, key: str, value: str) -> None:
        if key in _INTERNAL_KEYS:
            raise StoreUsageError(f"kv key {key!r} is managed by the store")
        kv.set_kv(self._writer(), key, value)

    def delete_kv(self, key: str) -> None:
        if key in _INTERNAL_KEYS:
            raise StoreUsageError(f"kv key {key!r} is managed by the store")
        self._writer().execute("DELETE FROM kv WHERE key = ?", (key,))

    def command_floor(self) -> datetime | None:
        """A signed command issued before this time is a replay (None: no floor yet)."""
        stored = kv.get_kv(self._db(), kv.COMMAND_FLOOR)
        return None if stored is None else _utc_key(stored)

    def raise_command_floor(self, at_iso_utc: str) -> None:
        """Move the floor up to `at_iso_utc` (never down); ISO UTC strings compare as times."""
        conn = self._writer()
        current = kv.get_kv(conn, kv.COMMAND_FLOOR)
        if current is None or _utc_key(at_iso_utc) > _utc_key(current):
            kv.set_kv(conn, kv.COMMAND_FLOOR, at_iso_utc)

    def centre_key_changes(self) -> str | None:
        """JSON {"added": [...], "retired": [...]} of signed key rotations (None: none yet)."""
        return kv.get_kv(self._db(), kv.CENTRE_KEYS)

    def set_centre_key_changes(self, changes_json: str) -> None:
        kv.set_kv(self._writer(), kv.CENTRE_KEYS, changes_json)

    def next_session_counter(self) -> int:
        """Increment and return the MQTT session number (1, 2, 3, ...), persisted."""
        return kv.take_counter(self._writer(), kv.SESSION_COUNTER, kv.I64_MAX)

    def next_boot_counter(self) -> int:
        """Increment and return the daemon's boot number (1, 2, 3, ...), persisted."""
        return kv.take_counter(self._writer(), kv.BOOT_COUNTER, kv.I64_MAX)

    # -- audit ---------------------------------------------------------------------------------

    def audit_append(
        self, kind: str, body: dict[str, object], at_utc: str, trust: str
    ) -> AuditRecord:
        return audit.audit_append(self._writer(), kind, body, at_utc, trust)

    def audit_records(self, after_seq: int = 0, limit: int = 100) -> list[AuditRecord]:
        return audit.audit_records(self._db(), after_seq, limit)

    def audit_anchor(self) -> ChainAnchor | None:
        return audit.read_anchor(self._db())

    def verify_audit(self) -> AuditReport:
        with self._snapshot() as conn:
            return audit.verify_chain(conn)

    # -- factory reset -------------------------------------------------------------------------

    def wipe_for_new_patient(self, *, force: bool = False) -> AuditRecord:
        """Remove every trace of the patient; returns the reset record that starts the new chain.

        Refuses (BacklogNotEmptyError) while undelivered events remain, unless `force`. Must be
        called outside a transaction (VACUUM cannot run inside one).
        """
        conn = self._owned()
        if self._in_tx:
            raise StoreUsageError("wipe_for_new_patient() runs its own transactions")
        stamp = self._stamp()
        with self.transaction():
            pending = outbox.backlog(conn)
            if pending.count and not force:
                raise BacklogNotEmptyError(
                    f"{pending.count} undelivered events (oldest seq {pending.oldest_seq}); "
                    "deliver them first or force the reset"
                )
            previous = audit.read_anchor(conn)
            # the unit's dispense-id counter stays, past every id the ledger about to go holds
            ledger.advance_dispense_ids(conn, ledger.first_unused_dispense_id(conn))
            deleted = {
                table: conn.execute(f"DELETE FROM {table}").rowcount for table in _PATIENT_TABLES
            }
            keep = sorted(kv.UNIT_KEYS)
            conn.execute(f"DELETE FROM kv WHERE key NOT IN ({','.join('?' * len(keep))})", keep)
            # no command signed before the reset (for the previous patient) may run after it
            self.raise_command_floor(stamp.at_utc)
            record = audit.audit_append(
                conn,
                "reset",
                {
                    "reason": "factory reset for a new patient",
                    "deleted_rows": dict(deleted),
                    "undelivered_discarded": pending.count,
                    "previous_chain": None
                    if previous is None
                    else {"seq": previous.seq, "hash": previous.hash},
                },
                stamp.at_utc,
                stamp.trust,
            )
        # secure_delete zeroed the rows; VACUUM also rebuilds the file without free pages, and the
        # TRUNCATE checkpoint empties the WAL, which still holds copies of the deleted pages.
        conn.execute("VACUUM")
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise StoreError(
                "reset committed, but the WAL could not be truncated because another process "
                "has the store open; close it and run the reset again"
            )
        return record
