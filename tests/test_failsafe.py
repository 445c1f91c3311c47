"""The fail-safe on a store fault, on real parts: the daemon, the dispenser simulator on a real pty,
a real SQLite store that really fails (a trigger installed through a second connection makes the
store's own commit raise), a private mosquitto and a subscriber standing in for the response
centre.

What must hold whatever step the store fails in: the dispenser ends up locked with the FAULT
pattern (on the live link, or on the next one within the bounded wait), a dispenser event whose
commit failed is never acknowledged, the response centre is told while MQTT is up, and run()
returns EXIT_STATE_FAULT so systemd restarts the agent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker
from e2e_support import EventStream, command, publish_command, write_config

from agent.clock import SystemClock
from agent.config import load_config
from agent.daemon import EXIT_STATE_FAULT, Daemon, DaemonFaultError
from agent.runtime import DROPPABLE_WHEN_FULL, unit_edges
from agent.store.audit import Stamp
from agent.store.db import Store
from drivers.session import DispenserSession
from hw.dispenser import DEFAULT_FEATURES, DispenserIdentity, DispenserModel
from hw.wire import SimulatorRunner, TraceEvent
from protocol.framing import FrameKind
from protocol.messages import AlertPattern, ButtonId, ButtonPressed, Feature, SetAlert, SetLock

UNIT = "failsafe-unit"
WAIT_S = 60.0  # generous: both CPU cores may be busy; every wait ends once its condition holds
DISK_SAYS_NO = "disk says no"


def refuse_inserts(db: Path, table: str, when: str = "1") -> None:
    """Make the store's next matching commit fail for real: a trigger, installed from outside."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} WHEN {when} "
            f"BEGIN SELECT RAISE(ABORT, '{DISK_SAYS_NO}'); END"
        )
    conn.close()


@dataclass
class Rig:
    runner: SimulatorRunner
    daemon: Daemon
    stream: EventStream
    db: Path
    run: asyncio.Task[int]
    trace: list[TraceEvent] = field(default_factory=list)
    trace_lock: threading.Lock = field(default_factory=threading.Lock)

    async def exit_code(self) -> int:
        async with asyncio.timeout(WAIT_S):
            return await asyncio.shield(self.run)

    def availability(self) -> dict[str, Any]:
        return self.stream.retained.get("state/availability", {})

    async def centre_told(self) -> dict[str, Any]:
        await self.centre_sees("state/availability", "state", "offline")
        return self.availability()

    async def centre_sees(self, topic: str, key: str, value: str) -> None:
        """Wait (bounded, on the subscriber's condition) for a retained value."""
        await asyncio.to_thread(
            self.stream.wait_for, lambda s: s.retained.get(topic, {}).get(key) == value, WAIT_S
        )


