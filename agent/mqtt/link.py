"""Asyncio facade around paho-mqtt 2.x: connect, reconnect, publish with ack, receive.

Threading model: none of paho's. Every connection gets a fresh paho `Client` driven from the
asyncio loop the way aiomqtt drives it: paho's socket callbacks register the socket with
`loop.add_reader` / `loop.add_writer` (paho reads and writes when the loop says the socket is
ready), and a small task calls `loop_misc()` when a keepalive ping is due. paho's callbacks run on
the loop, inside `loop_read()` / `loop_write()`; each one is wrapped so that no exception escapes
into paho. Only the blocking part of a connect (DNS, TCP, TLS handshake, and the CONNECT written on
the fresh socket) runs off the loop, on a short-lived thread of its own, under the attempt's
deadline; every step of a connect is logged.

paho's own reconnect logic is not used: `run()` owns the reconnect policy (`drivers.retry`: the
same full-jitter backoff and flap rule as the dispenser link) and calls the will factory before
every attempt.

Inbound messages are read with `get_message()` or `async for msg in link.messages()`. QoS 1 ones
are acknowledged (PUBACK) only when the application calls `ack()` after handling them.

A connection is *ready* once its subscriptions and the `on_connected` hook (the unit's birth
message) are done: what the application publishes waits for `wait_ready()`, so a session's birth
always comes first. A clean stop publishes the `farewell` message before DISCONNECT (which makes
the broker drop the will): the unit says it is offline itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import ssl
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from drivers.retry import (
    RECONNECT_INITIAL_DELAY_S,
    RECONNECT_MAX_DELAY_S,
    STABLE_LINK_S,
    RetryPolicy,
    stay_connected,
    worth_logging,
)
from protocol.ratelog import RateLimitedLog

logger = logging.getLogger(__name__)

ProtocolName = Literal["5", "3.1.1"]
# called with the PUBACK's reason code, or with MqttNotConnected when the connection is lost first
PublishDone = Callable[[ReasonCode | BaseException], None]

# CONNACK codes meaning "I do not speak this protocol version": 0x84 in MQTT 5, 1 in MQTT 3.1.1
# (a 3.1.1-only broker answers a v5 CONNECT in its own format).
_UNSUPPORTED_PROTOCOL_V5 = 0x84
_UNSUPPORTED_PROTOCOL_V311 = 0x01

# How long a stop waits for paho to write DISCONNECT and close the socket itself.
_DISCONNECT_TIMEOUT_S = 2.0
# How long a clean stop waits for the broker to acknowledge the farewell message.
FAREWELL_TIMEOUT_S = 3.0
CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int
    client_id: str
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600  # persistent session: commands wait at the broker
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None  # None: the system's CAs
    client_cert: str | None = None  # the unit's identity (CN = unit id), with client_key
    client_key: str | None = None
    # MQTT 5 Maximum Packet Size announced on CONNECT: the broker never sends a larger packet (it
    # drops that message for this client), so an oversized message is never read. On MQTT 3.1.1
    # only the broker's own max_packet_size bounds it (docs/broker/mosquitto.conf).
    max_packet_bytes: int = 128 * 1024
    # Inbound messages waiting for the application; past this QoS 0 ones are dropped (and
    # counted); QoS 1 ones are kept up to inbox_bytes_limit, and dropped (counted, redelivered by
    # the broker on the next connection) only past that.
    inbox_limit: int = 1000
    inbox_bytes_limit: int = 16 * 1024 * 1024
    # MQTT 5 Receive Maximum announced on CONNECT: at most this many QoS 1 messages unacknowledged
    # by the application at once (a broker that did not bound it filled the inbox with a flood)
    receive_maximum: int = 100
    drop_report_s: float = 60.0  # drops are logged and told at most once in this long
    connect_timeout_s: float = 10.0
    backoff_initial_s: float = RECONNECT_INITIAL_DELAY_S
    backoff_max_s: float = RECONNECT_MAX_DELAY_S
    stable_after_s: float = STABLE_LINK_S  # a shorter connection counts as a failure (flap rule)
    max_inflight: int = 20  # QoS 1 publishes on the wire awaiting PUBACK
    # "5" falls back to 3.1.1 by itself when the broker answers "unsupported protocol version";
    # "3.1.1" is for brokers that drop an MQTT 5 CONNECT instead of answering it (amqtt).
    protocol: ProtocolName = "5"

    def __post_init__(self) -> None:
        if not self.client_id:
            # A persistent session needs a stable client id; an empty one gets a random id.
            raise ValueError("client_id must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"port out of range: {self.port}")
        if self.connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        if self.inbox_limit < 1:
            raise ValueError("inbox_limit must be at least 1")
        if self.inbox_bytes_limit < 1:
            raise ValueError("inbox_bytes_limit must be at least 1")
        if not 0 < self.receive_maximum < 65536:
            raise ValueError(f"receive_maximum out of range (1-65535): {self.receive_maximum}")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class InboundMessage:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    response_topic: str | None
    correlation_data: bytes | None
    message_expiry_s: int | None
    user_properties: tuple[tuple[str, str], ...]
    # (connection, packet id) for `MqttLink.ack`: QoS 1 messages are acknowledged to the broker
    # only once the application has handled them, so a crash in between means a redelivery.
    ack_token: tuple[int, int] | None = None


@dataclass(frozen=True)
class MqttLinkStats:
    connects: int = 0
    connect_failures: int = 0  # attempts that did not end in an accepted CONNACK
    disconnects: int = 0
    publishes_acked: int = 0
    publishes_rejected: int = 0
    callback_errors: int = 0  # exceptions caught in paho callbacks and in on_connected
    inbound_dropped: int = 0  # messages dropped because the inbox was full
    inbound_over_limit: int = 0  # QoS 1 messages kept past inbox_limit (within its bytes)
    tls_failures: int = 0  # connect attempts that failed in the TLS handshake


class MqttLinkError(Exception):
    """Root of the link's errors."""


