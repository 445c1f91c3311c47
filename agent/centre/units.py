"""Unit availability at a glance: the retained state of every unit (or the named ones), one line
each, read the way the guide tells a response centre to read it.

- Online or offline comes from the retained `state/availability`: the birth says online, the
  will (or a clean stop) offline. A lower `session` never overrides a higher one (a late will).
- The will's `at` is when the unit registered it, at the start of its session, not when the
  broker sent it: a unit that lost its connection is shown with the session's start and the time
  of its last health message, never a made-up "offline since".
- From `state/health`: the backlog of undelivered events, the active (latched) alerts, the raised
  conditions, the clock's trust and the dispenser link.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from agent.centre.connect import BrokerOptions, FirstConnect, ToolError, make_client
from agent.centre.live_view import LOCAL_ZONE, _printable
from agent.contract.commands import describe_validation_error
from agent.contract.state import Availability, Health, supersedes
from agent.contract.topics import TOPIC_ROOT, unit_id_from_topic

_PROBLEM_LIMIT = 120


@dataclass
class UnitState:
    """What the retained messages of one unit say (None: not seen)."""

    availability: Availability | None = None
    availability_problem: str | None = None
    health: Health | None = None
    health_problem: str | None = None

    @property
    def online(self) -> bool:
        return self.availability is not None and self.availability.state == "online"

    @property
    def complete(self) -> bool:
        """Both retained messages seen (valid or not): nothing more to wait for."""
        seen_availability = self.availability is not None or self.availability_problem is not None
        return seen_availability and (self.health is not None or self.health_problem is not None)


def _problem(error: ValidationError) -> str:
    text = describe_validation_error(error)
    return text if len(text) <= _PROBLEM_LIMIT else text[:_PROBLEM_LIMIT] + "…"


class Collector:
    """Keeps the newest availability and health per unit; thread-safe (paho's thread writes)."""

    def __init__(self, units: Sequence[str]) -> None:
        self.units: dict[str, UnitState] = {unit: UnitState() for unit in units}
        self._listed = bool(units)
        self._changed = threading.Condition()

    def take(self, topic: str, payload: bytes) -> None:
        unit_id = unit_id_from_topic(topic)
        if unit_id is None or (self._listed and unit_id not in self.units):
            return
        suffix = topic.split("/", 3)[3]
        if suffix not in ("state/availability", "state/health") or not payload:
            return  # an empty payload clears a retained message: nothing to show
        with self._changed:
            state = self.units.setdefault(unit_id, UnitState())
            if suffix == "state/availability":
                try:
                    incoming = Availability.model_validate_json(payload)
                except ValidationError as error:
                    if state.availability is None:
                        state.availability_problem = _problem(error)
                else:
                    if supersedes(incoming, state.availability):
                        state.availability = incoming
                        state.availability_problem = None
            else:
                try:
                    health = Health.model_validate_json(payload)
                except ValidationError as error:
                    if state.health is None:
                        state.health_problem = _problem(error)
                else:
                    if state.health is None or health.at >= state.health.at:
                        state.health = health
                        state.health_problem = None
            self._changed.notify_all()

    def wait_complete(self, timeout: float) -> bool:
        """With listed units: True as soon as each has both messages. Without: wait `timeout`
        (there is no telling which units exist, so every retained message is waited for)."""
        with self._changed:
            if not self._listed:
                self._changed.wait_for(lambda: False, timeout)
                return True
            return self._changed.wait_for(
                lambda: all(s.complete for s in self.units.values()), timeout
            )

    def snapshot(self) -> dict[str, UnitState]:
        with self._changed:
            return {
                unit: UnitState(s.availability, s.availability_problem, s.health, s.health_problem)
                for unit, s in sorted(self.units.items())
            }


def collect(
    broker: BrokerOptions, units: Sequence[str], wait_s: float, connect_timeout: float
) -> dict[str, UnitState]:
    """Connect, read the retained availability and health of `units` (all when empty) for at
    most `wait_s` seconds after the subscription, and disconnect."""
    collector = Collector(units)
    first = FirstConnect(broker)
    subscribed = threading.Event()
    refused: list[str] = []
    topics = (
        [f"{TOPIC_ROOT}/{u}/state/{k}" for u in units for k in ("availability", "health")]
        if units
        else [f"{TOPIC_ROOT}/+/state/availability", f"{TOPIC_ROOT}/+/state/health"]
    )
    client = make_client(broker, "centre-units")

    def on_connect(
        c: paho.Client,
        _u: object,
        _f: paho.ConnectFlags,
        reason: ReasonCode,
        _p: Properties | None,
    ) -> None:
        if reason.is_failure:
            first.refused(reason)
            return
        c.subscribe([(topic, 1) for topic in topics])
        first.connected()

    def on_subscribe(
        _c: paho.Client, _u: object, _m: int, reasons: list[ReasonCode], _p: Properties | None
    ) -> None:
        refused.extend(t for t, r in zip(topics, reasons, strict=False) if r.is_failure)
        subscribed.set()

    def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        with contextlib.suppress(Exception):  # a network payload must never end paho's thread
            collector.take(message.topic, bytes(message.payload))

    client.on_connect = on_connect
    client.on_disconnect = lambda *_: first.lost()
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_log = first.log
    first.open(client, connect_timeout)
    try:
        if not subscribed.wait(connect_timeout):
            raise ToolError(f"the broker at {broker.address} did not confirm the subscription")
        if refused:
            raise ToolError(f"the broker refused the subscription to {', '.join(refused)}")
        collector.wait_complete(wait_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return collector.snapshot()


# --- the lines (pure) ------------------------------------------------------------------------


def _local(moment: datetime) -> str:
    return moment.astimezone(LOCAL_ZONE).strftime("%Y-%m-%d %H:%M:%S")


def describe_availability(state: UnitState) -> tuple[str, str]:
    """(status word, details) of one unit."""
    availability = state.availability
    if availability is None:
        if state.availability_problem is not None:
            return "invalid", f"availability INVALID: {state.availability_problem}"
        return "unknown", "no availability message"
    if availability.state == "online":
        return "online", f"since {_local(availability.at)} (session {availability.session})"
    if availability.reason == "connection_lost":
        last = f", last health {_local(state.health.at)}" if state.health is not None else ""
        return "OFFLINE", (
            f"connection lost (session {availability.session} from {_local(availability.at)}{last})"
        )
    text = (
        f"since {_local(availability.at)} ({availability.reason}, session {availability.session})"
    )
    if availability.detail:
        text += f": {_printable(availability.detail)}"
    return "OFFLINE", text


def describe_health(state: UnitState) -> str:
    health = state.health
    if health is None:
        if state.health_problem is not None:
            return f"health INVALID: {state.health_problem}"
        return "no health message"
    backlog = f"backlog {health.backlog_events}"
    if health.oldest_unsent_seq is not None:
        backlog += f" (oldest #{health.oldest_unsent_seq})"
    alerts = (
        f"alerts {len(health.active_alerts)} ({_printable(', '.join(health.active_alerts))})"
        if health.active_alerts
        else "alerts 0"
    )
    conditions = (
        f"conditions {_printable(', '.join(health.active_conditions))}"
        if health.active_conditions
        else "conditions none"
    )
    return ", ".join(
        [
            backlog,
            alerts,
            conditions,
            *([f"paused {_printable(health.pause_id)}"] if health.pause_id is not None else []),
            f"clock {health.clock_trust}",
            f"dispenser {health.dispenser_link}",
            f"health at {_local(health.at)}",
        ]
    )


def unit_lines(units: dict[str, UnitState]) -> list[str]:
    """One line per unit: id, status word, availability details, then the health figures."""
    width = max((len(unit) for unit in units), default=0)
    lines = []
    for unit, state in units.items():
        word, details = describe_availability(state)
        lines.append(f"{unit:<{width}}  {word:<7}  {details}  |  {describe_health(state)}")
    return lines
