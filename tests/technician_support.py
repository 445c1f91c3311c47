"""Helpers for the technician tests: the technician button on gpiozero's MockFactory."""

from __future__ import annotations

import threading
import time
from typing import Any

from gpiozero.pins.mock import MockFactory

from agent.technician.presence import TECHNICIAN_BUTTON_PIN, LongPress

HOLD_S = 0.3  # the real long press is 5 s; the tests hold the mock button a little longer than this


def pressed_button() -> tuple[LongPress, threading.Thread]:
    """A LongPress on a mock pin, and a thread that presses and holds it once it is watched."""
    factory: Any = MockFactory()
    presence = LongPress(hold_s=HOLD_S, pin_factory=factory)

    def press() -> None:
        pin = factory.pin(TECHNICIAN_BUTTON_PIN)
        deadline = time.monotonic() + 30.0
        # wait until the reset watches the button (the pin is set to input with a pull-up)
        while pin.pull != "up" and time.monotonic() < deadline:
            time.sleep(0.02)
        pin.drive_low()
        time.sleep(HOLD_S * 4)
        pin.drive_high()

    return presence, threading.Thread(target=press, daemon=True)