@asynccontextmanager
async def rig(
    tmp_path: Path,
    broker: MosquittoBroker,
    *,
    failsafe_link_wait_s: float = 30.0,
    before_start: Callable[[Path], None] | None = None,
    identity: DispenserIdentity | None = None,
) -> AsyncIterator[Rig]:
    trace: list[TraceEvent] = []
    lock = threading.Lock()

    def record(event: TraceEvent) -> None:
        with lock:
            trace.append(event)

    model = DispenserModel(identity or DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
    runner = SimulatorRunner.on_pty(model, link_path=tmp_path / "tty", trace=record)
    runner.start()
    stream = EventStream(broker.port, UNIT)
    stream.start()
    config = load_config(
        write_config(tmp_path, unit_id=UNIT, broker_port=broker.port, device=tmp_path / "tty")
    )
    synced = tmp_path / "ntp-synchronised"
    synced.touch()  # trusted time: commands are executed, not refused as unverifiable
    clock = SystemClock(synced_flag=synced)
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def stamp() -> Stamp:
        now = clock.now()
        return Stamp(now.utc.isoformat().replace("+00:00", "Z"), now.trust.value)

    store = Store.open(config.db_path, stamp=stamp, droppable_kinds=DROPPABLE_WHEN_FULL)
    if before_start is not None:
        before_start(config.db_path)
    daemon = Daemon(
        config,
        clock=clock,
        store=store,
        edges=unit_edges(config),
        failsafe_link_wait_s=failsafe_link_wait_s,
    )
    task = asyncio.create_task(daemon.run(), name="daemon-under-test")
    try:
        yield Rig(runner, daemon, stream, config.db_path, task, trace, lock)
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()
        stream.stop()
        runner.stop()


async def linked(r: Rig) -> None:
    """The daemon has handled the dispenser's LinkUp (it publishes the state after that)."""
    await r.centre_sees("state/dispenser", "link", "up")


async def unplugged(r: Rig) -> None:
    await asyncio.to_thread(r.runner.unplug)
    await r.centre_sees("state/dispenser", "link", "down")


def critical(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(rec.getMessage() for rec in caplog.records if rec.levelno >= logging.CRITICAL)


def test_store_fault_on_a_dispenser_event_locks_the_dispenser_and_leaves_the_event_unacked(
    tmp_path: Path, mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    help_pressed = ButtonPressed(ButtonId.HELP)

    async def scenario() -> None:
        async with rig(tmp_path, mosquitto) as r:
            await linked(r)
            refuse_inserts(r.db, "outbox", "NEW.kind = 'help_requested'")
            await asyncio.to_thread(r.runner.call, lambda m: m.press_button(ButtonId.HELP))

            assert await r.exit_code() == EXIT_STATE_FAULT
            snap = r.runner.snapshot()
            assert snap.locked is True
            assert snap.alert is AlertPattern.FAULT

            # The event was never acknowledged: the simulator retransmitted it and then gave up.
            with r.trace_lock:
                trace = list(r.trace)
            keys = {
                (t.frame.session, t.frame.seq)
                for t in trace
                if t.direction == "out" and t.message == help_pressed and t.frame is not None
            }
            assert keys, "the help button press never went out"
            acks_in = {
                (t.frame.session, t.frame.seq)
                for t in trace
                if t.direction == "in" and t.frame is not None and t.frame.kind is FrameKind.ACK
            }
            assert not keys & acks_in
            await asyncio.to_thread(
                r.runner.wait_for_stats, lambda s: s.failures >= 1 and s.retransmits >= 1, WAIT_S
            )
            # ... and the link stayed up for the lock to go out on it.
            session = r.daemon.session
            assert isinstance(session, DispenserSession)  # the production edges
            stats = session.stats
            assert stats.connects == 1
            assert stats.handler_errors == 0
            assert stats.not_stored == 1
            assert stats.acks_withheld >= 1

            availability = await r.centre_told()
            assert availability["reason"] == "state_fault"
            assert DISK_SAYS_NO in availability["detail"]
            assert not r.stream.of_kind("help_requested")

        with sqlite3.connect(f"file:{r.db}?mode=ro", uri=True) as conn:
            stored = conn.execute("SELECT count(*) FROM outbox WHERE kind = 'help_requested'")
            assert stored.fetchone()[0] == 0
        conn.close()
        said = critical(caplog)
        assert "fail-safe done: dispenser locked, FAULT alert on" in said
        assert "ButtonPressed" in said
        assert DISK_SAYS_NO in said

    asyncio.run(scenario())


def test_store_fault_while_the_link_is_down_locks_the_dispenser_once_it_is_back(
    tmp_path: Path, mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        async with rig(tmp_path, mosquitto) as r:
            await linked(r)
            await unplugged(r)
            refuse_inserts(r.db, "commands")
            payload = json.dumps(command("request_status", issued_at=datetime.now(UTC))).encode()
            await asyncio.to_thread(publish_command, mosquitto.port, UNIT, payload)

            availability = await r.centre_told()  # the fault happened, with no dispenser link
            assert availability["reason"] == "state_fault"
            assert DISK_SAYS_NO in availability["detail"]
            assert not r.run.done()  # waiting for a link to lock the dispenser on
            assert r.runner.snapshot().locked is False

            await asyncio.to_thread(r.runner.replug)
            assert await r.exit_code() == EXIT_STATE_FAULT
            snap = r.runner.snapshot()  # run() returns only after both were confirmed
            assert snap.locked is True
            assert snap.alert is AlertPattern.FAULT
            assert snap.boot_count == 2  # it is the replugged dispenser that was locked

        said = critical(caplog)
        assert "fail-safe done: dispenser locked, FAULT alert on" in said
        assert DISK_SAYS_NO in said

    asyncio.run(scenario())


def test_store_fault_with_no_dispenser_link_exits_after_the_bounded_wait(
    tmp_path: Path, mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        async with rig(tmp_path, mosquitto, failsafe_link_wait_s=1.0) as r:
            await linked(r)
            await unplugged(r)
            refuse_inserts(r.db, "commands")
            payload = json.dumps(command("request_status", issued_at=datetime.now(UTC))).encode()
            await asyncio.to_thread(publish_command, mosquitto.port, UNIT, payload)

            assert await r.exit_code() == EXIT_STATE_FAULT
            assert r.runner.snapshot().locked is False  # never reachable
            availability = await r.centre_told()
            assert availability["reason"] == "state_fault"
            assert DISK_SAYS_NO in availability["detail"]

        said = critical(caplog)
        assert "fail-safe INCOMPLETE: dispenser not locked" in said
        assert "gave up after 1 s" in said
        assert DISK_SAYS_NO in said

    asyncio.run(scenario())


def test_daemon_fault_error_from_a_task_fails_safe_and_ends_run_with_exit_state_fault(
    tmp_path: Path, mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        async with rig(tmp_path, mosquitto) as r:
            daemon = r.daemon

            async def faulting_task() -> None:
                await linked(r)
                raise DaemonFaultError("injected by the test")

            # Replaced before run() first runs (nothing has awaited since its task was created).
            daemon.commands.run = faulting_task  # type: ignore[method-assign]
            assert await r.exit_code() == EXIT_STATE_FAULT
            snap = r.runner.snapshot()
            assert snap.locked is True
            assert snap.alert is AlertPattern.FAULT

        said = critical(caplog)
        assert "fail-safe done" in said
        assert "injected by the test" in said

    asyncio.run(scenario())


def test_store_fault_while_starting_up_still_locks_the_dispenser(
    tmp_path: Path, mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    def refuse_agent_started(db: Path) -> None:
        refuse_inserts(db, "outbox", "NEW.kind = 'agent_started'")

    async def scenario() -> None:
        async with rig(tmp_path, mosquitto, before_start=refuse_agent_started) as r:
            assert await r.exit_code() == EXIT_STATE_FAULT
            snap = r.runner.snapshot()
            assert snap.locked is True
            assert snap.alert is AlertPattern.FAULT
            # told although MQTT was not up yet when the fault struck (it waits, bounded)
            told = await r.centre_told()
            assert told["reason"] == "state_fault"
            assert DISK_SAYS_NO in told["detail"]

        said = critical(caplog)
        assert "fail-safe done: dispenser locked, FAULT alert on, response centre told" in said
        assert DISK_SAYS_NO in said

    asyncio.run(scenario())


def test_store_fault_with_a_dispenser_without_a_lock_sends_no_set_lock(
    tmp_path: Path, mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """SPEC 3.4: a command gated by a feature bit goes only to a dispenser that announced it. A
    dispenser without LOCK gets the FAULT pattern alone (it dispenses only on command, and no
    command comes any more); the log says why it is not locked."""
    caplog.set_level(logging.INFO)
    no_lock = DispenserIdentity(features=DEFAULT_FEATURES & ~int(Feature.LOCK))

    async def scenario() -> None:
        async with rig(tmp_path, mosquitto, identity=no_lock) as r:
            await linked(r)
            refuse_inserts(r.db, "outbox", "NEW.kind = 'help_requested'")
            await asyncio.to_thread(r.runner.call, lambda m: m.press_button(ButtonId.HELP))

            assert await r.exit_code() == EXIT_STATE_FAULT
            snap = r.runner.snapshot()
            assert snap.alert is AlertPattern.FAULT
            assert snap.locked is False
            with r.trace_lock:
                sent = [t.message for t in r.trace if t.direction == "in"]
            assert not [m for m in sent if isinstance(m, SetLock)]
            assert [m for m in sent if isinstance(m, SetAlert)][-1].pattern is AlertPattern.FAULT
            availability = await r.centre_told()
            assert availability["reason"] == "state_fault"

        said = critical(caplog)
        assert "fail-safe done: FAULT alert on (no LOCK announced: SetLock not sent)" in said
        assert "INCOMPLETE" not in said
        assert DISK_SAYS_NO in said

    asyncio.run(scenario())
