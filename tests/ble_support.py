"""BLE test parts: a private D-Bus bus with the simulator's BLE front on it (hw/ble.py).

The agent side is bleak's real BlueZ backend: `DBUS_SYSTEM_BUS_ADDRESS` points it at the private
bus, where `BleDispenser` answers as bluetoothd would. No radio, no system bus, no root needed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from hw.ble import PrivateBus

_addresses = itertools.count(1)


def next_address() -> str:
    """A fresh device address per dispenser, so no test sees another's cached device."""
    n = next(_addresses)
    return f"C0:FF:EE:00:{n >> 8:02X}:{n & 0xFF:02X}"


@pytest.fixture(scope="module")
def private_bus() -> Iterator[PrivateBus]:
    bus = PrivateBus()
    try:
        yield bus
    finally:
        bus.stop()


@pytest.fixture
def ble_bus(private_bus: PrivateBus, monkeypatch: pytest.MonkeyPatch) -> PrivateBus:
    """The private bus, with this process (and agent processes it starts) pointed at it."""
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", private_bus.address)
    return private_bus
