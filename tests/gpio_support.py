"""Test helpers for the unit's GPIO panel: gpiozero's MockFactory and a virtual buzzer clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gpiozero.pins.mock import MockFactory, MockPin

WAIT_S = 10.0


class VirtualSleep:
    """The buzzer's time on a virtual clock: each sleep advances it at once and is recorded; a
    sleep that would pass `horizon` parks (sets `parked`) until cancelled."""

    def __init__(self, horizon: float) -> None:
        self.t = 0.0
        self.horizon = horizon
        self.calls: list[float] = []
        self.parked = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        if self.t + seconds > self.horizon:
            self.parked.set()
            try:
                await asyncio.Event().wait()
            finally:
                self.parked.clear()
        self.t += seconds
        self.calls.append(seconds)
        await asyncio.sleep(0)


class FakeMonotonic:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def states(factory: MockFactory, pin: int) -> list[bool]:
    """The pin's history of levels, its initial one first."""
    mock = factory.pin(pin)
    assert isinstance(mock, MockPin)
    return [bool(s.state) for s in mock.states]


async def until(condition: Callable[[], bool], what: str, within_s: float = WAIT_S) -> None:
    """Wait (bounded) for a condition another task or thread makes true."""
    try:
        async with asyncio.timeout(within_s):
            while not condition():  # noqa: ASYNC110 - pins and paho change it from other threads
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
