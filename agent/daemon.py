"""The daemon: the imperative shell around the pure dose engine.

It owns the edges — the dispenser session (serial), the MQTT link, the SQLite store and the
clock — and moves data between them and the engine:

    dispenser message ─┐                         ┌─> store (one transaction per engine step)
    command outcome ───┤                         ├─> outbox publisher ─> MQTT events
    timer expiry ──────┼─> DoseEngine.step() ────┤
    link up/down ──────┤                         └─> dispenser commands (after the commit)
    centre command ────┘

Ordering rules that keep the promises of the product:
- every action of one engine step is committed in ONE transaction before anything leaves the unit
  (a Dispense is sent only after its BeginDispense is durable: a restart never dispenses a slot
  twice);
- dispenser events are handled synchronously inside the driver's receive path, so the event is
  committed before the driver writes the ACK (protocol SPEC 2.6);
- if the store refuses a write (a bug or a corrupted file), the daemon locks the dispenser, says
  why, and exits non-zero: systemd restarts it from the durable state (crash-only).
All long-running work is a named task in one TaskGroup; the engine timer sleeps until the engine's
next deadline (event-driven, no polling).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
import typing
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent import __version__
from agent.clock import Clock, Now, SystemClock, TimeTrust
from agent.commands import CommandHandler
from agent.config import AgentConfig
from agent.contract.state import Availability, DispenserState, Health, Heartbeat
from agent.contract.topics import UnitTopics
from agent.engine.alerts import make_event
from agent.engine.engine import DoseEngine, EngineState
from agent.engine.types import (
    Action,
    BeginDispense,
    CommandOutcome,
    Emit,
    EngineEvent,
    EngineInput,
    FromDispenser,
    LinkDown,
    LinkUp,
    RecordOutcome,
    RecordPresented,
    SendCommand,
    SetBinding,
    SetSchedule,
    Tick,
)
from agent.engine.types import Binding as EngineBinding
from agent.envelope import build_envelope
from agent.mqtt.link import MqttLink, MqttSettings, Will
from agent.publisher import OutboxPublisher
from agent.sdnotify import SystemdNotifier
from agent.store.db import Store
from agent.store.errors import StoreError
from agent.store.outbox import OutboxEvent
from drivers import session as dsession
from drivers.transport import Transport
from protocol.messages import (
    AlertPattern,
    Capabilities,
    Command,
    Feature,
    Message,
    SetAlert,
    SetLock,
    SetTime,
)

log = logging.getLogger(__name__)

ENGINE_STATE_KEY = "engine_state"
MAX_TIMER_SLEEP_S = 60.0  # re-read the clock at least this often (wall-clock jumps, NTP sync)
EXIT_STATE_FAULT = 70
RTC_TOLERANCE_S = 2.0
DISPENSER_COMMANDS = typing.get_args(Command)


class DaemonFaultError(Exception):
    """The daemon cannot go on safely (store refused a write); it stops and is restarted."""


@dataclass
class DispenserView:
    """What the daemon knows of the dispenser, for the retained state topic."""

    link: str = "down"
    capabilities: Capabilities | None = None


class Daemon:
    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock,
        store: Store,
        transport_factory: Callable[[], Transport],
        mqtt_settings: MqttSettings,
        time_rate: float = 1.0,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.store = store
        self.topics = UnitTopics(config.unit_id)
        self.time_rate = time_rate  # simulated seconds per real second (the demo speeds time up)
        self.notifier = notifier or SystemdNotifier()
        self.dispenser = DispenserView()
        self.started_mono = time.monotonic()
        self.boot = self._next_boot()
        self.mqtt_session = 0
        self.engine = self._restore_engine()
        self.session = dsession.DispenserSession(
            transport_factory, on_message=self._on_dispenser_message, on_link=self._on_link
        )
        self.mqtt = MqttLink(
            mqtt_settings,
            will_factory=self._will,
            subscriptions=[(self.topics.command_request, 1)],
            on_connected=self._on_mqtt_connected,
        )
        self.publisher = OutboxPublisher(
            store, self.mqtt, self.topics.events, self._envelope, window=50
        )
        self.commands = CommandHandler(self)
        self._timer_changed = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._last_state_json = ""
        self._fault: DaemonFaultError | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until cancelled (returns 0) or until a state fault (returns EXIT_STATE_FAULT)."""
        self._record_startup()
        faulted = False
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                tasks.create_task(self.session.run(), name="dispenser-link")
                tasks.create_task(self.mqtt.run(), name="mqtt-link")
                tasks.create_task(self.publisher.run(), name="outbox-publisher")
                tasks.create_task(self._engine_timer(), name="engine-timer")
                tasks.create_task(self.commands.run(), name="centre-commands")
                tasks.create_task(self._periodic_state(), name="heartbeat-and-health")
                tasks.create_task(self._watchdog(), name="systemd-watchdog")
                self.notifier.notify(ready="1", status="running")
        except* DaemonFaultError as group:
            log.critical("stopping: %s", group.exceptions[0])
            faulted = True
        finally:
            self._tasks = None
        return EXIT_STATE_FAULT if faulted else 0

    def _next_boot(self) -> int:
        with self.store.transaction():
            return self.store.next_boot_counter()

    def _restore_engine(self) -> DoseEngine:
        now = self.clock.now()
        saved = self.store.get_kv(ENGINE_STATE_KEY)
        state = EngineState.from_json(saved) if saved else EngineState.initial()
        state = state.with_open_slots(self.store.open_slots())
        engine = DoseEngine(self.config.engine.to_engine_config(), state, now)
        self._last_state_json = saved or ""
        return engine

    def _record_startup(self) -> None:
        now = self.clock.now()
        # Installation values from the config seed the engine once; later changes come from the
        # response centre. Schedule first, so a new binding never looks like "no schedule".
        inputs: list[EngineInput] = []
        schedule = self.config.built_schedule()
        if (
            schedule is not None
            and self.config.schedule is not None
            and self.engine.state.schedule_version < self.config.schedule.version
        ):
            inputs.append(SetSchedule(schedule, self.config.schedule.version))
        if self.engine.state.binding is None and self.config.patient_ref:
            inputs.append(SetBinding(EngineBinding(self.config.patient_ref)))
        started = make_event(
            "agent_started",
            {"agent_version": __version__, "boot": self.boot, "time_trust": now.trust.value},
        )
        self.apply([Emit(started)], now)
        for inp in inputs:
            self.step(inp)

    # --- the engine step --------------------------------------------------------------------

    def step(self, inp: EngineInput, within: Callable[[], None] | None = None) -> list[Action]:
        """Feed one input; commit its actions (and `within`, in the same transaction); send."""
        now = self.clock.now()
        actions = self.engine.step(inp, now)
        self.apply(actions, now, within)
        return actions

    def apply(
        self, actions: list[Action], now: Now, within: Callable[[], None] | None = None
    ) -> None:
        commands: list[SendCommand] = []
        emitted = False
        try:
            with self.store.transaction():
                for action in actions:
                    match action:
                        case BeginDispense():
                            self.store.begin_dispense(
                                action.slot_id,
                                action.dispense_id,
                                action.sachet_index,
                                action.due_utc.isoformat(),
                            )
                        case RecordPresented():
                            self.store.record_presented(action.slot_id)
                        case RecordOutcome():
                            self.store.record_outcome(
                                action.slot_id, action.outcome.value, action.reason
                            )
                        case Emit():
                            self._append_event(action.event, now)
                            emitted = True
                        case SendCommand():
                            commands.append(action)
                state_json = self.engine.state.to_json()
                if state_json != self._last_state_json:
                    self.store.set_kv(ENGINE_STATE_KEY, state_json)
                if within is not None:
                    within()
        except StoreError as exc:
            # Raising also keeps the driver from ACKing a dispenser event we could not store.
            raise self._state_fault(f"store refused an engine step: {exc}") from exc
        self._last_state_json = state_json
        if emitted:
            self.publisher.notify()
        for command in commands:
            self._spawn(self._send_command(command), f"dispenser-command:{command.correlation}")
        self._timer_changed.set()

    def _append_event(self, event: EngineEvent, now: Now) -> None:
        payload: dict[str, object] = {
            "priority": event.priority.value,
            "vkp_code": event.vkp_code,
            "alert_id": event.alert_id,
            "boot": self.boot,
            "data": event.fields,
        }
        self.store.append_event(event.kind, payload, _iso_z(now.utc), now.trust.value)

    def _envelope(self, event: OutboxEvent, replayed: bool) -> bytes:
        return build_envelope(self.config.unit_id, event, replayed, self.mqtt_session)

    def stamp(self) -> tuple[str, str]:
        """(UTC time, trust) for audit records the daemon writes itself."""
        now = self.clock.now()
        return _iso_z(now.utc), now.trust.value

    def _state_fault(self, reason: str) -> DaemonFaultError:
        """Lock the dispenser, raise the alarm locally, and stop (systemd restarts us)."""
        log.critical("state fault: %s", reason)
        if self._fault is None:
            self._fault = DaemonFaultError(reason)
            self._spawn(self._fail_safe(self._fault), "fail-safe")
        return self._fault

    async def _fail_safe(self, fault: DaemonFaultError) -> None:
        """Lock the cassette and sound the fault pattern (bounded), then stop the daemon."""
        for command in (
            SetLock(req_id=0, locked=True),
            SetAlert(req_id=0, pattern=AlertPattern.FAULT),
        ):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.session.request(command), 3)
        raise fault

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Start a named task in the daemon's TaskGroup (dropped once the daemon is stopping)."""
        if self._tasks is not None:
            try:
                self._tasks.create_task(coro, name=name)
                return
            except RuntimeError:  # the group is shutting down
                pass
        coro.close()

    async def _send_command(self, action: SendCommand, *, to_engine: bool = True) -> None:
        if self._fault is not None:
            return  # failing safe: the engine's commands no longer go out
        command = action.command
        if not isinstance(command, DISPENSER_COMMANDS):
            raise TypeError(f"engine asked to send {command!r}, which is not a command")
        try:
            reply = await self.session.request(command)
        except dsession.SessionError as exc:
            outcome = CommandOutcome(action.correlation, None, failure=_failure_token(exc))
        else:
            outcome = CommandOutcome(action.correlation, reply)
        if not to_engine:
            log.info("%s: %s", action.correlation, outcome.reply or outcome.failure)
            return
        with contextlib.suppress(DaemonFaultError):  # the fail-safe task stops the daemon
            self.step(outcome)

    async def _engine_timer(self) -> None:
        while True:
            now = self.clock.now()
            deadline = self.engine.next_deadline(now)
            wait_s = MAX_TIMER_SLEEP_S
            if deadline is not None:
                wait_s = min(wait_s, max(0.0, (deadline - now.mono) / self.time_rate))
            self._timer_changed.clear()
            try:
                async with asyncio.timeout(wait_s):
                    await self._timer_changed.wait()
                continue  # something stepped the engine: recompute the deadline
            except TimeoutError:
                pass
            try:
                self.step(Tick())
            except DaemonFaultError:
                return  # the fail-safe task stops the daemon

    # --- dispenser side ----------------------------------------------------------------------

    def _on_dispenser_message(self, message: Message) -> None:
        self.step(FromDispenser(message))

    def _on_link(self, change: dsession.LinkUp | dsession.LinkDown) -> None:
        if isinstance(change, dsession.LinkUp):
            self.dispenser = DispenserView("up", change.capabilities)
            self._reconcile_time(change.capabilities)
            self.step(LinkUp(change.capabilities))
        else:
            self.dispenser = DispenserView("down", self.dispenser.capabilities)
            self.step(LinkDown(change.reason))
        self._spawn(self._publish_dispenser_state(), "publish-dispenser-state")
        self._spawn(self._publish_health(), "publish-health")  # link and clock trust changed

    def _reconcile_time(self, caps: Capabilities) -> None:
        """docs/time-policy.md: with no NTP yet, a valid dispenser RTC vouches for the time; once
        NTP is synchronised, the dispenser's RTC is corrected from it."""
        now = self.clock.now()
        if not caps.has_rtc:
            return
        rtc = datetime.fromtimestamp(caps.rtc_utc_s, UTC) if caps.rtc_valid else None
        if (
            now.trust is TimeTrust.UNTRUSTED
            and rtc is not None
            and isinstance(self.clock, SystemClock)
        ):
            correction = self.clock.adopt_reference(rtc, TimeTrust.DISPENSER_RTC)
            log.warning(
                "no NTP yet: wall time taken from the dispenser RTC (%+.1f s)",
                correction.total_seconds(),
            )
        elif now.trust is TimeTrust.SYNCHRONISED and (
            rtc is None or abs((rtc - now.utc).total_seconds()) > RTC_TOLERANCE_S
        ):
            command = SetTime(req_id=0, utc_s=int(now.utc.timestamp()))
            self._spawn(
                self._send_command(SendCommand(command, "set-rtc"), to_engine=False),
                "set-dispenser-rtc",
            )

    # --- MQTT side ---------------------------------------------------------------------------

    def _will(self) -> Will:
        with self.store.transaction():
            self.mqtt_session = self.store.next_session_counter()
        offline = Availability(
            state="offline",
            session=self.mqtt_session,
            at=self.clock.now().utc,
            reason="connection lost",
        )
        return Will(
            self.topics.availability, offline.model_dump_json().encode(), qos=1, retain=True
        )

    async def _on_mqtt_connected(self) -> None:
        """Birth, then every retained topic again (a non-persistent broker may have lost them)."""
        await self.publish_retained_state()

    async def publish_retained_state(self) -> None:
        online = Availability(
            state="online", session=self.mqtt_session, at=self.clock.now().utc, reason=None
        )
        await self._publish_retained(self.topics.availability, online.model_dump_json())
        await self._publish_dispenser_state()
        await self._publish_health()

    def status(self) -> dict[str, object]:
        """The answer to a request_status command."""
        return {
            "engine": self.engine.status(),
            "health": json.loads(self.health().model_dump_json()),
            "dispenser_link": self.dispenser.link,
        }

    async def _publish_retained(self, topic: str, payload: str) -> None:
        if self.mqtt.connected:
            with contextlib.suppress(Exception):
                await self.mqtt.publish(topic, payload.encode(), qos=1, retain=True)

    async def _publish_dispenser_state(self) -> None:
        caps = self.dispenser.capabilities
        status = self.engine.status()
        state = DispenserState(
            link="up" if self.dispenser.link == "up" else "down",
            model=caps.model if caps else None,
            serial_number=caps.serial_number if caps else None,
            firmware_version=caps.firmware_version if caps else None,
            protocol_version=caps.protocol_version if caps else None,
            features=[f.name or "" for f in Feature if caps and caps.features & f],
            roll_loaded=bool(status.get("roll_id")),
            sachets_remaining=_int_or_none(status.get("sachets_remaining")),
        )
        await self._publish_retained(self.topics.dispenser, state.model_dump_json())

    def health(self) -> Health:
        now = self.clock.now()
        backlog = self.store.backlog()
        age = None
        if backlog.oldest_occurred_utc is not None:
            oldest = datetime.fromisoformat(backlog.oldest_occurred_utc.replace("Z", "+00:00"))
            age = max(0.0, (now.utc - oldest).total_seconds())
        return Health(
            at=now.utc,
            session=self.mqtt_session,
            backlog_events=backlog.count,
            oldest_unsent_seq=backlog.oldest_seq,
            oldest_unsent_age_s=age,
            dispenser_link="up" if self.dispenser.link == "up" else "down",
            clock_trust=now.trust,
            disk_free_bytes=shutil.disk_usage(self.store.path.parent).free,
            agent_version=__version__,
            active_alerts=[str(a) for a in _as_list(self.engine.status().get("active_alerts"))],
        )

    async def _publish_health(self) -> None:
        await self._publish_retained(self.topics.health, self.health().model_dump_json())

    async def _periodic_state(self) -> None:
        """Heartbeat (QoS 0, expires, never stored) and the retained health, at slow rates."""
        heartbeat_s = self.config.mqtt.heartbeat_s
        health_every = max(1, self.config.mqtt.health_s // heartbeat_s)
        beats = 0
        while True:
            await asyncio.sleep(heartbeat_s)
            beats += 1
            if not self.mqtt.connected:
                continue
            beat = Heartbeat(
                at=self.clock.now().utc,
                session=self.mqtt_session,
                uptime_s=int(time.monotonic() - self.started_mono),
            )
            with contextlib.suppress(Exception):
                await self.mqtt.publish(
                    self.topics.heartbeat,
                    beat.model_dump_json().encode(),
                    qos=0,
                    message_expiry_s=2 * heartbeat_s,
                )
            if beats % health_every == 0:
                await self._publish_health()

    async def _watchdog(self) -> None:
        """Feed systemd's watchdog only while the engine timer and the store are healthy."""
        interval = self.notifier.watchdog_interval_s()
        if interval is None:
            return
        while True:
            await asyncio.sleep(interval)
            self.store.backlog()  # a store that no longer answers must starve the watchdog
            self.notifier.notify(watchdog="1")

    async def publish_response(
        self, payload: bytes, response_topic: str | None, correlation: bytes | None
    ) -> None:
        topic = response_topic or self.topics.command_response
        try:
            await self.mqtt.publish(topic, payload, qos=1, correlation_data=correlation)
        except Exception as exc:  # the command is recorded: a resent command id gets the answer
            log.warning("command response not delivered (%s); a retry of the command gets it", exc)


def _failure_token(exc: dsession.SessionError) -> str:
    """A stable token for the engine: why a command got no reply."""
    if isinstance(exc, dsession.LinkSendFailed):
        return exc.reason
    if isinstance(exc, dsession.RequestTimeout):
        return "reply_timeout"  # outcome unknown: the dispenser may have executed it
    if isinstance(exc, dsession.NotConnected | dsession.LinkLost):
        return "link_down"
    return type(exc).__name__


def _iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else []
