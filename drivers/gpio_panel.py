"""The unit's own lights, buzzer, buttons and contacts on the Pi's GPIO (gpiozero; hw/WIRING.md).

Output: three status LEDs (dispenser link up, alarm, dose held) and an active buzzer that plays
the pattern the engine wants shown (`DoseEngine.signal_pattern`, the same REMINDER / URGENT /
FAULT / HELD the dispenser is asked for), so the patient is told even when the dispenser cannot be
reached. Input: the "take now / help" button and, where a dispenser exposes them as contacts, tray
and lid switches. The technician button is not opened here: the technician commands claim it
while they run (`wait_for_hold`), as a GPIO line has one owner at a time.

gpiozero calls back on its own threads; every input is handed to the asyncio loop with
`call_soon_threadsafe` and delivered there (no polling). Debounce is gpiozero's `bounce_time`.
gpiozero is imported lazily: `open_panel` returns None (and logs once why) on a machine without
GPIO, and the daemon runs on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from protocol.messages import AlertPattern

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PanelPins:
    """BCM numbers; None = not wired. Defaults: the agreed wiring (hw/WIRING.md)."""

    link_led: int | None = 5
    alarm_led: int | None = 6
    held_led: int | None = 13
    buzzer: int | None = 18
    take_button: int | None = 17
    tray_contact: int | None = None
    lid_contact: int | None = None
    bounce_s: float = 0.05


@dataclass(frozen=True, slots=True)
class Signals:
    """What the panel shows: one snapshot, replaced whole after every engine step."""

    link_up: bool = False
    alarm: bool = False
    held: bool = False
    pattern: AlertPattern = AlertPattern.OFF


@dataclass(frozen=True, slots=True)
class TakePressed:
    """The take now / help button went down (debounced)."""


@dataclass(frozen=True, slots=True)
class ContactChanged:
    """A tray or lid contact closed (pulled to ground) or opened."""

    contact: str  # "tray" | "lid"
    closed: bool


PanelEvent = TakePressed | ContactChanged


@dataclass(frozen=True, slots=True)
class Beeps:
    """A buzzer pattern: a burst of (on, off) seconds, repeated every `every_s` after the
    burst ends (None: once)."""

    burst: tuple[tuple[float, float], ...]
    every_s: float | None


# Distinct by rhythm, as IEC 60601-1-8 asks of priorities: two short for a dose waiting, three
# quick for one about to be missed, three long for a technical alarm, one soft for a held dose.
REMINDER_EVERY_S = 600.0  # the engine's reminder_repeat; the daemon passes the configured one
PATTERNS: dict[AlertPattern, Beeps] = {
    AlertPattern.OFF: Beeps((), None),
    AlertPattern.REMINDER: Beeps(((0.2, 0.2), (0.2, 0.2)), REMINDER_EVERY_S),
    AlertPattern.URGENT: Beeps(((0.1, 0.1), (0.1, 0.1), (0.1, 0.1)), 15.0),
    AlertPattern.FAULT: Beeps(((0.5, 0.5), (0.5, 0.5), (0.5, 0.5)), 30.0),
    AlertPattern.HELD: Beeps(((0.1, 0.1),), 120.0),
}
CHIRP = Beeps(((0.05, 0.05),), None)  # a press was heard


class LocalPanel:
    """Open devices on `pin_factory` (None: gpiozero's default); construct on the running loop.

    `on_event` is called on the loop for every input. `sleep` times the buzzer (tests pass a
    virtual one). `run()` plays the buzzer until cancelled, then turns everything off.
    """

    def __init__(
        self,
        pins: PanelPins,
        on_event: Callable[[PanelEvent], None],
        *,
        pin_factory: Any = None,
        sleep: Sleep = asyncio.sleep,
        reminder_every_s: float = REMINDER_EVERY_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        import gpiozero  # lazily: only a unit with GPIO needs it

        self._loop = asyncio.get_running_loop()
        self._on_event = on_event
        self._sleep = sleep
        self._patterns = dict(PATTERNS)
        reminder = PATTERNS[AlertPattern.REMINDER]
        self._patterns[AlertPattern.REMINDER] = Beeps(reminder.burst, reminder_every_s)
        self._devices: list[Any] = []
        self._signals = Signals()
        self._changed = asyncio.Event()
        self._chirps = 0
        self._monotonic = monotonic
        self._bounce_s = pins.bounce_s
        self._last_press: float | None = None
        self._closed = False
        try:
            with warnings.catch_warnings():
                # gpiozero warns for each pin library it falls back from; the outcome is logged
                warnings.simplefilter("ignore")
                self._link = self._output(gpiozero.LED, pins.link_led, pin_factory)
                self._alarm = self._output(gpiozero.LED, pins.alarm_led, pin_factory)
                self._held = self._output(gpiozero.LED, pins.held_led, pin_factory)
                self._buzzer = self._output(gpiozero.Buzzer, pins.buzzer, pin_factory)
                take = self._input(gpiozero.Button, pins.take_button, pins.bounce_s, pin_factory)
                if take is not None:
                    take.when_pressed = self._handler(TakePressed())
                for name, pin in (("tray", pins.tray_contact), ("lid", pins.lid_contact)):
                    contact = self._input(gpiozero.Button, pin, pins.bounce_s, pin_factory)
                    if contact is not None:
                        contact.when_pressed = self._handler(ContactChanged(name, True))
                        contact.when_released = self._handler(ContactChanged(name, False))
        except BaseException:  # whatever stopped it: no pin stays claimed; re-raised
            self.close()
            raise

    def _output(self, kind: Any, pin: int | None, factory: Any) -> Any:
        if pin is None:
            return None
        device = kind(pin, pin_factory=factory)
        self._devices.append(device)
        return device

    def _input(self, kind: Any, pin: int | None, bounce_s: float, factory: Any) -> Any:
        if pin is None:
            return None
        device = kind(pin, pull_up=True, bounce_time=bounce_s, pin_factory=factory)
        self._devices.append(device)
        return device

    def _handler(self, event: PanelEvent) -> Callable[[], None]:
        def from_gpio_thread() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the daemon stopped
                self._loop.call_soon_threadsafe(self._deliver, event)

        return from_gpio_thread

    def _deliver(self, event: PanelEvent) -> None:
        if isinstance(event, TakePressed):
            # again in software: not every pin library honours bounce_time (the mock does not)
            at = self._monotonic()
            if self._last_press is not None and at - self._last_press < self._bounce_s:
                return
            self._last_press = at
            self.chirp()
        try:
            self._on_event(event)
        except Exception:  # the daemon's callback: a bug there must not stop the buttons
            log.exception("panel input %s not handled", event)

    # --- output (on the loop) ----------------------------------------------------------------

    @property
    def signals(self) -> Signals:
        return self._signals

    def show(self, signals: Signals) -> None:
        """Lights follow at once; the buzzer restarts its pattern only when the pattern changes."""
        if self._closed:
            return
        for led, on in (
            (self._link, signals.link_up),
            (self._alarm, signals.alarm),
            (self._held, signals.held),
        ):
            _set(led, on)
        if signals.pattern is not self._signals.pattern:
            self._changed.set()
        self._signals = signals

    def chirp(self) -> None:
        """One short beep (a press was heard), unless a pattern is sounding anyway."""
        self._chirps += 1
        self._changed.set()

    async def run(self) -> None:
        player: asyncio.Task[None] | None = None
        playing = AlertPattern.OFF
        try:
            while True:
                await self._changed.wait()
                self._changed.clear()
                wanted = self._signals.pattern
                if self._chirps and wanted is AlertPattern.OFF and playing is AlertPattern.OFF:
                    self._chirps = 0
                    player = await _replace(player, self._play(CHIRP))
                    continue
                self._chirps = 0
                if wanted is not playing:
                    playing = wanted
                    player = await _replace(player, self._play(self._patterns[wanted]))
        finally:
            await _replace(player, None)
            self.close()

    async def _play(self, beeps: Beeps) -> None:
        if self._buzzer is None or not beeps.burst:
            return
        try:
            while True:
                for on_s, off_s in beeps.burst:
                    self._buzzer.on()
                    await self._sleep(on_s)
                    self._buzzer.off()
                    await self._sleep(off_s)
                if beeps.every_s is None:
                    return
                await self._sleep(beeps.every_s)
        finally:
            self._buzzer.off()

    def close(self) -> None:
        """Everything off, every pin released (idempotent)."""
        self._closed = True
        for device in reversed(self._devices):
            with contextlib.suppress(Exception):
                if hasattr(device, "off"):
                    device.off()  # a released line keeps its level on some pin libraries
                device.close()
        self._devices.clear()


async def _replace(
    task: asyncio.Task[None] | None, work: Awaitable[None] | None
) -> asyncio.Task[None] | None:
    """Stop `task` (waiting until its buzzer is off), then start `work`."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if work is None:
        return None
    return asyncio.ensure_future(work)


def _set(led: Any, on: bool) -> None:
    if led is None or bool(led.is_lit) == on:
        return
    if on:
        led.on()
    else:
        led.off()


# Where the pin libraries find the GPIO: lgpio opens /dev/gpiochipN, RPi.GPIO /dev/gpiomem.
DEV_DIR = "/dev"
GPIO_DEVICE_PREFIXES = ("gpiochip", "gpiomem")
# A pin factory named in the environment may need no local device (mock pins, pigpio to a host).
PIN_FACTORY_ENV = ("GPIOZERO_PIN_FACTORY", "PIGPIO_ADDR")


def gpio_devices_missing() -> str | None:
    """Why no pin library can work on this machine (no GPIO device node at all), else None.
    Asked before gpiozero is imported: on a machine without GPIO it would only cost memory
    (about 2 MB resident with colorzero) to find out that no pin factory loads."""
    if any(os.environ.get(name) for name in PIN_FACTORY_ENV):
        return None
    try:
        names = os.listdir(DEV_DIR)
    except OSError as exc:
        return f"{DEV_DIR} cannot be listed: {exc.strerror}"
    if any(name.startswith(GPIO_DEVICE_PREFIXES) for name in names):
        return None
    return f"no {DEV_DIR}/gpiochip* or {DEV_DIR}/gpiomem* on this machine"


def open_panel(
    pins: PanelPins,
    on_event: Callable[[PanelEvent], None],
    *,
    reminder_every_s: float = REMINDER_EVERY_S,
    pin_factory: Any = None,
    sleep: Sleep = asyncio.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> LocalPanel | None:
    """The panel, or None with one warning when this machine has no usable GPIO (no gpiozero,
    no pin library, pins taken by another process, not a Pi)."""
    missing = None if pin_factory is not None else gpio_devices_missing()
    if missing is not None:
        log.warning("no local buttons, lights or buzzer: GPIO not available (%s)", missing)
        return None
    try:
        return LocalPanel(
            pins,
            on_event,
            pin_factory=pin_factory,
            sleep=sleep,
            reminder_every_s=reminder_every_s,
            monotonic=monotonic,
        )
    except Exception as exc:  # ImportError, gpiozero's BadPinFactory / GPIOPinInUse, a pin
        # library's own errors: none of them must stop a unit that can run without the panel
        # (its traceback at debug level only: on a unit without a panel this is every start)
        log.warning("no local buttons, lights or buzzer: GPIO not available (%s)", exc)
        log.debug("GPIO probe failed", exc_info=True)
        return None


async def wait_for_hold(
    pin: int, hold_s: float, timeout_s: float, *, bounce_s: float = 0.05, pin_factory: Any = None
) -> bool:
    """For the technician commands: claim the technician button for at most `timeout_s` and
    return True once it has been held down `hold_s` seconds (False: not held in time). Raises
    gpiozero's error (an ImportError, BadPinFactory ...) when there is no GPIO to read."""
    import gpiozero

    loop = asyncio.get_running_loop()
    held = asyncio.Event()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        button = gpiozero.Button(
            pin, pull_up=True, bounce_time=bounce_s, hold_time=hold_s, pin_factory=pin_factory
        )
    try:

        def on_held() -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(held.set)

        button.when_held = on_held
        try:
            async with asyncio.timeout(timeout_s):
                await held.wait()
        except TimeoutError:
            return False
        return True
    finally:
        button.close()
