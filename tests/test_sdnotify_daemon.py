"""The daemon speaks systemd's notify protocol as the unit expects (Type=notify, WatchdogSec=):
READY=1 once it runs, WATCHDOG=1 while its store answers, and none once it has stopped on a
state fault (so systemd restarts it). A real daemon on a pty simulator and a real broker; the
notify socket is a datagram socket of the test's own."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import NoReturn

import pytest
from broker import MosquittoBroker
from e2e_support import write_config

from agent.clock import SystemClock
from agent.config import load_config
from agent.daemon import EXIT_STATE_FAULT
from agent.runtime import build_daemon
from hw.dispenser import DispenserIdentity, DispenserModel
from hw.wire import SimulatorRunner

WAIT_S = 30.0


class NotifySocket:
    """Collects what the daemon sends to $NOTIFY_SOCKET, one datagram per message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            with self.changed:
                self.messages.append(data.decode())
                self.changed.notify_all()

    def count(self, line: str) -> int:
        with self.changed:
            return sum(line in m.splitlines() for m in self.messages)

    def wait_for_count(self, line: str, n: int) -> None:
        with self.changed:
            assert self.changed.wait_for(
                lambda: sum(line in m.splitlines() for m in self.messages) >= n, WAIT_S
            ), (line, n, self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.mark.e2e
def test_ready_then_watchdog_while_healthy_and_none_after_a_state_fault(
    tmp_path: Path, mosquitto: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # fed every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    runner = SimulatorRunner.on_pty(
        DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time())),
        link_path=tmp_path / "tty",
    )
    runner.start()
    config = load_config(
        write_config(
            tmp_path, unit_id="notify-unit", broker_port=mosquitto.port, device=tmp_path / "tty"
        )
    )

    async def scenario() -> int:
        daemon = build_daemon(config, clock=SystemClock(synced_flag=tmp_path / "synced"))
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.to_thread(notify.wait_for_count, "READY=1", 1)
            await asyncio.to_thread(notify.wait_for_count, "WATCHDOG=1", 3)

            def broken() -> NoReturn:
                raise sqlite3.OperationalError("disk I/O error")

            daemon.store.backlog = broken  # type: ignore[method-assign]
            async with asyncio.timeout(WAIT_S + 60):  # the fail-safe's own waits are bounded
                return await task
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            daemon.store.close()

    try:
        # run() returned: its watchdog task has ended with it, so systemd sees the service stop
        # (and restarts it) rather than a process that is fed but does nothing.
        assert asyncio.run(scenario()) == EXIT_STATE_FAULT
        assert any(m.startswith("STATUS=fail-safe: store check failed") for m in notify.messages)
        assert notify.count("READY=1") == 1
    finally:
        notify.close()
        runner.stop()
