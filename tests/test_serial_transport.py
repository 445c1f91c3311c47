"""SerialTransport on a real pty: bytes both ways, unplug seen as TransportClosed, no threads."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.serial_port import MAX_WRITE_BACKLOG, SerialTransport
from drivers.transport import Transport, TransportClosed, TransportError


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 10.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await coro_fn()

    asyncio.run(bounded())


@dataclass
class Pty:
    master: int
    slave: int  # held by the test so the master never sees "no slave open" between opens
    path: str

    def close_master(self) -> None:
        """What the device side of an unplugged USB-serial adapter looks like."""
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


@pytest.fixture
def pty_pair() -> Iterator[Pty]:
    master, slave = os.openpty()
    os.set_blocking(master, False)
    pair = Pty(master, slave, os.ttyname(slave))
    yield pair
    pair.close_master()
    os.close(slave)


async def read_master(master: int, count: int) -> bytes:
    """Read exactly `count` bytes from the pty master, woken by the loop (bounded by run())."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    while len(got) < count:
        ready = loop.create_future()
        loop.add_reader(master, ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_reader(master)
        try:
            got += os.read(master, count - len(got))
        except BlockingIOError:
            continue
    return bytes(got)


def test_satisfies_the_transport_protocol(pty_pair: Pty) -> None:
    transport: Transport = SerialTransport(pty_pair.path)
    assert pty_pair.path in transport.description


def test_bytes_travel_both_ways_unchanged(pty_pair: Pty) -> None:
    every_byte = bytes(range(256)) * 4  # 0x00 delimiters, XON/XOFF, CR/LF: raw mode keeps them

    async def main() -> None:
        transport = SerialTransport(pty_pair.path)
        await transport.open()
        try:
            transport.write(every_byte)
            assert await read_master(pty_pair.master, len(every_byte)) == every_byte
            os.write(pty_pair.master, every_byte)
            got = bytearray()
            while len(got) < len(every_byte):
                got += await transport.read()
            assert bytes(got) == every_byte
        finally:
            await transport.close()

    run(main)


def test_missing_device_path_is_a_transport_error(tmp_path: Path) -> None:
    async def main() -> None:
        transport = SerialTransport(str(tmp_path / "ttyUSB-not-plugged"))
        with pytest.raises(TransportError, match="cannot open"):
            await transport.open()

    run(main)


def test_port_is_opened_exclusively(pty_pair: Pty) -> None:
    async def main() -> None:
        first, second = SerialTransport(pty_pair.path), SerialTransport(pty_pair.path)
        await first.open()
        try:
            with pytest.raises(TransportError):
                await second.open()
        finally:
            await first.close()
        await second.open()  # free again once the first one closed
        await second.close()

    run(main)


def test_unplug_wakes_a_pending_read_with_transport_closed(pty_pair: Pty) -> None:
    async def main() -> None:
        transport = SerialTransport(pty_pair.path)
        await transport.open()
        reading = asyncio.create_task(transport.read())
        await asyncio.sleep(0)  # let the read register with the loop
        assert not reading.done()
        pty_pair.close_master()
        with pytest.raises(TransportClosed):
            await reading
        with pytest.raises(TransportClosed):
            transport.write(b"x")  # later calls keep failing the same way
        await transport.close()

    run(main)


def test_write_after_unplug_is_transport_closed_and_fails_the_reader(pty_pair: Pty) -> None:
    async def main() -> None:
        transport = SerialTransport(pty_pair.path)
        await transport.open()
        pty_pair.close_master()
        with pytest.raises(TransportClosed):
            transport.write(b"hello")
        with pytest.raises(TransportClosed):
            await transport.read()
        await transport.close()

    run(main)


def test_close_wakes_a_pending_read_and_can_be_repeated_and_reopened(pty_pair: Pty) -> None:
    async def main() -> None:
        transport = SerialTransport(pty_pair.path)
        await transport.open()
        reading = asyncio.create_task(transport.read())
        await asyncio.sleep(0)
        await transport.close()
        await transport.close()
        with pytest.raises(TransportClosed):
            await reading
        await transport.open()  # the same object reconnects
        os.write(pty_pair.master, b"again")
        assert await transport.read() == b"again"
        await transport.close()

    run(main)


def test_large_writes_arrive_in_order_even_beyond_the_kernel_buffer(pty_pair: Pty) -> None:
    chunks = [bytes([i]) * 1000 for i in range(1, 49)]  # 48 kB without reading in between

    async def main() -> None:
        transport = SerialTransport(pty_pair.path)
        await transport.open()
        try:
            for chunk in chunks:
                transport.write(chunk)
            assert await read_master(pty_pair.master, 48_000) == b"".join(chunks)
        finally:
            await transport.close()

    run(main)


def test_a_peer_that_never_reads_fails_the_transport_instead_of_growing_memory(
    pty_pair: Pty,
) -> None:
    async def main() -> None:
        transport = SerialTransport(pty_pair.path)
        await transport.open()
        written = 0

        def fill() -> None:
            nonlocal written
            while written < 4 * 1024 * 1024:
                transport.write(b"\x55" * 4096)
                written += 4096

        with pytest.raises(TransportClosed, match="not reading"):
            fill()
        assert written >= MAX_WRITE_BACKLOG  # the kernel buffer plus our bounded backlog
        with pytest.raises(TransportClosed):
            await transport.read()
        await transport.close()

    run(main)
