"""The demo's embedded amqtt broker, checked with real paho-mqtt 2.x clients.

The broker runs on its own event loop in a background thread (as paho runs its network loop on
its own thread); every wait is a bounded wait on a condition.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.demo.broker import EmbeddedBroker

T = TypeVar("T")

WAIT_S = 10.0  # upper bound for anything that should happen (it takes milliseconds)
# The only deliberate wait for something NOT to happen: how long a silent broker is given.
SILENCE_S = 1.0

CONNACK_UNACCEPTABLE_PROTOCOL_V311 = b"\x20\x02\x00\x01"  # 3.1.1 CONNACK, return code 1
UNSUPPORTED_PROTOCOL_VERSION_V5 = 0x84


class BrokerThread:
    """An EmbeddedBroker on an event loop in a background thread, for synchronous paho tests."""

    def __init__(self, port: int = 0) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="broker-loop")
        self._thread.start()
        self.broker = EmbeddedBroker(port=port)
        self.call(self.broker.start())

    @property
    def port(self) -> int:
        return self.broker.port

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT_S)

    def close(self) -> None:
        try:
            self.call(self.broker.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(WAIT_S)
            self.loop.close()


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    running = BrokerThread()
    try:
        yield running
    finally:
        running.close()


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class WatchedClient:
    """A paho client whose callbacks turn into events and lists a test can wait on."""

    client: paho.Client
    connected: threading.Event = field(default_factory=threading.Event)
    connack: list[ReasonCode] = field(default_factory=list)
    subscribed: threading.Event = field(default_factory=threading.Event)
    messages: list[Received] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def wait_messages(self, count: int) -> list[Received]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.messages) >= count, WAIT_S), (
                f"expected {count} messages, got {self.messages}"
            )
            return list(self.messages)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=qos)
        assert self.subscribed.wait(WAIT_S), f"no SUBACK for {topic}"

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_client(
    client_id: str,
    *,
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
    clean_session: bool | None = None,
) -> WatchedClient:
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=clean_session,
        reconnect_on_failure=False,
    )
    wrapper = WatchedClient(client)

    def on_connect(
        _c: paho.Client,
        _u: object,
        _f: paho.ConnectFlags,
        reason: ReasonCode,
        _p: Properties | None,
    ) -> None:
        wrapper.connack.append(reason)
        wrapper.connected.set()

    def on_subscribe(
        _c: paho.Client, _u: object, _mid: int, reasons: list[ReasonCode], _p: Properties | None
    ) -> None:
        if not any(r.is_failure for r in reasons):
            wrapper.subscribed.set()

    def on_message(_c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        with wrapper.changed:
            wrapper.messages.append(Received(msg.topic, bytes(msg.payload), msg.qos, msg.retain))
            wrapper.changed.notify_all()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    return wrapper


@pytest.fixture
def clients() -> Iterator[list[WatchedClient]]:
    """Clients made by a test; all stopped at the end, whatever happened."""
    made: list[WatchedClient] = []
    yield made
    for made_client in made:
        made_client.stop()


def connected_client(
    broker: BrokerThread, clients: list[WatchedClient], client_id: str, **will: Any
) -> WatchedClient:
    tc = make_client(client_id)
    clients.append(tc)
    if will:
        tc.client.will_set(**will)
    tc.client.connect("127.0.0.1", broker.port, keepalive=30)
    tc.client.loop_start()
    assert tc.connected.wait(WAIT_S), "no CONNACK"
    assert tc.connack[0].value == 0, tc.connack
    return tc


# --- lifecycle -------------------------------------------------------------------------------


def test_listens_on_a_free_loopback_port_and_stops_listening() -> None:
    async def scenario() -> tuple[int, int, bool]:
        async with EmbeddedBroker() as first, EmbeddedBroker() as second:
            ports = (first.port, second.port)
            assert first.host == "127.0.0.1"
            # accepts a TCP connection on the loopback address
            _, writer = await asyncio.open_connection("127.0.0.1", first.port)
            writer.close()
            await writer.wait_closed()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", ports[0])
        except ConnectionRefusedError:
            refused = True
        else:
            writer.close()
            await writer.wait_closed()
            refused = False
        return ports[0], ports[1], refused

    first_port, second_port, refused_after_stop = asyncio.run(scenario())
    assert first_port > 0
    assert second_port > 0
    assert first_port != second_port
    assert refused_after_stop


def test_port_is_unknown_before_start_and_stop_is_idempotent() -> None:
    async def scenario() -> None:
        broker = EmbeddedBroker()
        with pytest.raises(RuntimeError, match="not started"):
            _ = broker.port
        await broker.start()
        await broker.stop()
        await broker.stop()
        with pytest.raises(RuntimeError, match="not started"):
            _ = broker.port

    asyncio.run(scenario())


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "localhost", "::1"])
def test_refuses_anything_but_ipv4_loopback(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        EmbeddedBroker(host=host)


def test_listens_on_a_given_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        wanted = probe.getsockname()[1]

    async def scenario() -> int:
        async with EmbeddedBroker(port=wanted) as broker:
            return broker.port

    assert asyncio.run(scenario()) == wanted


# --- MQTT 3.1.1 with paho ----------------------------------------------------------------------


def test_qos1_round_trip(broker: BrokerThread, clients: list[WatchedClient]) -> None:
    subscriber = connected_client(broker, clients, "sub")
    subscriber.subscribe("dispenser/v1/+/events", qos=1)
    publisher = connected_client(broker, clients, "pub")

    info = publisher.client.publish("dispenser/v1/demo-unit/events", b'{"seq":1}', qos=1)
    info.wait_for_publish(WAIT_S)  # returns once the broker's PUBACK arrived

    assert info.is_published()
    [message] = subscriber.wait_messages(1)
    assert message == Received("dispenser/v1/demo-unit/events", b'{"seq":1}', 1, False)


def test_retained_message_reaches_a_late_subscriber(
    broker: BrokerThread, clients: list[WatchedClient]
) -> None:
    publisher = connected_client(broker, clients, "unit")
    info = publisher.client.publish(
        "dispenser/v1/demo-unit/state/availability", b'{"state":"online"}', qos=1, retain=True
    )
    info.wait_for_publish(WAIT_S)
    assert info.is_published()

    late = connected_client(broker, clients, "late")
    late.subscribe("dispenser/v1/+/state/#", qos=1)

    [message] = late.wait_messages(1)
    assert message.topic == "dispenser/v1/demo-unit/state/availability"
    assert message.payload == b'{"state":"online"}'
    assert message.retain


def test_will_is_published_when_the_socket_is_dropped(
    broker: BrokerThread, clients: list[WatchedClient]
) -> None:
    topic = "dispenser/v1/demo-unit/state/availability"
    watcher = connected_client(broker, clients, "watcher")
    watcher.subscribe(topic, qos=1)
    unit = connected_client(
        broker, clients, "unit", topic=topic, payload=b'{"state":"offline"}', qos=1, retain=True
    )

    # Drop the TCP connection without DISCONNECT, as a power cut or a dead Wi-Fi would.
    unit.client.loop_stop()
    sock = unit.client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()

    [will] = watcher.wait_messages(1)
    assert (will.topic, will.payload, will.qos) == (topic, b'{"state":"offline"}', 1)
    # retain=True on the will: a receiver that connects later still learns the unit is offline.
    # (amqtt may hand it over twice, see test_connecting_client_gets_retained_messages_unasked.)
    late = connected_client(broker, clients, "late")
    late.subscribe(topic, qos=1)
    retained = late.wait_messages(1)
    assert all(m.payload == b'{"state":"offline"}' and m.retain for m in retained), retained


def test_persistent_session_gets_qos1_messages_sent_while_it_was_offline(
    broker: BrokerThread, clients: list[WatchedClient]
) -> None:
    """Commands wait at the broker while the unit is offline (as on mosquitto)."""
    topic = "dispenser/v1/demo-unit/commands/request"

    def agent() -> WatchedClient:
        tc = make_client("demo-unit", clean_session=False)
        clients.append(tc)
        tc.client.connect("127.0.0.1", broker.port)
        tc.client.loop_start()
        assert tc.connected.wait(WAIT_S)
        return tc

    first = agent()
    first.subscribe(topic, qos=1)
    first.stop()  # clean DISCONNECT; the session (and its subscription) stays at the broker
    centre = connected_client(broker, clients, "centre")
    info = centre.client.publish(topic, b'{"command":"pause"}', qos=1)
    info.wait_for_publish(WAIT_S)
    assert info.is_published()

    again = agent()  # same client id, no new SUBSCRIBE

    [queued] = again.wait_messages(1)
    assert (queued.topic, queued.payload, queued.qos) == (topic, b'{"command":"pause"}', 1)


# --- MQTT 5: what amqtt 0.12 answers -----------------------------------------------------------


def v5_connect_packet(properties: bytes, client_id: bytes = b"demo-unit") -> bytes:
    """An MQTT 5 CONNECT (clean start, keep-alive 30) with the given encoded properties."""
    variable_header = b"\x00\x04MQTT\x05\x02\x00\x1e" + bytes([len(properties)]) + properties
    body = variable_header + len(client_id).to_bytes(2, "big") + client_id
    return b"\x10" + bytes([len(body)]) + body


SESSION_EXPIRY_ONE_WEEK = b"\x11" + (7 * 24 * 3600).to_bytes(4, "big")


def test_v5_connect_without_properties_gets_a_311_unacceptable_protocol_connack(
    broker: BrokerThread,
) -> None:
    with socket.create_connection(("127.0.0.1", broker.port), timeout=WAIT_S) as sock:
        sock.sendall(v5_connect_packet(b""))
        answer = sock.recv(16)
        closed = sock.recv(16)
    # amqtt answers in 3.1.1 format (return code 1) and closes the connection
    assert answer == CONNACK_UNACCEPTABLE_PROTOCOL_V311
    assert closed == b""


def test_paho_v5_client_sees_unsupported_protocol_version(
    broker: BrokerThread, clients: list[WatchedClient]
) -> None:
    # paho 2.x reads a 3.1.1 return code 1 in a v5 CONNACK as reason 0x84, the MQTT 5 code.
    tc = make_client("v5-no-properties", protocol=MQTTProtocolVersion.MQTTv5)
    clients.append(tc)
    tc.client.connect("127.0.0.1", broker.port)
    tc.client.loop_start()
    assert tc.connected.wait(WAIT_S)
    assert tc.connack[0].value == UNSUPPORTED_PROTOCOL_VERSION_V5
    assert tc.connack[0].getName() == "Unsupported protocol version"


def test_v5_connect_with_properties_gets_no_connack_until_the_client_gives_up(
    broker: BrokerThread,
) -> None:
    """amqtt reads v5 properties as the client id's length and waits for bytes that never come.

    Our MQTT link always sends a Session Expiry Interval in its v5 CONNECT, so on amqtt it gets
    neither a CONNACK nor a closed connection: it only sees its own connect timeout.
    """
    with socket.create_connection(("127.0.0.1", broker.port), timeout=WAIT_S) as sock:
        sock.sendall(v5_connect_packet(SESSION_EXPIRY_ONE_WEEK))
        readable, _, _ = select.select([sock], [], [], SILENCE_S)
        assert readable == [], "amqtt answered a v5 CONNECT with properties: behaviour changed"
        # Once the client stops sending, amqtt's read ends and it sends the 3.1.1 refusal.
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(16) == CONNACK_UNACCEPTABLE_PROTOCOL_V311


def test_paho_v5_client_with_session_expiry_gets_no_connack(
    broker: BrokerThread, clients: list[WatchedClient]
) -> None:
    tc = make_client("v5-session-expiry", protocol=MQTTProtocolVersion.MQTTv5)
    clients.append(tc)
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 7 * 24 * 3600
    tc.client.connect("127.0.0.1", broker.port, properties=properties)
    tc.client.loop_start()
    assert not tc.connected.wait(SILENCE_S), f"amqtt now answers: {tc.connack}"


# --- amqtt quirks the demo has to live with ----------------------------------------------------


def test_connecting_client_gets_retained_messages_unasked(
    broker: BrokerThread, clients: list[WatchedClient]
) -> None:
    """amqtt 0.12 sends every newly connected client the retained messages matching ANY client's
    subscription (QoS 0), even with no subscription of its own (Broker._handle_client_session).

    In the demo the live view subscribes to dispenser/v1/+/#, so the agent, on every connect,
    receives its own retained state topics although it subscribed only to its command topic.
    """
    topic = "dispenser/v1/demo-unit/state/health"
    watcher = connected_client(broker, clients, "view")
    watcher.subscribe("dispenser/v1/+/#", qos=1)
    unit = connected_client(broker, clients, "unit")
    info = unit.client.publish(topic, b'{"backlog_events":0}', qos=1, retain=True)
    info.wait_for_publish(WAIT_S)
    assert info.is_published()

    bystander = connected_client(broker, clients, "agent")  # subscribes to nothing

    [unasked] = bystander.wait_messages(1)
    assert (unasked.topic, unasked.qos, unasked.retain) == (topic, 0, True)
