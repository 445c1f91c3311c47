"""What the daemon offers the parts that act through it: the command handler, the broker watch and
the flood reporter see it only through these narrow protocols. They need not import the daemon (no
import circle), and a test can hand them a small stand-in instead of a whole daemon.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from agent.clock import Clock, Now
from agent.config import AgentConfig
from agent.contract.commands import RequestStatusResult
from agent.contract.topics import UnitTopics
from agent.engine.types import Action, EngineInput
from agent.mqtt.link import InboundMessage, MqttLinkStats
from agent.store.db import Store

# A step's commit, on the loop: resolved once the step's transaction committed and what it
# released went out, failed with the daemon's fault otherwise. None: committed already (no event
# loop was running: start-up before the daemon runs, tools, tests).
StepCommit = asyncio.Future[None] | None


class Recorder(Protocol):
    """Commits actions (events, audit, commands) with the daemon's clock and store."""

    @property
    def clock(self) -> Clock: ...

    @property
    def store(self) -> Store: ...

    def apply(
        self,
        actions: list[Action],
        now: Now,
        within: Callable[[], None] | None = None,
        *,
        cause: str = "a write",
    ) -> StepCommit: ...


class BrokerLinkState(Protocol):
    """The MQTT link as the broker watch reads it."""

    @property
    def connected(self) -> bool: ...

    @property
    def stats(self) -> MqttLinkStats: ...

    @property
    def last_connect_error(self) -> str | None: ...

    @property
    def link_state_version(self) -> int: ...

    async def wait_link_state_change(self, seen: int) -> None: ...


class WatchedBroker(Recorder, Protocol):
    @property
    def mqtt(self) -> BrokerLinkState: ...


class CommandInbox(Protocol):
    """The MQTT link as the command handler reads it: messages in, acknowledged once handled."""

    def messages(self) -> AsyncGenerator[InboundMessage, None]: ...

    def ack(self, message: InboundMessage) -> None: ...

    async def wait_ready(self, timeout: float | None = None) -> None: ...  # noqa: ASYNC109


class Resender(Protocol):
    def resend_from(self, seq: int) -> int: ...


class CommandHost(Recorder, Protocol):
    """Everything a centre's (or a technician's) command can reach: the engine (step), the
    records (apply, stamp), the answers (publish_response), and the read-only views."""

    @property
    def config(self) -> AgentConfig: ...

    @property
    def topics(self) -> UnitTopics: ...

    @property
    def mqtt(self) -> CommandInbox: ...

    @property
    def publisher(self) -> Resender: ...

    def stamp(self) -> tuple[str, str]: ...

    def step(
        self,
        inp: EngineInput,
        within: Callable[[], None] | None = None,
        also: Sequence[Action] = (),
    ) -> StepCommit: ...

    async def committed(self) -> None:
        """Every write so far committed (raises the daemon's fault if one failed)."""

    def status(self) -> RequestStatusResult: ...

    def summary_on_request(
        self, period: str, label: str, now_utc: datetime
    ) -> dict[str, Any] | None: ...

    async def publish_response(
        self, payload: bytes, response_topic: str | None, correlation: bytes | None
    ) -> None: ...

    async def publish_retained_state(self) -> None: ...
