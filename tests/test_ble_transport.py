"""The agent's BLE transport (bleak, BlueZ backend) against the simulator's BLE front.

bleak runs its production BlueZ code path over D-Bus; bluetoothd is replaced by `hw.ble`'s
stand-in on a private bus, with the firmware model behind the GATT pair. What is checked: finding
the dispenser (name, address, service UUID), frames cut to ATT MTU - 3 and reassembled, link
reports identical in shape to the serial transport's, reconnect after a drop through the session's
one retry loop, and a serial unit never loading bleak.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from ble_support import ble_bus, next_address, private_bus

from drivers.ble_transport import BleTarget, BleTransport
from drivers.retry import RetryPolicy
from drivers.session import DispenserSession, LinkLost, SessionDown, SessionUp
from drivers.transport import TransportClosed, TransportError
from hw.ble import BleDispenser, PrivateBus
from hw.dispenser import DispenserIdentity, DispenserModel, make_roll
from protocol.framing import MAX_PAYLOAD
from protocol.gatt import PREFERRED_ATT_MTU, piece_size, pieces
from protocol.messages import (
    CommandResult,
    Dispense,
    DosePresented,
    GetStatus,
    Message,
    ResultCode,
    Status,
)

__all__ = ["ble_bus", "private_bus"]

T0 = 1_795_000_000
WAIT_S = 15.0
FAST = RetryPolicy(initial_delay_s=0.01, max_delay_s=0.2, attempt_timeout_s=5.0)
NAME = "VKP-Dispenser"


@dataclass
class Received:
    messages: list[Message] = field(default_factory=list)
    links: list[SessionUp | SessionDown] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_message(self, message: Message) -> None:
        self.messages.append(message)
        self.changed.set()

    def on_link(self, report: SessionUp | SessionDown) -> None:
        self.links.append(report)
        self.changed.set()

    async def until(self, predicate: Callable[[Received], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()

    def ups(self) -> int:
        return sum(isinstance(x, SessionUp) for x in self.links)


@asynccontextmanager
async def rig(
    bus: PrivateBus, target: Callable[[str], BleTarget], *, att_mtu: int = 23, in_range: bool = True
) -> AsyncIterator[tuple[BleDispenser, DispenserSession, Received]]:
    address = next_address()
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: T0)
    front = BleDispenser(model, bus.address, address=address, name=NAME, att_mtu=att_mtu)
    await asyncio.to_thread(front.start)
    if not in_range:
        await asyncio.to_thread(front.set_in_range, False)
    got = Received()
    chosen = target(address)
    session = DispenserSession(
        lambda: BleTransport(chosen), on_message=got.on_message, on_link=got.on_link, backoff=FAST
    )
    task = asyncio.create_task(session.run())
    try:
        if in_range:
            await got.until(lambda r: r.ups() == 1)
        yield front, session, got
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.to_thread(front.stop)


def run(scenario: Callable[[], object]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(60):
            await scenario()  # type: ignore[misc]

    asyncio.run(bounded())


def by_name(_address: str) -> BleTarget:
    return BleTarget(name=NAME, scan_timeout_s=2.0, connect_timeout_s=2.0)


def test_pieces_cut_the_stream_at_att_mtu_minus_3() -> None:
    assert piece_size(23) == 20
    assert piece_size(247) == 244
    with pytest.raises(ValueError, match="below the minimum"):
        piece_size(22)
    data = bytes(range(45))
    assert pieces(data, 20) == [data[:20], data[20:40], data[40:]]
    assert pieces(b"", 20) == []


def test_found_by_name_frames_cut_to_the_minimum_mtu_and_reassembled(ble_bus: PrivateBus) -> None:
    async def scenario() -> None:
        async with rig(ble_bus, by_name) as (front, session, got):
            [up] = got.links
            assert isinstance(up, SessionUp)
            # Capabilities is 47 bytes on the wire: it came in three notifications.
            assert (up.capabilities.model, up.capabilities.serial_number) == ("SIM-100", "SIM0001")
            assert isinstance(await session.request(GetStatus(0)), Status)
            stats = front.stats()
            assert stats.largest_write == 20
            assert stats.largest_notification == 20
            assert stats.refused_writes == 0
            assert stats.lost_bytes == 0

    run(scenario)


def test_a_larger_mtu_carries_a_whole_frame_per_write(ble_bus: PrivateBus) -> None:
    async def scenario() -> None:
        async with rig(ble_bus, by_name, att_mtu=185) as (front, session, _got):
            assert isinstance(await session.request(GetStatus(0)), Status)
            stats = front.stats()
            assert 20 < stats.largest_write <= 182
            assert 20 < stats.largest_notification <= 182
            assert stats.refused_writes == 0

    run(scenario)


def test_found_by_fixed_address(ble_bus: PrivateBus) -> None:
    async def scenario() -> None:
        def by_address(address: str) -> BleTarget:
            return BleTarget(address=address.lower(), scan_timeout_s=2.0, connect_timeout_s=2.0)

        async with rig(ble_bus, by_address) as (_front, session, _got):
            assert isinstance(await session.request(GetStatus(0)), Status)

    run(scenario)


def test_found_by_service_uuid_alone_and_a_dispense_round_trip(ble_bus: PrivateBus) -> None:
    async def scenario() -> None:
        def by_service(_address: str) -> BleTarget:
            return BleTarget(scan_timeout_s=2.0, connect_timeout_s=2.0)

        async with rig(ble_bus, by_service) as (front, session, got):
            front.runner.call(lambda m: m.insert_roll(make_roll("R1", "p-1", T0, count=3)))
            reply = await session.request(Dispense(0, 7, 0))
            assert reply == CommandResult(reply.req_id, ResultCode.OK, "")
            await got.until(lambda r: any(isinstance(m, DosePresented) for m in r.messages))
            assert front.runner.snapshot().dispensed == ((7, 0),)

    run(scenario)


def test_a_drop_is_reported_down_once_and_up_again_as_over_serial(ble_bus: PrivateBus) -> None:
    """The same reports the serial transport gives for an unplug: SessionUp, SessionDown (transport
    closed), SessionUp with the capabilities; the firmware ran on (no reboot, same link session)."""

    async def scenario() -> None:
        async with rig(ble_bus, by_name) as (front, session, got):
            firmware_session = front.runner.stats().session
            await asyncio.to_thread(front.drop_link)
            await got.until(lambda r: r.ups() == 2)
            assert [type(x) for x in got.links] == [SessionUp, SessionDown, SessionUp]
            down = got.links[1]
            assert isinstance(down, SessionDown)
            assert down.reason.startswith("transport closed:")
            assert "dispenser disconnected" in down.reason
            assert isinstance(await session.request(GetStatus(0)), Status)
            assert front.runner.stats().session == firmware_session
            assert front.stats().drops == 1
            assert front.stats().connects == 2

    run(scenario)


def test_not_in_range_is_one_outage_until_it_is_found(ble_bus: PrivateBus) -> None:
    async def scenario() -> None:
        def quick(_address: str) -> BleTarget:
            return BleTarget(name=NAME, scan_timeout_s=1.0, connect_timeout_s=1.0)

        async with rig(ble_bus, quick, in_range=False) as (front, session, got):
            await asyncio.to_thread(front.wait_for_stats, lambda s: s.scans >= 3, WAIT_S)
            assert session.stats.connect_failures >= 2
            assert [type(x) for x in got.links] == [SessionDown]  # one outage, not one per attempt
            down = got.links[0]
            assert isinstance(down, SessionDown)
            assert down.reason == "connect failed: no dispenser VKP-Dispenser seen within 1 s"
            await asyncio.to_thread(front.set_in_range, True)
            await got.until(lambda r: r.ups() == 1)
            assert [type(x) for x in got.links] == [SessionDown, SessionUp]

    run(scenario)


def test_a_refused_write_ends_the_connection_and_the_session_reconnects(
    ble_bus: PrivateBus,
) -> None:
    async def scenario() -> None:
        async with rig(ble_bus, by_name) as (front, session, got):
            front.fail_next_writes(1)
            with pytest.raises(LinkLost):
                await session.request(GetStatus(0))
            await got.until(lambda r: r.ups() == 2)
            down = got.links[1]
            assert isinstance(down, SessionDown)
            assert "write failed" in down.reason
            assert isinstance(await session.request(GetStatus(0)), Status)
            assert front.stats().refused_writes == 1

    run(scenario)


def test_an_unopened_or_closed_transport_refuses_reads_and_writes() -> None:
    async def scenario() -> None:
        transport = BleTransport(BleTarget(name=NAME))
        with pytest.raises(TransportClosed):
            await transport.read()
        with pytest.raises(TransportClosed):
            transport.write(b"\x00")
        await transport.close()
        await transport.close()  # idempotent
        with pytest.raises(TransportClosed):
            await transport.read()

    run(scenario)


def test_without_bleak_open_is_a_transport_error_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "bleak", None)  # what a broken install looks like

    async def scenario() -> None:
        with pytest.raises(TransportError, match="no bleak"):
            await BleTransport(BleTarget(name=NAME)).open()

    run(scenario)


def test_a_ble_link_is_described_for_the_technician() -> None:
    from agent.config import BleLink, SerialLink, parse_config

    def link(section: dict[str, object]) -> SerialLink | BleLink:
        return parse_config({"unit_id": "abc", "dispenser": section}).dispenser

    fixed = link({"transport": "ble", "address": "c0:ff:ee:00:00:09"})
    assert fixed.describe() == "BLE C0:FF:EE:00:00:09"
    assert fixed.where == "ble:C0:FF:EE:00:00:09"
    named = link({"transport": "ble", "name": "VKP-7"})
    assert named.describe() == (
        "BLE, the first dispenser named VKP-7 advertising service "
        "7d1e0001-4c2a-4b8e-9a51-3f0c6d2e8b10"
    )
    serial = link({"device": "/dev/ttyUSB0"})
    assert serial.describe() == "serial /dev/ttyUSB0 at 115200"


def test_a_serial_unit_never_imports_bleak() -> None:
    code = (
        "import sys\n"
        "from agent.config import parse_config\n"
        "from agent.runtime import transport_factory\n"
        "import drivers.session\n"
        "config = parse_config({'unit_id': 'abc', 'dispenser': {'device': '/dev/null'}})\n"
        "transport = transport_factory(config.dispenser)()\n"
        "print(type(transport).__name__, sorted(m for m in sys.modules\n"
        "      if m.split('.')[0] in ('bleak', 'dbus_fast')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "SerialTransport []"


def test_a_ble_config_builds_a_ble_transport_without_connecting() -> None:
    from agent.config import parse_config
    from agent.runtime import transport_factory

    config = parse_config(
        {
            "unit_id": "abc",
            "dispenser": {"transport": "ble", "address": "c0:ff:ee:00:00:09", "adapter": "hci1"},
        }
    )
    transport = transport_factory(config.dispenser)()
    assert isinstance(transport, BleTransport)
    assert transport.target.address == "C0:FF:EE:00:00:09"
    assert transport.target.adapter == "hci1"
    assert transport.description == "ble:C0:FF:EE:00:00:09"


def test_cli_ble_prints_its_bus_and_serves_an_agent_and_exits_0_on_sigterm() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "hw.sim", "ble", "--mtu", "64", "--address", "C0:FF:EE:AA:00:01"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        try:
            bus_line, device_line = proc.stdout.readline(), proc.stdout.readline()
            assert bus_line.startswith("BUS unix:path=")
            assert device_line == "DEVICE C0:FF:EE:AA:00:01\n"

            async def scenario() -> None:
                got = Received()
                target = BleTarget(address="C0:FF:EE:AA:00:01", scan_timeout_s=2.0)
                session = DispenserSession(
                    lambda: BleTransport(target),
                    on_message=got.on_message,
                    on_link=got.on_link,
                    backoff=FAST,
                )
                task = asyncio.create_task(session.run())
                try:
                    await got.until(lambda r: r.ups() == 1)
                    assert isinstance(await session.request(GetStatus(0)), Status)
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus_line.split(" ", 1)[1].strip())
                run(scenario)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
            out = proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert proc.returncode == 0
    assert "IN  DATA" in out
    assert "Hello" in out


def test_the_preferred_mtu_carries_the_largest_frame_with_its_delimiters_in_one_piece() -> None:
    largest_on_the_wire = 7 + MAX_PAYLOAD + 2 + 1 + 2  # header, payload, CRC; COBS; delimiters
    assert piece_size(PREFERRED_ATT_MTU) >= largest_on_the_wire
