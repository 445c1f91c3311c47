"""`Transport` over Bluetooth Low Energy with bleak (the GATT profile in protocol/SPEC.md).

One `open` = find the dispenser (fixed address, or by advertised name and/or service UUID), connect,
check the characteristic pair, enable notifications. Received notifications are handed to `read` as
a byte stream: frames are 0x00-delimited, so the session's frame decoder reassembles them whatever
the pieces (no length header, no per-piece state here). `write` queues bytes; one writer task sends
them in pieces of at most ATT MTU - 3 bytes, one write-with-response at a time, so pieces arrive in
order and a failed write is seen (write-without-response could be dropped by a full buffer).

No retry in here: a failed scan or connect raises `TransportError` and the session's reconnect loop
(drivers/retry.py) decides when to try again, the same loop as for serial. A drop (supervision
timeout, dispenser out of range or restarted) becomes `TransportClosed` on the pending read.

bleak is imported in `open` only: a unit on a serial link never loads it (nor D-Bus).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drivers.transport import TransportClosed, TransportError
from protocol.gatt import (
    DEFAULT_ATT_MTU,
    SERVICE_UUID,
    TO_AGENT_UUID,
    TO_DISPENSER_UUID,
    piece_size,
)

if TYPE_CHECKING:
    from bleak import BleakClient
    from bleak.backends.characteristic import BleakGATTCharacteristic
    from bleak.backends.device import BLEDevice

log = logging.getLogger(__name__)

# As for serial: this much unread or unwritten data means the other side stopped taking it.
MAX_BACKLOG = 64 * 1024
DISCONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class BleTarget:
    """Which dispenser to connect to, and how long one attempt may look for it."""

    address: str | None = None  # fixed address (BlueZ: MAC): no name/UUID matching
    name: str | None = None  # advertised local name, matched exactly
    service_uuid: str = SERVICE_UUID
    adapter: str | None = None  # e.g. "hci0"; None: the system's default adapter
    scan_timeout_s: float = 4.0
    connect_timeout_s: float = 5.0

    @property
    def label(self) -> str:
        return self.address or self.name or f"service {self.service_uuid}"


class BleTransport:
    def __init__(self, target: BleTarget) -> None:
        self.target = target
        self.description = f"ble:{target.label}"
        self._client: BleakClient | None = None
        self._write_char: BleakGATTCharacteristic | None = None
        self._piece = piece_size(DEFAULT_ATT_MTU)
        self._inbox = bytearray()
        self._reader: asyncio.Future[bytes] | None = None
        self._outbox = bytearray()
        self._outbox_ready = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._failure: TransportClosed | None = None
        self._opened = False

    @property
    def piece_size(self) -> int:
        """Bytes per write on the current connection (ATT MTU - 3)."""
        return self._piece

    async def open(self) -> None:
        if self._opened:
            raise TransportError(f"{self.description} is already open")
        try:
            from bleak import BleakClient
            from bleak.exc import BleakError
        except ImportError as exc:  # a broken install: say so on every attempt, never crash
            raise TransportError(f"cannot open {self.description}: no bleak ({exc})") from exc

        try:
            device = await self._find()
            client = BleakClient(
                device,
                disconnected_callback=self._on_disconnected,
                services=[self.target.service_uuid],
                timeout=self.target.connect_timeout_s,
                bluez={} if self.target.adapter is None else {"adapter": self.target.adapter},
            )
            self._client = client
            await client.connect()
            notify_char = self._characteristic(client, TO_AGENT_UUID, ("notify",))
            self._write_char = self._characteristic(client, TO_DISPENSER_UUID, ("write",))
            # bleak reports the link's ATT MTU - 3 here on every backend (BlueZ: the "MTU"
            # property of the characteristic, after the exchange); never below the minimum.
            self._piece = max(
                piece_size(DEFAULT_ATT_MTU), self._write_char.max_write_without_response_size
            )
            self._failure = None
            self._opened = True
            await client.start_notify(notify_char, self._on_notify)
        except (BleakError, OSError, TimeoutError) as exc:
            await self._abandon()
            what = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            raise TransportError(f"cannot open {self.description}: {what}") from exc
        except BaseException:  # anything else (a cancel too): the client is let go; re-raised
            await self._abandon()
            raise
        self._writer = asyncio.create_task(self._write_loop(), name="ble-writer")
        log.info("opened %s (%d bytes per write)", self.description, self._piece)

    async def read(self) -> bytes:
        self._require_open()
        if self._reader is not None:
            raise RuntimeError("only one task may read a transport at a time")
        if self._inbox:
            data = bytes(self._inbox)
            self._inbox.clear()
            return data
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._reader = future
        try:
            return await future
        finally:
            self._reader = None

    def write(self, data: bytes) -> None:
        self._require_open()
        if len(self._outbox) + len(data) > MAX_BACKLOG:
            raise self._fail(f"dispenser is not taking writes: {MAX_BACKLOG} bytes unwritten")
        self._outbox += data
        self._outbox_ready.set()

    async def close(self) -> None:
        self._shutdown(TransportClosed(f"{self.description} closed"))
        await self._abandon()

    # --- internals ---------------------------------------------------------------------------

    async def _find(self) -> BLEDevice:
        from bleak import BleakScanner
        from bleak.backends.device import BLEDevice as _BLEDevice
        from bleak.backends.scanner import AdvertisementData

        target = self.target
        kwargs: dict[str, Any] = {"timeout": target.scan_timeout_s}
        if target.adapter is not None:
            kwargs["bluez"] = {"adapter": target.adapter}
        device: _BLEDevice | None
        if target.address is not None:
            device = await BleakScanner.find_device_by_address(target.address, **kwargs)
        else:

            def wanted(found: _BLEDevice, adv: AdvertisementData) -> bool:
                uuids = {uuid.lower() for uuid in adv.service_uuids}
                if target.service_uuid.lower() not in uuids:
                    return False
                return target.name is None or target.name in (adv.local_name, found.name)

            device = await BleakScanner.find_device_by_filter(
                wanted, service_uuids=[target.service_uuid], **kwargs
            )
        if device is None:
            raise TransportError(
                f"no dispenser {target.label} seen within {target.scan_timeout_s:g} s"
            )
        return device

    @staticmethod
    def _characteristic(
        client: BleakClient, uuid: str, needs: tuple[str, ...]
    ) -> BleakGATTCharacteristic:
        from bleak.exc import BleakError

        char = client.services.get_characteristic(uuid)
        if char is None:
            raise BleakError(f"the dispenser has no characteristic {uuid}")
        missing = [prop for prop in needs if prop not in char.properties]
        if missing:
            raise BleakError(f"characteristic {uuid} lacks {', '.join(missing)}")
        return char

    def _on_disconnected(self, _client: BleakClient) -> None:
        self._fail("dispenser disconnected")

    def _on_notify(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        if self._failure is not None or not data:
            return
        reader = self._reader
        if reader is not None and not reader.done() and not self._inbox:
            reader.set_result(bytes(data))
            return
        if len(self._inbox) + len(data) > MAX_BACKLOG:
            self._fail(f"agent is not reading: {MAX_BACKLOG} bytes unread")
            return
        self._inbox += data

    async def _write_loop(self) -> None:
        from bleak.exc import BleakError

        while self._failure is None:
            await self._outbox_ready.wait()
            if not self._outbox:
                self._outbox_ready.clear()
                continue
            piece = bytes(self._outbox[: self._piece])
            client, char = self._client, self._write_char
            if client is None or char is None:
                return
            try:
                await client.write_gatt_char(char, piece, response=True)
            except (BleakError, OSError, TimeoutError) as exc:
                self._fail(f"write failed: {exc or type(exc).__name__}")
                return
            del self._outbox[: len(piece)]

    def _require_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if not self._opened:
            raise TransportClosed(f"{self.description} is not open")

    def _fail(self, why: str) -> TransportClosed:
        failure = TransportClosed(f"{self.description}: {why}")
        level = logging.DEBUG if self._failure or not self._opened else logging.WARNING
        log.log(level, "%s", failure)
        self._shutdown(failure)
        return failure

    def _shutdown(self, failure: TransportClosed) -> None:
        """Wake a pending read with `failure` and stop writing. Safe to call twice."""
        if self._failure is None:
            self._failure = failure
        self._inbox.clear()
        self._outbox.clear()
        self._outbox_ready.set()  # the writer sees the failure and ends
        if self._reader is not None and not self._reader.done():
            self._reader.set_exception(self._failure)

    async def _abandon(self) -> None:
        """Stop the writer and disconnect; never raises (a dead link is the expected case)."""
        from bleak.exc import BleakError

        writer, self._writer = self._writer, None
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
            await asyncio.wait({writer})
        client, self._client = self._client, None
        self._write_char = None
        if self._opened:
            log.info("closed %s", self.description)
        self._opened = False
        if client is None:
            return
        with contextlib.suppress(BleakError, OSError, TimeoutError):
            async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
                await client.disconnect()
