"""The daemon with the real system clock and no NTP: time policy at boot (docs/time-policy.md).

A Pi has no RTC. Without NTP the agent trusts the dispenser's battery-backed RTC if it is valid;
if it is not, the agent stays untrusted, says so to the response centre, and dispenses nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from broker import MosquittoBroker
from e2e_support import EventStream, write_config

from agent.clock import SystemClock, TimeTrust
from agent.config import load_config
from agent.runtime import build_daemon
from hw.dispenser import DispenserIdentity, DispenserModel
from hw.wire import SimulatorRunner

UNIT = "time-unit"


def run_daemon_until(
    tmp_path: Path,
    broker: MosquittoBroker,
    model: DispenserModel,
    done: Callable[[EventStream], bool],
) -> tuple[EventStream, SystemClock]:
    runner = SimulatorRunner.on_pty(model, link_path=tmp_path / "tty")
    runner.start()
    stream = EventStream(broker.port, UNIT)
    stream.start()
    config = load_config(
        write_config(tmp_path, unit_id=UNIT, broker_port=broker.port, device=tmp_path / "tty")
    )
    clock = SystemClock(synced_flag=tmp_path / "no-ntp-yet")  # the flag file never appears

    async def scenario() -> None:
        daemon = build_daemon(config, clock=clock)
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.to_thread(stream.wait_for, done, 20)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            daemon.store.close()

    try:
        asyncio.run(scenario())
    finally:
        stream.stop()
        runner.stop()
    return stream, clock


def test_valid_dispenser_rtc_makes_time_trusted(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    rtc_ahead = int(time.time()) + 7200  # the Pi's boot guess is two hours behind the RTC
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: rtc_ahead)
    stream, clock = run_daemon_until(
        tmp_path,
        mosquitto,
        model,
        lambda s: (
            s.retained.get("state/health", {}).get("clock_trust") == "dispenser_rtc"
            # an untrusted-clock alarm raised before the dispenser answered must be cleared
            and len(s.of_kind("clock_untrusted")) == len(s.of_kind("clock_untrusted_cleared"))
        ),
    )
    now = clock.now()
    assert now.trust is TimeTrust.DISPENSER_RTC
    assert abs(now.utc.timestamp() - (time.time() + 7200)) < 30  # the RTC's time is adopted
    assert len(stream.of_kind("clock_untrusted")) <= 1


def test_invalid_dispenser_rtc_leaves_time_untrusted_and_says_so(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
    model.rtc_battery_died()
    stream, clock = run_daemon_until(
        tmp_path, mosquitto, model, lambda s: bool(s.of_kind("clock_untrusted"))
    )
    assert clock.now().trust is TimeTrust.UNTRUSTED
    [alarm] = stream.of_kind("clock_untrusted")
    assert alarm["priority"] == "high"
    assert alarm["vkp_code"] == "3.4"
    assert alarm["time_trust"] == "untrusted"
