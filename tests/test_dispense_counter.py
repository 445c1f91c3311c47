"""One dispense-id counter for the life of the unit (hazard #8): the store's unit counter, kept
across a factory reset, is where the daemon's engine takes its ids from and writes them back to in
the transaction of each step. The dispenser never executes an id twice (SPEC 4.4), so an id used
again would silently not dispense. (On real parts, with a reset: tests/test_restart_e2e.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_support import write_config
from test_engine import RIG_START

from agent.clock import VirtualClock
from agent.config import load_config
from agent.daemon import ENGINE_STATE_KEY, Daemon
from agent.engine.catalogue import make_event
from agent.engine.engine import EngineState
from agent.engine.types import Emit
from agent.runtime import unit_edges
from agent.store.db import Store
from agent.store.errors import StoreError

AT = "2026-03-01T08:00:00.000+00:00"


def test_the_counter_moves_only_forward(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.sqlite3") as store:
        assert store.first_unused_dispense_id() == 1
        with store.transaction():
            store.advance_dispense_ids(8)
        assert store.first_unused_dispense_id() == 8
        with pytest.raises(StoreError, match="go back"), store.transaction():
            store.advance_dispense_ids(7)
        with store.transaction():
            assert store.next_dispense_id() == 8  # taking one is the same counter
        assert store.first_unused_dispense_id() == 9


def test_a_reset_keeps_the_counter_past_every_id_the_ledger_held(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.sqlite3") as store:
        with store.transaction():
            store.advance_dispense_ids(5)
            store.begin_dispense("2026-03-01T08:00", 41, 0, AT)  # an id above the counter
        assert store.first_unused_dispense_id() == 42
        store.wipe_for_new_patient(force=True)
        assert store.open_slots() == []
        assert store.first_unused_dispense_id() == 42


def make_daemon(tmp_path: Path, store: Store) -> Daemon:
    config = load_config(
        write_config(tmp_path, unit_id="u-1", broker_port=1, device=tmp_path / "tty")
    )
    return Daemon(
        config,
        clock=VirtualClock(RIG_START),
        store=store,
        edges=unit_edges(config),
    )


def test_the_engine_takes_ids_from_the_unit_counter_and_writes_them_back(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    with Store.open(tmp_path / "state" / "agent.sqlite3") as store:
        with store.transaction():
            store.advance_dispense_ids(300)  # what the unit used before a reset
        daemon = make_daemon(tmp_path, store)
        assert daemon.engine.state.next_dispense_id == 300
        daemon.engine._outbound.take_dispense_id()
        daemon.apply([Emit(make_event("clock_jumped", {}))], daemon.clock.now())
        assert store.first_unused_dispense_id() == 301  # in the step's own transaction


def test_an_older_state_with_its_own_counter_moves_the_unit_counter_forward(
    tmp_path: Path,
) -> None:
    (tmp_path / "state").mkdir()
    with Store.open(tmp_path / "state" / "agent.sqlite3") as store:
        legacy = EngineState(next_dispense_id=77)  # written by a version without the unit counter
        with store.transaction():
            store.set_kv(ENGINE_STATE_KEY, legacy.to_json())
        daemon = make_daemon(tmp_path, store)
        assert daemon.engine.state.next_dispense_id == 77
        daemon.apply([], daemon.clock.now())
        assert store.first_unused_dispense_id() == 77
