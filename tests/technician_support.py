"""Helpers for the technician tests: the technician button on gpiozero's MockFactory."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from gpiozero.pins.mock import MockFactory

from agent.technician.presence import TECHNICIAN_BUTTON_PIN, LongPress

HOLD_S = 0.3  # the real long press is 5 s; the tests hold the mock button a little longer than this


def watched_for(pin: Any, seconds: float) -> None:
    """Sleep `seconds`, or less once the reset has let go of the button: a join on the presser
    then ends when the reset has its answer, not at the end of a hold."""
    end = time.monotonic() + seconds
    while pin.when_changed is not None and time.monotonic() < end:
        time.sleep(0.02)


def pressed_button() -> tuple[LongPress, threading.Thread]:
    """A LongPress on a mock pin, and a thread that presses and holds it once it is watched."""
    factory: Any = MockFactory()
    presence = LongPress(hold_s=HOLD_S, pin_factory=factory)

    def press() -> None:
        pin = factory.pin(TECHNICIAN_BUTTON_PIN)
        deadline = time.monotonic() + 60.0  # generous: the reset may start slowly under load
        # wait until the reset watches the button (gpiozero's Button handles the pin's changes)
        while pin.when_changed is None and time.monotonic() < deadline:
            time.sleep(0.02)
        # Press and hold until the reset lets go of the button (it has its answer). Pressing
        # again covers a press that lands while the Button is still being built (its hold
        # thread or `when_held` not yet there): a person would press again too.
        while pin.when_changed is not None and time.monotonic() < deadline:
            with contextlib.suppress(AttributeError):  # gpiozero: no hold thread yet
                pin.drive_low()
            watched_for(pin, HOLD_S * 4)
            with contextlib.suppress(AttributeError):
                pin.drive_high()
            watched_for(pin, HOLD_S)

    return presence, threading.Thread(target=press, daemon=True)
