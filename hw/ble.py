"""The simulator's BLE front: the firmware model behind the GATT pair of the profile, reached by the
agent's real bleak (BlueZ backend) through a stand-in for bluetoothd on a private D-Bus bus.

No radio is needed: `BleDispenser` owns the well-known name `org.bluez` on a bus of its own
(`PrivateBus`, a `dbus-daemon` on a socket in a temporary folder) and answers the calls bleak makes
to BlueZ (GetManagedObjects, discovery, Connect/Disconnect, StartNotify, WriteValue), with the
properties and signals bluetoothd would send. Behind the characteristic pair sits the same
`SimulatorRunner` as on a pty, on one end of a socket pair: writes go into the firmware's byte
stream; what the firmware sends is cut into notifications of ATT MTU - 3 bytes. So the agent side
runs bleak's production code path, and the dispenser side the production firmware model.

What a drop means here (SPEC, "GATT profile"): `drop_link()` is the radio link lost (supervision
timeout). The firmware keeps running with its link session and its unacknowledged frames; bytes it
sent as the link went are lost, and its retransmit timers stand still until a central has enabled
notifications again (`SimulatorRunner.hold_link`), so an outage of any length gives nothing up.
`set_in_range(False)` keeps the agent from finding or connecting to it.

Everything D-Bus runs on a thread of its own with its own event loop; other threads use the
methods below, which are thread-safe and bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from hw.dispenser import DispenserModel
from hw.wire import SimulatorRunner, TraceEvent
from protocol.gatt import (
    DEFAULT_ATT_MTU,
    SERVICE_UUID,
    TO_AGENT_UUID,
    TO_DISPENSER_UUID,
    piece_size,
    pieces,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

CALL_TIMEOUT_S = 5.0
# A real dispenser advertises every 20 ms .. 10 s; bluetoothd reports each one heard while a scan
# runs. Short, so a test's scan finds it at once; a scanner only hears adverts after it started.
ADVERTISING_INTERVAL_S = 0.05
BUS_START_TIMEOUT_S = 10.0
BLUEZ = "org.bluez"
ADAPTER_PATH = "/org/bluez/hci0"
ADAPTER = "org.bluez.Adapter1"
DEVICE = "org.bluez.Device1"
GATT_SERVICE = "org.bluez.GattService1"
GATT_CHAR = "org.bluez.GattCharacteristic1"
PROPS = "org.freedesktop.DBus.Properties"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class PrivateBus:
    """A `dbus-daemon` on a socket in a fresh temporary folder, ended by its own pid.

    Point bleak at it with `DBUS_SYSTEM_BUS_ADDRESS=<address>` (its BlueZ backend uses the system
    bus); nothing of the machine's own D-Bus or Bluetooth is touched."""

    def __init__(self) -> None:
        daemon = shutil.which("dbus-daemon")
        if daemon is None:
            raise RuntimeError("dbus-daemon not found (Debian package dbus-daemon)")
        self._dir = Path(tempfile.mkdtemp(prefix="ble-bus-"))
        config = self._dir / "bus.conf"
        config.write_text(_BUS_CONFIG.format(socket=self._dir / "socket"), encoding="utf-8")
        self._process = subprocess.Popen(
            [daemon, f"--config-file={config}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self._process.stdout is not None
        line = self._read_address(self._process.stdout.fileno())
        if not line.startswith("unix:"):
            self.stop()
            raise RuntimeError(f"dbus-daemon did not start: {line!r}")
        self.address = line

    def _read_address(self, fd: int) -> str:
        import select

        data = b""
        while not data.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], BUS_START_TIMEOUT_S)
            if not ready:
                return ""
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
        return data.decode().strip()

    def stop(self) -> None:
        if self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=5)
        if self._process.stdout is not None:
            self._process.stdout.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> PrivateBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True, slots=True)
class BleStats:
    connects: int = 0  # successful Connect calls
    disconnects: int = 0  # by the central (Disconnect)
    drops: int = 0  # by `drop_link()` (the radio)
    writes: int = 0  # WriteValue calls taken
    largest_write: int = 0
    refused_writes: int = 0  # too long, not "request", or while disconnected
    notifications: int = 0
    largest_notification: int = 0
    lost_bytes: int = 0  # firmware output while nobody was connected and notifying
    scans: int = 0  # StartDiscovery calls


