"""A private mosquitto for tests: 127.0.0.1 only, free port, config and persistence in a temp dir.

Never relies on a system mosquitto service. Install the binary with scripts/ensure-mosquitto.sh.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


class BrokerError(RuntimeError):
    pass


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary (Debian puts it in /usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free port OUTSIDE the kernel's ephemeral range.

    A client that keeps reconnecting to a stopped broker on an ephemeral-range port can be given
    that very port as its own source port and connect to itself (TCP self-connect); the broker
    then cannot restart on its port ("Address already in use").
    """
    low, high = _ephemeral_range()
    candidates = [p for p in range(10_000, 30_000) if not low <= p <= high]
    for port in random.sample(candidates, 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port outside the ephemeral range")


class MosquittoBroker:
    """One mosquitto process; `restart()` keeps port and persistence (queued messages survive)."""

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        *,
        persistence: bool = True,
        extra_config: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        self.binary = binary or find_mosquitto()
        if self.binary is None:
            raise BrokerError("mosquitto not found; run scripts/ensure-mosquitto.sh")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.extra_config = tuple(extra_config)
        self.port = free_port()
        self.persistence = persistence
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._started = False  # once started, the port is known to clients and never moves
        self._write_config()

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
            # Several tests publish thousands of QoS 1 messages in a burst.
            "max_queued_messages 20000",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto drops to user "mosquitto", which cannot read the test's private
            # temp dir (ACL file, persistence). Stay as the invoking user.
            lines.append("user root")
        if self.persistence:
            data_dir = self.workdir / "data"
            data_dir.mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {data_dir}/"]
        lines += self.extra_config
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        if self.running:
            return
        try:
            self._start()
        except BrokerError:
            # Another process (a second test run on this machine) may have taken the port between
            # free_port() and now. Before the first start nobody knows the port: take another.
            # A restart keeps its port (clients reconnect to it), so it never moves.
            if self._started or "Address already in use" not in self.log_tail():
                raise
            self.port = free_port()
            self._write_config()
            self._start()

    def _start(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        self._process = subprocess.Popen(
            [str(self.binary), "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(f"mosquitto exited at start; log:\n{self.log_tail()}")
            if _port_accepts(self.host, self.port):
                self._started = True
                return
            time.sleep(0.02)  # polling for readiness, bounded by the deadline
        self.stop()
        raise BrokerError(f"mosquitto did not listen within {_START_TIMEOUT_S} s")

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence file on the way out), SIGKILL if it hangs."""
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=_STOP_TIMEOUT_S)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _port_accepts(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect((host, port))
        except OSError:
            return False
        return True


class MqttTcpProxy:
    """asyncio TCP proxy between a client under test and the broker, for failure injection.

    - `sever()` aborts every open connection without an MQTT DISCONNECT (the broker sends the will),
    - `hold_downstream()` / `release_downstream()` hold back broker→client bytes (e.g. PUBACKs),
    - `refuse_mqtt5` answers an MQTT 5 CONNECT with CONNACK "unsupported protocol version"
      (`"v5"`: MQTT 5 CONNACK 0x84; `"v311"`: a 3.1.1-only broker's CONNACK return code 1).
    Runs on the test's event loop; listens on 127.0.0.1 only.
    """

    def __init__(
        self, target_port: int, *, refuse_mqtt5: str | None = None, target_host: str = "127.0.0.1"
    ) -> None:
        self.target = (target_host, target_port)
        self.refuse_mqtt5 = refuse_mqtt5
        self.protocol_levels: list[int] = []  # protocol level of every CONNECT seen
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._downstream_open = asyncio.Event()
        self._downstream_open.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.sever()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def sever(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def hold_downstream(self) -> None:
        self._downstream_open.clear()

    def release_downstream(self) -> None:
        self._downstream_open.set()

    async def __aenter__(self) -> MqttTcpProxy:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._writers.add(client_w)
        try:
            connect_packet, level = await _read_connect(client_r)
            self.protocol_levels.append(level)
            if level == 5 and self.refuse_mqtt5 is not None:
                if self.refuse_mqtt5 == "v5":
                    client_w.write(bytes([0x20, 0x03, 0x00, 0x84, 0x00]))
                else:
                    client_w.write(bytes([0x20, 0x02, 0x00, 0x01]))
                await client_w.drain()
                client_w.close()
                return
            broker_r, broker_w = await asyncio.open_connection(*self.target)
        except (OSError, asyncio.IncompleteReadError):
            client_w.transport.abort()
            return
        self._writers.add(broker_w)
        broker_w.write(connect_packet)
        self._track(self._pump(client_r, broker_w, broker_w, client_w, gate=None))
        self._track(self._pump(broker_r, client_w, broker_w, client_w, gate=self._downstream_open))

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *both: asyncio.StreamWriter,
        gate: asyncio.Event | None,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if gate is not None:
                    await gate.wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            # One side closed: close both abruptly, like a dropped network path.
            for w in both:
                w.transport.abort()
                self._writers.discard(w)


async def _read_connect(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    """Read the client's CONNECT packet; return its bytes and the protocol level (4 or 5)."""
    header = await reader.readexactly(1)
    length_bytes = b""
    remaining = 0
    for shift in range(0, 28, 7):
        byte = (await reader.readexactly(1))[0]
        length_bytes += bytes([byte])
        remaining |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    body = await reader.readexactly(remaining)
    # Variable header: protocol name (2-byte length + "MQTT"), then the protocol level.
    name_len = int.from_bytes(body[:2], "big")
    return header + length_bytes + body, body[2 + name_len]
