"""The MQTT link against a real private mosquitto on 127.0.0.1 (no broker mocks).

Failure injection goes through MqttTcpProxy (abrupt connection loss, held PUBACKs, a broker that
refuses MQTT 5). Every wait is bounded; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from broker import MosquittoBroker, MqttTcpProxy
from conftest_mqtt import mosquitto  # noqa: F401  (fixture; the lead's conftest.py imports it too)
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.mqtt.link import (
    InboundMessage,
    MqttLink,
    MqttNotConnected,
    MqttSettings,
    PublishRejected,
    Will,
    should_fall_back_to_v311,
)

TEST_TIMEOUT_S = 40.0
WAIT_S = 10.0


# --- helpers ---------------------------------------------------------------------------------


def run(test: Callable[[], Coroutine[Any, Any, None]], timeout: float = TEST_TIMEOUT_S) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await test()

    asyncio.run(bounded())


def settings_for(port: int, client_id: str = "unit-1", **overrides: Any) -> MqttSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "client_id": client_id,
        "connect_timeout_s": 3.0,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.3,
    }
    values.update(overrides)
    return MqttSettings(**values)


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[asyncio.Task[None]]:
    """Run the link for the duration of the block, then cancel it (clean disconnect)."""
    task = asyncio.create_task(link.run(), name="mqtt-link-under-test")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:  # noqa: ASYNC109
    """Wait for a condition, bounded (state changes on another thread have no event to await)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 (polling a predicate with a bound, not a sleep)
            await asyncio.sleep(0.01)


class Probe:
    """A plain paho MQTT 5 client on its own thread: the response centre's side of the wire."""

    def __init__(self, port: int, client_id: str = "probe") -> None:
        self._loop = asyncio.get_running_loop()
        self.received: asyncio.Queue[paho.MQTTMessage] = asyncio.Queue()
        self._subscribed = threading.Event()
        self._connected = threading.Event()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.on_connect = lambda *_: self._connected.set()
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.port = port

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        self._loop.call_soon_threadsafe(self.received.put_nowait, msg)

    async def start(self, *topics: str) -> None:
        await asyncio.to_thread(self.client.connect, "127.0.0.1", self.port)
        self.client.loop_start()
        await asyncio.to_thread(self._connected.wait, WAIT_S)
        assert self._connected.is_set()
        for topic in topics:
            self._subscribed.clear()
            self.client.subscribe(topic, qos=1)
            await asyncio.to_thread(self._subscribed.wait, WAIT_S)
            assert self._subscribed.is_set()

    async def stop(self) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)

    async def next(self, timeout: float = WAIT_S) -> paho.MQTTMessage:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            return await self.received.get()

    async def publish(self, topic: str, payload: bytes, props: Properties | None = None) -> None:
        info = self.client.publish(topic, payload, qos=1, properties=props)
        await asyncio.to_thread(info.wait_for_publish, WAIT_S)
        assert info.is_published()


@contextlib.asynccontextmanager
async def probe_on(port: int, *topics: str) -> AsyncIterator[Probe]:
    probe = Probe(port)
    await probe.start(*topics)
    try:
        yield probe
    finally:
        await probe.stop()


