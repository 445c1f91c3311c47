"""The technician's presence at the unit: a long press of the technician button.

The button is wired to GPIO 27 (BCM) to ground with the internal pull-up (the agreed default
wiring; the GPIO pin map may name another pin). A long press is the button held 5 s: a remote
user cannot do it, nor a patient by brushing against it. Tests use gpiozero's MockFactory.

A reset command signed by the response centre is the other way to show presence; its signature
check lives with the signed commands (agent/commands.py). `SignedReset` is the hook it plugs into.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

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
        pin: int = TECHNICIAN_BUTTON_PIN,
        hold_s: float = LONG_PRESS_S,
        pin_factory: Any = None,
    ) -> None:
        self.pin, self.hold_s, self.pin_factory = pin, hold_s, pin_factory

    def describe(self) -> str:
        return f"hold the technician button (GPIO {self.pin}) for {self.hold_s:g} s"

    def confirm(self, timeout_s: float) -> tuple[bool, str]:
        try:
            from gpiozero import Button
            from gpiozero.exc import GPIOZeroError
        except ImportError as exc:  # pragma: no cover - gpiozero is a dependency
            return False, f"no GPIO library: {exc}"
        held = threading.Event()
        try:
            button = Button(
                self.pin, pull_up=True, hold_time=self.hold_s, pin_factory=self.pin_factory
            )
        except (GPIOZeroError, OSError, RuntimeError) as exc:
            return False, f"technician button on GPIO {self.pin} not available: {exc}"
        try:
            button.when_held = lambda: held.set()
            if held.wait(timeout_s):
                return True, f"technician button held {self.hold_s:g} s"
            return False, (
                f"no long press within {timeout_s:g} s: {self.describe()} to confirm you are "
                "at the unit"
            )
        finally:
            button.close()


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
