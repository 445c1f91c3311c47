"""An embedded MQTT 3.1.1 broker for the demo: amqtt, on 127.0.0.1 only, in this event loop.

No root and no mosquitto needed. Every client accepted without credentials, persistent sessions
kept in memory only (nothing on disk), no $SYS topics, amqtt's own logging turned down to warnings.

amqtt 0.12 speaks MQTT 3.1.1 only, and how it refuses MQTT 5 depends on the CONNECT (pinned by
tests/test_demo_broker.py): without properties it answers a 3.1.1-format CONNACK "unacceptable
protocol version" (return code 1, which paho 2.x reports as 0x84); with any property, e.g. the
Session Expiry Interval, it misreads the packet, waits for bytes that never come and answers
nothing until the client closes its side. Connect to it with MQTT 3.1.1.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin

logger = logging.getLogger(__name__)

# amqtt logs every connect, subscribe and state change at INFO; the demo's terminal is for events.
_QUIET_LOGGERS = ("amqtt", "transitions")

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0

# A minimal MQTT 3.1.1 CONNECT (clean session, keep-alive 0) used to prove the broker answers.
_PROBE_CLIENT_ID = b"embedded-broker-probe"
_CONNACK_ACCEPTED = b"\x20\x02\x00\x00"
_DISCONNECT = b"\xe0\x00"


class AcceptEveryClient(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """Accepts every client, like amqtt's AnonymousAuthPlugin, but keeps its session a normal one.

    AnonymousAuthPlugin marks sessions anonymous, and amqtt then neither queues QoS 1 messages for
    an offline persistent session nor keeps the session: commands sent while the agent is
    offline would be lost, unlike on mosquitto. Safe only because the broker is loopback-only.
    """

    @dataclass
    class Config:
        """No options (amqtt builds each plugin's config from such a dataclass)."""

    async def authenticate(self, *, session: Any) -> bool:
        return True


_AUTH_PLUGIN = f"{__name__}.{AcceptEveryClient.__name__}"


class _ConnectionClosingBroker(Broker):  # type: ignore[misc]  # amqtt is untyped
    """amqtt's Broker, but every client connection is closed when its handler ends or is cancelled.

    amqtt leaves some connections open at shutdown (one that never sent a complete CONNECT, e.g.
    an MQTT 5 CONNECT it misreads); on Python 3.11 closing the server does not close them, so they
    would leak sockets. `close_connections` ends them for a clean stop.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self._connection_tasks: set[asyncio.Task[None]] = set()

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connection_tasks.add(task)
        try:
            await super().stream_connected(reader, writer, listener_name)
        except OSError as exc:
            # A client that left mid-handshake (e.g. gave up on an MQTT 5 CONNECT amqtt cannot
            # read): amqtt lets the error escape and asyncio would log it as an unhandled error.
            logger.debug("client connection ended: %r", exc)
        finally:
            if task is not None:
                self._connection_tasks.discard(task)
            writer.close()

    async def close_connections(self) -> None:
        tasks = list(self._connection_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not be started or did not answer in time."""


def _probe_connect_packet() -> bytes:
    variable_header = b"\x00\x04MQTT\x04\x02\x00\x00"  # protocol 3.1.1, clean session, keepalive 0
    payload = len(_PROBE_CLIENT_ID).to_bytes(2, "big") + _PROBE_CLIENT_ID
    body = variable_header + payload
    return b"\x10" + bytes([len(body)]) + body  # body < 128 bytes: one-byte remaining length


def _is_ipv4_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name such as "localhost" may resolve to several addresses and ports
    return address.version == 4 and address.is_loopback


class EmbeddedBroker:
    """amqtt broker on 127.0.0.1 only, on a free port (or a given one), no auth, no persistence."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if not _is_ipv4_loopback(host):
            # The demo broker has no authentication at all: never expose it beyond this machine.
            raise ValueError(f"embedded broker listens on IPv4 loopback only, not {host!r}")
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._broker: _ConnectionClosingBroker | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The port it listens on; only known once started."""
        if self._port is None:
            raise RuntimeError("embedded broker is not started")
        return self._port

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {
                "default": {"type": "tcp", "bind": f"{self._host}:{self._requested_port}"},
            },
            # Only our accept-all auth: this replaces amqtt's defaults, which add packet/event
            # loggers, anonymous auth and the $SYS plugin (a broadcast every 20 s).
            "plugins": {_AUTH_PLUGIN: {}},
        }

    async def start(self) -> None:
        """Start listening; return once the broker has answered a real CONNECT (bounded wait)."""
        if self._broker is not None:
            raise RuntimeError("embedded broker already started")
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        broker = _ConnectionClosingBroker(self._config())
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                await broker.start()
        except Exception as exc:  # amqtt raises many kinds: one error, the cause chained
            raise EmbeddedBrokerError(f"amqtt broker did not start: {exc}") from exc
        self._broker = broker
        try:
            self._port = self._bound_port(broker)
            await self._probe()
        except BaseException:  # whatever stopped it: the broker is not left running; re-raised
            await self.stop()
            raise

    @staticmethod
    def _bound_port(broker: Any) -> int:
        # amqtt does not expose the bound port; with port 0 only the listening socket knows it.
        server = broker._servers["default"].instance
        sockets: list[socket.socket] = list(server.sockets)
        if not sockets:
            raise EmbeddedBrokerError("amqtt listener has no socket")
        return int(sockets[0].getsockname()[1])

    async def _probe(self) -> None:
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(self._host, self.port)
                try:
                    writer.write(_probe_connect_packet())
                    await writer.drain()
                    connack = await reader.readexactly(len(_CONNACK_ACCEPTED))
                    if connack != _CONNACK_ACCEPTED:
                        raise EmbeddedBrokerError(f"probe CONNECT refused: {connack.hex()}")
                    writer.write(_DISCONNECT)
                    await writer.drain()
                finally:
                    writer.close()
                    await writer.wait_closed()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise EmbeddedBrokerError(f"embedded broker does not answer: {exc!r}") from exc

    async def stop(self) -> None:
        """Close all sessions and the listener. Idempotent."""
        broker = self._broker
        if broker is None:
            return
        self._broker = None
        self._port = None
        async with asyncio.timeout(_STOP_TIMEOUT_S):
            try:
                await broker.shutdown()
            finally:
                await broker.close_connections()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
