"""Builds the real daemon from a config: system clock, SQLite store, and its edges (the dispenser
session, the MQTT link and the outbox publisher, handed to the daemon through agent/edges.py)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from agent.clock import Clock, SystemClock
from agent.config import (
    AgentConfig,
    BleLink,
    ConfigError,
    SerialLink,
    private_file_problem,
    service_uid,
)
from agent.daemon import Daemon, PanelFactory
from agent.edges import BrokerLink, EdgeFactory, EdgeHooks, Edges
from agent.mqtt.link import MqttLink, MqttSettings
from agent.publisher import OutboxPublisher
from agent.store.audit import Stamp
from agent.store.db import Store
from agent.store.errors import StoreError
from drivers.serial_port import SerialTransport
from drivers.session import DispenserSession, req_epoch_for
from drivers.transport import Transport

log = logging.getLogger(__name__)

# When the outbox is full (a very long time offline), these go first, oldest first: they say
# nothing about a dose. Dose outcomes and alarms are never dropped (agent/store/outbox.py).
DROPPABLE_WHEN_FULL = frozenset(
    {"button_pressed", "lid_open", "lid_open_cleared", "dose_held", "unexpected_dispenser_event"}
)
PUBLISH_WINDOW = 50  # outbox publishes in flight at once


def mqtt_settings(config: AgentConfig) -> MqttSettings:
    password = None
    secret = config.mqtt.password_file
    if secret is not None:
        problem = private_file_problem(secret, service_uid(config.state_dir))
        if problem is not None:
            # said at every start, but no reason to stop dispensing (check-config refuses it)
            log.warning("mqtt.password_file: %s", problem)
        try:
            password = secret.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"mqtt.password_file: {secret} cannot be read: {exc}") from None
    return MqttSettings(
        host=config.mqtt.host,
        port=config.mqtt.port,
        client_id=f"dispenser-agent-{config.unit_id}",
        keepalive_s=config.mqtt.keepalive_s,
        username=config.mqtt.username,
        password=password,
        tls=config.mqtt.tls,
        ca_file=_path(config.mqtt.ca_file),
        client_cert=_path(config.mqtt.client_cert),
        client_key=_path(config.mqtt.client_key),
        max_packet_bytes=config.mqtt.max_packet_bytes,
        protocol=config.mqtt.protocol,
    )


def _path(value: object) -> str | None:
    return None if value is None else str(value)


def warn_if_plaintext(config: AgentConfig) -> None:
    """Every start says it again: plaintext to a remote broker was allowed, not chosen safely."""
    if config.mqtt.plaintext_remote:
        log.warning(
            "MQTT to %s:%d WITHOUT TLS (allow_plaintext is set): commands and health cross the "
            "network readable and forgeable; turn tls on",
            config.mqtt.host,
            config.mqtt.port,
        )


def transport_factory(link: SerialLink | BleLink) -> Callable[[], Transport]:
    """A fresh transport per connect attempt; nothing above this line knows which kind."""
    if isinstance(link, SerialLink):
        device, baudrate = link.device, link.baudrate
        return lambda: SerialTransport(device, baudrate)
    # Only a BLE unit loads this module's bleak (and D-Bus) on its first connect attempt.
    from drivers.ble_transport import BleTarget, BleTransport

    target = BleTarget(
        address=link.address,
        name=link.name,
        service_uuid=link.service_uuid,
        adapter=link.adapter,
        scan_timeout_s=link.scan_timeout_s,
        connect_timeout_s=link.connect_timeout_s,
    )
    return lambda: BleTransport(target)


def unit_edges(
    config: AgentConfig,
    *,
    transports: Callable[[], Transport] | None = None,
    broker_link: Callable[[EdgeHooks], BrokerLink] | None = None,
) -> EdgeFactory:
    """The daemon's edges: the dispenser session on the configured transport, the MQTT link to the
    configured broker, and the outbox publisher on that link. A test may replace the transport or
    the whole link (the publisher then publishes through the test's link)."""
    transports = transports or transport_factory(config.dispenser)
    settings = mqtt_settings(config)  # read now: an unreadable password file stops the start

    def mqtt_link(hooks: EdgeHooks) -> BrokerLink:
        return MqttLink(
            settings,
            will_factory=hooks.will,
            subscriptions=[(hooks.topics.command_request, 1)],
            on_connected=hooks.on_broker_connected,
            will_unseen=hooks.will_unseen,
            farewell_factory=hooks.farewell,
            on_inbound_dropped=hooks.on_inbound_dropped,
        )

    make_link = broker_link or mqtt_link

    def edges(hooks: EdgeHooks) -> Edges:
        session = DispenserSession(
            transports,
            on_message=hooks.on_dispenser_message,
            on_link=hooks.on_dispenser_link,
            # a reply meant for the previous agent process is told by its req_id (SPEC 4.2)
            req_epoch=req_epoch_for(hooks.boot),
        )
        link = make_link(hooks)
        publisher = OutboxPublisher(
            hooks.store,
            link,
            hooks.topics.events,
            hooks.envelope,
            window=PUBLISH_WINDOW,
            first_seq_of_process=hooks.first_seq_of_process,
            writer=hooks.writer,
        )
        return Edges(session, link, publisher)

    return edges


def build_daemon(
    config: AgentConfig,
    clock: Clock | None = None,
    *,
    panel_factory: PanelFactory | None = None,
    broker_link: Callable[[EdgeHooks], BrokerLink] | None = None,
) -> Daemon:
    """The production daemon; `clock` is replaced only by the demo and e2e tests (a clock that
    runs fast says its rate: agent.clock.FastClock), `panel_factory` (the GPIO panel on the real
    pins) by tests on gpiozero's MockFactory and `broker_link` by tests with a fake MQTT link."""
    clock = clock or SystemClock()
    warn_if_plaintext(config)
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def stamp() -> Stamp:
        now = clock.now()
        return Stamp(now.utc.isoformat().replace("+00:00", "Z"), now.trust.value)

    startup_fault = None
    try:
        store = Store.open(config.db_path, stamp=stamp, droppable_kinds=DROPPABLE_WHEN_FULL)
    except (StoreError, sqlite3.Error, OSError) as exc:
        # Nothing can be recorded: the daemon starts only to fail safe (lock the dispenser, tell
        # the centre) and exit. The file is left as it is, for the technician and for evidence.
        startup_fault = f"the store cannot be opened: {exc}"
        log.critical("%s", startup_fault)
        store = Store.scratch(config.db_path, stamp=stamp)
    return Daemon(
        config,
        clock=clock,
        store=store,
        edges=unit_edges(config, broker_link=broker_link),
        startup_fault=startup_fault,
        panel_factory=panel_factory,
    )
