"""Bounded inbound MQTT on a real mosquitto (127.0.0.1): an oversized message is refused before
it is read (MQTT 5 Maximum Packet Size announced on CONNECT; the example broker's own
max_packet_size for MQTT 3.1.1), and a flood that outruns the application is dropped and
counted, never queued without end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psutil
import pytest
from broker import MosquittoBroker, find_mosquitto
from conftest_mqtt import mosquitto  # noqa: F401  (fixture)
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from tls_support import CENTRE_IDENTITY, TestCa, TlsBroker

from agent.mqtt.link import InboundMessage, MqttLink, MqttSettings

WAIT_S = 15.0
TOPIC = "dispenser/v1/unit-a-0001/commands/request"
BIG = 64 * 1024 * 1024  # the attack of issue 10: one 64 MB (retained) message


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(90):
            await test()

    asyncio.run(bounded())


def settings(port: int, **overrides: Any) -> MqttSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "client_id": "dispenser-agent-unit-a-0001",
        "connect_timeout_s": 5.0,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.3,
    }
    values.update(overrides)
    return MqttSettings(**values)


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[None]:
    task = asyncio.create_task(link.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def mosquitto_pub(port: int, *args: str, payload: bytes | None = None) -> None:
    """Publish from another process, so the test's own memory is not the sender's; `payload`
    goes through stdin (-s)."""
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", *args]
        + (["-s"] if payload is not None else []),
        input=payload,
        check=True,
        timeout=60,
        capture_output=True,
    )


async def next_message(link: MqttLink) -> InboundMessage:
    async with asyncio.timeout(WAIT_S):
        return await link.get_message()


def test_a_64_mb_retained_command_is_never_read_and_memory_stays_bounded(
    mosquitto: MosquittoBroker,  # noqa: F811
    tmp_path: Path,
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * BIG)
    mosquitto_pub(mosquitto.port, "-t", TOPIC, "-r", "-f", str(big))
    big.unlink()
    process = psutil.Process()

    async def scenario() -> None:
        link = MqttLink(settings(mosquitto.port), will_factory=None, subscriptions=[(TOPIC, 1)])
        rss_before = process.memory_info().rss
        async with running(link):
            await link.wait_ready(WAIT_S)
            # A small command after the big one: once it is here, the big one was passed over.
            await asyncio.to_thread(mosquitto_pub, mosquitto.port, "-t", TOPIC, "-m", "small")
            message = await next_message(link)
            assert message.payload == b"small", f"got {len(message.payload)} bytes first"
            link.ack(message)
        grown = process.memory_info().rss - rss_before
        print(f"RSS before {rss_before / 2**20:.1f} MiB, growth {grown / 2**20:.1f} MiB")
        # Generous: reading the message whole would add at least 64 MiB.
        assert grown < 32 * 2**20

    run(scenario)


def test_the_maximum_packet_size_is_announced_and_smaller_messages_pass(
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    limit = 64 * 1024

    async def scenario() -> None:
        link = MqttLink(
            settings(mosquitto.port, max_packet_bytes=limit),
            will_factory=None,
            subscriptions=[(TOPIC, 1)],
        )
        async with running(link):
            await link.wait_ready(WAIT_S)
            just_under = b"u" * (limit - 1024)
            for payload in (b"o" * limit, just_under):
                await asyncio.to_thread(mosquitto_pub, mosquitto.port, "-t", TOPIC, payload=payload)
            message = await next_message(link)
            assert message.payload == just_under  # the one over the limit never came
            link.ack(message)

    run(scenario)


@contextlib.asynccontextmanager
async def flood_sender(port: int) -> AsyncIterator[paho.Client]:
    """An MQTT 5 publisher on its own thread, with no cap on what paho queues."""
    sender = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="flood",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    sender.max_queued_messages_set(0)
    await asyncio.to_thread(sender.connect, "127.0.0.1", port)
    sender.loop_start()
    try:
        yield sender
    finally:
        sender.disconnect()
        await asyncio.to_thread(sender.loop_stop)


def test_a_flood_past_the_inbox_is_dropped_counted_and_logged_once(
    mosquitto: MosquittoBroker,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """QoS 0 is not held back by the broker's inflight window: 300 messages at an application
    that reads none, into an inbox of 50."""
    caplog.set_level(logging.WARNING, logger="agent.mqtt.link")

    told: list[tuple[int, str]] = []

    async def scenario() -> None:
        link = MqttLink(
            settings(mosquitto.port, inbox_limit=50, drop_report_s=0.5),
            will_factory=None,
            subscriptions=[(TOPIC, 0)],
            on_inbound_dropped=lambda count, topic: told.append((count, topic)),
        )
        async with running(link):
            await link.wait_ready(WAIT_S)
            async with flood_sender(mosquitto.port) as sender:
                for n in range(300):
                    sender.publish(TOPIC, f"junk {n}".encode(), qos=0)
                async with asyncio.timeout(WAIT_S):
                    while link.stats.inbound_dropped < 250:  # noqa: ASYNC110 (bounded poll)
                        await asyncio.sleep(0.02)
            assert link.stats.inbound_dropped == 250
            # The application is told: the first drop at once, the rest a window later.
            async with asyncio.timeout(WAIT_S):
                while sum(count for count, _topic in told) < 250:  # noqa: ASYNC110 (bounded)
                    await asyncio.sleep(0.05)
            assert sum(count for count, _topic in told) == 250
            assert told[0][1] == TOPIC
            # The first 50 wait, in order; nothing past them.
            first = await next_message(link)
            assert first.payload == b"junk 0"

    run(scenario)
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert 1 <= len(lines) <= 3, lines  # one line a window (0.5 s here), not 250
    assert "inbound MQTT message on " + TOPIC in lines[0]


def test_a_qos1_flood_past_the_inbox_is_held_back_not_dropped(
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    """QoS 1 past the inbox's count is kept (within its bytes), not dropped: a dropped one is
    redelivered only on the next connection and holds one of the broker's in-flight slots
    meanwhile (mosquitto 2.0 does not keep to the Receive Maximum we announce once we ack), so a
    flood of drops stalled later commands."""
    count = 600

    async def scenario() -> None:
        link = MqttLink(
            settings(mosquitto.port, inbox_limit=50), will_factory=None, subscriptions=[(TOPIC, 1)]
        )
        async with running(link):
            await link.wait_ready(WAIT_S)
            async with flood_sender(mosquitto.port) as sender:
                infos = [sender.publish(TOPIC, f"cmd {n}".encode(), qos=1) for n in range(count)]
                async with asyncio.timeout(WAIT_S * 3):
                    while not all(i.is_published() for i in infos):  # noqa: ASYNC110 (bounded)
                        await asyncio.sleep(0.02)
                # the broker has them all; the application reads and acks one at a time
                received: list[str] = []
                async with asyncio.timeout(WAIT_S * 3):
                    while len(received) < count:
                        message = await link.get_message()
                        received.append(message.payload.decode())
                        link.ack(message)
                        await asyncio.sleep(0)
            assert received == [f"cmd {n}" for n in range(count)]
            assert link.stats.inbound_dropped == 0
            assert link.stats.inbound_over_limit >= 1  # the flood did go past the count

    run(scenario)


def test_qos1_past_the_inbox_bytes_is_dropped_and_counted(
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    """The bytes still bound what a hostile broker can make the unit hold: 5 messages by
    count, then 200-byte QoS 1 messages only while 1,000 bytes allow (none more here)."""

    async def scenario() -> None:
        link = MqttLink(
            settings(mosquitto.port, inbox_limit=5, inbox_bytes_limit=1000),
            will_factory=None,
            subscriptions=[(TOPIC, 1)],
        )
        async with running(link):
            await link.wait_ready(WAIT_S)
            async with flood_sender(mosquitto.port) as sender:
                for n in range(40):
                    sender.publish(TOPIC, f"{n:03d}".encode().ljust(200, b"."), qos=1)
                async with asyncio.timeout(WAIT_S * 3):
                    while link.stats.inbound_dropped < 35:  # noqa: ASYNC110 (bounded poll)
                        await asyncio.sleep(0.02)
            assert link.stats.inbound_dropped == 35
            assert link.stats.inbound_over_limit == 0
            assert (await next_message(link)).payload.startswith(b"000")

    run(scenario)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run scripts/ensure-mosquitto.sh")
    broker = TlsBroker(tmp_path / "broker", TestCa(tmp_path / "pki"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_the_example_broker_refuses_an_oversized_publish_for_mqtt_311_units(
    tls_broker: TlsBroker,
) -> None:
    """An MQTT 3.1.1 unit announces no limit: the example broker's max_packet_size refuses the
    message when it is published, so no unit is ever sent it."""
    ca = tls_broker.ca
    unit = ca.issue("unit-a-0001")
    centre = ca.issue(CENTRE_IDENTITY)

    async def scenario() -> None:
        link = MqttLink(
            settings(
                tls_broker.port,
                protocol="3.1.1",
                tls=True,
                ca_file=str(ca.cert_path),
                client_cert=str(unit.cert),
                client_key=str(unit.key),
            ),
            will_factory=None,
            subscriptions=[(TOPIC, 1)],
        )
        tls = ["--cafile", str(ca.cert_path), "--cert", str(centre.cert), "--key", str(centre.key)]
        async with running(link):
            await link.wait_ready(WAIT_S)
            with pytest.raises(subprocess.CalledProcessError):
                # the broker drops the sender's connection at the oversized packet
                await asyncio.to_thread(
                    mosquitto_pub, tls_broker.port, *tls, "-t", TOPIC, payload=b"o" * 256 * 1024
                )
            await asyncio.to_thread(mosquitto_pub, tls_broker.port, *tls, "-t", TOPIC, "-m", "ok")
            message = await next_message(link)
            assert message.payload == b"ok"
            link.ack(message)

    run(scenario)


def test_the_daemon_tells_the_centre_of_dropped_messages_as_an_event(tmp_path: Path) -> None:
    from agent.config import parse_config
    from agent.inbound_drops import inbound_drop_reporter
    from agent.runtime import build_daemon

    config = parse_config(
        {
            "unit_id": "unit-a-0001",
            "state_dir": str(tmp_path / "state"),
            "dispenser": {"device": "/dev/null"},
        }
    )
    daemon = build_daemon(config)
    try:
        inbound_drop_reporter(daemon)(250, TOPIC)
        events = [e for e in daemon.store.pending_events(limit=100) if e.kind != "agent_started"]
        assert [e.kind for e in events] == ["mqtt_inbound_dropped"]
        assert events[0].payload["data"] == {"count": 250, "topic": TOPIC}
        assert events[0].payload["priority"] == "low"
    finally:
        daemon.store.close()
