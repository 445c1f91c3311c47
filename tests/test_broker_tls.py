"""TLS identities and the ACL on a real mosquitto (127.0.0.1) running the repo's example broker
configuration, docs/broker/: the unit connects with its certificate (CN = unit id), reads and
writes only its own topics, and a wrong certificate cannot connect at all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from broker import find_mosquitto
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from tls_support import CENTRE_IDENTITY, Identity, TestCa, TlsBroker

from agent.config import parse_config
from agent.mqtt.link import MqttLink, MqttSettings, PublishRejected
from agent.runtime import mqtt_settings

WAIT_S = 10.0
UNIT_A = "unit-a-0001"
UNIT_B = "unit-b-0002"


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(60):
            await test()

    asyncio.run(bounded())


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    return TestCa(tmp_path / "pki")


@pytest.fixture
def broker(tmp_path: Path, ca: TestCa) -> Iterator[TlsBroker]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run scripts/ensure-mosquitto.sh")
    tls_broker = TlsBroker(tmp_path / "broker", ca)
    tls_broker.start()
    try:
        yield tls_broker
    finally:
        tls_broker.stop()


def unit_settings(
    broker: TlsBroker, unit_id: str, identity: Identity, ca_file: Path
) -> MqttSettings:
    """What the daemon builds from a config like the one flash.sh writes."""
    config = parse_config(
        {
            "unit_id": unit_id,
            "dispenser": {"device": "/dev/null"},
            "mqtt": {
                "host": "127.0.0.1",
                "port": broker.port,
                "tls": True,
                "ca_file": str(ca_file),
                "client_cert": str(identity.cert),
                "client_key": str(identity.key),
            },
        }
    )
    settings = mqtt_settings(config)
    assert settings.client_cert == str(identity.cert)
    return MqttSettings(
        **{
            **settings.__dict__,
            "connect_timeout_s": 3.0,
            "backoff_initial_s": 0.05,
            "backoff_max_s": 0.3,
        }
    )


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[None]:
    task = asyncio.create_task(link.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Centre:
    """The response centre's client (plain paho on its own thread) with its own certificate."""

    def __init__(self, broker: TlsBroker, identity: Identity) -> None:
        self.loop = asyncio.get_running_loop()
        self.received: asyncio.Queue[paho.MQTTMessage] = asyncio.Queue()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="centre-test",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        context = ssl.create_default_context(cafile=str(broker.ca.cert_path))
        context.load_cert_chain(str(identity.cert), str(identity.key))
        self.client.tls_set_context(context)

        def on_message(_c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
            self.loop.call_soon_threadsafe(self.received.put_nowait, msg)

        self.client.on_message = on_message
        self.port = broker.port

    async def start(self, *topics: str) -> None:
        await asyncio.to_thread(self.client.connect, "127.0.0.1", self.port)
        self.client.loop_start()
        for topic in topics:
            self.client.subscribe(topic, qos=1)
        # A round trip through the broker: our own message on a topic we read proves the
        # subscriptions are in place.
        await self.send(f"dispenser/v1/{UNIT_A}/commands/request", b"ready")
        while (await self.next()).payload != b"ready":
            pass

    async def send(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        await asyncio.to_thread(info.wait_for_publish, WAIT_S)
        assert info.is_published()

    async def next(self) -> paho.MQTTMessage:
        async with asyncio.timeout(WAIT_S):
            return await self.received.get()

    async def stop(self) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)


def test_the_unit_connects_with_its_certificate_and_stays_within_its_own_topics(
    broker: TlsBroker, ca: TestCa
) -> None:
    unit_a = ca.issue(UNIT_A)
    centre_id = ca.issue(CENTRE_IDENTITY)
    own_commands = f"dispenser/v1/{UNIT_A}/commands/request"
    other_commands = f"dispenser/v1/{UNIT_B}/commands/request"

    async def scenario() -> None:
        link = MqttLink(
            unit_settings(broker, UNIT_A, unit_a, ca.cert_path),
            will_factory=None,
            # The second subscription is an attempt to read unit B's commands.
            subscriptions=[(own_commands, 1), (other_commands, 1)],
        )
        centre = Centre(broker, centre_id)
        await centre.start("dispenser/v1/#")
        try:
            async with running(link):
                await link.wait_ready(WAIT_S)
                # Its own topics work both ways.
                await link.publish(f"dispenser/v1/{UNIT_A}/events", b"a-event")
                assert (await centre.next()).topic == f"dispenser/v1/{UNIT_A}/events"
                # Writing on another unit's topic is refused by the broker (MQTT 5: 0x87).
                for topic in (
                    f"dispenser/v1/{UNIT_B}/events",
                    f"dispenser/v1/{UNIT_B}/state/availability",
                    other_commands,
                ):
                    with pytest.raises(PublishRejected) as refused:
                        await link.publish(topic, b"forged")
                    assert refused.value.reason_code == 0x87
                # Nor may a unit send itself (or anyone) commands.
                with pytest.raises(PublishRejected):
                    await link.publish(own_commands, b"self-made command")
                # Reading: the centre sends B a command, then A one; A gets only its own.
                await centre.send(other_commands, b"for-b")
                await centre.send(own_commands, b"for-a")
                async with asyncio.timeout(WAIT_S):
                    first = await link.get_message()
                assert (first.topic, first.payload) == (own_commands, b"for-a")
                link.ack(first)
                # What the centre saw: the command to A, and no forged message of A on B's topics.
                seen: list[tuple[str, bytes]] = []
                await centre.send(own_commands, b"end")
                while (msg := await centre.next()).payload != b"end":
                    seen.append((msg.topic, bytes(msg.payload)))
                assert all(payload != b"forged" for _topic, payload in seen)
                assert link.stats.tls_failures == 0
        finally:
            await centre.stop()

    run(scenario)
    log = broker.log_path.read_text()
    assert f"as {UNIT_A}" in log or UNIT_A in log  # the broker knew the unit by its certificate


@pytest.mark.parametrize("which", ["another CA", "expired", "no certificate"])
def test_a_wrong_certificate_cannot_connect_and_the_agent_says_why(
    broker: TlsBroker, ca: TestCa, tmp_path: Path, which: str, caplog: pytest.LogCaptureFixture
) -> None:
    if which == "another CA":
        identity = TestCa(tmp_path / "rogue", name="Rogue CA").issue(UNIT_A)
    elif which == "expired":
        identity = ca.issue(UNIT_A, expired=True)
    else:
        identity = None
    settings = unit_settings(broker, UNIT_A, identity or ca.issue(UNIT_A), ca.cert_path)
    if identity is None:
        settings = MqttSettings(**{**settings.__dict__, "client_cert": None, "client_key": None})

    async def scenario() -> None:
        link = MqttLink(settings, will_factory=None, subscriptions=[])
        caplog.set_level(logging.ERROR, logger="agent.mqtt.link")
        async with running(link):
            async with asyncio.timeout(WAIT_S):
                while link.stats.tls_failures < 2:  # noqa: ASYNC110 (bounded poll of a counter)
                    await asyncio.sleep(0.02)
            assert not link.connected
            assert link.stats.connects == 0
            assert link.last_connect_error is not None
            assert link.last_connect_error.startswith("TLS")

    run(scenario)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("MQTT TLS with 127.0.0.1" in line and "client_cert" in line for line in lines)


def test_the_broker_refuses_a_unit_that_does_not_trust_it(
    broker: TlsBroker, ca: TestCa, tmp_path: Path
) -> None:
    """The unit checks the broker too: a broker certificate from another CA is refused."""
    other = TestCa(tmp_path / "other")
    settings = unit_settings(broker, UNIT_A, ca.issue(UNIT_A), other.cert_path)

    async def scenario() -> None:
        link = MqttLink(settings, will_factory=None, subscriptions=[])
        async with running(link):
            async with asyncio.timeout(WAIT_S):
                while link.stats.tls_failures < 1:  # noqa: ASYNC110 (bounded poll of a counter)
                    await asyncio.sleep(0.02)
        assert link.last_connect_error is not None
        assert "certificate verify failed" in link.last_connect_error

    run(scenario)


def test_the_technician_check_names_a_wrong_certificate(
    broker: TlsBroker, ca: TestCa, tmp_path: Path
) -> None:
    """`dispenser-agent check`'s broker item, as a technician meets it: the unit's certificate is
    from another CA (a mixed-up bundle) and the broker refuses it; the right one passes."""
    from agent.technician.links import probe_broker

    def config_with(identity: Identity) -> Any:
        return parse_config(
            {
                "unit_id": UNIT_A,
                "state_dir": str(tmp_path / "state"),
                "dispenser": {"device": "/dev/null"},
                "mqtt": {
                    "host": "127.0.0.1",
                    "port": broker.port,
                    "tls": True,
                    "ca_file": str(ca.cert_path),
                    "client_cert": str(identity.cert),
                    "client_key": str(identity.key),
                },
            }
        )

    rogue = TestCa(tmp_path / "rogue", name="Rogue CA").issue(UNIT_A)
    # the first refused attempt is the answer: not the rest of a generous timeout in retries
    refused = probe_broker(config_with(rogue), timeout_s=8.0, client_suffix="-check", attempts=1)
    assert not refused.ok
    # one attempt at least: on a loaded machine another may fail before the probe looks
    assert re.search(r"not reached in \d+ attempts? as ", refused.detail), refused.detail
    assert "TLS" in refused.detail  # the cause, not only "no answer"
    right = probe_broker(config_with(ca.issue(UNIT_A)), timeout_s=20.0, client_suffix="-check")
    assert right.ok, right.detail


@pytest.mark.parametrize(
    ("error", "tls"),
    [
        # texts paho and the link produced on this machine when a broker refused a certificate
        (OSError("failed to receive on socket: [SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert"), True),
        (
            OSError(
                "paho has no socket after connect() (failed to receive on socket: EOF occurred"
                " in violation of protocol (_ssl.c:2427))"
            ),
            True,
        ),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), True),
        (ConnectionRefusedError(111, "Connection refused"), False),
        (TimeoutError("timed out"), False),
        (None, False),
    ],
)
def test_a_refusal_is_told_as_tls_whichever_way_the_broker_closed(
    error: BaseException | None, tls: bool
) -> None:
    """The broker's refusal arrives either as its TLS alert or as the socket closed mid-handshake;
    both are the certificate's fault, not the network's (the check once said neither)."""
    from agent.mqtt.link import is_tls_failure

    assert is_tls_failure(error) is tls