class MqttNotConnected(MqttLinkError, ConnectionError):  # noqa: N818 (name fixed by the API)
    """No connection, or it dropped before the broker acknowledged. Keep the event and retry."""


class PublishRejected(MqttLinkError):  # noqa: N818 (name fixed by the API)
    """The broker answered the publish with an MQTT 5 failure reason code (e.g. 0x87)."""

    def __init__(self, reason_code: int, reason_name: str) -> None:
        super().__init__(f"publish rejected by broker: {reason_name} (0x{reason_code:02x})")
        self.reason_code = reason_code
        self.reason_name = reason_name


def should_fall_back_to_v311(protocol: ProtocolName, connack_reason: int) -> bool:
    """True when an MQTT 5 CONNECT was refused because the broker does not speak MQTT 5."""
    return protocol == "5" and connack_reason in (
        _UNSUPPORTED_PROTOCOL_V5,
        _UNSUPPORTED_PROTOCOL_V311,
    )


class _ConnectFailedError(Exception):
    """One connect attempt failed; `run()` backs off and tries again."""


class _NoConnectSentError(_ConnectFailedError):
    """paho's connect() raised: no CONNECT (and so no will) reached any broker."""


_F = TypeVar("_F", bound=Callable[..., None])


_CONNECTION_NUMBERS = itertools.count(1)


