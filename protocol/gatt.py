"""The GATT profile that carries protocol v1 over Bluetooth Low Energy (SPEC, "GATT profile").

One primary service with a characteristic pair; the protocol's byte stream (0x00-delimited COBS
frames) flows through it unchanged, cut into pieces that fit the negotiated ATT MTU. Shared by the
agent's BLE transport (`drivers/ble_transport.py`) and the simulator's BLE front (`hw/ble.py`).
"""

from __future__ import annotations

# 128-bit UUIDs of the profile (a private base; never a Bluetooth SIG 16-bit one).
SERVICE_UUID = "7d1e0001-4c2a-4b8e-9a51-3f0c6d2e8b10"
# dispenser -> agent: notify (the central enables notifications through the CCCD)
TO_AGENT_UUID = "7d1e0002-4c2a-4b8e-9a51-3f0c6d2e8b10"
# agent -> dispenser: write with response (a write is answered once the firmware took the bytes)
TO_DISPENSER_UUID = "7d1e0003-4c2a-4b8e-9a51-3f0c6d2e8b10"

DEFAULT_ATT_MTU = 23  # Bluetooth Core: every link starts here until an MTU exchange
ATT_HEADER = 3  # opcode + handle in a Write Request / Handle Value Notification
PREFERRED_ATT_MTU = 255  # what the firmware SHOULD offer: a whole frame (252 bytes) per piece


def piece_size(att_mtu: int) -> int:
    """Bytes of the stream one write or notification carries at `att_mtu`."""
    if att_mtu < DEFAULT_ATT_MTU:
        raise ValueError(f"ATT MTU {att_mtu} is below the minimum {DEFAULT_ATT_MTU}")
    return att_mtu - ATT_HEADER


def pieces(data: bytes, size: int) -> list[bytes]:
    """`data` cut into consecutive pieces of at most `size` bytes (order is the stream order;
    a piece may end inside a frame or hold the end of one frame and the start of the next)."""
    if size < 1:
        raise ValueError("piece size must be >= 1")
    return [data[i : i + size] for i in range(0, len(data), size)]
