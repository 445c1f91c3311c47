"""The unit's two links, opened by a technician tool while the daemon is stopped (or beside it,
for a read-only look): the broker with the unit's own identity, and the dispenser on its serial
port. Every wait is bounded; failures come back as words, never as a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass

from agent.config import AgentConfig
from agent.contract.topics import UnitTopics
from agent.envelope import build_envelope
from agent.mqtt.link import MqttLink, MqttSettings
from agent.publisher import OutboxPublisher
from agent.runtime import mqtt_settings, transport_factory
from agent.store.db import Store
from drivers import session as dsession
from drivers.retry import RetryPolicy
from protocol.messages import (
    FACTORY_RESET_CONFIRM,
    Capabilities,
    CommandResult,
    FactoryReset,
    Message,
    ResultCode,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeOutcome:
    ok: bool
    detail: str


def _settings(config: AgentConfig, connect_timeout_s: float, suffix: str = "") -> MqttSettings:
    base = mqtt_settings(config)
    return dataclasses.replace(  # every broker setting (TLS identity too), probe timings
        base,
        client_id=base.client_id + suffix,
        connect_timeout_s=connect_timeout_s,
        backoff_initial_s=0.2,
        backoff_max_s=2.0,
    )


def _broker_name(config: AgentConfig) -> str:
    scheme = "mqtts" if config.mqtt.tls else "mqtt"
    return f"{scheme}://{config.mqtt.host}:{config.mqtt.port}"


async def _connected_or_given_up(link: MqttLink, attempts: int | None) -> None:
    """Until connected, or until `attempts` connect attempts have failed with a reason."""
    if attempts is None:
        await link.wait_connected()
        return
    await link.wait_connected_or_failed(attempts)


async def _probe_broker(
    config: AgentConfig, timeout_s: float, suffix: str, attempts: int | None
) -> ProbeOutcome:
    settings = _settings(config, min(timeout_s, 10.0), suffix)
    link = MqttLink(settings, will_factory=None, subscriptions=[])
    runner = asyncio.create_task(link.run(), name="probe-broker")
    hint = "(network, address, certificate or password)"
    try:
        async with asyncio.timeout(timeout_s):
            await _connected_or_given_up(link, attempts)
        connected = link.connected  # read before the link is cancelled below
    except TimeoutError:
        return ProbeOutcome(
            False,
            f"broker {_broker_name(config)} not reached within {timeout_s:g} s as "
            f"{settings.client_id}: {link.last_connect_error or 'no answer'} {hint}",
        )
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    if not connected:
        failed = link.stats.connect_failures
        return ProbeOutcome(
            False,
            f"broker {_broker_name(config)} not reached in {failed} attempt"
            f"{'s' if failed != 1 else ''} as {settings.client_id}: "
            f"{link.last_connect_error} {hint}",
        )
    return ProbeOutcome(True, f"connected to {_broker_name(config)} as {settings.client_id}")


def probe_broker(
    config: AgentConfig,
    timeout_s: float = 10.0,
    client_suffix: str = "",
    attempts: int | None = None,
) -> ProbeOutcome:
    """Connect with the unit's settings (user, password, TLS); `client_suffix` keeps a running
    agent's session (same client id) from being taken over. `attempts`: give up once that many
    connect attempts have failed, before `timeout_s` if they fail fast (None: retry until then);
    a refusal that will not change (a wrong certificate) need not be retried for seconds."""
    if attempts is not None and attempts < 1:
        raise ValueError(f"attempts must be 1 or more, got {attempts}")
    try:
        return asyncio.run(_probe_broker(config, timeout_s, client_suffix, attempts))
    except OSError as exc:  # the password file
        return ProbeOutcome(False, f"broker settings unusable: {exc}")


async def _deliver(config: AgentConfig, store: Store, timeout_s: float) -> int:
    topics = UnitTopics(config.unit_id)
    with store.transaction():
        session = store.next_session_counter()
    link = MqttLink(_settings(config, min(timeout_s, 10.0)), will_factory=None, subscriptions=[])
    publisher = OutboxPublisher(
        store,
        link,
        topics.events,
        lambda event, replayed: build_envelope(config.unit_id, event, replayed, session),
    )
    tasks = [
        asyncio.create_task(link.run(), name="deliver-link"),
        asyncio.create_task(publisher.run(), name="deliver-outbox"),
    ]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        # the publisher marks deliveries in the store: a short, bounded poll of the backlog
        while store.backlog().count and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return store.backlog().count


def deliver_outbox(config: AgentConfig, store: Store, timeout_s: float = 30.0) -> ProbeOutcome:
    """Send every undelivered event to the response centre; says how many are left."""
    before = store.backlog().count
    if not before:
        return ProbeOutcome(True, "nothing undelivered")
    try:
        left = asyncio.run(_deliver(config, store, timeout_s))
    except OSError as exc:
        return ProbeOutcome(False, f"{before} events undelivered: broker settings unusable: {exc}")
    if left:
        return ProbeOutcome(
            False,
            f"{left} of {before} events undelivered after {timeout_s:g} s: broker "
            f"{_broker_name(config)} not reachable",
        )
    return ProbeOutcome(True, f"{before} events delivered to the response centre")


@dataclass(frozen=True)
class DispenserProbe:
    ok: bool
    detail: str
    capabilities: Capabilities | None = None


async def _with_dispenser(
    config: AgentConfig, timeout_s: float, factory_reset: bool
) -> tuple[DispenserProbe, ProbeOutcome | None]:
    device, hint = config.dispenser.where, config.dispenser.trouble_hint
    up = asyncio.Event()

    def on_link(change: dsession.SessionUp | dsession.SessionDown) -> None:
        if isinstance(change, dsession.SessionUp):
            up.set()

    def on_message(message: Message) -> None:
        log.debug("dispenser event while checking: %s", type(message).__name__)

    session = dsession.DispenserSession(
        transport_factory(config.dispenser),
        on_message=on_message,
        on_link=on_link,
        backoff=RetryPolicy(initial_delay_s=0.2, max_delay_s=1.0, attempt_timeout_s=5.0),
    )
    runner = asyncio.create_task(session.run(), name="probe-dispenser")
    try:
        try:
            async with asyncio.timeout(timeout_s):
                await up.wait()
        except TimeoutError:
            return DispenserProbe(
                False,
                f"no dispenser answered on {device} within {timeout_s:g} s ({hint})",
            ), None
        caps = session.capabilities
        probe = DispenserProbe(
            True,
            f"{device}: handshake done"
            + (f", {caps.model} firmware {caps.firmware_version}" if caps else ""),
            caps,
        )
        if not factory_reset:
            return probe, None
        try:
            reply = await session.request(FactoryReset(req_id=0, confirm=FACTORY_RESET_CONFIRM))
        except dsession.SessionError as exc:
            return probe, ProbeOutcome(
                False, f"FactoryReset not confirmed: {exc or type(exc).__name__}"
            )
        if isinstance(reply, CommandResult) and reply.result is ResultCode.OK:
            return probe, ProbeOutcome(True, "dispenser factory-reset (confirmed)")
        return probe, ProbeOutcome(False, f"dispenser refused FactoryReset: {reply}")
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


def probe_dispenser(config: AgentConfig, timeout_s: float = 10.0) -> DispenserProbe:
    return asyncio.run(_with_dispenser(config, timeout_s, factory_reset=False))[0]


def factory_reset_dispenser(config: AgentConfig, timeout_s: float = 10.0) -> ProbeOutcome:
    probe, outcome = asyncio.run(_with_dispenser(config, timeout_s, factory_reset=True))
    return outcome if outcome is not None else ProbeOutcome(False, probe.detail)
