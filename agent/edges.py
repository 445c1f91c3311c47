"""The daemon's three edges — the dispenser session, the MQTT link and the outbox publisher — as
the daemon uses them (narrow protocols), what it hands to whoever makes them (`EdgeHooks`: its
handlers), and what comes back (`Edges`).

The daemon does not build its edges: `agent/runtime.py` does (`unit_edges`), so a test can give
the daemon a fake link, session or publisher through the same door. The edges need the daemon's
handlers (a frame from the dispenser, the will of each connect attempt, ...), so they are made by
a factory the daemon calls from its constructor with those handlers: no edge exists before the
daemon that serves it, and no handler is wired in afterwards.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.contract.topics import UnitTopics
from agent.host import BrokerLinkState, CommandInbox, Resender
from agent.mqtt.link import Will
from agent.publisher import EnvelopeBuilder, OutboxLink
from agent.store.db import Store
from agent.store.outbox import OutboxEvent
from agent.store.writer import StoreWriter
from drivers.session import Reply, SessionReport
from protocol.messages import Command, Message


class DispenserLink(Protocol):
    """The dispenser session as the daemon uses it (drivers/session.py's DispenserSession)."""

    @property
    def connected(self) -> bool: ...

    async def run(self) -> None: ...

    async def request(self, command: Command) -> Reply: ...


class BrokerLink(BrokerLinkState, CommandInbox, OutboxLink, Protocol):
    """The MQTT link as the daemon, its command handler, its broker watch and its publisher use
    it (agent/mqtt/link.py's MqttLink)."""

    @property
    def ready(self) -> bool: ...

    async def run(self) -> None: ...

    async def wait_connected(self, timeout: float | None = None) -> None: ...  # noqa: ASYNC109

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        message_expiry_s: int | None = None,
        correlation_data: bytes | None = None,
    ) -> None: ...


class EventPublisher(Resender, Protocol):
    """The outbox publisher as the daemon and the command handler use it (agent/publisher.py)."""

    async def run(self) -> None: ...

    def offer(self, events: Sequence[OutboxEvent]) -> None: ...


@dataclass(frozen=True, slots=True)
class EdgeHooks:
    """What the daemon gives the factory of its edges: its handlers and what they need."""

    store: Store
    writer: StoreWriter  # the store's writer thread: the publisher's delivered-marks go there
    topics: UnitTopics
    boot: int  # this process's boot number (the session's req_id epoch comes from it)
    first_seq_of_process: int  # the first outbox seq this process records
    # the dispenser session's
    # returns what the frame's ACK waits for (its step's commit; drivers/session.py)
    on_dispenser_message: Callable[[Message], Awaitable[None] | None]
    on_dispenser_link: Callable[[SessionReport], None]
    # the MQTT link's
    will: Callable[[], Will]
    will_unseen: Callable[[Will], None]
    farewell: Callable[[], Will]
    on_broker_connected: Callable[[], Awaitable[None]]
    on_inbound_dropped: Callable[[int, str], None]
    # the publisher's
    envelope: EnvelopeBuilder


@dataclass(frozen=True, slots=True)
class Edges:
    session: DispenserLink
    mqtt: BrokerLink
    publisher: EventPublisher


EdgeFactory = Callable[[EdgeHooks], Edges]
