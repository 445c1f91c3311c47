"""What the store says, read without writing: a read-only SQLite connection (`mode=ro`), so a
technician can look while the daemon runs (WAL readers never block its writer)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from agent.broker_watch import MQTT_LINK_KEY, BrokerLinkView
from agent.daemon import BINDING_MISMATCH_KEY, ENGINE_STATE_KEY, TECHNICIAN_BINDING_KEY
from agent.engine.state import EngineState, restore
from agent.store import kv, ledger, outbox
from agent.store.outbox import BacklogInfo, OutboxEvent


class SnapshotError(Exception):
    """The store cannot be read (missing, not a store, locked for too long)."""


@dataclass
class StoreView:
    state: EngineState
    unreadable: str | None  # the stored engine state could not be read: why
    backlog: BacklogInfo
    last_events: list[OutboxEvent] = field(default_factory=list)
    binding_mismatch: bool = False
    technician_binding_pending: bool = False
    dispense_id_high_water: int = 1
    broker_link: BrokerLinkView | None = None  # as the agent last recorded it


def read_store(db_path: Path, last: int = 5) -> StoreView:
    if not db_path.is_file():
        raise SnapshotError(f"no store at {db_path} (the agent has not run yet)")
    uri = f"file:{quote(str(db_path.absolute()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None)
    except sqlite3.Error as exc:
        raise SnapshotError(f"cannot open {db_path} read-only: {exc}") from exc
    try:
        conn.execute("BEGIN")  # one consistent snapshot of every table read below
        saved = kv.get_kv(conn, ENGINE_STATE_KEY)
        restored = restore(saved, ledger.open_slots(conn))
        last_seq = outbox.last_event_seq(conn)
        events = outbox.events_from(conn, max(1, last_seq - last + 1)) if last_seq else []
        view = StoreView(
            state=restored.state,
            unreadable=restored.unreadable,
            backlog=outbox.backlog(conn),
            last_events=events,
            binding_mismatch=kv.get_kv(conn, BINDING_MISMATCH_KEY) is not None,
            technician_binding_pending=kv.get_kv(conn, TECHNICIAN_BINDING_KEY) is not None,
            dispense_id_high_water=ledger.first_unused_dispense_id(conn),
        )
        link_text = kv.get_kv(conn, MQTT_LINK_KEY)
        if link_text is not None:
            view.broker_link = BrokerLinkView.from_json(link_text)
        conn.execute("COMMIT")
        return view
    except sqlite3.Error as exc:
        raise SnapshotError(f"cannot read {db_path}: {exc}") from exc
    finally:
        conn.close()