class _Connection:
    """State of one paho client / one network connection. Everything here runs on the asyncio
    loop: paho's callbacks are called from `loop_read()` / `loop_write()` / `loop_misc()`, which
    the loop calls when the socket is ready or the misc timer is due."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: paho.Client,
        on_message: Callable[[InboundMessage], None],
        on_callback_error: Callable[[str, BaseException], None],
        keepalive_s: float,
    ) -> None:
        self.loop = loop
        self.client = client
        self.number = next(_CONNECTION_NUMBERS)  # never reused, unlike id()
        self.connack: asyncio.Future[tuple[ReasonCode, bool]] = loop.create_future()
        # An attempt that failed before it awaited CONNACK never reads the error set here.
        self.connack.add_done_callback(_retrieve)
        # mid -> what to call with the PUBACK's reason code, or with MqttNotConnected if it is lost
        self.pending_publishes: dict[int, PublishDone] = {}
        self.pending_subscribes: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self.lost = asyncio.Event()
        self.socket_closed = asyncio.Event()
        self.up = False
        self.on_lost: Callable[[], None] | None = None  # the link's hook, once this one is current
        self.up_since = 0.0
        self._fd: int | None = None  # the socket's descriptor while registered with the loop
        self._reading = False  # inside loop_read(): what it queues is written right after it
        self._misc_task: asyncio.Task[None] | None = None
        self._keepalive_s = keepalive_s
        # when the socket was last read from / written to (time.monotonic, paho's clock)
        self._last_read = self._last_write = time.monotonic()
        self._on_message = on_message
        self._on_callback_error = on_callback_error
        client.on_connect = self._guard("on_connect", self._cb_connect)
        client.on_disconnect = self._guard("on_disconnect", self._cb_disconnect)
        client.on_publish = self._guard("on_publish", self._cb_publish)
        client.on_subscribe = self._guard("on_subscribe", self._cb_subscribe)
        client.on_message = self._guard("on_message", self._cb_message)
        if client._ssl_context is not None:  # TLS only: a refusal's text (paho has no getter)
            client.on_log = self._cb_log
        # paho's last error-level log line: a TLS refusal by the broker (a certificate it does
        # not accept) reaches paho as a read error that it logs and turns into a bare "lost".
        self.last_error: str | None = None

    # --- the socket on the loop -------------------------------------------------------------

    def attach(self) -> None:
        """Hand the socket paho opened (off the loop) to the loop. The socket callbacks are set
        only now, so that paho never calls them from the connect thread."""
        sock = self.client.socket()
        if sock is None:
            raise OSError(f"paho has no socket after connect() ({self.last_error or 'closed'})")
        self._fd = sock.fileno()
        client = self.client
        client.on_socket_close = self._cb_socket_close
        client.on_socket_register_write = self._cb_register_write
        client.on_socket_unregister_write = self._cb_unregister_write
        self.loop.add_reader(self._fd, self._readable)
        if client.want_write():  # CONNECT not fully written yet: paho asked before we listened
            self.loop.add_writer(self._fd, self._writable)
        self._misc_task = self.loop.create_task(self._misc(), name=f"mqtt-misc-{self.number}")

    def _readable(self) -> None:
        try:
            self._reading = True
            try:
                self.client.loop_read()
            finally:
                self._reading = False
            self._last_read = time.monotonic()
            if self.client.want_write():
                # what the read queued (the next publishes after PUBACKs, a PUBACK of ours) is
                # written now, as paho's own loop does, not after a trip through the selector
                self._writable()
                if self.client.want_write() and self._fd is not None:
                    self.loop.add_writer(self._fd, self._writable)  # the socket is full: wait
            # An SSL socket may hold decrypted bytes the kernel no longer reports as readable.
            sock = self.client.socket()
            if isinstance(sock, ssl.SSLSocket) and self._fd is not None and sock.pending():
                self.loop.call_soon(self._readable)
        except Exception as exc:  # paho raises on some socket errors instead of returning a code;
            # a loop callback must not leak anything (the socket would stay registered)
            self._io_failed("read", exc)

    def _writable(self) -> None:
        try:
            self.client.loop_write()
            self._last_write = time.monotonic()
        except Exception as exc:  # as in _readable
            self._io_failed("write", exc)

    def flush(self) -> None:
        """Write what paho has queued now, instead of on the loop's next turn."""
        if self._fd is not None and self.client.want_write():
            self._writable()

    def next_misc_due(self) -> float:
        """When paho's keepalive check next has something to do (time.monotonic): a PINGREQ is
        due `keepalive` after the last read or write, whichever is older; after a PINGREQ, the
        PINGRESP is late `keepalive` after it. Our stamps are taken right after paho's own, so
        at this moment paho's check always acts."""
        return min(self._last_read, self._last_write) + self._keepalive_s

    async def _misc(self) -> None:
        """Keepalive: paho sends PINGREQ when due and drops a connection whose PINGRESP is late.
        Sleeps until the next check is actually due, so an idle unit wakes once per keepalive
        (not every keepalive/4); traffic in between pushes the check further out."""
        if self._keepalive_s <= 0:
            return  # keepalive off: paho's check never acts
        try:
            while True:
                delay = self.next_misc_due() - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue  # traffic meanwhile may have moved the due time
                if self.client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return
                # paho pinged (or found the PINGRESP late and closed): like paho, count from now
                self._last_read = self._last_write = time.monotonic()
        except Exception as exc:  # as in _readable
            self._io_failed("keepalive", exc)

    def _io_failed(self, what: str, exc: Exception) -> None:
        # a socket error is routine; anything else is a bug and gets its traceback
        logger.warning(
            "MQTT socket %s failed: %r", what, exc, exc_info=not isinstance(exc, OSError)
        )
        self.mark_lost(f"socket {what} failed: {exc!r}", cause=exc)
        self.release()

    def _cb_socket_close(self, _client: paho.Client, _userdata: object, _sock: object) -> None:
        # paho calls this just before it closes the socket itself.
        self._detach()

    def _cb_register_write(self, _client: paho.Client, _userdata: object, _sock: object) -> None:
        if self._fd is not None and not self._reading:  # a read writes what it queued itself
            self.loop.add_writer(self._fd, self._writable)

    def _cb_unregister_write(self, _client: paho.Client, _userdata: object, _sock: object) -> None:
        if self._fd is not None:
            self.loop.remove_writer(self._fd)

    def _detach(self) -> None:
        """Take the socket off the loop (before anyone closes it: a closed descriptor's number
        can be reused at once) and stop the keepalive task."""
        fd, self._fd = self._fd, None
        if fd is not None:
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)
        if self._misc_task is not None and self._misc_task is not asyncio.current_task():
            self._misc_task.cancel()
        self.socket_closed.set()

    @property
    def attached(self) -> bool:
        """The socket is open and registered with the loop."""
        return self._fd is not None

    def release(self) -> None:
        """Take the socket off the loop and close it, without a DISCONNECT (the will stands)."""
        self._detach()
        _close_socket(self.client)

    # --- paho callbacks (on the loop) ---------------------------------------------------------

    def _guard(self, name: str, callback: _F) -> _F:
        def guarded(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as exc:  # the caller's callback, inside paho's read: see below
                # Never let an exception reach paho: it would abort the read in the middle.
                logger.exception("MQTT callback %s failed", name)
                self._on_callback_error(name, exc)

        return guarded  # type: ignore[return-value]

    def _cb_connect(
        self,
        _client: paho.Client,
        _userdata: object,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if not self.connack.done():
            self.connack.set_result((reason, flags.session_present))

    def _cb_disconnect(
        self,
        _client: paho.Client,
        _userdata: object,
        _flags: paho.DisconnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        self.mark_lost(f"disconnected: {reason}")

    def _cb_publish(
        self,
        _client: paho.Client,
        _userdata: object,
        mid: int,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        done = self.pending_publishes.pop(mid, None)
        if done is not None:
            done(reason)

    def _cb_subscribe(
        self,
        _client: paho.Client,
        _userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        _props: Properties | None,
    ) -> None:
        future = self.pending_subscribes.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(list(reasons))

    def _cb_log(self, _client: paho.Client, _userdata: object, level: int, text: str) -> None:
        if level == paho.MQTT_LOG_ERR:
            self.last_error = text

    def _cb_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        self._on_message(_inbound_from_paho(msg, self.number))

    # --- state ------------------------------------------------------------------------------

    def mark_lost(self, why: str, cause: BaseException | None = None) -> None:
        """The connection is over: fail everything still waiting on it."""
        if self.lost.is_set():
            return
        if cause is None and self.last_error is not None:
            why = f"{why} ({self.last_error})"
        # A connection that was never up (a failed attempt) is logged by the attempt.
        logger.log(logging.INFO if self.up else logging.DEBUG, "MQTT connection lost (%s)", why)
        self.up = False
        self.lost.set()
        if self.on_lost is not None:
            self.on_lost()
        if not self.connack.done():
            error = _ConnectFailedError(why)
            # e.g. the broker refused this unit's certificate; without its traceback, whose
            # frames would keep this connection (and its socket) alive with the error
            if is_tls_failure(cause):
                error.__cause__ = None if cause is None else cause.with_traceback(None)
            self.connack.set_exception(error)
        publishes = list(self.pending_publishes.values())
        subscribes = list(self.pending_subscribes.values())
        self.pending_publishes.clear()
        self.pending_subscribes.clear()
        for done in publishes:
            done(MqttNotConnected(why))
        for future in subscribes:
            if not future.done():
                future.set_exception(MqttNotConnected(why))


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _off_loop(
    loop: asyncio.AbstractEventLoop,
    func: Callable[[], None],
    name: str,
    cleanup: Callable[[], None],
) -> asyncio.Future[None]:
    """Run a blocking call on a short-lived daemon thread of its own; its outcome arrives on the
    loop. Not the default executor: a hung DNS lookup would hold `asyncio.run()`'s shutdown, and a
    daemon thread ends with the process. `cleanup` runs on that thread when the loop is gone."""
    done: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if done.done():
            return
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)

    def work() -> None:
        error: BaseException | None = None
        try:
            func()
        except BaseException as exc:  # handed to the loop, which decides
            error = exc
        try:
            loop.call_soon_threadsafe(settle, error)
        except RuntimeError:  # the loop is closed: nobody will use what func() opened
            cleanup()

    threading.Thread(target=work, name=name, daemon=True).start()
    return done


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """The TLS context of a connection: the broker's certificate checked against `ca_file` (or
    the system's CAs) and its host name; the unit's client certificate when one is configured.
    Raises OSError / ssl.SSLError when a file is missing or unusable."""
    context = ssl.create_default_context(cafile=settings.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.client_cert is not None:
        context.load_cert_chain(settings.client_cert, settings.client_key)
    return context


def _closing_on_failure(context: ssl.SSLContext) -> ssl.SSLContext:
    """Remember the sockets paho wraps with this (one client's) context, so that a failed
    connect can close one whose TLS handshake failed: paho drops it without closing it."""
    wrapped: list[ssl.SSLSocket] = []
    wrap = context.wrap_socket

    def wrap_socket(*args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = wrap(*args, **kwargs)
        wrapped.append(sock)
        return sock

    context.wrap_socket = wrap_socket  # type: ignore[method-assign]
    context.wrapped_sockets = wrapped  # type: ignore[attr-defined]
    return context


def is_tls_failure(exc: BaseException | None) -> bool:
    """A failure of the TLS layer (certificate refused either way, bad key, handshake). paho
    reports a refusal that arrives after the handshake only as text: "[SSL: ...] ..." when the
    broker's alert arrived, "... (_ssl.c:NNNN)" when the broker closed the socket first."""
    while exc is not None:
        text = str(exc)
        if isinstance(exc, ssl.SSLError | ssl.CertificateError):
            return True
        if "[SSL" in text or "(_ssl.c:" in text:
            return True
        exc = exc.__cause__
    return False


def _inbound_from_paho(msg: paho.MQTTMessage, connection: int) -> InboundMessage:
    props = msg.properties
    response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
    correlation = getattr(props, "CorrelationData", None) if props is not None else None
    expiry = getattr(props, "MessageExpiryInterval", None) if props is not None else None
    user_props = getattr(props, "UserProperty", None) if props is not None else None
    return InboundMessage(
        topic=msg.topic,
        payload=bytes(msg.payload),
        qos=msg.qos,
        retain=bool(msg.retain),
        response_topic=response_topic,
        correlation_data=bytes(correlation) if correlation is not None else None,
        message_expiry_s=int(expiry) if expiry is not None else None,
        user_properties=tuple((str(k), str(v)) for k, v in user_props or ()),
        ack_token=(connection, msg.mid) if msg.qos > 0 else None,
    )


class MqttLink:
    """One MQTT connection to the response centre's broker, kept up by `run()`."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        will_factory: Callable[[], Will] | None,
        subscriptions: Sequence[tuple[str, int]],
        on_connected: Callable[[], Awaitable[None]] | None = None,
        will_unseen: Callable[[Will], None] | None = None,
        farewell_factory: Callable[[], Will] | None = None,
        on_inbound_dropped: Callable[[int, str], None] | None = None,
    ) -> None:
        """`will_factory` gives the will of each connect attempt; `will_unseen` is told when an
        attempt failed before any broker could have accepted that will (the socket was refused,
        or CONNACK refused the connection), so its session number may be used again.
        `farewell_factory` gives the message a clean stop publishes before DISCONNECT.
        `on_inbound_dropped(count, topic)` is told, at most once a minute, how many inbound
        messages were dropped (inbox full) since it was last told; it runs on the loop."""
        self._settings = settings
        self._will_factory = will_factory
        self._will_unseen = will_unseen
        self._farewell_factory = farewell_factory
        self._subscriptions = tuple(subscriptions)
        self._on_connected = on_connected
        self._protocol: ProtocolName = settings.protocol
        self._conn: _Connection | None = None
        self._connected_event = asyncio.Event()
        self._ready_event = asyncio.Event()
        self._attempt_ended = asyncio.Condition()  # notified after every connect attempt
        # What the broker watch reads (connected, last error, failure counts) changed: bumped
        # and the event set, so the watch sleeps until then instead of polling
        self._link_state_version = 0
        self._link_state_event = asyncio.Event()
        # Bounded: a flood (QoS 0, or a broker that ignores its inflight window) is dropped and
        # counted, never queued without end. QoS 1 ones are left unacknowledged: redelivered.
        # Bounded by _enqueue (a count, and bytes for QoS 1), not by the queue itself.
        self._inbox: asyncio.Queue[InboundMessage] = asyncio.Queue()
        self._inbox_bytes = 0
        self._drop_log = RateLimitedLog(logger, window_s=settings.drop_report_s)
        self._on_inbound_dropped = on_inbound_dropped
        self._dropped_told = 0  # drops already passed to on_inbound_dropped
        self._drop_flush: asyncio.TimerHandle | None = None
        self._last_dropped_topic = ""
        self._tls_log = RateLimitedLog(logger, window_s=600.0)
        self._last_connect_error: str | None = None
        self._counts: dict[str, int] = dict.fromkeys(MqttLinkStats.__dataclass_fields__, 0)
        self._last_callback_error: BaseException | None = None
        self._consecutive_failures = 0  # failed connect attempts since the last success

    # --- public state ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.up

    @property
    def ready(self) -> bool:
        """Connected, subscribed, and the on_connected hook (the birth) done."""
        return self.connected and self._ready_event.is_set()

    @property
    def protocol(self) -> ProtocolName:
        """MQTT version in use; drops to 3.1.1 for good once a broker refused MQTT 5."""
        return self._protocol

    @property
    def stats(self) -> MqttLinkStats:
        """A snapshot of the counters."""
        return MqttLinkStats(**self._counts)

    @property
    def last_connect_error(self) -> str | None:
        """Why the last connect attempt failed (None once connected): e.g. a TLS refusal."""
        return self._last_connect_error

    @property
    def last_callback_error(self) -> BaseException | None:
        """The most recent exception caught in a paho callback or in on_connected."""
        return self._last_callback_error

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once connected; raise TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            await self._connected_event.wait()

    async def wait_connected_or_failed(self, attempts: int) -> None:
        """Return once connected, or once `attempts` connect attempts have failed and the last
        one's reason is known (`last_connect_error`). A refused MQTT 5 retried in 3.1.1 is one
        attempt, not over until the 3.1.1 one is."""
        async with self._attempt_ended:
            await self._attempt_ended.wait_for(
                lambda: (
                    self.connected
                    or (
                        self._counts["connect_failures"] >= attempts
                        and self._last_connect_error is not None
                    )
                )
            )

    @property
    def link_state_version(self) -> int:
        """Grows whenever `connected`, `last_connect_error` or the connect counters may have
        changed; `wait_link_state_change` waits for it to move."""
        return self._link_state_version

    async def wait_link_state_change(self, seen: int) -> None:
        """Return once `link_state_version` is not `seen` (at once if it already moved)."""
        while self._link_state_version == seen:
            await self._link_state_event.wait()

    def _link_state_changed(self) -> None:
        self._link_state_version += 1
        self._link_state_event.set()
        self._link_state_event = asyncio.Event()  # waiters hold the set one and wake

    async def wait_ready(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once a connection is ready (its birth published); TimeoutError after
        `timeout` seconds."""
        async with asyncio.timeout(timeout):
            await self._ready_event.wait()

    # --- publish / receive -----------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        message_expiry_s: int | None = None,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        content_type: str | None = CONTENT_TYPE,
    ) -> None:
        """Publish and return once the broker acknowledged it (QoS 0: once written).

        Raises MqttNotConnected when there is no connection or it drops before the ack, and
        PublishRejected when an MQTT 5 PUBACK carries a failure reason code. MQTT 5 properties are
        left out on MQTT 3.1.1.
        """
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def settle(error: BaseException | None) -> None:
            if ack.done():
                return
            if error is None:
                ack.set_result(None)
            else:
                ack.set_exception(error)

        self.publish_nowait(
            topic,
            payload,
            settle,
            qos=qos,
            retain=retain,
            message_expiry_s=message_expiry_s,
            response_topic=response_topic,
            correlation_data=correlation_data,
            content_type=content_type,
        )
        self.flush()
        await ack

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        on_done: Callable[[BaseException | None], None],
        *,
        qos: int = 1,
        retain: bool = False,
        message_expiry_s: int | None = None,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        content_type: str | None = CONTENT_TYPE,
    ) -> None:
        """Hand a publish to paho without a task or future: `on_done(None)` once the broker
        acknowledged it (QoS 0: once written), `on_done(PublishRejected)` on a failure reason
        code, `on_done(MqttNotConnected)` when the connection drops first; called on the loop, at
        most once. Raises MqttNotConnected at once when there is no connection. paho writes it on
        the loop's next turn, or at `flush()` (a batch: one flush after the last)."""
        if qos not in (0, 1):
            raise ValueError(
                "only QoS 0 and 1 are supported (QoS 2 state does not survive restarts)"
            )
        conn = self._conn
        if conn is None or not conn.up:
            raise MqttNotConnected("not connected")
        properties = None
        if self._protocol == "5":
            properties = _publish_properties(
                message_expiry_s, response_topic, correlation_data, content_type
            )
        info = conn.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttNotConnected(f"paho did not accept the publish: {paho.error_string(info.rc)}")
        # Registered before anything is written: paho calls on_publish only from loop_write() /
        # loop_read() (the loop's next turn, or flush()), so the callback finds this entry.
        conn.pending_publishes[info.mid] = functools.partial(self._publish_settled, on_done)

    def flush(self) -> None:
        """Write the publishes paho holds now rather than on the loop's next turn."""
        conn = self._conn
        if conn is not None and conn.up:
            conn.flush()

    def _publish_settled(
        self, on_done: Callable[[BaseException | None], None], outcome: ReasonCode | BaseException
    ) -> None:
        if isinstance(outcome, BaseException):
            on_done(outcome)
        elif outcome.is_failure:
            self._bump(publishes_rejected=1)
            on_done(PublishRejected(outcome.value, outcome.getName()))
        else:
            self._bump(publishes_acked=1)
            on_done(None)

    def ack(self, message: InboundMessage) -> None:
        """Acknowledge a QoS 1 message once it is handled (PUBACK). A message that arrived on an
        earlier connection cannot be acked any more: the broker redelivers it, which the caller
        must tolerate (commands are deduplicated by id)."""
        conn = self._conn
        if message.ack_token is None or conn is None or not conn.up:
            return
        connection, mid = message.ack_token
        if connection == conn.number:
            conn.client.ack(mid, message.qos)

    async def get_message(self) -> InboundMessage:
        """Next inbound message (messages received on every connection, in arrival order)."""
        message = await self._inbox.get()
        self._inbox_bytes -= len(message.payload)
        return message

    async def messages(self) -> AsyncGenerator[InboundMessage, None]:
        """Iterate over inbound messages forever."""
        while True:
            yield await self.get_message()

    # --- connection lifecycle --------------------------------------------------------------

    async def run(self) -> None:
        """Connect and stay connected until cancelled; on cancel, disconnect cleanly."""
        settings = self._settings
        policy = RetryPolicy(
            initial_delay_s=settings.backoff_initial_s,
            max_delay_s=settings.backoff_max_s,
            stable_after_s=settings.stable_after_s,
            attempt_timeout_s=None,  # each step of _connect_once has its own deadline
        )
        try:
            await stay_connected(
                self._connect_and_tell,
                self._serve_until_lost,
                policy,
                retry_on=(_ConnectFailedError,),
                on_failure=lambda _n, _exc: None,  # _connect_once has logged it
                what="MQTT",
            )
        finally:
            if self._drop_flush is not None:
                self._drop_flush.cancel()
                self._drop_flush = None
            conn = self._conn
            if conn is not None:
                await self._say_farewell(conn)
                await self._close(conn, clean=True)

    async def _serve_until_lost(self, conn: _Connection) -> None:
        stopping = False
        try:
            await self._serve(conn)
        except asyncio.CancelledError:
            stopping = True  # a clean stop: goodbye, then DISCONNECT
            await self._say_farewell(conn)
            raise
        finally:
            await self._close(conn, clean=stopping)

    async def _say_farewell(self, conn: _Connection) -> None:
        """A clean stop: publish the farewell (bounded) while the connection is still up. The
        DISCONNECT that follows makes the broker drop the will, so without it a stopped unit
        would stay `online`."""
        if self._farewell_factory is None or not conn.up:
            return
        try:
            farewell = self._farewell_factory()
            async with asyncio.timeout(FAREWELL_TIMEOUT_S):
                await self.publish(
                    farewell.topic, farewell.payload, qos=farewell.qos, retain=farewell.retain
                )
        except (MqttLinkError, TimeoutError) as exc:  # the broker may already be gone
            logger.warning("farewell not published (%r); the will may follow instead", exc)
        except Exception as exc:  # the caller's factory: its bug must not stop the stop
            logger.exception("farewell not published; the will may follow instead")
            self._record_callback_error("farewell_factory", exc)

    async def _connect_and_tell(self) -> _Connection:
        """One connect attempt; whoever waits on attempts hears how it ended."""
        try:
            return await self._connect_once()
        finally:
            self._link_state_changed()
            async with self._attempt_ended:  # an uncontended lock: taken without suspending
                self._attempt_ended.notify_all()

    async def _connect_once(self) -> _Connection:
        """One connect attempt: every step under one deadline (connect_timeout_s) and logged.
        Raises _ConnectFailedError when it failed."""
        loud = logging.WARNING if worth_logging(self._consecutive_failures + 1) else logging.DEBUG
        settings = self._settings
        where = f"{settings.host}:{settings.port}"
        try:
            will = self._will_factory() if self._will_factory is not None else None
        except Exception as exc:  # the caller's factory: its bug is logged, recorded, retried
            logger.exception("will_factory failed; not connecting without a will")
            self._record_callback_error("will_factory", exc)
            self._consecutive_failures += 1
            raise _ConnectFailedError("will_factory failed") from exc
        loop = asyncio.get_running_loop()
        try:
            client = self._new_client(will)
        except (OSError, ssl.SSLError, ValueError) as exc:  # an unreadable CA, certificate or key
            self._bump(tls_failures=1)
            self._attempt_failed(will, seen=False)  # no CONNECT left: its will is unseen
            self._last_connect_error = f"TLS identity unusable: {exc}"
            logger.error("MQTT %s (ca_file, client_cert, client_key in the config)", exc)
            raise _ConnectFailedError(self._last_connect_error) from exc
        conn = _Connection(
            loop,
            client,
            self._enqueue,
            self._record_callback_error,
            keepalive_s=settings.keepalive_s,
        )
        started = loop.time()
        deadline = started + settings.connect_timeout_s
        step = "DNS/TCP/TLS + CONNECT"
        logger.debug(
            "MQTT connect attempt %d to %s (MQTT %s): %s, deadline %.1f s",
            conn.number,
            where,
            self._protocol,
            step,
            settings.connect_timeout_s,
        )
        try:
            async with asyncio.timeout_at(deadline):
                await self._open_socket(conn)
                step = "CONNACK"
                logger.debug(
                    "MQTT connect attempt %d: socket open after %.3f s, CONNECT sent; awaiting %s",
                    conn.number,
                    loop.time() - started,
                    step,
                )
                reason, session_present = await conn.connack
        except (TimeoutError, _ConnectFailedError, OSError) as exc:
            # Only when paho's connect() itself raised did no CONNECT leave this host. After a
            # deadline the connect thread may still send it, and a CONNECT without an answer
            # may have reached the broker: it may hold this will.
            seen = not isinstance(exc, _NoConnectSentError)
            self._note_connect_error(exc.__cause__ if isinstance(exc, _NoConnectSentError) else exc)
            logger.log(
                loud,
                "MQTT connect to %s failed at %s after %.3f s (attempt %d): %r",
                where,
                step,
                loop.time() - started,
                conn.number,
                exc.__cause__ if isinstance(exc, _NoConnectSentError) else exc,
            )
            await self._close(conn, clean=False)
            self._attempt_failed(will, seen=seen)
            raise _ConnectFailedError(f"{step}: {exc!r}") from exc
        except asyncio.CancelledError:
            await self._close(conn, clean=False)
            raise
        if reason.is_failure:
            await self._close(conn, clean=False)
            self._attempt_failed(will, seen=False)  # a refused CONNECT's will is discarded
            if should_fall_back_to_v311(self._protocol, reason.value):
                logger.warning("broker refused MQTT 5 (%s); using MQTT 3.1.1 from now on", reason)
                self._protocol = "3.1.1"
                self._consecutive_failures -= 1  # not an outage: the same attempt, in 3.1.1
                return await self._connect_once()
            self._last_connect_error = f"refused by the broker: {reason}"
            logger.log(loud, "MQTT connect to %s refused: %s", where, reason)
            raise _ConnectFailedError(f"refused: {reason}")
        conn.up = True
        conn.up_since = time.monotonic()
        self._conn = conn
        conn.on_lost = functools.partial(self._current_lost, conn)
        self._consecutive_failures = 0
        self._last_connect_error = None
        self._bump(connects=1)
        self._connected_event.set()
        logger.info(
            "MQTT connected in %.3f s (protocol %s, session present: %s)",
            loop.time() - started,
            self._protocol,
            session_present,
        )
        return conn

    def _note_connect_error(self, exc: BaseException | None) -> None:
        self._last_connect_error = repr(exc)
        if is_tls_failure(exc):
            self._bump(tls_failures=1)
            settings = self._settings
            self._last_connect_error = f"TLS: {exc}"
            # An ERROR, not a retry's warning: a refused identity needs a person. Once per
            # window (with the count), as a unit retries for as long as it is refused.
            self._tls_log.log(
                logging.ERROR,
                "tls",
                "MQTT TLS with %s:%d failed: %s (check ca_file %s, client_cert %s, client_key"
                " %s, the clock, and that the broker knows this unit's certificate)",
                settings.host,
                settings.port,
                exc,
                settings.ca_file or "(system CAs)",
                settings.client_cert or "(none)",
                settings.client_key or "(none)",
            )

    def _attempt_failed(self, will: Will | None, *, seen: bool) -> None:
        self._consecutive_failures += 1
        self._bump(connect_failures=1)
        if seen or will is None or self._will_unseen is None:
            return
        try:
            self._will_unseen(will)
        except Exception as exc:  # the caller's callback: its bug must not stop reconnecting
            logger.exception("will_unseen failed")
            self._record_callback_error("will_unseen", exc)

    async def _open_socket(self, conn: _Connection) -> None:
        """DNS, TCP connect (+ TLS handshake) and CONNECT: paho's connect() blocks, so it runs on
        a thread; then the socket is handed to the loop. Bounded by the caller's deadline; a
        thread still running then is abandoned and its socket closed once it returns."""
        settings = self._settings
        properties = None
        if self._protocol == "5":
            properties = _new_properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = settings.session_expiry_s
            properties.MaximumPacketSize = settings.max_packet_bytes
            properties.ReceiveMaximum = settings.receive_maximum
        client = conn.client
        clean_start = False if self._protocol == "5" else paho.MQTT_CLEAN_START_FIRST_ONLY

        def connect() -> None:
            client.connect(
                settings.host,
                settings.port,
                keepalive=settings.keepalive_s,
                clean_start=clean_start,
                properties=properties,
            )

        def close() -> None:
            _close_socket(client)
            # paho leaves a TLS socket open when its handshake fails: close what it wrapped.
            context = client._ssl_context  # paho has no public getter
            for sock in getattr(context, "wrapped_sockets", ()):
                with contextlib.suppress(OSError):
                    sock.close()

        done = _off_loop(conn.loop, connect, f"mqtt-connect-{conn.number}", cleanup=close)
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:  # the deadline, or a stop: the thread cannot be stopped
            done.add_done_callback(lambda _: close())
            raise
        except Exception as exc:  # whatever connect() raised (OSError, ssl, a bad host name)
            close()
            raise _NoConnectSentError(repr(exc)) from exc
        conn.attach()

    def _new_client(self, will: Will | None) -> paho.Client:
        settings = self._settings
        v5 = self._protocol == "5"
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            clean_session=None if v5 else False,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,  # run() owns the reconnect policy
            manual_ack=True,  # inbound QoS 1 is acked after it is handled: see ack()
        )
        client.connect_timeout = settings.connect_timeout_s  # the TCP connect and TLS handshake
        client.max_inflight_messages_set(settings.max_inflight)
        client.max_queued_messages_set(0)  # unbounded: callers bound it themselves
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.tls:
            client.tls_set_context(_closing_on_failure(tls_context(settings)))
        if will is not None:
            will_properties = None
            if v5:
                will_properties = _new_properties(PacketTypes.WILLMESSAGE)
                will_properties.ContentType = CONTENT_TYPE
            client.will_set(
                will.topic,
                will.payload,
                qos=will.qos,
                retain=will.retain,
                properties=will_properties,
            )
        return client

    async def _serve(self, conn: _Connection) -> None:
        """Subscribe, run on_connected, then wait until the connection is lost (on_disconnect,
        a socket error, or a missed PINGRESP: all arrive as `conn.lost`, nothing polls)."""
        async with asyncio.TaskGroup() as tasks:
            setup = tasks.create_task(self._after_connect(conn), name="mqtt-after-connect")
            await conn.lost.wait()
            setup.cancel()

    async def _after_connect(self, conn: _Connection) -> None:
        try:
            if self._subscriptions:
                await self._subscribe(conn)
            if self._on_connected is not None:
                await self._on_connected()
        except MqttNotConnected as exc:
            logger.warning("connection lost during connect hooks: %s", exc)
        except Exception as exc:  # the caller's hook: its bug must not hold the link back
            logger.exception("MQTT on-connect hook failed")
            self._record_callback_error("on_connected", exc)
        finally:
            # Even after a failed hook: a bug there must not hold every event back for ever.
            if self._conn is conn and conn.up:
                self._ready_event.set()

    async def _subscribe(self, conn: _Connection) -> None:
        # The persistent session may already hold these; subscribing again is harmless and
        # repairs a session the broker lost.
        result, mid = conn.client.subscribe(list(self._subscriptions))
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttNotConnected(f"subscribe not sent: {paho.error_string(result)}")
        suback: asyncio.Future[list[ReasonCode]] = conn.loop.create_future()
        conn.pending_subscribes[mid] = suback
        try:
            async with asyncio.timeout(self._settings.connect_timeout_s):
                reasons = await suback
        except TimeoutError:
            # Without our subscriptions the link is useless: start over with a new connection.
            conn.mark_lost("no SUBACK in time")
            raise MqttNotConnected("no SUBACK in time") from None
        for (topic, _qos), reason in zip(self._subscriptions, reasons, strict=False):
            if reason.is_failure:
                logger.error("subscription to %s refused: %s", topic, reason)

    def _current_lost(self, conn: _Connection) -> None:
        """Said at once, not when the run task gets round to closing the connection: until
        then `wait_ready()` would return at once for a connection that is gone, and a caller
        that retries on MqttNotConnected would spin without ever yielding to the loop (the
        publisher did, with the broker down, and starved the dispenser's timers)."""
        if self._conn is conn:
            self._connected_event.clear()
            self._ready_event.clear()
            self._link_state_changed()

    async def _close(self, conn: _Connection, *, clean: bool) -> None:
        """End the connection. Clean (a stop): DISCONNECT, so the broker drops the will (MQTT
        semantics), and wait, bounded, for paho to write it and close the socket. Otherwise the
        socket is closed abruptly and the will stands."""
        if self._conn is conn:  # only connections that completed CONNACK are ever current
            self._conn = None
            self._connected_event.clear()
            self._ready_event.clear()
            self._bump(disconnects=1)
            self._link_state_changed()
        conn.mark_lost("clean disconnect" if clean else "closing")
        if clean and conn.attached:
            conn.client.disconnect()  # queued; written when the loop finds the socket writable
            try:
                async with asyncio.timeout(_DISCONNECT_TIMEOUT_S):
                    await conn.socket_closed.wait()
            except TimeoutError:
                logger.warning("MQTT DISCONNECT not written within %.0f s", _DISCONNECT_TIMEOUT_S)
        conn.release()

    # --- bookkeeping -----------------------------------------------------------------------

    def _enqueue(self, message: InboundMessage) -> None:
        size = len(message.payload)
        if self._inbox.qsize() < self._settings.inbox_limit or (
            # QoS 1 past the count: kept while the bytes allow. A dropped one is redelivered only
            # on the next connection and holds one of the broker's in-flight slots meanwhile (a
            # flood of drops stalled every later command; mosquitto 2.0 does not keep to the
            # Receive Maximum we announce once we ack). The bytes still bound a hostile broker.
            message.qos > 0 and self._inbox_bytes + size <= self._settings.inbox_bytes_limit
        ):
            self._inbox.put_nowait(message)
            self._inbox_bytes += size
            if self._inbox.qsize() > self._settings.inbox_limit:
                self._bump(inbound_over_limit=1)
        else:
            self._bump(inbound_dropped=1)
            logged = self._drop_log.warning(
                "inbox-full",
                "inbound MQTT message on %s dropped: %d already wait to be handled "
                "(%d dropped so far)%s",
                message.topic,
                self._inbox.qsize(),
                self._counts["inbound_dropped"],
                "; the broker redelivers it on the next connection" if message.qos > 0 else "",
            )
            self._last_dropped_topic = message.topic
            if logged and self._drop_flush is None:
                # Not from inside paho's read (the application may write to its store): the
                # first drop now, then what was dropped since, once a window, until none is.
                loop = asyncio.get_running_loop()
                self._drop_flush = loop.call_later(0, self._tell_dropped)

    def _tell_dropped(self) -> None:
        dropped = self._counts["inbound_dropped"]
        count, self._dropped_told = dropped - self._dropped_told, dropped
        if count == 0:
            self._drop_flush = None
            return
        self._drop_flush = asyncio.get_running_loop().call_later(
            self._settings.drop_report_s, self._tell_dropped
        )
        if self._on_inbound_dropped is None:
            return
        try:
            self._on_inbound_dropped(count, self._last_dropped_topic)
        except Exception as exc:  # the caller's callback, on a loop timer: logged and recorded
            logger.exception("on_inbound_dropped failed")
            self._record_callback_error("on_inbound_dropped", exc)

    def _bump(self, **deltas: int) -> None:
        for name, delta in deltas.items():
            self._counts[name] += delta

    def _record_callback_error(self, where: str, exc: BaseException) -> None:
        del where  # already logged where it happened
        self._last_callback_error = exc
        self._bump(callback_errors=1)


class _PackedOnce(Properties):
    """Publish properties built once and shared: paho packs them for every PUBLISH it writes
    (and again for a retry), always to the same bytes, so the bytes are kept."""

    _packed: bytes | None = None

    def pack(self) -> bytes:
        if self._packed is None:
            # paho's __setattr__ admits only MQTT property names
            object.__setattr__(self, "_packed", bytes(super().pack()))  # type: ignore[no-untyped-call]
        assert self._packed is not None
        return self._packed


@functools.lru_cache(maxsize=64)
def _publish_properties(
    message_expiry_s: int | None,
    response_topic: str | None,
    correlation_data: bytes | None,
    content_type: str | None,
) -> Properties | None:
    # Cached: building paho Properties costs ~100 µs and most publishes share the same ones
    # (content type only). paho only reads them when packing, so sharing is safe; the packed
    # bytes are kept too (_PackedOnce).
    props = _PackedOnce(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    used = False
    if message_expiry_s is not None:
        props.MessageExpiryInterval = message_expiry_s
        used = True
    if response_topic is not None:
        props.ResponseTopic = response_topic
        used = True
    if correlation_data is not None:
        props.CorrelationData = correlation_data
        used = True
    if content_type is not None:
        props.ContentType = content_type
        used = True
    return props if used else None


def _close_socket(client: paho.Client) -> None:
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def _new_properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho leaves it untyped
