"""The GPIO panel in the real daemon: simulator on a pty <-> daemon (in this process, virtual
clock, panel on gpiozero's MockFactory) <-> mosquitto <-> subscriber. The take now / help button
pressed too early calls for help; pressed inside the early window it gets the dose, and the lights
and buzzer follow (pin histories asserted). Waits on conditions with bounded timeouts only."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from broker import MosquittoBroker
from e2e_support import PATIENT, EventStream, epoch, oslo, write_config
from gpio_support import VirtualSleep, states, until
from gpiozero.pins.mock import MockFactory

from agent.clock import VirtualClock
from agent.config import load_config
from agent.daemon import EXIT_STATE_FAULT, Daemon
from agent.runtime import build_daemon
from drivers.gpio_panel import LocalPanel, PanelEvent, PanelPins
from hw.dispenser import DispenserIdentity, DispenserModel, make_roll
from hw.wire import SimulatorRunner

pytestmark = pytest.mark.e2e
UNIT = "gpio-unit"
LINK, ALARM, HELD, BUZZER, TAKE, LID = 5, 6, 13, 18, 17, 23
OFF, ON = False, True


class Rig:
    def __init__(self, tmp_path: Path, broker: MosquittoBroker) -> None:
        self.tmp = tmp_path
        self.model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
        self.runner = SimulatorRunner.on_pty(self.model, link_path=tmp_path / "tty")
        self.stream = EventStream(broker.port, UNIT)
        self.config = load_config(
            write_config(tmp_path, unit_id=UNIT, broker_port=broker.port, device=tmp_path / "tty")
        )
        self.factory = MockFactory()
        self.sleep = VirtualSleep(horizon=1.0)  # two chirps (0.1 s each), a reminder burst (0.8 s)
        self.clock = VirtualClock(oslo(6, 45))  # 75 min before the 08:00 dose
        self.panel: LocalPanel | None = None

    def panel_factory(self, on_event: Callable[[PanelEvent], None]) -> LocalPanel:
        self.panel = LocalPanel(
            PanelPins(lid_contact=LID),
            on_event,
            pin_factory=self.factory,
            sleep=self.sleep,
            monotonic=lambda: self.clock.now().mono,  # the debounce on the virtual clock
        )
        return self.panel

    def press(self) -> None:
        pin = self.factory.pin(TAKE)
        pin.drive_low()
        pin.drive_high()

    async def events(self, what: Callable[[EventStream], bool]) -> None:
        # on the loop, not in a worker thread: the daemon's own work needs the default executor
        try:
            await until(lambda: bool(what(self.stream)), "the events", within_s=20)
        except AssertionError:
            kinds = [(e.get("kind"), e.get("data")) for e in self.stream.events]
            raise AssertionError(f"events not as expected: {kinds}") from None

    def run(self, scenario: Callable[[Daemon], Awaitable[None]]) -> None:
        self.runner.start()
        self.stream.start()

        async def main() -> None:
            daemon = build_daemon(self.config, clock=self.clock, panel_factory=self.panel_factory)
            task = asyncio.create_task(daemon.run())
            try:
                await scenario(daemon)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                daemon.store.close()

        try:
            asyncio.run(main())
        finally:
            self.stream.stop()
            self.runner.stop()


def test_the_gpio_button_used_as_take_now(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    rig = Rig(tmp_path, mosquitto)

    async def scenario(daemon: Daemon) -> None:
        await until(lambda: states(rig.factory, LINK) == [OFF, ON], "the link light")
        roll = make_roll("R-1", PATIENT, epoch(oslo(8, 0)), 12 * 3600, 28)
        rig.runner.call(lambda model: model.insert_roll(roll))
        await rig.events(lambda s: bool(s.of_kind("roll_inserted")))

        rig.press()  # 06:45: no dose within the 60 min early window
        await rig.events(lambda s: bool(s.of_kind("panel_help_requested")))
        [help_call] = rig.stream.of_kind("panel_help_requested")
        assert (help_call["priority"], help_call["vkp_code"]) == ("medium", "3")
        assert help_call["data"] == {
            "reason": "no_dose_due",
            "next_due_utc": "2026-11-23T07:00:00Z",
        }
        await until(lambda: states(rig.factory, BUZZER) == [OFF, ON, OFF], "the press chirp")
        assert rig.model.dispensed == []

        rig.clock.advance(timedelta(minutes=20).total_seconds())  # 07:05
        rig.press()
        await rig.events(lambda s: bool(s.of_kind("dose_presented")))
        await asyncio.wait_for(rig.sleep.parked.wait(), 20)  # the reminder burst has played
        chirp, reminder = [ON, OFF], [ON, OFF, ON, OFF]
        assert states(rig.factory, BUZZER) == [OFF, *chirp, *chirp, *reminder]
        assert rig.sleep.calls == [0.05, 0.05, 0.05, 0.05, 0.2, 0.2, 0.2, 0.2]
        assert len(rig.model.dispensed) == 1

        rig.runner.call(lambda model: model.take_dose())
        await rig.events(lambda s: any(o["outcome"] == "taken" for o in s.outcomes()))
        [outcome] = rig.stream.outcomes()
        assert outcome["slot_id"] == "2026-11-23T08:00"
        await until(lambda: rig.panel is not None and rig.panel.signals.pattern == 0, "quiet")
        assert len(rig.stream.of_kind("panel_help_requested")) == 1

        lid = rig.factory.pin(LID)
        lid.drive_low()  # the lid contact closes, then opens: audited, nothing else
        await until(lambda: len(contacts(daemon)) == 1, "the closing in the audit log")
        lid.drive_high()
        await until(lambda: len(contacts(daemon)) == 2, "the opening in the audit log")
        assert contacts(daemon) == [
            {"contact": "lid", "closed": True},
            {"contact": "lid", "closed": False},
        ]
        assert rig.stream.of_kind("lid_open") == []

    def contacts(daemon: Daemon) -> list[dict[str, object]]:
        records = daemon.store.audit_records()
        return [r.body for r in records if r.kind == "panel_contact"]

    rig.run(scenario)
    assert states(rig.factory, BUZZER)[-1] is OFF
    assert states(rig.factory, ALARM) == [OFF]  # nothing latched
    assert states(rig.factory, HELD) == [OFF]
    assert states(rig.factory, LINK)[:2] == [OFF, ON]


def test_a_daemon_without_gpio_warns_once_and_runs(
    tmp_path: Path, mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path, mosquitto)
    rig.panel_factory = None  # type: ignore[assignment]

    async def scenario(daemon: Daemon) -> None:
        await rig.events(lambda s: s.retained.get("state/dispenser", {}).get("link") == "up")
        assert daemon.panel is None

    rig.runner.start()
    rig.stream.start()

    async def main() -> None:
        daemon = build_daemon(rig.config, clock=rig.clock)  # the real pins: none here
        task = asyncio.create_task(daemon.run())
        try:
            await scenario(daemon)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            daemon.store.close()

    try:
        with caplog.at_level(logging.WARNING):
            asyncio.run(main())
    finally:
        rig.stream.stop()
        rig.runner.stop()
    warned = [r for r in caplog.records if "GPIO not available" in r.getMessage()]
    assert len(warned) == 1


def test_a_fail_safe_shows_the_fault_on_the_panel(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    rig = Rig(tmp_path, mosquitto)
    rig.config.state_dir.mkdir(mode=0o700)
    rig.config.db_path.write_bytes(b"this is no SQLite file at all" * 100)  # cannot be opened
    rig.runner.start()
    rig.stream.start()

    async def main() -> int:
        daemon = build_daemon(rig.config, clock=rig.clock, panel_factory=rig.panel_factory)
        try:
            async with asyncio.timeout(60):
                return await daemon.run()
        finally:
            daemon.store.close()

    try:
        exit_code = asyncio.run(main())
    finally:
        rig.stream.stop()
        rig.runner.stop()
    assert exit_code == EXIT_STATE_FAULT
    assert rig.runner.snapshot().locked
    assert states(rig.factory, ALARM) == [OFF, ON, OFF]  # on while failing safe, off at exit
    buzzer = states(rig.factory, BUZZER)
    assert buzzer[:2] == [OFF, ON]
    assert buzzer[-1] is OFF