class Counter:
    """An on_connected hook that counts calls and can publish a birth message."""

    def __init__(self, action: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.calls = 0
        self._action = action

    async def __call__(self) -> None:
        self.calls += 1
        if self._action is not None:
            await self._action(self.calls)


# --- connect and publish -----------------------------------------------------------------------


def test_publish_qos1_reaches_subscriber_and_returns_only_after_puback(
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    async def scenario() -> None:
        async with MqttTcpProxy(mosquitto.port) as proxy, probe_on(mosquitto.port, "ev/#") as probe:
            link = MqttLink(settings_for(proxy.port), will_factory=None, subscriptions=())
            async with running(link):
                await link.wait_connected(WAIT_S)
                assert link.connected
                assert link.protocol == "5"

                await link.publish("ev/1", b'{"n":1}')
                got = await probe.next()
                assert (got.topic, got.payload, got.qos) == ("ev/1", b'{"n":1}', 1)
                assert link.stats.publishes_acked == 1

                # Hold the broker's PUBACK in the proxy: the broker has the message (the probe
                # receives it) but publish() must not return until the ack reaches the link.
                proxy.hold_downstream()
                pending = asyncio.create_task(link.publish("ev/2", b"two"))
                assert (await probe.next()).payload == b"two"
                await asyncio.sleep(0)  # let the task reach its await
                assert not pending.done()
                proxy.release_downstream()
                await asyncio.wait_for(pending, WAIT_S)
                assert link.stats.publishes_acked == 2

    run(scenario)


def test_publish_raises_not_connected_when_link_drops_before_the_ack(
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    async def scenario() -> None:
        async with MqttTcpProxy(mosquitto.port) as proxy, probe_on(mosquitto.port, "ev/#") as probe:
            link = MqttLink(settings_for(proxy.port), will_factory=None, subscriptions=())
            async with running(link):
                await link.wait_connected(WAIT_S)
                proxy.hold_downstream()
                pending = asyncio.create_task(link.publish("ev/x", b"unacked"))
                await probe.next()  # the broker got it; its PUBACK is held back
                proxy.sever()
                with pytest.raises(MqttNotConnected):
                    await asyncio.wait_for(pending, WAIT_S)
                assert link.stats.publishes_acked == 0

    run(scenario)


def test_a_caller_retrying_on_not_connected_waits_for_the_next_connection(
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    """A caller that streams publishes and, on MqttNotConnected, goes back to `wait_ready()`
    (the publisher draining a backlog) must wait there for the next connection. It was told
    "ready" at once for a connection already lost, until the link's task had closed it; a
    caller scheduled before that task retried without ever yielding, so the task never ran (the
    publisher spun for good with the broker down, and the dispenser's timers starved)."""
    retries_without_a_connection = 0
    delivered = 0
    link: MqttLink

    def settled(error: BaseException | None) -> None:
        nonlocal delivered
        delivered += error is None

    async def drain() -> None:
        nonlocal retries_without_a_connection
        while True:
            await link.wait_ready()
            try:
                while True:
                    # no flush(): the loop writes it, so the loss is seen in the link's socket
                    # callbacks, which run after this task's turn (never inside its own write)
                    link.publish_nowait("ev/x", b"backlog", settled)
                    await asyncio.sleep(0)  # between batches, as the publisher does
            except MqttNotConnected:
                retries_without_a_connection += 1
                if retries_without_a_connection > 100:
                    raise AssertionError("retried 100 times without a connection") from None

    async def scenario() -> None:
        nonlocal link
        async with MqttTcpProxy(mosquitto.port) as proxy:
            link = MqttLink(settings_for(proxy.port), will_factory=None, subscriptions=())
            async with running(link):
                await link.wait_ready(WAIT_S)
                drainer = asyncio.create_task(drain())
                await until(lambda: delivered >= 50)
                proxy.sever()  # the drainer is always scheduled: it sees the loss first
                await until(lambda: link.stats.connects >= 2 or drainer.done())
                assert not drainer.done(), drainer.exception()
                assert retries_without_a_connection == 1
                drainer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await drainer

    run(scenario)


def test_publish_without_connection_raises_not_connected(
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    async def scenario() -> None:
        link = MqttLink(settings_for(mosquitto.port), will_factory=None, subscriptions=())
        assert not link.connected
        with pytest.raises(MqttNotConnected):
            await link.publish("ev/1", b"x")
        with pytest.raises(TimeoutError):
            await link.wait_connected(0.05)

    run(scenario)


def test_failure_reason_code_in_puback_raises_publish_rejected(tmp_path: Path) -> None:
    # Anonymous clients may write only below allowed/: mosquitto answers other publishes with
    # PUBACK 0x87 (not authorized), which paho itself still reports as "published".
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite allowed/#\n")
    with MosquittoBroker(tmp_path / "broker", extra_config=[f"acl_file {acl}"]) as broker:

        async def scenario() -> None:
            link = MqttLink(settings_for(broker.port), will_factory=None, subscriptions=())
            async with running(link):
                await link.wait_connected(WAIT_S)
                with pytest.raises(PublishRejected) as rejected:
                    await link.publish("denied/x", b"x")
                assert rejected.value.reason_code == 0x87
                await link.publish("allowed/x", b"x")
                assert (link.stats.publishes_rejected, link.stats.publishes_acked) == (1, 1)

        run(scenario)


def test_qos0_publish_returns_once_written(mosquitto: MosquittoBroker) -> None:  # noqa: F811
    async def scenario() -> None:
        async with probe_on(mosquitto.port, "hb/#") as probe:
            link = MqttLink(settings_for(mosquitto.port), will_factory=None, subscriptions=())
            async with running(link):
                await link.wait_connected(WAIT_S)
                await link.publish("hb/1", b"beat", qos=0, message_expiry_s=30)
                got = await probe.next()
                assert (got.payload, got.qos) == (b"beat", 0)

    run(scenario)


# --- will, birth and reconnects ----------------------------------------------------------------


def test_will_is_sent_on_abrupt_loss_but_not_on_clean_stop(
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    async def scenario() -> None:
        sessions: list[int] = []

        def will_factory() -> Will:
            sessions.append(len(sessions) + 1)
            return Will("unit-1/availability", f"offline:{sessions[-1]}".encode())

        async with (
            MqttTcpProxy(mosquitto.port) as proxy,
            probe_on(mosquitto.port, "unit-1/availability") as probe,
        ):
            link: MqttLink

            async def birth(n: int) -> None:
                await link.publish("unit-1/availability", f"online:{n}".encode(), retain=True)

            link = MqttLink(
                settings_for(proxy.port),
                will_factory=will_factory,
                subscriptions=(),
                on_connected=Counter(birth),
            )
            async with running(link):
                assert (await probe.next()).payload == b"online:1"
                proxy.sever()  # the socket dies without DISCONNECT
                will = await probe.next()
                assert will.payload == b"offline:1"
                # The link comes back by itself with a fresh will carrying the next session.
                assert (await probe.next()).payload == b"online:2"
                assert sessions == [1, 2]
            # Clean stop: DISCONNECT was sent, so the broker must discard will "offline:2". A
            # sentinel published afterwards through the same broker must be the next message.
            await probe.publish("unit-1/availability", b"sentinel")
            assert (await probe.next()).payload == b"sentinel"
            assert probe.received.empty()

    run(scenario)


def test_broker_restart_disconnects_then_link_reconnects_and_reruns_on_connected(
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    async def scenario() -> None:
        hook = Counter()
        link = MqttLink(
            settings_for(mosquitto.port), will_factory=None, subscriptions=(), on_connected=hook
        )
        async with running(link):
            await link.wait_connected(WAIT_S)
            await until(lambda: hook.calls == 1)

            await asyncio.to_thread(mosquitto.stop)
            await until(lambda: not link.connected)
            with pytest.raises(MqttNotConnected):
                await link.publish("ev/1", b"x")

            await asyncio.to_thread(mosquitto.start)
            # backoff_max_s is 0.3 s in these settings: reconnecting must take seconds, not more.
            await link.wait_connected(5.0)
            await until(lambda: hook.calls == 2, timeout=5.0)
            await link.publish("ev/1", b"after restart")
            assert link.stats.connects == 2
            assert link.stats.disconnects == 1

    run(scenario)


def test_link_drops_a_silent_broker_by_keepalive_and_reconnects(
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    async def scenario() -> None:
        hook = Counter()
        # keepalive 2 s: the PINGREQ is due after 2 s of silence, its PINGRESP 2 s later.
        async with MqttTcpProxy(mosquitto.port) as proxy:
            link = MqttLink(
                settings_for(proxy.port, keepalive_s=2),
                will_factory=None,
                subscriptions=(),
                on_connected=hook,
            )
            async with running(link):
                await link.wait_connected(WAIT_S)
                await until(lambda: hook.calls == 1)  # the first connection's hook has run
                # The broker goes silent (no PINGRESP), the socket stays open: only the
                # keepalive task on the loop can notice.
                proxy.hold_downstream()
                await until(lambda: link.stats.disconnects == 1)
                proxy.release_downstream()
                await until(lambda: link.stats.connects == 2 and link.connected)
                await until(lambda: hook.calls == 2)
                await link.publish("ev/1", b"works again")

    run(scenario)


def test_no_paho_thread_in_a_running_link(mosquitto: MosquittoBroker) -> None:  # noqa: F811
    """paho is driven from the event loop: once connected, the link runs no thread at all (the
    short-lived connect thread has ended), while publishing and receiving."""

    async def scenario() -> None:
        async with probe_on(mosquitto.port, "ev/#") as probe:  # the probe has its own thread
            before = set(threading.enumerate())
            link = MqttLink(settings_for(mosquitto.port), will_factory=None, subscriptions=[])
            async with running(link):
                await link.wait_connected(WAIT_S)
                await link.publish("ev/1", b"x")
                assert (await probe.next()).payload == b"x"
                # The connect thread ends right after handing over its socket.
                await until(lambda: set(threading.enumerate()) <= before)
                await link.publish("ev/2", b"y")  # a round trip with no thread to carry it
                assert (await probe.next()).payload == b"y"
                extra = set(threading.enumerate()) - before
                assert not extra, [t.name for t in extra]

    run(scenario)


# --- persistent session ------------------------------------------------------------------------


def test_command_sent_while_offline_is_delivered_after_reconnect_across_broker_restart(
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    async def scenario() -> None:
        subscriptions = [("cmd/unit-1", 1)]
        first = MqttLink(
            settings_for(mosquitto.port), will_factory=None, subscriptions=subscriptions
        )
        async with running(first):
            await first.wait_connected(WAIT_S)
            # Make sure the SUBACK arrived before going offline: a round trip through the topic.
            async with probe_on(mosquitto.port) as probe:
                await probe.publish("cmd/unit-1", b"warm-up")
                warm_up = await first.get_message()
                assert warm_up.payload == b"warm-up"
                first.ack(warm_up)  # handled: the broker must not deliver it again
        # The unit is offline now; the response centre sends a command.
        async with probe_on(mosquitto.port) as probe:
            await probe.publish("cmd/unit-1", b'{"cmd":"pause"}')
        await asyncio.to_thread(mosquitto.restart)  # persistence keeps the session and the queue

        second = MqttLink(
            settings_for(mosquitto.port), will_factory=None, subscriptions=subscriptions
        )
        async with running(second):
            async with contextlib.aclosing(second.messages()) as inbound:
                msg = await asyncio.wait_for(anext(inbound), WAIT_S)
            assert (msg.topic, msg.payload, msg.qos) == ("cmd/unit-1", b'{"cmd":"pause"}', 1)

    run(scenario)


def test_inbound_qos1_is_redelivered_until_the_application_acks_it(
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    """A command received but not yet acked when the unit goes away comes again on the next
    connection (same client id, persistent session); once acked, it does not."""

    async def scenario() -> None:
        subscriptions = [("cmd/unit-1", 1)]
        async with probe_on(mosquitto.port) as probe:
            first_link = MqttLink(
                settings_for(mosquitto.port), will_factory=None, subscriptions=subscriptions
            )
            async with running(first_link):
                await first_link.wait_connected(WAIT_S)
                # The link subscribes after connecting: retry a warm-up until it is live.
                warm_up = await _publish_until_received(probe, first_link, "cmd/unit-1", None)
                first_link.ack(warm_up)
                await probe.publish("cmd/unit-1", b"first")
                first = await _next_payload(first_link, b"first")
                assert first.ack_token is not None
                # A QoS 1 round trip: paho has finished with "first" (an automatic PUBACK would
                # be queued) before it reads this ack, and paho writes in queue order, so the
                # DISCONNECT below goes after any such PUBACK.
                await first_link.publish("ev/sync", b"sync")
            # first_link stopped without acking "first"
            second_link = MqttLink(
                settings_for(mosquitto.port), will_factory=None, subscriptions=subscriptions
            )
            async with running(second_link):
                redelivered = await _next_payload(second_link, b"first")
                second_link.ack(redelivered)
                await second_link.publish("ev/sync", b"sync")
            third_link = MqttLink(
                settings_for(mosquitto.port), will_factory=None, subscriptions=subscriptions
            )
            async with running(third_link):
                await third_link.wait_connected(WAIT_S)
                await probe.publish("cmd/unit-1", b"second")
                second = await _next_payload(third_link, b"second", also=b"first")
                third_link.ack(second)

    run(scenario)


async def _next_payload(link: MqttLink, wanted: bytes, also: bytes = b"") -> InboundMessage:
    """The next message with `wanted` payload, acking warm-up copies; fails on `also`."""
    while True:
        message = await asyncio.wait_for(link.get_message(), WAIT_S)
        assert message.payload != also or not also, f"{also!r} was delivered again after its ack"
        if message.payload == wanted:
            return message
        link.ack(message)  # a late warm-up copy


# --- MQTT 5 properties -------------------------------------------------------------------------


def test_mqtt5_properties_round_trip_both_ways(mosquitto: MosquittoBroker) -> None:  # noqa: F811
    async def scenario() -> None:
        async with probe_on(mosquitto.port, "evt/#") as probe:
            link = MqttLink(
                settings_for(mosquitto.port), will_factory=None, subscriptions=[("cmd/#", 1)]
            )
            async with running(link):
                await link.wait_connected(WAIT_S)
                await link.publish(
                    "evt/reply",
                    b"{}",
                    message_expiry_s=300,
                    response_topic="cmd/answer",
                    correlation_data=b"\x01\x02",
                    content_type="application/json",
                )
                out = await probe.next()
                props_out = out.properties
                assert getattr(props_out, "ResponseTopic", None) == "cmd/answer"
                assert getattr(props_out, "CorrelationData", None) == b"\x01\x02"
                assert getattr(props_out, "ContentType", None) == "application/json"
                assert 290 <= getattr(props_out, "MessageExpiryInterval", 0) <= 300

                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.ResponseTopic = "evt/answers"
                props.CorrelationData = b"cmd-42"
                props.MessageExpiryInterval = 600
                props.UserProperty = [("command-id", "42")]
                # The link subscribes after connecting; retry until the subscription is live.
                inbound = await _publish_until_received(probe, link, "cmd/pause", props)
                assert inbound == InboundMessage(
                    topic="cmd/pause",
                    payload=b"pause",
                    qos=1,
                    retain=False,
                    response_topic="evt/answers",
                    correlation_data=b"cmd-42",
                    message_expiry_s=inbound.message_expiry_s,
                    user_properties=(("command-id", "42"),),
                    ack_token=inbound.ack_token,
                )
                assert inbound.ack_token is not None
                assert inbound.message_expiry_s is not None
                assert 590 <= inbound.message_expiry_s <= 600

    run(scenario)


async def _publish_until_received(
    probe: Probe, link: MqttLink, topic: str, props: Properties | None
) -> InboundMessage:
    async with asyncio.timeout(WAIT_S):
        while True:
            await probe.publish(topic, b"pause", props)
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(link.get_message(), 0.5)


# --- protocol fallback -------------------------------------------------------------------------


def test_fallback_decision() -> None:
    assert should_fall_back_to_v311("5", 0x84)  # MQTT 5 "unsupported protocol version"
    assert should_fall_back_to_v311("5", 0x01)  # a 3.1.1 broker's "unacceptable version"
    assert not should_fall_back_to_v311("5", 0x87)  # not authorized: retry later, same version
    assert not should_fall_back_to_v311("5", 0x00)
    assert not should_fall_back_to_v311("3.1.1", 0x01)


@pytest.mark.parametrize("refusal", ["v5", "v311"])
def test_falls_back_to_mqtt311_when_broker_refuses_v5_and_remembers_it(
    mosquitto: MosquittoBroker,  # noqa: F811
    refusal: str,
) -> None:
    async def scenario() -> None:
        async with (
            MqttTcpProxy(mosquitto.port, refuse_mqtt5=refusal) as proxy,
            probe_on(mosquitto.port, "ev/#") as probe,
        ):
            hook = Counter()
            link = MqttLink(
                settings_for(proxy.port),
                will_factory=None,
                subscriptions=[("cmd/#", 1)],
                on_connected=hook,
            )
            async with running(link):
                await link.wait_connected(WAIT_S)
                # CONNACK is not the end of a connect: the hook runs after the SUBACK. Severing
                # before it ran leaves that connection without a hook call (correctly: its birth
                # message could not be delivered), and the count below would never reach 2.
                await until(lambda: hook.calls == 1)
                assert link.protocol == "3.1.1"
                # Properties are dropped on 3.1.1, the publish itself goes through.
                await link.publish("ev/1", b"x", response_topic="r", correlation_data=b"c")
                got = await probe.next()
                assert got.payload == b"x"
                assert getattr(got.properties, "ResponseTopic", None) is None

                proxy.sever()
                await until(lambda: hook.calls == 2)
                assert link.connected
            # One refused v5 attempt, then 3.1.1 (level 4) only, also after the reconnect.
            assert proxy.protocol_levels[0] == 5
            assert proxy.protocol_levels[1:] == [4, 4]

    run(scenario)


# --- callbacks must not break the link ----------------------------------------------------------


def test_failing_on_connected_and_will_factory_do_not_break_the_link(
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    async def scenario() -> None:
        attempts = 0

        def flaky_will() -> Will:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise RuntimeError("session counter store unavailable")
            return Will("unit-1/availability", b"offline")

        async def broken_hook() -> None:
            raise ValueError("birth message could not be built")

        async with probe_on(mosquitto.port, "ev/#") as probe:
            link = MqttLink(
                settings_for(mosquitto.port),
                will_factory=flaky_will,
                subscriptions=[("cmd/#", 1)],
                on_connected=broken_hook,
            )
            async with running(link):
                await link.wait_connected(WAIT_S)
                await until(lambda: link.stats.callback_errors == 2)
                assert isinstance(link.last_callback_error, ValueError)
                await link.publish("ev/1", b"still works")
                assert (await probe.next()).payload == b"still works"
                assert link.connected
                assert link.stats.connects == 1

    run(scenario)


def test_exception_inside_a_paho_callback_is_contained(
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    async def scenario() -> None:
        link = MqttLink(settings_for(mosquitto.port), will_factory=None, subscriptions=[])
        async with running(link):
            await link.wait_connected(WAIT_S)
            conn = link._conn
            assert conn is not None
            # Call the installed (guarded) on_message with garbage, on the loop as paho's
            # loop_read() would.
            on_message = conn.client.on_message
            assert on_message is not None
            garbage: Any = object()
            on_message(conn.client, None, garbage)
            await until(lambda: link.stats.callback_errors == 1)
            assert link.connected
            await link.publish("ev/1", b"x")

    run(scenario)


# --- throughput --------------------------------------------------------------------------------


def test_many_concurrent_qos1_publishes_are_all_acknowledged(
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    """Thousands of publishes in flight at once: each resolves on its own PUBACK, none is lost.

    Speed against raw paho is a benchmark (bench/), not a timed test.
    """
    count = 5_000
    received: list[bytes | bytearray] = []
    all_in = threading.Event()

    def on_message(_client: object, _userdata: object, message: paho.MQTTMessage) -> None:
        received.append(message.payload)
        if len(received) == count:
            all_in.set()

    subscriber = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bulk-sub")
    subscribed = threading.Event()
    subscriber.on_message = on_message
    subscriber.on_subscribe = lambda *_args: subscribed.set()
    subscriber.connect("127.0.0.1", mosquitto.port)
    subscriber.loop_start()
    subscriber.subscribe("bulk/#", qos=1)
    assert subscribed.wait(WAIT_S)

    async def scenario() -> None:
        link = MqttLink(settings_for(mosquitto.port), will_factory=None, subscriptions=())
        async with running(link):
            await link.wait_connected(WAIT_S)
            await asyncio.gather(
                *(link.publish(f"bulk/{i % 10}", str(i).encode()) for i in range(count))
            )
            assert link.stats.publishes_acked == count

    try:
        run(scenario, timeout=60)
        assert all_in.wait(WAIT_S)
        assert sorted(int(p) for p in received) == list(range(count))
    finally:
        subscriber.disconnect()
        subscriber.loop_stop()


def test_reason_code_helper_sanity() -> None:
    # Guards the assumption publish() relies on: MQTT 5 failure codes are >= 0x80.
    assert ReasonCode(PacketTypes.PUBACK, identifier=0x87).is_failure
    assert not ReasonCode(PacketTypes.PUBACK, identifier=0x10).is_failure  # no subscribers: ok
