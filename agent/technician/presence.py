"""The technician's presence at the unit: a long press of the technician button.

The button is wired to GPIO 27 (BCM) to ground with the internal pull-up (the agreed default
wiring; the GPIO pin map may name another pin). A long press is the button held 5 s: a remote
user cannot do it, nor a patient by brushing against it. Tests use gpiozero's MockFactory.

A `reset_unit` command signed by the response centre is the other way to show presence; its
signature is checked as every signed command's (agent/commands.py), in `SignedReset`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from drivers import gpio_panel

if TYPE_CHECKING:
    from agent.config import AgentConfig

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
    """Presence shown by a `reset_unit` command signed by the response centre for this unit: the
    same checks as every signed command (agent/commands.py `authenticate`: a trusted key, this
    unit, not issued ahead of the clock nor before the binding or the last reset) and not
    expired. The reset then raises the command floor, so the same file never resets again."""

    def __init__(self, path: str, config: AgentConfig | None = None) -> None:
        self.path = path
        self.config = config

    def describe(self) -> str:
        return f"a reset command signed by the response centre ({self.path})"

    def confirm(self, timeout_s: float) -> tuple[bool, str]:
        del timeout_s
        from agent.clock import SystemClock
        from agent.commands import Refused, authenticate, trusted_keys
        from agent.contract.commands import CommandInvalid, ResetUnitCommand, parse_command
        from agent.store.db import Store
        from agent.store.errors import StoreError

        if self.config is None:
            return False, "no config to check the signed reset against"
        config = self.config
        try:
            payload = Path(self.path).read_bytes()
            request = parse_command(payload)
        except OSError as exc:
            return False, f"signed reset {self.path} cannot be read: {exc.strerror}"
        except CommandInvalid as exc:
            return False, f"signed reset {self.path} is not a command: {exc.message}"
        if not isinstance(request.command, ResetUnitCommand):
            return False, f"{self.path} is a {request.command.name} command, not reset_unit"
        now = SystemClock().now()
        try:
            with Store.open(config.db_path, create=False) as store:
                trusted = trusted_keys(config.centre_keys, store)
                floor = store.command_floor()
        except (StoreError, OSError) as exc:
            return False, f"the unit's store cannot be read to check the signature: {exc}"
        try:
            authenticate(
                request,
                unit_id=config.unit_id,
                trusted=trusted,
                now_utc=now.utc,
                trust=now.trust,
                floor=floor,
            )
        except Refused as refusal:
            return False, f"signed reset refused ({refusal.code}): {refusal.message}"
        if request.is_expired(now.utc):
            return False, f"signed reset expired at {request.expires_at.isoformat()}"
        assert request.signature is not None  # authenticate refuses an unsigned reset_unit
        return True, (
            f"reset_unit {request.command_id} for {config.unit_id}, signed by centre key "
            f"{request.signature.key_id} (issued by {request.issued_by})"
        )
