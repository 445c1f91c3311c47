"""A store that cannot be opened at start (a corrupt file, a file that is no agent store): nothing
can be recorded, so nothing may be dispensed. On real parts (the daemon as `build_daemon` makes it,
the dispenser simulator on a pty, a private mosquitto): the dispenser is locked with the FAULT
pattern, the response centre's retained availability goes offline naming the store, run() returns
EXIT_STATE_FAULT, and the file is left exactly as it was (evidence for the technician)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import pytest
from broker import MosquittoBroker
from e2e_support import EventStream, write_config

from agent.clock import SystemClock
from agent.config import load_config
from agent.daemon import EXIT_STATE_FAULT
from agent.runtime import build_daemon
from hw.dispenser import DispenserIdentity, DispenserModel
from hw.wire import SimulatorRunner
from protocol.messages import AlertPattern

UNIT = "unopenable-unit"
WAIT_S = 60.0  # generous: the machine may be loaded; every wait ends once its condition holds


def not_a_database(db: Path) -> None:
    db.write_bytes(b"this is no SQLite file at all" * 100)


def someone_elses_database(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    conn.close()


@pytest.mark.parametrize("spoil", [not_a_database, someone_elses_database])
def test_a_store_that_cannot_be_opened_locks_the_dispenser_and_tells_the_centre(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    caplog: pytest.LogCaptureFixture,
    spoil: object,
) -> None:
    caplog.set_level(logging.INFO)
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
    runner = SimulatorRunner.on_pty(model, link_path=tmp_path / "tty")
    runner.start()
    stream = EventStream(mosquitto.port, UNIT)
    stream.start()
    config = load_config(
        write_config(tmp_path, unit_id=UNIT, broker_port=mosquitto.port, device=tmp_path / "tty")
    )
    config.state_dir.mkdir(mode=0o700)
    assert callable(spoil)
    spoil(config.db_path)
    before = config.db_path.read_bytes()
    clock = SystemClock(synced_flag=tmp_path / "ntp-synchronised")

    async def scenario() -> int:
        daemon = build_daemon(config, clock)
        try:
            async with asyncio.timeout(WAIT_S):
                return await daemon.run()
        finally:
            daemon.store.close()

    try:
        exit_code = asyncio.run(scenario())
        stream.wait_for(
            lambda s: s.retained.get("state/availability", {}).get("reason") == "state_fault",
            WAIT_S,
        )
        availability = stream.retained["state/availability"]
        snap = runner.snapshot()
    finally:
        stream.stop()
        runner.stop()
    assert exit_code == EXIT_STATE_FAULT
    assert snap.locked is True
    assert snap.alert is AlertPattern.FAULT
    assert availability["state"] == "offline"
    assert "store cannot be opened" in availability["detail"]
    assert config.db_path.read_bytes() == before
    said = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.CRITICAL)
    assert "fail-safe done: dispenser locked, FAULT alert on, response centre told" in said
    assert stream.events == []  # no event was made up: there is no store to number it
