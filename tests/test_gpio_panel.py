"""The unit's own lights, buzzer, button and contacts (drivers/gpio_panel.py) on gpiozero's
MockFactory: pin histories asserted, buzzer timing on a virtual clock (tests/gpio_support.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from gpio_support import FakeMonotonic, VirtualSleep, states, until
from gpiozero.pins.mock import MockFactory

import drivers.gpio_panel
from agent.config import ConfigError, parse_config
from drivers.gpio_panel import (
    ContactChanged,
    LocalPanel,
    PanelEvent,
    PanelPins,
    Signals,
    TakePressed,
    gpio_devices_missing,
    open_panel,
    wait_for_hold,
)
from protocol.messages import AlertPattern

LINK, ALARM, HELD, BUZZER, TAKE, TRAY, LID, TECH = 5, 6, 13, 18, 17, 22, 23, 27
OFF, ON = False, True


class Bench:
    def __init__(self, panel: LocalPanel, factory: MockFactory, sleep: VirtualSleep) -> None:
        self.panel, self.factory, self.sleep = panel, factory, sleep
        self.events: asyncio.Queue[PanelEvent] = asyncio.Queue()
        self.clock = FakeMonotonic()

    def buzzer(self) -> list[bool]:
        return states(self.factory, BUZZER)

    def press(self) -> None:
        pin = self.factory.pin(TAKE)
        pin.drive_low()
        pin.drive_high()

    async def next_event(self) -> PanelEvent:
        async with asyncio.timeout(10):
            return await self.events.get()


def on_bench(
    scenario: Callable[[Bench], Awaitable[None]],
    horizon: float = 3600.0,
    pins: PanelPins | None = None,
) -> MockFactory:
    factory = MockFactory()
    sleep = VirtualSleep(horizon)

    async def main() -> None:
        queue: asyncio.Queue[PanelEvent] = asyncio.Queue()
        clock = FakeMonotonic()
        panel = LocalPanel(
            pins or PanelPins(tray_contact=TRAY, lid_contact=LID),
            queue.put_nowait,
            pin_factory=factory,
            sleep=sleep,
            monotonic=clock,
        )
        bench = Bench(panel, factory, sleep)
        bench.events, bench.clock = queue, clock
        task = asyncio.create_task(panel.run())
        try:
            await scenario(bench)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    return factory


def test_lights_follow_the_signals() -> None:
    async def scenario(b: Bench) -> None:
        b.panel.show(Signals(link_up=True))
        b.panel.show(Signals(link_up=True, alarm=True, held=True))
        b.panel.show(Signals(link_up=True, alarm=True, held=True))  # no change: no edge
        b.panel.show(Signals(link_up=False, alarm=False, held=True))
        b.panel.show(Signals())

    factory = on_bench(scenario)
    assert states(factory, LINK) == [OFF, ON, OFF]
    assert states(factory, ALARM) == [OFF, ON, OFF]
    assert states(factory, HELD) == [OFF, ON, OFF]
    assert states(factory, BUZZER) == [OFF]


def test_reminder_beeps_twice_and_again_at_the_reminder_interval() -> None:
    async def scenario(b: Bench) -> None:
        b.panel.show(Signals(pattern=AlertPattern.REMINDER))
        await asyncio.wait_for(b.sleep.parked.wait(), 10)

    factory = on_bench(scenario, horizon=1000)  # 0.8 s burst, 600 s gap, burst, then parked
    assert states(factory, BUZZER) == [OFF, ON, OFF, ON, OFF, ON, OFF, ON, OFF]


def test_each_pattern_has_its_rhythm_and_repeat() -> None:
    expected = {
        AlertPattern.REMINDER: [0.2, 0.2, 0.2, 0.2, 600.0],
        AlertPattern.URGENT: [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 15.0],
        AlertPattern.FAULT: [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 30.0],
        AlertPattern.HELD: [0.1, 0.1, 120.0],
    }
    for pattern, cycle in expected.items():
        seen: list[float] = []

        async def scenario(
            b: Bench, pattern: AlertPattern = pattern, seen: list[float] = seen
        ) -> None:
            b.panel.show(Signals(pattern=pattern))
            await asyncio.wait_for(b.sleep.parked.wait(), 10)
            seen.extend(b.sleep.calls)

        on_bench(scenario, horizon=sum(cycle) * 2 + 0.01)  # two cycles, then parked
        assert seen == cycle + cycle, pattern


def test_a_new_pattern_stops_the_old_one_with_the_buzzer_off() -> None:
    async def scenario(b: Bench) -> None:
        b.panel.show(Signals(pattern=AlertPattern.FAULT))
        await asyncio.wait_for(b.sleep.parked.wait(), 10)  # parked inside the first 0.5 s beep
        assert b.buzzer() == [OFF, ON]
        b.panel.show(Signals(pattern=AlertPattern.OFF))
        await until(lambda: b.buzzer() == [OFF, ON, OFF], "the buzzer off")

    factory = on_bench(scenario, horizon=0.3)
    assert states(factory, BUZZER) == [OFF, ON, OFF]


def test_the_button_is_delivered_on_the_loop_debounced_with_a_chirp() -> None:
    async def scenario(b: Bench) -> None:
        b.press()
        b.press()  # contact bounce: within bounce_s on the panel's clock
        assert isinstance(await b.next_event(), TakePressed)
        await until(lambda: b.buzzer() == [OFF, ON, OFF], "one chirp")
        b.clock.t += 1.0
        b.press()
        assert isinstance(await b.next_event(), TakePressed)
        await until(lambda: b.buzzer() == [OFF, ON, OFF, ON, OFF], "a second chirp")
        assert b.events.empty()

    on_bench(scenario)


def test_contacts_report_closing_and_opening() -> None:
    async def scenario(b: Bench) -> None:
        tray, lid = b.factory.pin(TRAY), b.factory.pin(LID)
        tray.drive_low()
        assert await b.next_event() == ContactChanged("tray", True)
        lid.drive_low()
        assert await b.next_event() == ContactChanged("lid", True)
        lid.drive_high()
        assert await b.next_event() == ContactChanged("lid", False)

    on_bench(scenario)


def test_unwired_parts_are_not_opened() -> None:
    async def scenario(b: Bench) -> None:
        b.panel.show(Signals(link_up=True, pattern=AlertPattern.URGENT))

    pins = PanelPins(alarm_led=None, held_led=None, buzzer=None, take_button=None)
    factory = on_bench(scenario, pins=pins)
    assert [info.name for info in factory.pins] == [f"GPIO{LINK}"]


def test_stopping_the_panel_turns_everything_off() -> None:
    async def scenario(b: Bench) -> None:
        b.panel.show(Signals(True, True, True, AlertPattern.FAULT))
        await asyncio.wait_for(b.sleep.parked.wait(), 10)

    factory = on_bench(scenario, horizon=0.3)
    for pin in (LINK, ALARM, HELD, BUZZER):
        assert states(factory, pin)[-1] is OFF, pin


def test_no_gpio_on_this_machine_warns_and_gives_no_panel(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)

    async def main() -> object:
        return open_panel(PanelPins(), lambda _: None)

    with caplog.at_level(logging.WARNING):
        assert asyncio.run(main()) is None
    [record] = [r for r in caplog.records if r.name == "drivers.gpio_panel"]
    assert "GPIO not available" in record.getMessage()


def test_gpio_is_missing_only_when_no_pin_library_could_find_a_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(drivers.gpio_panel, "DEV_DIR", str(tmp_path))
    for name in drivers.gpio_panel.PIN_FACTORY_ENV:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "ttyAMA0").touch()
    assert (
        gpio_devices_missing() == f"no {tmp_path}/gpiochip* or {tmp_path}/gpiomem* on this machine"
    )
    # a factory chosen in the environment may need no device here (mock pins, remote pigpio)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    assert gpio_devices_missing() is None
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY")
    (tmp_path / "gpiochip0").touch()  # what lgpio opens on every Raspberry Pi
    assert gpio_devices_missing() is None


def test_without_gpio_devices_the_panel_is_refused_before_gpiozero_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(drivers.gpio_panel, "DEV_DIR", str(tmp_path))
    for name in drivers.gpio_panel.PIN_FACTORY_ENV:
        monkeypatch.delenv(name, raising=False)

    async def main() -> object:
        return open_panel(PanelPins(), lambda _: None)

    with caplog.at_level(logging.WARNING):
        assert asyncio.run(main()) is None
    [record] = [r for r in caplog.records if r.name == "drivers.gpio_panel"]
    assert record.getMessage() == (
        "no local buttons, lights or buzzer: GPIO not available "
        f"(no {tmp_path}/gpiochip* or {tmp_path}/gpiomem* on this machine)"
    )
    # mock pins handed in are used whatever this machine has
    factory = MockFactory()

    async def mocked() -> bool:
        panel = open_panel(PanelPins(), lambda _: None, pin_factory=factory)
        if panel is None:
            return False
        panel.close()
        return True

    assert asyncio.run(mocked())


def test_a_technician_hold_is_reported_only_after_the_hold_time() -> None:
    factory = MockFactory()

    async def main() -> tuple[bool, bool]:
        idle = await wait_for_hold(TECH, hold_s=0.2, timeout_s=0.3, pin_factory=factory)
        waiting = asyncio.create_task(
            wait_for_hold(TECH, hold_s=0.2, timeout_s=10, pin_factory=factory)
        )
        pin = factory.pin(TECH)
        await until(lambda: pin.when_changed is not None, "the button opened")
        pin.drive_low()
        held = await waiting
        return idle, held

    assert asyncio.run(main()) == (False, True)


def test_the_config_defaults_are_the_documented_wiring_and_a_pin_serves_one_part() -> None:
    base = {"unit_id": "unit-1", "dispenser": {"device": "/dev/null"}}
    gpio = parse_config(base).gpio
    assert gpio.enabled
    assert gpio.pins() == {
        "link_led": 5,
        "alarm_led": 6,
        "held_led": 13,
        "buzzer": 18,
        "take_button": 17,
        "technician_button": 27,
        "tray_contact": None,
        "lid_contact": None,
    }
    assert gpio.technician_hold_s == 5.0
    moved = parse_config({**base, "gpio": {"tray_contact": 22, "buzzer": None}}).gpio
    assert (moved.tray_contact, moved.buzzer) == (22, None)
    with pytest.raises(ConfigError, match=r"GPIO \[17\] used for more than one thing"):
        parse_config({**base, "gpio": {"lid_contact": 17}})
    with pytest.raises(ConfigError, match=r"gpio\.held_led"):
        parse_config({**base, "gpio": {"held_led": 40}})
