"""The daemon: the imperative shell around the pure dose engine.

It is handed its edges — the dispenser session (serial), the MQTT link and its outbox publisher
(made by agent/runtime.py with the daemon's handlers, agent/edges.py), the SQLite store and the
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
- the commit runs on the store's writer thread (agent/store/writer.py), never on the event loop:
  an fsync must not stall the links' timers. `_commit_step` is the one place where a step is
  committed: steps commit in the order they were taken (one thread, FIFO), and what a step releases
  (its events to the MQTT link via `OutboxPublisher.offer`, its dispenser commands, the step's
  future) follows its commit, on the loop, in that order. The driver awaits the future of a
  dispenser event's step before it writes that frame's ACK (protocol SPEC 2.6); a centre command
  is answered and acked once its step committed (`committed()`);
- if the store refuses a write (a bug, a full or corrupted file) the daemon fails safe, then exits
  with EXIT_STATE_FAULT so systemd restarts it from the durable state (crash-only):
  1. the engine is no longer stepped: nothing is dispensed, no command from the engine goes out;
  2. a dispenser event whose commit failed is not acknowledged (`NotStored`): the driver keeps the
     link up and withholds the ACK, so the dispenser still holds the event;
  3. `SetLock(locked=True)` and `SetAlert(FAULT)` go to the dispenser on the live link, or on the
     next one if it is down (waiting at most `failsafe_link_wait_s`), each request bounded;
     `SetLock` only if that link's dispenser announced `LOCK` (SPEC 3.4);
  4. at the same time the retained availability goes "offline" naming the fault (published
     directly: the store, and so the outbox, cannot be trusted), on the live connection or on the
     first one within the same bounded wait; a connection made meanwhile says the fault, never
     "online";
  5. the outcome is logged at CRITICAL, and run() returns EXIT_STATE_FAULT.
A store that cannot even be opened (agent/runtime.py) takes the same path from the start, with an
in-memory stand-in for the fail-safe's bookkeeping; the file is left untouched.
All long-running work is a named task in one TaskGroup; the engine timer sleeps until the engine's
next deadline (event-driven, no polling).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import shutil
import sqlite3
import time
import typing
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from agent import __version__, local_control
from agent.broker_watch import watch_broker
from agent.clock import (
    DEFAULT_ZONE,
    Clock,
    Now,
    ReferenceClock,
    TimeTrust,
    time_rate,
    utc_text,
)
from agent.commands import CommandHandler
from agent.config import AgentConfig
from agent.contract.commands import RequestStatusResult
from agent.contract.state import (
    CONNECTION_LOST,
    SHUTDOWN,
    STATE_FAULT,
    Availability,
    DispenserState,
    Health,
    Heartbeat,
)
from agent.contract.topics import UnitTopics
from agent.deviation_summary import (
    day_period,
    month_period,
    recorded_events,
    summarise,
    summary_from_store,
)
from agent.edges import EdgeFactory, EdgeHooks
from agent.engine import roll_check
from agent.engine.catalogue import make_event
from agent.engine.engine import DoseEngine
from agent.engine.schedule import Schedule
from agent.engine.state import Restored, restore
from agent.engine.types import (
    ON_SITE,
    Action,
    BeginDispense,
    CommandOutcome,
    Emit,
    EngineEvent,
    EngineInput,
    FromDispenser,
    LinkDown,
    LinkUp,
    PanelPress,
    RecordOutcome,
    RecordPresented,
    SendCommand,
    SetBinding,
    SetSchedule,
    StateUnreadable,
    Tick,
)
from agent.engine.types import Binding as EngineBinding
from agent.envelope import build_envelope
from agent.host import StepCommit
from agent.inbound_drops import inbound_drop_reporter
from agent.mqtt.link import MqttLinkError, Will
from agent.sdnotify import SystemdNotifier
from agent.store.db import Store
from agent.store.errors import StoreError
from agent.store.outbox import OutboxEvent
from agent.store.writer import StoreWriter
from agent.summary_schedule import Period, due_periods, next_run_utc, summary_event_data
from agent.technician.lock import StateLock, StateLocked
from drivers import gpio_panel
from drivers import session as dsession
from protocol.messages import (
    AlertPattern,
    Capabilities,
    Command,
    CommandResult,
    Feature,
    Message,
    ResultCode,
    SetAlert,
    SetLock,
    SetTime,
)

log = logging.getLogger(__name__)

ENGINE_STATE_KEY = "engine_state"
# A stored state that could not be read is kept here for a person to look at (a reset wipes it).
UNREADABLE_STATE_KEY = "engine_state_unreadable"
SUMMARY_DAY_KEY = "summary_last_day"  # the last local day with a daily summary recorded
SUMMARY_RECHECK_S = 900.0  # summaries: look at the clock again at least this often
MAX_TIMER_SLEEP_S = 60.0  # re-read the clock at least this often (wall-clock jumps, NTP sync)
EXIT_STATE_FAULT = 70
EXIT_STATE_LOCKED = 75  # another process (a technician's reset) holds the state folder
# Fail-safe bounds: how long a fault waits for a dispenser link to lock the dispenser on (from the
# fault), each lock/alert request, and the note to the response centre.
FAILSAFE_LINK_WAIT_S = 30.0
FAILSAFE_REQUEST_TIMEOUT_S = 5.0
FAILSAFE_RETRY_S = 0.5  # pause after a failed request while the link stays up
FAILSAFE_PUBLISH_TIMEOUT_S = 5.0
# What a broken store raises: its own errors, and SQLite's (I/O, disk full, constraint, corrupt).
STORE_FAULTS: tuple[type[Exception], ...] = (StoreError, sqlite3.Error)
RTC_TOLERANCE_S = 2.0
DISPENSER_COMMANDS = typing.get_args(Command)


# kv keys of the binding at start (`Daemon._binding_at_start`); a reset wipes both
TECHNICIAN_BINDING_KEY = "technician_binding"  # written by `dispenser-agent bind`/`rebind`
BINDING_MISMATCH_KEY = "binding_mismatch"  # the bound patient, while the config names another
BINDING_MISMATCH_REASON = "config_patient_ref_differs_from_bound"
BINDING_MISMATCH_LOG = (
    "the config's patient_ref differs from the patient this unit is bound to: unbound, nothing "
    "is dispensed until a technician runs `dispenser-agent rebind` (a typo fixed) or "
    "`dispenser-agent reset --termination` (another patient); `dispenser-agent check-config` "
    "names both"
)


def schedule_edited(config: AgentConfig, in_effect: Schedule | None) -> bool:
    """The config's schedule has other contents than the one in effect while its version is
    not above it (an edit whose version was not raised): not applied, and reported."""
    if config.schedule is None or in_effect is None:
        return False
    from agent.engine.state import ScheduleModel  # the stored form compares what matters

    return ScheduleModel.of(config.schedule.build()) != ScheduleModel.of(in_effect)


def _stored_ref(text: str, field: str) -> str | None:
    try:
        value = json.loads(text).get(field)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


# opens the unit's panel with the daemon's input handler (None: no GPIO on this machine)
PanelFactory = Callable[[Callable[[gpio_panel.PanelEvent], None]], gpio_panel.LocalPanel | None]


class DaemonFaultError(Exception):
    """The daemon cannot go on safely (store refused a write): it fails safe, stops and is
    restarted. Raised from any of the daemon's tasks, it starts the same fail-safe."""


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
        edges: EdgeFactory,
        notifier: SystemdNotifier | None = None,
        failsafe_link_wait_s: float = FAILSAFE_LINK_WAIT_S,
        startup_fault: str | None = None,
        panel_factory: PanelFactory | None = None,
    ) -> None:
        """`edges` makes the dispenser session, the MQTT link and the outbox publisher with the
        daemon's handlers (agent/runtime.py's `unit_edges`; a test's fakes).
        `startup_fault`: the daemon cannot work (its store could not be opened; `store` is a
        scratch stand-in): it only fails safe and returns EXIT_STATE_FAULT."""
        self.config = config
        self._startup_fault = startup_fault
        self.clock = clock
        self.store = store
        self.writer = StoreWriter(store)  # every write of the running daemon, off the loop
        self._last_commit: asyncio.Future[None] | None = None  # the last step's, once on the loop
        self.topics = UnitTopics(config.unit_id)
        self.time_rate = time_rate(clock)  # clock seconds per real second (the demo's are fast)
        self.notifier = notifier or SystemdNotifier()
        self.failsafe_link_wait_s = failsafe_link_wait_s
        self.dispenser = DispenserView()
        self.started_mono = time.monotonic()
        self.boot = self._next_boot()
        self.mqtt_session = 0  # the session of the current (or next) MQTT connection
        self._spare_session: int | None = None  # chosen for a will no broker ever saw
        first_seq_of_process = store.last_event_seq() + 1
        # set when the stored state could not be read: what was made of it, and its text
        self._restored: Restored | None = None
        self._unreadable_text: str | None = None
        self._invalid_rtc_reported: int | None = None  # the dispenser RTC value last reported
        self.engine = self._restore_engine()
        made = edges(
            EdgeHooks(
                store=store,
                writer=self.writer,
                topics=self.topics,
                boot=self.boot,
                first_seq_of_process=first_seq_of_process,
                on_dispenser_message=self._on_dispenser_message,
                on_dispenser_link=self._on_link,
                will=self._will,
                will_unseen=self._will_unseen,
                farewell=self._farewell,
                on_broker_connected=self._on_mqtt_connected,
                on_inbound_dropped=inbound_drop_reporter(self),
                envelope=self._envelope,
            )
        )
        self.session = made.session
        self.mqtt = made.mqtt
        self.publisher = made.publisher
        self.commands = CommandHandler(self)
        self._timer_changed = asyncio.Event()
        self._dispenser_changed = asyncio.Event()  # link up/down: wakes the fail-safe
        self._tasks: asyncio.TaskGroup | None = None
        self._workers: list[asyncio.Task[None]] = []  # stopped by a fault
        self._last_state_json = ""
        # what the retained health last said of the alerts, the conditions and the pause
        self._told_in_health: tuple[tuple[str, ...], tuple[str, ...], str | None] = ((), (), None)
        self._fault: DaemonFaultError | None = None
        self._panel_factory = panel_factory or self._open_panel
        self.panel: gpio_panel.LocalPanel | None = None
        self._contacts: dict[str, bool] = {}  # last recorded state of each panel contact

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until cancelled (returns 0) or until a state fault (returns EXIT_STATE_FAULT once the
        fail-safe has locked the dispenser, or given up after its bounded wait)."""
        try:
            # held while the daemon runs: `reset --termination` and `bind` refuse beside it
            state_lock = StateLock.acquire(self.config.state_dir)
        except (StateLocked, OSError) as exc:  # held by a technician's tool, or not ours
            log.critical("not starting: %s", exc)
            return EXIT_STATE_LOCKED
        try:
            return await self._run_locked()
        finally:
            self.writer.close()  # the commits already promised finish first
            state_lock.release()

    async def _run_locked(self) -> int:
        faulted = False
        try:
            async with asyncio.TaskGroup() as tasks:
                # The links first: even a fault while starting up must reach the dispenser. (No
                # task runs before this block awaits, so start-up is still recorded first.)
                tasks.create_task(self.session.run(), name="dispenser-link")
                tasks.create_task(self._guarded(self.mqtt.run(), "mqtt-link"), name="mqtt-link")
                tasks.create_task(self._watchdog(), name="systemd-watchdog")
                try:
                    if self._startup_fault is not None:
                        raise self._state_fault(self._startup_fault)
                    self._record_startup()
                    # Before the links run (this block has not awaited yet): the summaries owed
                    # at start read the whole audit log and commit, which would stall the loop
                    # just as the dispenser sends its first frames (ACK within 250 ms, SPEC).
                    try:
                        self._record_owed_summaries(self.clock.now())
                    except STORE_FAULTS as exc:
                        raise self._state_fault(f"store failed in summaries: {exc!r}") from exc
                except DaemonFaultError as fault:
                    self._tasks = tasks
                    self._start_panel(tasks)  # the fail-safe shows FAULT on it too
                    tasks.create_task(self._fail_safe(fault), name="fail-safe")
                else:
                    self._tasks = tasks
                    for work, name in (
                        (self.publisher.run(), "outbox-publisher"),
                        (self._engine_timer(), "engine-timer"),
                        (self.commands.run(), "centre-commands"),
                        (self._periodic_state(), "heartbeat-and-health"),
                        (self._summaries(), "adherence-summaries"),
                        (watch_broker(self), "broker-watch"),
                        (
                            local_control.serve(
                                local_control.socket_path(self.config.state_dir),
                                self._answer_local,
                            ),
                            "local-control",
                        ),
                    ):
                        task = tasks.create_task(self._guarded(work, name), name=name)
                        # a fault from a start-up commit may cancel it before its first step:
                        # `work` is then closed, not reported as never awaited (see _spawn)
                        task.add_done_callback(functools.partial(_close, work))
                        self._workers.append(task)
                    self._start_panel(tasks)
                    self.notifier.notify(ready="1", status="running")
        except* DaemonFaultError as group:
            log.critical("stopping: %s", group.exceptions[0])
            faulted = True
        finally:
            self._tasks = None
        return EXIT_STATE_FAULT if faulted else 0

    async def _guarded(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run one of the daemon's tasks; a store fault escaping it starts the fail-safe instead
        of tearing down the task group (and with it the dispenser link the fail-safe needs)."""
        try:
            await work
        except DaemonFaultError as exc:
            self._state_fault(str(exc))
        except STORE_FAULTS as exc:
            self._state_fault(f"store failed in {name}: {exc!r}")

    def _next_boot(self) -> int:
        return self.writer.call(_take_boot_counter)

    def _restore_engine(self) -> DoseEngine:
        """The engine from the stored state. Total: a state that cannot be read (or a ledger row
        that is no valid open slot) starts the engine from what can be read, and
        `_record_startup` tells it so (it locks down and alerts): never a crash at every start,
        never a silent fresh start that forgets the patient binding."""
        now = self.clock.now()
        saved = self.store.get_kv(ENGINE_STATE_KEY)
        restored = restore(saved, self.store.open_slots())
        if restored.unreadable is not None:
            log.critical(
                "stored engine state unreadable (%s); binding %s; dispensing locked until a "
                "person acknowledges the state_unreadable alert",
                restored.unreadable,
                restored.binding,
            )
            self._restored, self._unreadable_text = restored, saved
        state = restored.state
        # One dispense-id counter for the life of the unit: the store's (a factory reset keeps
        # it, so a new patient's ids are never ones the dispenser has executed). The engine works
        # on a copy, written back in the transaction of each step; a copy saved in its state by
        # an older version can only move it forward.
        self._stored_dispense_id = self.store.first_unused_dispense_id()
        next_id = max(self._stored_dispense_id, state.next_dispense_id)
        state = replace(state, next_dispense_id=next_id)
        engine = DoseEngine(self.config.engine.to_engine_config(), state, now)
        self._last_state_json = saved or ""
        return engine

    def _record_startup(self) -> None:
        now = self.clock.now()
        # Installation values from the config seed the engine once; later changes come from the
        # response centre. Schedule first, so a new binding never looks like "no schedule".
        inputs: list[EngineInput] = []
        restored, saved = self._restored, self._unreadable_text
        if restored is not None and restored.unreadable is not None:
            inputs.append(StateUnreadable(restored.unreadable, restored.binding))
        schedule = self.config.built_schedule()
        notes: list[EngineEvent] = []
        if schedule is not None and self.config.schedule is not None:
            if self.engine.state.schedule_version < self.config.schedule.version:
                inputs.append(SetSchedule(schedule, self.config.schedule.version))
            elif schedule_edited(self.config, self.engine.state.schedule):
                log.warning(
                    "the config's schedule differs from the one in effect but its version (%d) "
                    "was not raised: not applied (dispenser-agent check-config says more)",
                    self.config.schedule.version,
                )
                notes.append(
                    make_event(
                        "schedule_edit_ignored",
                        {
                            "config_version": self.config.schedule.version,
                            "version_in_effect": self.engine.state.schedule_version,
                        },
                    )
                )
        binding_steps: list[tuple[EngineInput, Callable[[], None] | None]] = []
        # Not while locked down: a binding that could not be read is not quietly replaced; a
        # person decides (the config's binding is applied at the first start after that).
        if restored is None and not self.engine.locked_down:
            binding_steps, mismatch = self._binding_at_start()
            notes += mismatch
        started = make_event(
            "agent_started",
            {"agent_version": __version__, "boot": self.boot, "time_trust": now.trust.value},
        )
        self.apply([Emit(started)], now)
        for inp in inputs:
            within: Callable[[], None] | None = None
            if isinstance(inp, StateUnreadable) and saved:
                # the unreadable text is kept, in the transaction that stores its replacement
                within = functools.partial(self.store.set_kv, UNREADABLE_STATE_KEY, saved)
            self.step(inp, within=within)
        for binding_input, then in binding_steps:
            self.step(binding_input, within=self._with_command_floor(then, now))
        if notes:
            self.apply([Emit(note) for note in notes], now)

    def _with_command_floor(
        self, then: Callable[[], None] | None, now: Now
    ) -> Callable[[], None] | None:
        """`then`, and the command floor raised to now: no signed command issued before a
        binding changed runs after it (SAFETY.md H10). Not on an untrusted clock."""
        if now.trust is TimeTrust.UNTRUSTED:
            return then
        at = utc_text(now.utc)

        def both() -> None:
            if then is not None:
                then()
            self.store.raise_command_floor(at)

        return both

    def _binding_at_start(
        self,
    ) -> tuple[list[tuple[EngineInput, Callable[[], None] | None]], list[EngineEvent]]:
        """Which patient the unit serves from this start (docs/engine.md, "Binding at start").

        A binding a technician confirmed on site (`dispenser-agent bind`/`rebind`) wins. A
        config naming another patient than the bound one is never obeyed silently, nor ignored
        silently: in doubt the unit unbinds (nothing is dispensed, held doses say no_binding),
        remembers the mismatch until a technician resolves it, and says so at every start.
        No patient reference is logged or sent."""
        bound = self.engine.state.binding
        bound_ref = bound.patient_ref if bound is not None else None
        config_ref = self.config.patient_ref
        confirmed = self.store.get_kv(TECHNICIAN_BINDING_KEY)
        marker = self.store.get_kv(BINDING_MISMATCH_KEY)
        steps: list[tuple[EngineInput, Callable[[], None] | None]] = []

        def forget(*keys: str) -> Callable[[], None]:
            def delete() -> None:
                for key in keys:
                    self.store.delete_kv(key)

            return delete

        if confirmed is not None:
            ref = _stored_ref(confirmed, "patient_ref")
            binding = None if ref is None else EngineBinding(ref)
            steps.append(
                (SetBinding(binding), forget(TECHNICIAN_BINDING_KEY, BINDING_MISMATCH_KEY))
            )
            return steps, []
        if marker is not None:
            if config_ref is not None and config_ref == _stored_ref(marker, "bound"):
                # the config names the bound patient again: the mismatch is over
                steps.append((SetBinding(EngineBinding(config_ref)), forget(BINDING_MISMATCH_KEY)))
                return steps, []
            log.critical(BINDING_MISMATCH_LOG)
            return steps, [make_event("binding_mismatch", {"reason": BINDING_MISMATCH_REASON})]
        if bound_ref is None and config_ref:
            steps.append((SetBinding(EngineBinding(config_ref)), None))
        elif bound_ref is not None and config_ref and config_ref != bound_ref:
            log.critical(BINDING_MISMATCH_LOG)
            remember = functools.partial(
                self.store.set_kv, BINDING_MISMATCH_KEY, json.dumps({"bound": bound_ref})
            )
            steps.append((SetBinding(None), remember))
            return steps, [make_event("binding_mismatch", {"reason": BINDING_MISMATCH_REASON})]
        return steps, []

    # --- the engine step --------------------------------------------------------------------

    def step(
        self,
        inp: EngineInput,
        within: Callable[[], None] | None = None,
        also: Sequence[Action] = (),
    ) -> StepCommit:
        """Feed one input; commit its actions, then `also` (and `within`, in the same
        transaction); send once committed.

        Raises DaemonFaultError if the daemon is failing safe (then without stepping); a commit
        that fails later fails the returned StepCommit with it."""
        if self._fault is not None:
            raise self._fault
        now = self.clock.now()
        actions = [*self.engine.step(inp, now), *also]
        return self.apply(actions, now, within, cause=_describe_input(inp))

    def apply(
        self,
        actions: list[Action],
        now: Now,
        within: Callable[[], None] | None = None,
        *,
        cause: str = "a write",
    ) -> StepCommit:
        if self._fault is not None:
            raise self._fault
        state = self.engine.state
        state_json = state.to_json()
        if (
            not actions
            and within is None
            and state_json == self._last_state_json
            and state.next_dispense_id == self._stored_dispense_id
        ):
            # Nothing to write or send (an idle Tick): no trip to the writer thread, which
            # would wake both threads for an empty transaction. Done once every step before it
            # is, which is what the last commit's future already says.
            return self._last_commit
        write = functools.partial(
            self._write_step,
            actions,
            now,
            None if state_json == self._last_state_json else state_json,
            None if state.next_dispense_id == self._stored_dispense_id else state.next_dispense_id,
            within,
        )
        # The next step compares with what this one writes: it commits after this one, and if
        # this one fails nothing commits after it (the writer is poisoned, the daemon fails safe).
        self._last_state_json = state_json
        self._stored_dispense_id = state.next_dispense_id
        sends = [action for action in actions if isinstance(action, SendCommand)]
        return self._commit_step(write, sends, now, cause)

    def _commit_step(
        self,
        write: Callable[[Store], list[OutboxEvent]],
        sends: list[SendCommand],
        now: Now,
        cause: str,
    ) -> StepCommit:
        """The one place where a step is committed: `write` runs on the writer thread, behind
        every step before it; once it committed, `_release` sends what the step released (on
        the loop, in commit order) and the returned future resolves. The loop runs on meanwhile
        (timers, both links); nothing the step released leaves the unit before its commit."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:  # start-up before run(), a tool, a test: committed here and now
            try:
                emitted = self.writer.call(write)
            except STORE_FAULTS as exc:
                raise self._state_fault(f"store refused {cause}: {exc!r}") from exc
            self._release(emitted, sends, now)
            return None
        committed: asyncio.Future[None] = loop.create_future()
        committed.add_done_callback(_observed)  # a step nobody awaits (a Tick) may fail too
        self._last_commit = committed  # settles after every step before it (`committed()`)

        def settle(job: concurrent.futures.Future[list[OutboxEvent]]) -> None:
            if job.cancelled():
                # never started (the writer closed at a stop): not committed
                error: BaseException | None = StoreError("commit abandoned at a stop")
            else:
                error = job.exception()
            if error is not None:
                fault = self._state_fault(f"store refused {cause}: {error!r}")
                if not committed.done():
                    committed.set_exception(fault)
                return
            self._release(job.result(), sends, now)
            if not committed.done():  # cancelled: its waiter stopped; the commit stands
                committed.set_result(None)

        job = self.writer.submit(write)
        # On the loop, in commit order (one writer thread, call_soon_threadsafe is FIFO).
        job.add_done_callback(lambda done: _call_on(loop, settle, done))
        return committed

    def _write_step(
        self,
        actions: list[Action],
        now: Now,
        state_json: str | None,
        next_dispense_id: int | None,
        within: Callable[[], None] | None,
        store: Store,
    ) -> list[OutboxEvent]:
        """One step's transaction (on the writer thread); returns the events it stored."""
        emitted: list[OutboxEvent] = []
        with store.transaction():
            for action in actions:
                match action:
                    case BeginDispense():
                        store.begin_dispense(
                            action.slot_id,
                            action.dispense_id,
                            action.sachet_index,
                            action.due_utc.isoformat(),
                        )
                    case RecordPresented():
                        store.record_presented(action.slot_id)
                    case RecordOutcome():
                        store.record_outcome(action.slot_id, action.outcome.value, action.reason)
                    case Emit():
                        emitted.append(self._append_event(store, action.event, now))
            if state_json is not None:
                store.set_kv(ENGINE_STATE_KEY, state_json)
            if next_dispense_id is not None:
                store.advance_dispense_ids(next_dispense_id)
            if within is not None:
                within()
        return emitted

    def _release(self, emitted: list[OutboxEvent], sends: list[SendCommand], now: Now) -> None:
        """What a committed step lets out of the unit."""
        if emitted:
            # Committed: straight to the link (before the dispenser's ACK is written), or, if
            # they are not next in line, to the publisher's next pass.
            self.publisher.offer(emitted)
            self._health_on_change()
        for command in sends:
            self._spawn(self._send_command(command), f"dispenser-command:{command.correlation}")
        self._timer_changed.set()
        self._show_panel(now)

    async def committed(self) -> None:
        """Wait until every step taken so far has committed and been released (steps settle in
        order: the last one's future is enough); raises DaemonFaultError if one failed. No wait
        at all when nothing is in flight."""
        last = self._last_commit
        if last is not None:
            await asyncio.shield(last)  # a cancelled waiter leaves the step's future alone

    def _append_event(self, store: Store, event: EngineEvent, now: Now) -> OutboxEvent:
        payload: dict[str, object] = {
            "priority": event.priority.value,
            "vkp_code": event.vkp_code,
            "alert_id": event.alert_id,
            "boot": self.boot,
            "data": event.fields,
        }
        return store.append_event(event.kind, payload, _iso_z(now.utc), now.trust.value)

    def _health_on_change(self) -> None:
        """The retained health follows the active alerts, the conditions and the pause at once
        (a centre reads them there), not only at the periodic health."""
        status = self.engine.status()
        told = (status.active_alerts, status.conditions, status.pause_id)
        if told != self._told_in_health:
            self._told_in_health = told
            self._spawn(self._publish_health(), "publish-health")

    def _envelope(self, event: OutboxEvent, replayed: bool) -> bytes:
        return build_envelope(self.config.unit_id, event, replayed, self.mqtt_session)

    def stamp(self) -> tuple[str, str]:
        """(UTC time, trust) for audit records the daemon writes itself."""
        now = self.clock.now()
        return _iso_z(now.utc), now.trust.value

    def _state_fault(self, reason: str) -> DaemonFaultError:
        """Start the fail-safe (once) and return the fault to raise; see the module docstring."""
        if self._fault is not None:
            log.error("after the state fault: %s", reason)
            return self._fault
        log.critical("state fault: %s; failing safe", reason)
        self._fault = DaemonFaultError(reason)
        for task in self._workers:  # nothing else steps the engine or touches the store
            task.cancel()
        if self._tasks is not None:
            fail_safe = self._fail_safe(self._fault)
            try:
                self._tasks.create_task(fail_safe, name="fail-safe")
            except RuntimeError:  # the group is already shutting down
                fail_safe.close()
                log.critical("fail-safe not started: the daemon is already stopping")
        return self._fault

    async def _fail_safe(self, fault: DaemonFaultError) -> None:
        """Lock the dispenser and sound the fault pattern, tell the response centre (all bounded),
        log the outcome, then stop the daemon by raising `fault`."""
        reason = str(fault)
        self.notifier.notify(status=f"fail-safe: {reason}"[:200])
        if self.panel is not None:  # the unit's own lights and buzzer say so too
            self.panel.show(
                gpio_panel.Signals(self.dispenser.link == "up", True, False, AlertPattern.FAULT)
            )
        (missing, no_lock), told = await asyncio.gather(
            self._secure_dispenser(), self._tell_centre(reason)
        )
        centre = "response centre told" if told else "response centre NOT told"
        if not missing:
            secured = (
                "FAULT alert on (no LOCK announced: SetLock not sent)"
                if no_lock
                else "dispenser locked, FAULT alert on"
            )
            log.critical("fail-safe done: %s, %s; exiting (%s)", secured, centre, reason)
        else:
            log.critical(
                "fail-safe INCOMPLETE: dispenser %s; %s; exiting anyway (%s)",
                "; ".join(missing),
                centre,
                reason,
            )
        raise fault

    async def _secure_dispenser(self) -> tuple[list[str], bool]:
        """SetLock(True) and SetAlert(FAULT) until each is confirmed or `failsafe_link_wait_s` has
        passed; returns what could not be done (empty: both confirmed) and whether the lock was
        left out. SetLock goes only to a dispenser that announced LOCK (SPEC 3.4: one without it
        is not sent a gated command); such a dispenser still dispenses only on command, and no
        command comes any more."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.failsafe_link_wait_s
        todo: dict[str, Command] = {
            "not locked": SetLock(req_id=0, locked=True),
            "FAULT alert not on": SetAlert(req_id=0, pattern=AlertPattern.FAULT),
        }
        problems = dict.fromkeys(todo, "no dispenser link")
        no_lock = False
        while todo and loop.time() < deadline:
            if not self.session.connected:
                await self._dispenser_change(deadline - loop.time())
                continue
            caps = self.dispenser.capabilities  # this link's: its SessionUp came with `connected`
            if "not locked" in todo and not (caps and caps.features & Feature.LOCK):
                del todo["not locked"], problems["not locked"]
                no_lock = True
                log.warning("fail-safe: the dispenser announced no LOCK: SetLock not sent")
            failed = False
            for what, command in list(todo.items()):
                try:
                    async with asyncio.timeout(FAILSAFE_REQUEST_TIMEOUT_S):
                        reply = await self.session.request(command)
                except (dsession.SessionError, TimeoutError) as exc:
                    problems[what] = f"{type(command).__name__}: {str(exc) or type(exc).__name__}"
                    log.warning("fail-safe: %s", problems[what])
                    failed = True
                    continue
                del todo[what]  # answered: a refusal will not change by asking again
                if not (isinstance(reply, CommandResult) and reply.result is ResultCode.OK):
                    problems[what] = f"{type(command).__name__} refused: {reply}"
                    log.critical("fail-safe: %s", problems[what])
                else:
                    del problems[what]
            if failed and todo:
                await self._dispenser_change(min(FAILSAFE_RETRY_S, deadline - loop.time()))
        for what in todo:
            problems[what] += f" (gave up after {self.failsafe_link_wait_s:g} s)"
        return [f"{what}: {problem}" for what, problem in problems.items()], no_lock

    async def _dispenser_change(self, within_s: float) -> None:
        """Wait (bounded) for the dispenser link to come up or go down."""
        self._dispenser_changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, within_s)):
                await self._dispenser_changed.wait()

    async def _tell_centre(self, reason: str) -> bool:
        """Best effort: the retained availability goes offline naming the fault.

        Published directly: an event would need the outbox (its seq and event id live in the
        store that just failed), and a made-up seq would collide with the next real event. A
        fault while starting up waits (bounded) for the first connection."""
        try:
            await self.mqtt.wait_connected(timeout=self.failsafe_link_wait_s)
        except TimeoutError:
            log.error("fail-safe: MQTT link down, the response centre is not told")
            return False
        offline = self._availability_message("offline", STATE_FAULT, self._fault_detail())
        try:
            async with asyncio.timeout(FAILSAFE_PUBLISH_TIMEOUT_S):
                await self.mqtt.publish(
                    offline.topic, offline.payload, qos=offline.qos, retain=offline.retain
                )
        except (TimeoutError, MqttLinkError) as exc:
            log.error("fail-safe: could not tell the response centre: %r", exc)
            return False
        except Exception:  # a bug here must not keep the fail-safe from locking the dispenser
            log.exception("fail-safe: could not tell the response centre")
            return False
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Start a named task in the daemon's TaskGroup (dropped once the daemon is stopping); a
        store fault in it starts the fail-safe."""
        if self._tasks is not None:
            guarded = self._guarded(coro, name)
            try:
                task = self._tasks.create_task(guarded, name=name)
            except RuntimeError:  # the group is shutting down
                guarded.close()
            else:
                # A task the stopping group cancels before its first step never starts `coro`:
                # close it then (a no-op once it ran), or it is reported as never awaited.
                task.add_done_callback(lambda _: coro.close())
                return
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

    # --- the unit's own buttons, lights and buzzer (drivers/gpio_panel.py) ---------------------

    def _open_panel(
        self, on_event: Callable[[gpio_panel.PanelEvent], None]
    ) -> gpio_panel.LocalPanel | None:
        gpio = self.config.gpio
        pins = gpio_panel.PanelPins(
            link_led=gpio.link_led,
            alarm_led=gpio.alarm_led,
            held_led=gpio.held_led,
            buzzer=gpio.buzzer,
            take_button=gpio.take_button,
            tray_contact=gpio.tray_contact,
            lid_contact=gpio.lid_contact,
            bounce_s=gpio.bounce_ms / 1000,
        )
        reminder_s = self.config.engine.reminder_repeat_minutes * 60
        return gpio_panel.open_panel(pins, on_event, reminder_every_s=reminder_s)

    def _start_panel(self, tasks: asyncio.TaskGroup) -> None:
        """Open the panel (None on a machine without GPIO: warned once, the daemon runs on). Its
        task is not one of the workers: during a fail-safe it shows the fault."""
        if not self.config.gpio.enabled:
            return
        self.panel = self._panel_factory(self._on_panel)
        if self.panel is not None:
            self._show_panel(self.clock.now())
            tasks.create_task(self.panel.run(), name="local-panel")

    def _show_panel(self, now: Now) -> None:
        if self.panel is None or self._fault is not None:
            return
        pattern = self.engine.signal_pattern(now)
        self.panel.show(
            gpio_panel.Signals(
                link_up=self.dispenser.link == "up",
                alarm=bool(self.engine.status().active_alerts) or pattern is AlertPattern.FAULT,
                held=self.engine.dose_held() or pattern is AlertPattern.HELD,
                pattern=pattern,
            )
        )

    def _on_panel(self, event: gpio_panel.PanelEvent) -> None:
        """A panel input, on the loop. The button asks the engine (take now, else help); a
        contact only goes into the audit log: it is not the dispenser's word on tray or lid."""
        if self._fault is not None:
            log.warning("failing safe: panel input %s ignored", event)
            return
        if isinstance(event, gpio_panel.TakePressed):
            with contextlib.suppress(DaemonFaultError):  # the fail-safe task takes over
                self.step(PanelPress())
            return
        if self._contacts.get(event.contact) == event.closed:
            return  # bounce: no change since the last record
        self._contacts[event.contact] = event.closed
        body: dict[str, object] = {"contact": event.contact, "closed": event.closed}
        at_utc, trust = self.stamp()

        def record() -> None:
            self.store.audit_append("panel_contact", body, at_utc, trust)

        with contextlib.suppress(DaemonFaultError):  # the fail-safe task takes over
            self.apply([], self.clock.now(), within=record, cause="a panel contact record")

    # --- dispenser side ----------------------------------------------------------------------

    def _on_dispenser_message(self, message: Message) -> Awaitable[None] | None:
        """Step the engine; the driver writes the frame's ACK once the returned awaitable is done
        (the step committed), and never if it raises NotStored."""
        if self._fault is not None and isinstance(message, dsession.REPLY_TYPES):
            # A late reply is not an event the dispenser keeps for the next agent: holding back
            # its ACK would only hold up the replies the fail-safe is waiting for.
            log.warning("failing safe: late reply not handled: %s", message)
            return None
        try:
            committed = self.step(FromDispenser(message))
        except DaemonFaultError as exc:
            # Not committed, so not acknowledged: the dispenser still holds the event.
            raise dsession.NotStored(str(exc)) from exc
        return None if committed is None else _stored(committed)

    def _on_link(self, change: dsession.SessionUp | dsession.SessionDown) -> None:
        if isinstance(change, dsession.SessionUp):
            self.dispenser = DispenserView("up", change.capabilities)
        else:
            self.dispenser = DispenserView("down", self.dispenser.capabilities)
        self._dispenser_changed.set()
        if self._fault is not None:
            return  # failing safe: the engine is not stepped any more
        self._show_panel(self.clock.now())
        try:
            if isinstance(change, dsession.SessionUp):
                self._reconcile_time(change.capabilities)
                self.step(LinkUp(change.capabilities))
            else:
                self.step(LinkDown(change.reason))
        except DaemonFaultError:
            return  # the fail-safe task takes over
        self._spawn(self._publish_dispenser_state(), "publish-dispenser-state")
        self._spawn(self._publish_health(), "publish-health")  # link and clock trust changed

    def _reconcile_time(self, caps: Capabilities) -> None:
        """docs/time-policy.md: with no NTP yet, a valid dispenser RTC vouches for the time; once
        NTP is synchronised, the dispenser's RTC is corrected from it."""
        now = self.clock.now()
        if not caps.has_rtc:
            return
        rtc = roll_check.wire_time(caps.rtc_utc_s) if caps.rtc_valid else None
        if caps.rtc_valid and rtc is None:
            # "valid", yet no time (0, or past year 3000: erased flash reads as all ones): never
            # adopted, corrected below once the unit's own time is synchronised
            self._report_invalid_rtc(caps.rtc_utc_s, now)
        if (
            now.trust is TimeTrust.UNTRUSTED
            and rtc is not None
            and isinstance(self.clock, ReferenceClock)
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

    def _report_invalid_rtc(self, rtc_utc_s: int, now: Now) -> None:
        """Tell the centre once per value (a flapping link does not repeat it)."""
        log.warning("dispenser RTC reads %d, which is no time: ignored", rtc_utc_s)
        if rtc_utc_s == self._invalid_rtc_reported:
            return
        self._invalid_rtc_reported = rtc_utc_s
        event = make_event(
            "dispenser_clock_invalid",
            {"rtc_utc_s": rtc_utc_s, "reason": "not a time (0, or after the year 3000)"},
        )
        self.apply([Emit(event)], now)

    # --- MQTT side ---------------------------------------------------------------------------

    def _will(self) -> Will:
        """The will of the next connect attempt, with that connection's session number: a new
        one, unless the last attempt's will never reached a broker (then its number is used
        again: one number per connection the broker accepted, never one reused)."""
        if self._spare_session is not None:
            self.mqtt_session, self._spare_session = self._spare_session, None
        else:
            # rare (once per connect attempt): waited for on the loop, behind the steps before it
            # (independent of the steps: taken while failing safe too, if the store lets it)
            self.mqtt_session = self.writer.call(_take_session_counter, independent=True)
        return self._availability_message("offline", CONNECTION_LOST)

    def _will_unseen(self, will: Will) -> None:
        del will  # it carried self.mqtt_session, the number the next attempt may use again
        self._spare_session = self.mqtt_session

    def _farewell(self) -> Will:
        """What a stop publishes itself before DISCONNECT (which drops the will): shutdown, or
        after a state fault the fault again (the fail-safe told it first)."""
        if self._fault is not None:
            return self._availability_message("offline", STATE_FAULT, self._fault_detail())
        return self._availability_message("offline", SHUTDOWN)

    def _fault_detail(self) -> str:
        return f"dispenser locked, agent restarting: {self._fault}"[:200]  # as _tell_centre

    def _availability_message(
        self, state: str, reason: str | None, detail: str | None = None
    ) -> Will:
        message = Availability.model_validate(
            {
                "state": state,
                "session": self.mqtt_session,
                "at": self.clock.now().utc,
                "reason": reason,
                "detail": detail,
            }
        )
        return Will(self.topics.availability, message.to_payload(), qos=1, retain=True)

    async def _on_mqtt_connected(self) -> None:
        """Birth, then every retained topic again (a non-persistent broker may have lost them)."""
        await self.publish_retained_state()

    async def publish_retained_state(self) -> None:
        if self._fault is not None:  # a connection made while failing safe: no "online"
            fault = self._farewell()
            await self._publish_retained(fault.topic, fault.payload.decode())
            return
        online = Availability(
            state="online", session=self.mqtt_session, at=self.clock.now().utc, reason=None
        )
        await self._publish_retained(self.topics.availability, online.model_dump_json())
        await self._publish_dispenser_state()
        await self._publish_health()

    def status(self) -> RequestStatusResult:
        """The answer to a request_status command (its shape: the contract's
        RequestStatusResult; the engine's own JSON is checked against it here)."""
        return RequestStatusResult.model_validate(
            {
                "engine": self.engine.status().to_json(),
                "health": self.health(),
                "dispenser_link": "up" if self.dispenser.link == "up" else "down",
            },
            strict=False,  # the engine's times are text; the model reads them
        )

    async def _publish_retained(self, topic: str, payload: str) -> None:
        if self.mqtt.connected:  # not `ready`: the birth itself is published through here
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
            roll_loaded=status.roll_id is not None,
            sachets_remaining=status.sachets_remaining,
        )
        await self._publish_retained(self.topics.dispenser, state.model_dump_json())

    def health(self) -> Health:
        now = self.clock.now()
        status = self.engine.status()
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
            active_alerts=list(status.active_alerts),
            active_conditions=list(status.conditions),
            pause_id=status.pause_id,
            mqtt_tls_failures=self.mqtt.stats.tls_failures,
        )

    async def _publish_health(self) -> None:
        if not self.mqtt.connected:
            return
        await self._publish_retained(self.topics.health, self.health().model_dump_json())

    async def _periodic_state(self) -> None:
        """Heartbeat (QoS 0, expires, never stored) and the retained health, at slow rates."""
        heartbeat_s = self.config.mqtt.heartbeat_s
        health_every = max(1, self.config.mqtt.health_s // heartbeat_s)
        beats = 0
        while True:
            await asyncio.sleep(heartbeat_s)
            beats += 1
            if not self.mqtt.ready:
                continue
            beat = Heartbeat(
                at=self.clock.now().utc,
                session=self.mqtt_session,
                uptime_s=int(time.monotonic() - self.started_mono),
                interval_s=heartbeat_s,
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

    async def _summaries(self) -> None:
        """The daily and monthly adherence-and-deviation summaries, as events (so they are
        stored and delivered like every other event; agent.summary_schedule says when)."""
        while True:
            now = self.clock.now()
            self._record_owed_summaries(now)
            await self.committed()  # the next look reads the day recorded now
            wait_s = (next_run_utc(now.utc, self._summary_zone()) - now.utc).total_seconds()
            # capped: a wall clock that jumps or becomes trusted is noticed within the cap
            await asyncio.sleep(min(max(wait_s, 1.0), SUMMARY_RECHECK_S) / self.time_rate)

    def _summary_zone(self) -> str:
        schedule = self.engine.state.schedule
        return schedule.zone if schedule is not None else DEFAULT_ZONE

    def _summaries_owed_now(self) -> list[Period]:
        """None while the clock is untrusted (a local day is then a guess) or nobody is bound."""
        now = self.clock.now()
        if now.trust is TimeTrust.UNTRUSTED or self.engine.state.binding is None:
            return []
        last = _date_or_none(self.store.get_kv(SUMMARY_DAY_KEY))
        owed = due_periods(now.utc, self._summary_zone(), last)
        if owed.days_skipped:
            log.warning("%d days too far back get no daily summary", owed.days_skipped)
        return list(owed.periods)

    def summary_on_request(
        self, period: str, label: str, now_utc: datetime
    ) -> dict[str, Any] | None:
        """The `adherence_summary` data of a local day (label YYYY-MM-DD) or month (YYYY-MM), up
        to now if it is still running; None when it has not begun."""
        zone = self._summary_zone()
        if period == "day":
            day = date.fromisoformat(label)
            start, end = day_period(day, zone)
            last_day = day
        else:
            first = date.fromisoformat(f"{label}-01")
            start, end = month_period(first.year, first.month, zone)
            last_day = (end.astimezone(ZoneInfo(zone)) - timedelta(days=1)).date()
        if start > now_utc:
            return None
        summary = summary_from_store(self.store, start, end, now_utc)
        return summary_event_data(Period(period, label, start, end, last_day), summary.as_dict())

    def _record_owed_summaries(self, now: Now) -> None:
        owed = self._summaries_owed_now()
        if not owed:
            return
        # the audit log is read once for every period owed (a catch-up owes up to 31 days); the
        # summaries recorded meanwhile are no deviations and change no count
        events, open_slots = recorded_events(self.store), self.store.open_slots()
        for period in owed:
            summary = summarise(
                events, period.start_utc, period.end_utc, now.utc, open_slots=open_slots
            )
            data = summary_event_data(period, summary.as_dict())
            done = functools.partial(
                self.store.set_kv, SUMMARY_DAY_KEY, period.last_day.isoformat()
            )
            self.apply(
                [Emit(make_event("adherence_summary", data))],
                now,
                within=done,
                cause=f"the {period.kind} summary {period.label}",
            )

    async def _watchdog(self) -> None:
        """Feed systemd's watchdog only while the engine timer and the store are healthy."""
        interval = self.notifier.watchdog_interval_s()
        if interval is None:
            return
        while True:
            await asyncio.sleep(interval)
            if self._fault is None:
                try:
                    self.store.backlog()  # a store that hangs must starve the watchdog,
                    await self.committed()  # and so must a writer thread that hangs
                except DaemonFaultError:
                    pass  # a step was lost: the fail-safe is under way and stops the daemon
                except STORE_FAULTS as exc:
                    self._state_fault(f"store check failed: {exc!r}")
            # While failing safe (bounded) the watchdog is still fed: systemd must not kill the
            # process before the dispenser is locked.
            self.notifier.notify(watchdog="1")

    async def _answer_local(self, payload: bytes) -> str:
        """A command from the local control socket (a technician on site), answered there once
        what it did is committed."""
        try:
            response, _ = self.commands.answer(payload, local_control.ORIGIN, ON_SITE)
            await self.committed()
        except DaemonFaultError as fault:
            return local_control.refusal(
                "unit_fault", f"the agent is failing safe: {fault}", "error"
            )
        except Exception as exc:  # one bad command must not stop the daemon
            log.exception("local command failed")
            return local_control.refusal(
                "error", f"the agent could not carry it out: {exc!r}", "error"
            )
        if response is None:
            return local_control.refusal(
                "invalid_command", "the request's command_id is unreadable"
            )
        return response.decode()

    async def publish_response(
        self, payload: bytes, response_topic: str | None, correlation: bytes | None
    ) -> None:
        topic = self.topics.command_response
        prefix = self.config.mqtt.response_topic_prefix
        # Only the unit's own response topic, or one under the configured prefix: a command must
        # not make the unit publish its status wherever it names (another unit's topics).
        if response_topic is not None and (
            response_topic == topic
            or (prefix is not None and _under_prefix(response_topic, prefix))
        ):
            topic = response_topic
        elif response_topic is not None:
            log.warning(
                "a command named response topic %.120r; answered on %s", response_topic, topic
            )
        try:
            await self.mqtt.publish(topic, payload, qos=1, correlation_data=correlation)
        except MqttLinkError as exc:  # the command is recorded: a resent command id gets the answer
            log.warning("command response not delivered (%s); a retry of the command gets it", exc)


async def _stored(committed: asyncio.Future[None]) -> None:
    """A dispenser event's step committed; else NotStored: its frame is not acknowledged."""
    try:
        await asyncio.shield(committed)  # a stopping pump leaves the step's future alone
    except DaemonFaultError as exc:
        raise dsession.NotStored(str(exc)) from exc


def _observed(future: asyncio.Future[None]) -> None:
    """Mark a step's failure as seen (the fault itself is handled by `_state_fault`)."""
    if not future.cancelled():
        future.exception()


def _close(work: Coroutine[Any, Any, None], _: object) -> None:
    work.close()  # a no-op once it ran


def _take_boot_counter(store: Store) -> int:
    with store.transaction():
        return store.next_boot_counter()


def _take_session_counter(store: Store) -> int:
    with store.transaction():
        return store.next_session_counter()


def _call_on(
    loop: asyncio.AbstractEventLoop,
    callback: Callable[[concurrent.futures.Future[list[OutboxEvent]]], None],
    job: concurrent.futures.Future[list[OutboxEvent]],
) -> None:
    """From the writer thread: run `callback(job)` on the loop (not when it has closed)."""
    with contextlib.suppress(RuntimeError):  # the loop is closed: the daemon has stopped
        loop.call_soon_threadsafe(callback, job)


def _under_prefix(topic: str, prefix: str) -> bool:
    """`topic` is a plain topic (no wildcards) strictly below `prefix`."""
    stem = prefix.rstrip("/") + "/"
    return topic.startswith(stem) and len(topic) > len(stem) and not set(topic) & {"+", "#", "\0"}


def _failure_token(exc: dsession.SessionError) -> str:
    """A stable token for the engine: why a command got no reply."""
    if isinstance(exc, dsession.LinkSendFailed):
        return exc.reason
    if isinstance(exc, dsession.RequestTimeout):
        return "reply_timeout"  # outcome unknown: the dispenser may have executed it
    if isinstance(exc, dsession.NotConnected | dsession.LinkLost):
        return "link_down"
    return type(exc).__name__


def _describe_input(inp: EngineInput) -> str:
    """The engine input, named for a fault report (no patient data: types only)."""
    if isinstance(inp, FromDispenser):
        return f"the dispenser's {type(inp.message).__name__}"
    return f"the engine step for {type(inp).__name__}"


def _date_or_none(text: str | None) -> date | None:
    """A stored day; a value that is no date counts as none (only yesterday is then owed)."""
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        log.warning("stored summary day %r is no date: summarising from yesterday", text)
        return None


def _iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
