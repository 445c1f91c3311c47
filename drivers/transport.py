"""The byte-stream seam between the dispenser session and a physical link.

Serial (`serial_port`) and BLE (`ble_transport`) implement the same four calls. The session only
ever sees `TransportError` / `TransportClosed`, whatever library sits underneath.
"""

from __future__ import annotations

from typing import Protocol


class TransportError(Exception):
    """The transport could not be opened or used (device path missing, permission, busy)."""


class TransportClosed(TransportError):  # noqa: N818 (name fixed by the driver API)
    """The link is gone (device unplugged, peer hung up, closed by us): reopen to continue."""


class Transport(Protocol):
    """An ordered, unframed byte stream to the dispenser.

    Contract the session relies on:
    - `read` and `write` are used only between a successful `open` and `close`.
    - Once `write` has raised `TransportClosed`, a pending or later `read` raises it too, so the
      reading task notices a failure first seen by a writer.
    - `close` is idempotent and wakes a pending `read` with `TransportClosed`.
    """

    description: str

    async def open(self) -> None:
        """Open the link. Raises TransportError."""
        ...

    async def read(self) -> bytes:
        """Wait for at least one byte. Raises TransportClosed."""
        ...

    def write(self, data: bytes) -> None:
        """Queue bytes for the wire, in order, without blocking. Raises TransportClosed."""
        ...

    async def close(self) -> None: ...