class _SocketPort:
    """The firmware's end of a socket pair; `BleDispenser` holds the other end."""

    def __init__(self, on_peer: Callable[[socket.socket], None]) -> None:
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        self._sock = ours
        on_peer(peer)

    @property
    def fd(self) -> int:
        return self._sock.fileno()

    @property
    def name(self) -> str:
        return "ble-gatt"

    def close(self) -> None:
        self._sock.close()


class BleDispenser:
    """A dispenser that advertises the GATT profile, on `PrivateBus` `bus_address`.

    Start with `start()` (runs the firmware runner and the stand-in for bluetoothd), end with
    `stop()`. `runner` is the `SimulatorRunner` (use `call`, `wait_for`, `add_listener`, faults).
    """

    def __init__(
        self,
        model: DispenserModel,
        bus_address: str,
        *,
        address: str = "C0:FF:EE:00:00:01",
        name: str = "VKP-Dispenser",
        att_mtu: int = DEFAULT_ATT_MTU,
        trace: Callable[[TraceEvent], None] | None = None,
        defects: frozenset[str] = frozenset(),
    ) -> None:
        piece_size(att_mtu)  # validates
        self.address = address.upper()
        self.name = name
        self.att_mtu = att_mtu
        self._bus_address = bus_address
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stats = BleStats()
        self._peer: socket.socket | None = None
        self._connected = False
        self._notifying = False
        self._discovering = False
        self._in_range = True
        self._failing_writes = 0
        self._advert_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bus: Any = None  # dbus_fast.aio.MessageBus, imported lazily with the rest of it
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Future[None] | None = None
        self._thread_error: BaseException | None = None
        self.device_path = f"{ADAPTER_PATH}/dev_{self.address.replace(':', '_')}"
        self._service_path = f"{self.device_path}/service0010"
        self._in_path = f"{self._service_path}/char0011"
        self._out_path = f"{self._service_path}/char0014"
        self.runner = SimulatorRunner(
            model, lambda: _SocketPort(self._set_peer), trace=trace, defects=defects
        )
        self.runner.hold_link(True)  # nobody connected yet

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._thread_main, name="ble-front", daemon=True)
        self._thread.start()
        if not self._ready.wait(CALL_TIMEOUT_S) or self._thread_error is not None:
            self.stop()
            raise RuntimeError("BLE front did not start") from self._thread_error
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():

            def finish() -> None:
                if not stopped.done():
                    stopped.set_result(None)

            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(finish)
        if self._thread is not None:
            self._thread.join(CALL_TIMEOUT_S)
        with self._lock:
            peer, self._peer = self._peer, None
        if peer is not None:
            peer.close()

    def __enter__(self) -> BleDispenser:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- actions from other threads -----------------------------------------------------------

    def drop_link(self) -> None:
        """The radio link is lost (the central sees a disconnect); the firmware runs on."""
        self._on_loop(self._drop())

    def fail_next_writes(self, count: int) -> None:
        """Answer the next `count` writes with an ATT error (a firmware fault) without taking the
        bytes: the agent must treat the connection as gone (SPEC, "GATT profile", item 4)."""
        with self._lock:
            self._failing_writes = count

    def set_in_range(self, in_range: bool) -> None:
        """Out of range: not seen by a scan, Connect fails."""
        self._on_loop(self._set_in_range(in_range))

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    def stats(self) -> BleStats:
        with self._lock:
            return replace(self._stats)

    def wait_for_stats(self, predicate: Callable[[BleStats], bool], timeout: float = 5.0) -> None:
        """Block until `predicate(stats)` holds (checked after every change)."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self._stats), timeout):
                raise TimeoutError(f"BLE front stats not met within {timeout} s: {self._stats}")

    def _count(self, **more: int) -> None:
        """Add to counters (lock held by the caller) and wake `wait_for_stats`."""
        self._stats = replace(
            self._stats, **{name: getattr(self._stats, name) + n for name, n in more.items()}
        )
        self._changed.notify_all()

    # --- the loop thread ----------------------------------------------------------------------

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("BLE front not running")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(CALL_TIMEOUT_S)

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # the thread's end: kept for the caller, who re-raises it
            log.exception("BLE front failed")
            self._thread_error = exc
            self._ready.set()

    async def _main(self) -> None:
        from dbus_fast import BusType
        from dbus_fast.aio import MessageBus

        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        bus = MessageBus(bus_address=self._bus_address, bus_type=BusType.SYSTEM)
        await bus.connect()
        self._bus = bus
        bus.add_message_handler(self._on_message)
        await bus.request_name(BLUEZ)
        with self._lock:
            peer = self._peer
        if peer is not None:
            self._watch(peer)
        self._ready.set()
        try:
            await self._stopped
        finally:
            with self._lock:
                peer = self._peer
            if peer is not None:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(peer.fileno())
            bus.disconnect()

    def _set_peer(self, peer: socket.socket) -> None:
        """A new firmware port (the runner plugs it; in its thread): follow it."""
        with self._lock:
            old, self._peer = self._peer, peer
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._swap_peer, old, peer)
        elif old is not None:
            old.close()

    def _swap_peer(self, old: socket.socket | None, new: socket.socket) -> None:
        assert self._loop is not None
        if old is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(old.fileno())
            old.close()
        self._watch(new)

    def _watch(self, peer: socket.socket) -> None:
        assert self._loop is not None
        peer.setblocking(False)
        self._loop.add_reader(peer.fileno(), self._on_firmware_output, peer)

    def _on_firmware_output(self, peer: socket.socket) -> None:
        try:
            data = peer.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            assert self._loop is not None
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(peer.fileno())
            return
        with self._lock:
            live = self._connected and self._notifying
            if not live:
                self._count(lost_bytes=len(data))
                return
        for piece in pieces(data, piece_size(self.att_mtu)):
            self._notify(piece)

    def _notify(self, piece: bytes) -> None:
        from dbus_fast import Variant

        with self._lock:
            self._count(notifications=1)
            largest = max(self._stats.largest_notification, len(piece))
            self._stats = replace(self._stats, largest_notification=largest)
        self._signal_changed(self._in_path, GATT_CHAR, {"Value": Variant("ay", piece)})

    # --- D-Bus: objects and signals -----------------------------------------------------------

    def _adapter_props(self) -> dict[str, Any]:
        from dbus_fast import Variant

        return {
            "Address": Variant("s", "00:00:00:00:00:01"),
            "Name": Variant("s", "sim"),
            "Alias": Variant("s", "sim"),
            "Powered": Variant("b", True),
            "Discovering": Variant("b", self._discovering),
            "Roles": Variant("as", ["central", "peripheral"]),
        }

    def _device_props(self) -> dict[str, Any]:
        from dbus_fast import Variant

        return {
            "Address": Variant("s", self.address),
            "AddressType": Variant("s", "public"),
            "Name": Variant("s", self.name),
            "Alias": Variant("s", self.name),
            "Adapter": Variant("o", ADAPTER_PATH),
            "Connected": Variant("b", self._connected),
            "ServicesResolved": Variant("b", self._connected),
            "Paired": Variant("b", False),
            "Bonded": Variant("b", False),
            "Trusted": Variant("b", False),
            "Blocked": Variant("b", False),
            "LegacyPairing": Variant("b", False),
            "UUIDs": Variant("as", [SERVICE_UUID]),
        }

    def _gatt_objects(self) -> dict[str, dict[str, dict[str, Any]]]:
        from dbus_fast import Variant

        def char(uuid: str, flags: list[str], handle: int) -> dict[str, Any]:
            return {
                "UUID": Variant("s", uuid),
                "Service": Variant("o", self._service_path),
                "Flags": Variant("as", flags),
                "Notifying": Variant("b", False),
                "Value": Variant("ay", b""),
                "MTU": Variant("q", self.att_mtu),
                "Handle": Variant("q", handle),
            }

        return {
            self._service_path: {
                GATT_SERVICE: {
                    "UUID": Variant("s", SERVICE_UUID),
                    "Device": Variant("o", self.device_path),
                    "Primary": Variant("b", True),
                    "Handle": Variant("q", 0x10),
                }
            },
            self._in_path: {GATT_CHAR: char(TO_AGENT_UUID, ["notify"], 0x11)},
            self._out_path: {GATT_CHAR: char(TO_DISPENSER_UUID, ["write"], 0x14)},
        }

    def _managed_objects(self) -> dict[str, dict[str, dict[str, Any]]]:
        objects = {
            ADAPTER_PATH: {ADAPTER: self._adapter_props()},
            self.device_path: {DEVICE: self._device_props()},
        }
        if self._connected:
            objects.update(self._gatt_objects())
        return objects

    def _send(self, message: Any) -> None:
        if self._bus is not None and self._bus.connected:
            self._bus.send(message)

    def _signal_changed(self, path: str, interface: str, changed: dict[str, Any]) -> None:
        from dbus_fast import Message

        body = [interface, changed, []]
        self._send(Message.new_signal(path, PROPS, "PropertiesChanged", "sa{sv}as", body))

    def _set_connected(self, connected: bool) -> None:
        """Connect: GATT objects appear, then ServicesResolved; disconnect: the reverse."""
        from dbus_fast import Message, Variant

        with self._lock:
            if self._connected == connected:
                return
            self._connected = connected
            self._notifying = False
        # The firmware's frames wait for the next connection instead of being retried into
        # nothing; released once the central listens (StartNotify).
        self.runner.hold_link(True)
        if connected:
            self._signal_changed(self.device_path, DEVICE, {"Connected": Variant("b", True)})
            for path, interfaces in self._gatt_objects().items():
                self._send(
                    Message.new_signal(
                        "/", OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}", [path, interfaces]
                    )
                )
            assert self._loop is not None
            self._loop.call_soon(
                self._signal_changed,
                self.device_path,
                DEVICE,
                {"ServicesResolved": Variant("b", True)},
            )
            return
        self._signal_changed(
            self.device_path,
            DEVICE,
            {"ServicesResolved": Variant("b", False), "Connected": Variant("b", False)},
        )
        for path, interfaces in self._gatt_objects().items():
            self._send(
                Message.new_signal(
                    "/", OBJECT_MANAGER, "InterfacesRemoved", "oas", [path, list(interfaces)]
                )
            )

    def _advertise(self) -> None:
        """One advertisement heard by the scan; the next one is due while the scan runs."""
        from dbus_fast import Variant

        if not self._discovering:
            return
        if self._in_range and not self._connected:
            self._signal_changed(self.device_path, DEVICE, {"RSSI": Variant("n", -50)})
        assert self._loop is not None
        self._advert_timer = self._loop.call_later(ADVERTISING_INTERVAL_S, self._advertise)

    async def _drop(self) -> None:
        with self._lock:
            if not self._connected:
                return
            self._count(drops=1)
        self._set_connected(False)

    async def _set_in_range(self, in_range: bool) -> None:
        self._in_range = in_range
        if not in_range:
            await self._drop()

    # --- D-Bus: method calls --------------------------------------------------------------------

    def _on_message(self, msg: Any) -> Any:
        from dbus_fast import Message, MessageType

        if msg.message_type is not MessageType.METHOD_CALL:
            return None
        if msg.path != "/" and not str(msg.path).startswith("/org/bluez"):
            return None
        try:
            return self._call(msg)
        except _DBusRefusal as refusal:
            return Message.new_error(msg, refusal.name, refusal.text)

    def _call(self, msg: Any) -> Any:
        from dbus_fast import Message

        key = (msg.interface, msg.member)
        if key == (OBJECT_MANAGER, "GetManagedObjects"):
            return Message.new_method_return(msg, "a{oa{sa{sv}}}", [self._managed_objects()])
        if key == (PROPS, "GetAll"):
            props = self._managed_objects().get(msg.path, {}).get(msg.body[0])
            if props is None:
                raise _DBusRefusal("org.freedesktop.DBus.Error.UnknownObject", msg.path)
            return Message.new_method_return(msg, "a{sv}", [props])
        if msg.path == ADAPTER_PATH:
            return self._adapter_call(msg)
        if msg.path == self.device_path and msg.interface == DEVICE:
            return self._device_call(msg)
        if msg.path in (self._in_path, self._out_path) and msg.interface == GATT_CHAR:
            return self._char_call(msg)
        raise _DBusRefusal(
            "org.freedesktop.DBus.Error.UnknownMethod", f"{msg.interface}.{msg.member}"
        )

    def _adapter_call(self, msg: Any) -> Any:
        from dbus_fast import Message, Variant

        if msg.member == "SetDiscoveryFilter":
            return Message.new_method_return(msg)
        if msg.member == "StartDiscovery":
            if self._advert_timer is not None:
                self._advert_timer.cancel()
            self._discovering = True
            with self._lock:
                self._count(scans=1)
            self._signal_changed(ADAPTER_PATH, ADAPTER, {"Discovering": Variant("b", True)})
            assert self._loop is not None
            self._loop.call_soon(self._advertise)  # an advertisement heard after the reply
            return Message.new_method_return(msg)
        if msg.member == "StopDiscovery":
            self._discovering = False
            if self._advert_timer is not None:
                self._advert_timer.cancel()
                self._advert_timer = None
            self._signal_changed(ADAPTER_PATH, ADAPTER, {"Discovering": Variant("b", False)})
            return Message.new_method_return(msg)
        raise _DBusRefusal("org.freedesktop.DBus.Error.UnknownMethod", msg.member)

    def _device_call(self, msg: Any) -> Any:
        from dbus_fast import Message

        if msg.member == "Connect":
            if not self._in_range:
                raise _DBusRefusal("org.bluez.Error.Failed", "le-connection-timeout")
            with self._lock:
                self._count(connects=1)
            self._set_connected(True)
            return Message.new_method_return(msg)
        if msg.member == "Disconnect":
            if self._connected:
                with self._lock:
                    self._count(disconnects=1)
                self._set_connected(False)
            return Message.new_method_return(msg)
        raise _DBusRefusal("org.bluez.Error.NotSupported", msg.member)

    def _char_call(self, msg: Any) -> Any:
        from dbus_fast import Message, Variant

        if not self._connected:
            raise _DBusRefusal("org.bluez.Error.NotConnected", "not connected")
        if msg.path == self._in_path and msg.member in ("StartNotify", "StopNotify"):
            on = msg.member == "StartNotify"
            with self._lock:
                self._notifying = on
            self.runner.hold_link(not on)
            self._signal_changed(self._in_path, GATT_CHAR, {"Notifying": Variant("b", on)})
            return Message.new_method_return(msg)
        if msg.path == self._out_path and msg.member == "WriteValue":
            value, options = bytes(msg.body[0]), msg.body[1]
            kind = options.get("type")
            self._check_write(value, "request" if kind is None else kind.value)
            with self._lock:
                peer = self._peer
                self._count(writes=1)
                largest = max(self._stats.largest_write, len(value))
                self._stats = replace(self._stats, largest_write=largest)
            if peer is not None:
                with contextlib.suppress(BlockingIOError):
                    peer.sendall(value)
            # Answered once the firmware has the bytes: that is what "with response" promises.
            return Message.new_method_return(msg)
        raise _DBusRefusal("org.bluez.Error.NotPermitted", f"{msg.member} on {msg.path}")

    def _check_write(self, value: bytes, kind: str) -> None:
        limit = piece_size(self.att_mtu)
        why = None
        with self._lock:
            failing = self._failing_writes > 0
            self._failing_writes = max(0, self._failing_writes - 1)
        if failing:
            why = ("org.bluez.Error.Failed", "Unlikely Error (0x0e)")
        elif kind != "request":
            why = ("org.bluez.Error.NotSupported", f"write type {kind}: only write with response")
        elif len(value) > limit:
            why = ("org.bluez.Error.InvalidValueLength", f"{len(value)} > ATT MTU - 3 = {limit}")
        if why is not None:
            with self._lock:
                self._count(refused_writes=1)
            raise _DBusRefusal(*why)


class _DBusRefusal(Exception):  # noqa: N818 (an answer, not a failure of ours)
    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name
        self.text = text
