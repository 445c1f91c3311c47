"""`Transport` over a serial port (USB-serial adapter, UART, or a pty in tests).

pyserial opens and configures the port (raw mode, baud rate, exclusive lock); after that the file
descriptor is driven by the asyncio loop directly: `add_reader` wakes us only when bytes arrive, and
writes go straight to the non-blocking fd, spilling into a bounded buffer flushed by `add_writer`
when the kernel buffer is full. No threads, no polling.

An unplugged adapter or a closed pty master shows up as EIO, or as an empty read on a readable fd:
both become `TransportClosed`.
"""

from __future__ import annotations

import asyncio
import logging
import os

import serial

from drivers.transport import TransportClosed, TransportError

log = logging.getLogger(__name__)

READ_CHUNK = 4096
# A dispenser frame is < 250 bytes; this much unwritten data means the peer stopped reading.
MAX_WRITE_BACKLOG = 64 * 1024


class SerialTransport:
    def __init__(self, path: str, baudrate: int = 115200) -> None:
        self.path = path
        self.baudrate = baudrate
        self.description = f"serial:{path}@{baudrate}"
        self._port: serial.SerialBase | None = None
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: asyncio.Future[bytes] | None = None
        self._backlog = bytearray()
        self._failure: TransportClosed | None = None

    async def open(self) -> None:
        if self._port is not None:
            raise TransportError(f"{self.description} is already open")
        try:
            # serial_for_url accepts plain device paths too; exclusive=True takes a flock so a
            # second agent (or a stray `screen`) cannot interleave bytes on the same port.
            port = serial.serial_for_url(
                self.path, baudrate=self.baudrate, timeout=0, exclusive=True
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TransportError(f"cannot open {self.description}: {exc}") from exc
        try:
            fd = port.fileno()
        except OSError as exc:  # loop://, rfc2217:// and friends have no pollable fd
            port.close()
            raise TransportError(f"{self.description} has no file descriptor: {exc}") from exc
        os.set_blocking(fd, False)
        self._port, self._fd, self._loop = port, fd, asyncio.get_running_loop()
        self._backlog.clear()
        self._failure = None
        log.info("opened %s", self.description)

    async def read(self) -> bytes:
        fd, loop = self._require_open()
        if self._reader is not None:
            raise RuntimeError("only one task may read a transport at a time")
        future: asyncio.Future[bytes] = loop.create_future()
        self._reader = future
        loop.add_reader(fd, self._on_readable, fd, future)
        try:
            return await future
        finally:
            if self._fd == fd:
                loop.remove_reader(fd)
            self._reader = None

    def write(self, data: bytes) -> None:
        fd, loop = self._require_open()
        if self._backlog:
            self._queue(data, fd, loop)  # keep byte order behind what is already waiting
            return
        written = self._write_some(fd, data)
        if written < len(data):
            self._queue(data[written:], fd, loop)

    async def close(self) -> None:
        self._shutdown(TransportClosed(f"{self.description} closed"))

    # --- internals ---------------------------------------------------------------------------

    def _require_open(self) -> tuple[int, asyncio.AbstractEventLoop]:
        if self._failure is not None:
            raise self._failure
        if self._fd is None or self._loop is None:
            raise TransportClosed(f"{self.description} is not open")
        return self._fd, self._loop

    def _on_readable(self, fd: int, future: asyncio.Future[bytes]) -> None:
        if future.done():
            return
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return  # spurious wake-up: keep waiting
        except OSError as exc:
            self._fail(f"read failed: {exc}")
            return
        if not data:
            self._fail("end of stream")
            return
        future.set_result(data)

    def _write_some(self, fd: int, data: bytes) -> int:
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            failure = self._fail(f"write failed: {exc}")
            raise failure from exc

    def _queue(self, data: bytes, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        if len(self._backlog) + len(data) > MAX_WRITE_BACKLOG:
            raise self._fail(f"peer is not reading: {MAX_WRITE_BACKLOG} bytes unwritten")
        if not self._backlog:
            loop.add_writer(fd, self._on_writable, fd)
        self._backlog += data

    def _on_writable(self, fd: int) -> None:
        try:
            written = self._write_some(fd, bytes(self._backlog))
        except TransportClosed:
            return  # _fail already woke the reader, which reports it
        del self._backlog[:written]
        if not self._backlog and self._loop is not None:
            self._loop.remove_writer(fd)

    def _fail(self, why: str) -> TransportClosed:
        failure = TransportClosed(f"{self.description}: {why}")
        level = logging.DEBUG if self._failure else logging.WARNING
        log.log(level, "%s", failure)
        self._shutdown(failure)
        return failure

    def _shutdown(self, failure: TransportClosed) -> None:
        """Release the fd and wake a pending read with `failure`. Safe to call twice."""
        if self._failure is None:
            self._failure = failure
        fd, loop, port = self._fd, self._loop, self._port
        self._fd, self._port = None, None
        if fd is not None and loop is not None:
            loop.remove_reader(fd)
            loop.remove_writer(fd)
        self._backlog.clear()
        if self._reader is not None and not self._reader.done():
            self._reader.set_exception(self._failure)
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError) as exc:
                log.debug("closing %s: %s", self.description, exc)
            log.info("closed %s", self.description)
