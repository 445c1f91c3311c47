"""The technician's presence at the unit: a long press of the technician button.

The button is wired to GPIO 27 (BCM) to ground with the internal pull-up (the agreed default
wiring; the GPIO pin map may name another pin). A long press is the button held 5 s: a remote
user cannot do it, nor a patient by brushing against it. Tests use gpiozero's MockFactory.

A reset command signed by the response centre is the other way to show presence; its signature
check lives with the signed commands (agent/commands.py). `SignedReset` is the hook it plugs into.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from drivers import gpio_panel

TECHNICIAN_BUTTON_PIN = 27
LONG_PRESS_S = 5.0
WAIT_FOR_PRESS_S = 60.0


class Presence(Protocol):
    def describe(self) -> str: ...

    def confirm(self, timeout_s: float) -> tuple[bool, str]:
        """(present, why): waits at most `timeout_s`."""
        ...


class LongPress:
    """Held `hold_s` on the technician button within `timeout_s`."""

    def __init__(
        self,
        pin: int | None = TECHNICIAN_BUTTON_PIN,
        hold_s: float = LONG_PRESS_S,
        pin_factory: Any = None,
    ) -> None:
        self.pin, self.hold_s, self.pin_factory = pin, hold_s, pin_factory

    def describe(self) -> str:
        if self.pin is None:
            return "a technician button (none is configured: gpio.technician_button)"
        return f"hold the technician button (GPIO {self.pin}) for {self.hold_s:g} s"

    def confirm(self, timeout_s: float) -> tuple[bool, str]:
        if self.pin is None:
            return False, "no technician button is configured (gpio.technician_button)"
        try:
            from gpiozero.exc import GPIOZeroError
        except ImportError as exc:  # pragma: no cover - gpiozero is a dependency
            return False, f"no GPIO library: {exc}"
        try:
            held = asyncio.run(
                gpio_panel.wait_for_hold(
                    self.pin, self.hold_s, timeout_s, pin_factory=self.pin_factory
                )
            )
        except (GPIOZeroError, OSError, RuntimeError) as exc:
            return False, f"technician button on GPIO {self.pin} not available: {exc}"
        if held:
            return True, f"technician button held {self.hold_s:g} s"
        return False, (
            f"no long press within {timeout_s:g} s: {self.describe()} to confirm you are "
            "at the unit"
        )


class SignedReset:
    """Hook: presence shown by a reset command signed by the response centre. The signature
    check belongs to the signed-command path; until it is wired here this refuses."""

    def __init__(self, path: str) -> None:
        self.path = path

    def describe(self) -> str:
        return f"a reset command signed by the response centre ({self.path})"

    def confirm(self, timeout_s: float) -> tuple[bool, str]:
        del timeout_s
        return False, "signed reset commands are not verified by this build: use the button"
