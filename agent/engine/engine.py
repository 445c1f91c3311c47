"""DoseEngine: the pure, deterministic heart of the agent (decisions explained in docs/engine.md).

`step(input, now)` returns actions; nothing here does I/O, reads a clock or uses randomness, and
output order never depends on set or hash order, so a simulated year replays exactly.

Commands to the dispenser are *level-triggered*: after every input the engine compares what it
wants (lock, alert pattern, fresh status) with what it knows the dispenser has, and sends only the
difference. So a Tick that is not at a deadline changes nothing, and a lost command is simply sent
again once the link is back. That difference is computed in `dispenser_sync`; what survives a
restart is `EngineState` in `state`.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from agent.clock import Now, TimeTrust, detect_wall_jump, load_zone
from agent.engine import catalogue, dispenser_mirror, lifecycle, pause, roll_check
from agent.engine.alert_desk import AlertDesk
from agent.engine.alerts import ConditionBook
from agent.engine.dispenser_mirror import (
    DispenserMirror,
    KnownDispenser,
    WantedDispenser,
)
from agent.engine.lifecycle import Phase, SlotRun
from agent.engine.outbound import Outbound, PendingCommand
from agent.engine.roll_desk import Discarding, RollDesk
from agent.engine.slot_book import SlotBook
from agent.engine.state import (
    EngineState,
    OpenSlot,
    OpenSlotRecord,
    RollInfo,
    SettledSlot,
    iso_or_none,
)
from agent.engine.status import EngineStatus, NextSlotStatus, OpenSlotStatus
from agent.engine.types import (
    AcknowledgeAlert,
    Action,
    BeginDispense,
    Binding,
    CommandOutcome,
    Emit,
    EndPause,
    EngineConfig,
    EngineEvent,
    EngineInput,
    EngineInputError,
    FromDispenser,
    LinkDown,
    LinkUp,
    Outcome,
    PauseWindow,
    RecordOutcome,
    RecordPresented,
    SetBinding,
    SetSchedule,
    Silence,
    StartPause,
    Tick,
)
from protocol.messages import (
    AlertPattern,
    ButtonId,
    ButtonPressed,
    CommandResult,
    Discard,
    Dispense,
    DosePresented,
    DoseRetained,
    DoseTaken,
    FaultChanged,
    FaultCode,
    Feature,
    LidChanged,
    LowSupply,
    Message,
    PowerChanged,
    ResultCode,
    RollInserted,
    RollRemoved,
    SachetRead,
    SetAlert,
    SetLock,
    Status,
)

# EngineState and the records it holds live in agent.engine.state; re-exported because the shell
# and the simulation import them from here.
__all__ = [
    "DoseEngine",
    "EngineInputError",
    "EngineState",
    "OpenSlot",
    "OpenSlotRecord",
    "RollInfo",
    "SettledSlot",
]

BATTERY_LOW_PCT, BATTERY_LOW_CLEAR_PCT = 20, 25  # hysteresis: no flapping at the boundary
BATTERY_EMPTY_PCT, BATTERY_EMPTY_CLEAR_PCT = 3, 5
# sachet_discarded reason: the sachet matches no dose time of the schedule (plan_mismatch)
NO_SLOT = "no_slot"
_EPSILON = timedelta(microseconds=1)


# --- the engine --------------------------------------------------------------------------------


class DoseEngine:
    def __init__(self, config: EngineConfig, state: EngineState, now: Now) -> None:
        self._cfg = config
        self._no_contact_s = config.no_contact_after.total_seconds()
        self._binding = state.binding
        self._schedule = state.schedule
        self._schedule_version = state.schedule_version
        self._pauses = state.pauses
        self._alerts = AlertDesk(
            chatty_s=config.chatty_min_interval.total_seconds(),
            latched=state.latched_alerts,
            book=ConditionBook(present=state.raised_conditions, raised=state.raised_conditions),
            next_alert_seq=state.next_alert_seq,
        )
        self._extra = dict(state.extra)
        self._desk = RollDesk(roll=state.roll)
        self._slotbook = SlotBook(
            horizon=state.horizon_utc, settled=list(state.settled), cursor=state.horizon_utc
        )
        self._outbound = Outbound(starts=state.starts + 1, next_dispense_id=state.next_dispense_id)
        self._mirror = DispenserMirror(
            link_down_since=now.mono, locked_by_agent=state.locked_by_agent
        )
        # not durable: learned again from the dispenser after a restart
        # memos of pure functions, keyed on all they read (each was a cost on every step)
        self._wall_memo: tuple[object, object, list[datetime]] | None = None
        self._last_now: Now | None = now
        self._was_untrusted = False
        self._restart_actions: list[Action] = []
        self._restore_open_slots(state.open_slots, now)

    # --- public API ---------------------------------------------------------------------------

    @property
    def state(self) -> EngineState:
        return EngineState(
            binding=self._binding,
            schedule=self._schedule,
            schedule_version=self._schedule_version,
            pauses=self._pauses,
            horizon_utc=self._slotbook.horizon,
            next_dispense_id=self._outbound.next_dispense_id,
            latched_alerts=self._alerts.latched,
            open_slots=tuple(
                OpenSlot(
                    r.slot_id,
                    r.dispense_id,
                    r.sachet_index or 0,
                    r.due_utc,
                    r.presented_at,
                    r.roll_id,
                )
                for r in self._slotbook.runs
                if r.dispense_id is not None
            ),
            settled=tuple(self._slotbook.settled),
            roll=self._desk.roll,
            raised_conditions=self._alerts.book.raised,
            locked_by_agent=self._mirror.locked_by_agent,
            next_alert_seq=self._alerts.next_alert_seq,
            starts=self._outbound.starts,
            extra=dict(self._extra),
        )

    def step(self, inp: EngineInput, now: Now) -> list[Action]:
        self._validate(inp, now)  # raises before anything changes
        actions: list[Action] = []
        if self._restart_actions:
            actions, self._restart_actions = self._restart_actions, []
        self._note_time(now, actions)
        self._dispatch(inp, now, actions)
        self._advance(now, actions)
        return actions

    def next_deadline(self, now: Now) -> float | None:
        instants: list[float] = []
        if self._restart_actions:
            instants.append(now.mono)
        trusted = now.trust is not TimeTrust.UNTRUSTED
        if trusted and self._schedule is not None and self._slotbook.cursor is not None:
            upcoming = self._slotbook.next_scheduled(self._schedule)
            if upcoming is not None:
                instants.append(self._mono_at(upcoming.due_utc, now))
        for run in self._slotbook.runs:
            timer = lifecycle.next_timer(run, self._cfg)
            if timer is not None:
                instants.append(timer)
            elif trusted:
                instants.append(self._mono_at(lifecycle.settle_deadline(run, self._cfg), now))
        if trusted:
            # wall instants at which a check's verdict changes by itself (a roll expires or its
            # period passes, a pause begins or ends): what the engine decides changes then too
            instants.extend(self._mono_at(at, now) for at in self._wall_changes(now.utc))
        if (
            not self._mirror.link_up
            and self._mirror.link_down_since is not None
            and not self._alerts.is_raised("no_contact")
        ):
            instants.append(self._mirror.link_down_since + self._no_contact_s)
        release = self._alerts.next_release()
        if release is not None:
            instants.append(release)
        if self._mirror.silenced_until is not None:
            instants.append(self._mirror.silenced_until)
        if self._outbound.retry_at is not None:
            instants.append(self._outbound.retry_at)
        return min(instants) if instants else None

    def _wall_changes(self, now_utc: datetime) -> list[datetime]:
        """Future wall instants at which a time-dependent check changes its verdict."""
        memo = self._wall_memo
        if memo is None or memo[0] is not self._desk.roll or memo[1] is not self._pauses:
            memo = (self._desk.roll, self._pauses, self._verdict_changes())
            self._wall_memo = memo
        return [at for at in memo[2] if at > now_utc]

    def _verdict_changes(self) -> list[datetime]:
        changes: list[datetime] = []
        roll = self._desk.roll
        if roll is not None and not roll.unverified:
            expiry = roll_check.wire_time(roll.expiry_utc_s)
            if expiry is not None:
                changes.append(expiry - self._cfg.roll_expired_margin)  # expired from then on
            last_dose = roll_check.wire_time(roll.last_dose_utc_s)
            if last_dose is not None:
                # passed once last_dose < now - tolerance: strictly after this instant
                changes.append(last_dose + self._cfg.sachet_time_tolerance + _EPSILON)
        for window in self._pauses:
            changes.append(window.start_utc)
            if window.end_utc is not None:
                changes.append(window.end_utc)
        return changes

    def status(self) -> EngineStatus:
        upcoming = (
            self._slotbook.next_scheduled(self._schedule)
            if self._slotbook.cursor is not None
            else None
        )
        active_pause = (
            pause.active(self._pauses, self._last_now.utc) if self._last_now is not None else None
        )
        roll = self._desk.roll
        return EngineStatus(
            bound=self._binding is not None,
            schedule_version=self._schedule_version,
            link_up=self._mirror.link_up,
            roll_id=roll.roll_id if roll else None,
            roll_state=self._desk.roll_state(self._binding),
            sachets_remaining=roll.remaining if roll else None,
            next_slot=None
            if upcoming is None
            else NextSlotStatus(upcoming.slot_id, upcoming.due_utc),
            open_slots=tuple(
                OpenSlotStatus(r.slot_id, r.phase.value, r.dispense_id, r.held_reason)
                for r in self._slotbook.runs
            ),
            pause_id=active_pause.pause_id if active_pause else None,
            conditions=self._alerts.book.raised,
            latched_alerts=self._alerts.latched,
        )

    # --- restart ------------------------------------------------------------------------------

    def _restore_open_slots(self, open_slots: tuple[OpenSlot, ...], now: Now) -> None:
        limit = self._cfg.grace + self._cfg.undispensed_deadline
        for slot in sorted(open_slots, key=lambda o: (o.due_utc, o.slot_id)):
            run = SlotRun(
                slot_id=slot.slot_id,
                due_utc=slot.due_utc,
                due_local=self._local_iso(slot.due_utc),
                phase=Phase.DISPENSING,
                dispense_id=slot.dispense_id,
                sachet_index=slot.sachet_index,
                roll_id=slot.roll_id,
            )
            if now.utc >= slot.due_utc + limit:
                self._settle(
                    run, Outcome.MISSED, lifecycle.RESTART_UNKNOWN, now, self._restart_actions
                )
                self._outbound.retain_queue.append(slot.dispense_id)
                continue
            self._slotbook.runs.append(lifecycle.restored(run, now.mono, slot.presented_utc))
        if self._slotbook.horizon is not None:
            # restored runs are already settled or in _runs; never picked up a second time
            self._slotbook.cursor = self._slotbook.horizon

    # --- input validation (response-centre inputs may be inconsistent) ------------------------

    def _validate(self, inp: EngineInput, now: Now) -> None:
        match inp:
            case StartPause(window=window):
                pause.start(self._pauses, window)
            case EndPause(pause_id=pause_id):
                pause.end(self._pauses, pause_id, now.utc)
            case AcknowledgeAlert(alert_id=alert_id, by=by):
                self._alerts.check_acknowledge(alert_id, by, now.utc.isoformat())
            case Silence(duration=duration):
                if duration <= timedelta(0):
                    raise EngineInputError(f"silence duration must be positive, got {duration}")
            case SetSchedule(version=version):
                if version < self._schedule_version:
                    raise EngineInputError(
                        f"schedule version {version} is older than {self._schedule_version}"
                    )
            case _:
                pass

    # --- time ---------------------------------------------------------------------------------

    def _note_time(self, now: Now, actions: list[Action]) -> None:
        previous, self._last_now = self._last_now, now
        if previous is None or now.mono < previous.mono:
            return
        jump = detect_wall_jump(previous, now)
        if jump is not None:
            self._emit(
                actions,
                "clock_jumped",
                {
                    "delta_s": jump.total_seconds(),
                    "from_utc": previous.utc.isoformat(),
                    "to_utc": now.utc.isoformat(),
                    "trust": now.trust.value,
                },
            )

    def _mono_at(self, wall: datetime, now: Now) -> float:
        return now.mono + (wall - now.utc).total_seconds()

    def _local_iso(self, due_utc: datetime) -> str:
        zone: ZoneInfo = load_zone(self._schedule.zone) if self._schedule else load_zone("UTC")
        return due_utc.astimezone(zone).isoformat()

    # --- dispatch -----------------------------------------------------------------------------

    def _dispatch(self, inp: EngineInput, now: Now, actions: list[Action]) -> None:
        match inp:
            case Tick():
                pass
            case FromDispenser(message=message):
                self._on_message(message, now, actions)
            case CommandOutcome():
                self._on_outcome(inp, now, actions)
            case LinkUp(capabilities=caps):
                self._mirror.link_up, self._mirror.capabilities = True, caps
                self._mirror.link_down_since = None
                self._mirror.status_known = False
                self._mirror.pattern_sent = None  # the dispenser may have rebooted
                self._outbound.retry_at = None
                self._condition(actions, "no_contact", False, now)
            case LinkDown(reason=reason):
                if self._mirror.link_up:
                    self._mirror.link_down_since = now.mono
                self._mirror.link_up = False
                self._mirror.status_known = False
                self._outbound.pending.clear()  # their outcomes (if any) are ignored from now on
                self._extra["last_link_down_reason"] = reason
            case SetBinding(binding=binding):
                self._on_binding(binding, now, actions)
            case SetSchedule(schedule=schedule, version=version):
                self._schedule, self._schedule_version = schedule, version
                if self._slotbook.horizon is None:
                    self._slotbook.horizon = now.utc
                self._slotbook.cursor = self._slotbook.horizon
                self._emit(actions, "schedule_changed", {"version": version})
            case StartPause(window=window):
                self._pauses = pause.start(self._pauses, window)
                self._emit(actions, "pause_started", _pause_fields(window))
                for run in list(self._slotbook.runs):
                    if run.dispense_id is None and pause.covers(window, run.due_utc):
                        self._settle(run, Outcome.SKIPPED_PAUSED, window.pause_id, now, actions)
            case EndPause(pause_id=pause_id):
                self._pauses, ended = pause.end(self._pauses, pause_id, now.utc)
                self._emit(actions, "pause_ended", _pause_fields(ended))
            case AcknowledgeAlert(alert_id=alert_id, by=by):
                acked = self._alerts.acknowledge(alert_id, by, now.utc.isoformat())
                if acked is not None:
                    self._emit(
                        actions,
                        "alert_acknowledged",
                        {
                            "alert_id": acked.alert_id,
                            "kind": acked.kind,
                            "by": by,
                            "resolved": acked.resolved,
                        },
                    )
            case Silence(duration=duration):
                self._mirror.silenced_until = now.mono + duration.total_seconds()
                self._emit(actions, "alert_silenced", {"seconds": duration.total_seconds()})

    def _on_binding(self, binding: Binding | None, now: Now, actions: list[Action]) -> None:
        if binding == self._binding:
            return
        self._binding = binding
        if self._slotbook.horizon is None and self._schedule is not None:
            self._slotbook.horizon = self._slotbook.cursor = now.utc
        self._emit(actions, "binding_changed", {"bound": binding is not None})
        if self._desk.roll is not None and not self._desk.roll.unverified:
            self._check_roll(self._desk.roll, now, actions, announce=False)

    # --- dispenser messages -------------------------------------------------------------------

    def _on_message(self, message: Message, now: Now, actions: list[Action]) -> None:
        match message:
            case RollInserted():
                known = self._desk.is_known_roll(message)
                self._desk.sachet = None  # its SachetRead follows
                if not known:
                    self._desk.rejected_sachet = None
                roll = RollInfo(
                    message.roll_id,
                    message.patient_ref,
                    message.sachet_count,
                    message.next_index,
                    message.first_dose_utc_s,
                    message.last_dose_utc_s,
                    message.expiry_utc_s,
                )
                self._condition(actions, "roll_unverified", False, now)
                # a roll we already know, announced again after a (re)connect (SPEC 4.1), is
                # checked again just the same, but is no news for the response centre
                self._check_roll(roll, now, actions, announce=not known)
            case RollRemoved():
                self._forget_roll(now, actions, message.roll_id)
            case SachetRead():
                self._on_sachet(message, now, actions)
            case DosePresented():
                self._on_presented(message, now, actions)
            case DoseTaken():
                self._on_taken(message, now, actions)
            case DoseRetained():
                self._on_retained(message, now, actions)
            case ButtonPressed():
                self._on_button(message, now, actions)
            case LidChanged(open=is_open):
                self._condition(actions, "lid_open", is_open, now)
            case PowerChanged():
                self._on_power(message.mains, message.battery_pct, now, actions)
            case FaultChanged():
                self._on_fault(message.fault, message.active, message.detail, now, actions)
            case LowSupply(roll_id=roll_id, remaining=remaining):
                self._condition(
                    actions, "low_supply", True, now, {"roll_id": roll_id, "remaining": remaining}
                )
            case Status():
                self._apply_status(message, now, actions)
            case _:
                self._emit(
                    actions, "unexpected_dispenser_event", {"message": type(message).__name__}
                )

    def _check_roll(self, roll: RollInfo, now: Now, actions: list[Action], announce: bool) -> None:
        self._desk.roll = roll
        verdict = roll_check.check_roll(
            roll.as_message(),
            self._binding.patient_ref if self._binding else None,
            now.utc,
            period_tolerance=self._cfg.sachet_time_tolerance,
            expired_margin=self._cfg.roll_expired_margin,
        )
        fields: dict[str, object] = {
            "roll_id": roll.roll_id,
            "sachet_count": roll.sachet_count,
            "remaining": roll.remaining,
        }
        if verdict.reason == roll_check.FOREIGN_ROLL:
            self._condition(actions, "roll_rejected", False, now)
            if self._alerts.unresolved("wrong_roll") is None:
                self._latch(actions, "wrong_roll", {**fields, "reason": verdict.reason}, now)
            return
        self._resolve_wrong_roll(actions)
        rejected = verdict.reason not in (None, roll_check.ROLL_EMPTY)
        self._condition(
            actions, "roll_rejected", rejected, now, {**fields, "reason": verdict.reason}
        )
        if rejected:
            return
        if announce:
            self._emit(actions, "roll_inserted", {**fields, "next_index": roll.next_index})
        self._supply_conditions(now, actions)

    def _supply_conditions(self, now: Now, actions: list[Action]) -> None:
        if self._desk.roll is None or self._desk.roll.unverified:
            return
        remaining = self._desk.roll.remaining
        fields: dict[str, object] = {"roll_id": self._desk.roll.roll_id, "remaining": remaining}
        self._condition(actions, "roll_empty", remaining == 0, now, fields)
        low = roll_check.is_low(remaining, self._cfg.low_supply_threshold)
        self._condition(actions, "low_supply", low, now, fields)

    def _forget_roll(self, now: Now, actions: list[Action], roll_id: str) -> None:
        if self._desk.roll is not None:
            self._emit(actions, "roll_removed", {"roll_id": self._desk.roll.roll_id})
        self._desk.roll = None
        self._desk.sachet = None
        self._desk.rejected_sachet = None
        self._resolve_wrong_roll(actions)
        self._condition(actions, "roll_rejected", False, now)
        self._condition(actions, "roll_unverified", False, now)

    def _resolve_wrong_roll(self, actions: list[Action]) -> None:
        resolved = self._alerts.resolve("wrong_roll")
        for alert in resolved:
            self._emit(actions, "wrong_roll_cleared", {"alert_id": alert.alert_id})

    def _on_sachet(self, sachet: SachetRead, now: Now, actions: list[Action]) -> None:
        self._desk.sachet = sachet
        roll = self._desk.roll
        if roll is None or roll.unverified or self._desk.roll_foreign(self._binding):
            return
        verdict = roll_check.check_sachet_identity(
            sachet,
            self._binding.patient_ref if self._binding else None,
            roll.roll_id,
            roll.next_index,
        )
        if verdict.ok and self._sachet_matches_a_slot(sachet) is True:
            self._condition(actions, "plan_mismatch", False, now)
        key = (sachet.roll_id, sachet.index)
        reportable = not verdict.ok and verdict.reason != roll_check.NO_BINDING
        if reportable and self._desk.rejected_sachet != key:
            self._desk.rejected_sachet = key
            self._emit(
                actions,
                "sachet_rejected",
                {"roll_id": sachet.roll_id, "index": sachet.index, "reason": verdict.reason},
            )

    def _on_presented(self, msg: DosePresented, now: Now, actions: list[Action]) -> None:
        self._mirror.tray_occupied = True
        if self._desk.roll is not None and not self._desk.roll.unverified:
            self._desk.roll = replace(
                self._desk.roll, next_index=max(self._desk.roll.next_index, msg.sachet_index + 1)
            )
            self._supply_conditions(now, actions)
        run = self._slotbook.run_by_dispense(msg.dispense_id)
        if run is None:
            slot_id = self._outbound.recent.get(msg.dispense_id)
            self._emit(
                actions,
                "unexpected_dispenser_event",
                {"message": "DosePresented", "dispense_id": msg.dispense_id, "slot_id": slot_id},
            )
            if slot_id is not None and msg.dispense_id not in self._outbound.retain_queue:
                self._outbound.retain_queue.append(msg.dispense_id)  # settled already: into the bin
            return
        if run.phase is Phase.PRESENTED:
            return  # repeated report: the first one stands
        self._slotbook.replace_run(lifecycle.presented(run, now.mono, now.utc))
        actions.append(RecordPresented(run.slot_id))
        self._emit(
            actions,
            "dose_presented",
            {
                "slot_id": run.slot_id,
                "dispense_id": msg.dispense_id,
                "sachet_index": msg.sachet_index,
            },
        )

    def _on_taken(self, msg: DoseTaken, now: Now, actions: list[Action]) -> None:
        self._mirror.tray_occupied = False
        run = self._slotbook.run_by_dispense(msg.dispense_id)
        if run is not None:
            self._settle(run, Outcome.TAKEN, None, now, actions, taken_at=now.utc)
            return
        slot_id = self._outbound.recent.get(msg.dispense_id)
        if slot_id is not None:
            self._outbound.retain_queue = [
                d for d in self._outbound.retain_queue if d != msg.dispense_id
            ]
            self._emit(
                actions, "dose_taken_late", {"slot_id": slot_id, "dispense_id": msg.dispense_id}
            )
        else:
            self._emit(
                actions,
                "unexpected_dispenser_event",
                {"message": "DoseTaken", "dispense_id": msg.dispense_id},
            )

    def _on_retained(self, msg: DoseRetained, now: Now, actions: list[Action]) -> None:
        discard = self._desk.discarding.pop(msg.dispense_id, None)
        if discard is not None:
            if self._desk.roll is not None and not self._desk.roll.unverified:
                self._desk.roll = replace(
                    self._desk.roll,
                    next_index=max(self._desk.roll.next_index, msg.sachet_index + 1),
                )
                self._supply_conditions(now, actions)
            if self._desk.sachet is not None and self._desk.sachet.index == msg.sachet_index:
                self._desk.sachet = None
            fields: dict[str, object] = {
                "sachet_index": msg.sachet_index,
                "intended_utc": _wire_iso(discard.intended_utc_s),
                "reason": discard.reason,
            }
            self._emit(actions, "sachet_discarded", fields)
            if discard.reason == NO_SLOT:
                # the pharmacy packed a dose the schedule does not have (VKP 3.22)
                roll_id = self._desk.roll.roll_id if self._desk.roll is not None else None
                self._condition(actions, "plan_mismatch", True, now, {**fields, "roll_id": roll_id})
            return
        self._mirror.tray_occupied = False
        slot_id = self._outbound.retaining.pop(msg.dispense_id, None) or self._outbound.recent.get(
            msg.dispense_id
        )
        self._emit(
            actions,
            "dose_retained",
            {"slot_id": slot_id, "dispense_id": msg.dispense_id, "sachet_index": msg.sachet_index},
        )

    def _on_button(self, msg: ButtonPressed, now: Now, actions: list[Action]) -> None:
        if msg.button is ButtonId.TAKE and self._take_early(now):
            return
        kind = "help_requested" if msg.button is ButtonId.HELP else "button_pressed"
        if not self._alerts.chatty_allowed(kind, now.mono):
            return
        self._emit(actions, kind, {"button": msg.button.name.lower()})

    def _take_early(self, now: Now) -> bool:
        """TAKE inside the early window of the next slot: make it due now."""
        if (
            now.trust is TimeTrust.UNTRUSTED
            or self._schedule is None
            or self._slotbook.cursor is None
        ):
            return False
        if self._slotbook.runs:
            # a dose in the tray, a slot due and held, or one already started early by TAKE:
            # the press is not a request for the next slot (and never a second run of one)
            return False
        upcoming = self._slotbook.next_scheduled(self._schedule)
        if upcoming is None or upcoming.due_utc - now.utc > self._cfg.early_window:
            return False
        if self._slotbook.is_settled(upcoming.slot_id) or pause.covering(
            self._pauses, upcoming.due_utc
        ):
            return False
        self._slotbook.runs.append(
            SlotRun(upcoming.slot_id, upcoming.due_utc, self._local_iso(upcoming.due_utc))
        )
        return True

    def _on_power(self, mains: bool, pct: int, now: Now, actions: list[Action]) -> None:
        self._condition(actions, "mains_lost", not mains, now, {"battery_pct": pct})
        if (
            self._mirror.capabilities is not None
            and not self._mirror.capabilities.features & Feature.BATTERY
        ):
            return
        fields: dict[str, object] = {"battery_pct": pct, "mains": mains}
        if pct <= BATTERY_EMPTY_PCT:
            self._condition(actions, "battery_empty", True, now, fields)
        elif pct >= BATTERY_EMPTY_CLEAR_PCT:
            self._condition(actions, "battery_empty", False, now, fields)
        if pct <= BATTERY_LOW_PCT:
            self._condition(actions, "battery_low", True, now, fields)
        elif pct >= BATTERY_LOW_CLEAR_PCT:
            self._condition(actions, "battery_low", False, now, fields)

    def _on_fault(
        self, fault: FaultCode, active: bool, detail: str, now: Now, actions: list[Action]
    ) -> None:
        if active and fault not in self._mirror.faults:
            self._mirror.faults.append(fault)
        elif not active:
            self._mirror.faults = [f for f in self._mirror.faults if f is not fault]
        kind = f"fault_{fault.name.lower()}"
        self._condition(actions, kind, active, now, {"detail": detail})

    def _apply_status(self, status: Status, now: Now, actions: list[Action]) -> None:
        self._mirror.status_known = True
        self._mirror.tray_occupied = status.tray_occupied
        self._mirror.lock_actual = status.locked
        self._mirror.pattern_sent = status.alert
        self._condition(actions, "lid_open", status.lid_open, now)
        self._on_power(status.mains, status.battery_pct, now, actions)
        for fault in FaultCode:
            active = bool(status.active_faults & (1 << fault))
            if active != (fault in self._mirror.faults):
                self._on_fault(fault, active, "status", now, actions)
        if not status.roll_id:
            if self._desk.roll is not None:
                self._forget_roll(now, actions, self._desk.roll.roll_id)
        elif self._desk.roll is None or self._desk.roll.roll_id != status.roll_id:
            self._desk.roll = RollInfo(
                status.roll_id,
                "",
                status.next_index + status.remaining,
                status.next_index,
                0,
                0,
                0,
                unverified=True,
            )
            self._desk.sachet = None
            self._condition(actions, "roll_unverified", True, now, {"roll_id": status.roll_id})
        elif not self._desk.roll.unverified:
            self._desk.roll = replace(self._desk.roll, next_index=status.next_index)
            self._supply_conditions(now, actions)
        if status.tray_occupied:
            for run in self._slotbook.runs:
                if run.phase is Phase.DISPENSING and run.confirmed_mono is not None:
                    self._slotbook.replace_run(lifecycle.presented(run, now.mono, now.utc))
                    actions.append(RecordPresented(run.slot_id))

    # --- command outcomes ---------------------------------------------------------------------

    def _on_outcome(self, outcome: CommandOutcome, now: Now, actions: list[Action]) -> None:
        pending = self._outbound.pending.pop(outcome.correlation, None)
        if pending is None:
            return  # from before a link drop or a restart: no longer ours to act on
        reply = outcome.reply
        if reply is None or (isinstance(reply, CommandResult) and reply.result is ResultCode.BUSY):
            self._outbound.retry_at = now.mono + self._cfg.command_retry.total_seconds()
            if pending.kind == "set_alert":
                self._mirror.pattern_sent = None
            if pending.kind == "retain" and pending.dispense_id is not None:
                self._outbound.retain_queue.append(pending.dispense_id)
            if pending.kind == "dispense" and pending.slot_id is not None:
                self._hold(pending.slot_id, f"command_failed:{outcome.failure or 'busy'}", actions)
            return
        if pending.kind == "get_status":
            if isinstance(reply, Status):
                self._apply_status(reply, now, actions)
            return
        if not isinstance(reply, CommandResult):
            self._emit(actions, "unexpected_dispenser_event", {"message": type(reply).__name__})
            return
        result = reply.result
        if result not in (ResultCode.OK, ResultCode.ALREADY_DONE):
            self._emit(
                actions,
                "dispenser_command_failed",
                {"command": pending.kind, "result": result.name.lower(), "detail": reply.detail},
            )
        match pending.kind:
            case "dispense":
                self._dispense_result(pending, result, now, actions)
            case "discard":
                self._discard_result(pending, result, now, actions)
            case "retain":
                if result is ResultCode.OK and pending.dispense_id is not None:
                    return
                if result is ResultCode.BIN_FULL:
                    self._on_fault(FaultCode.BIN_FULL, True, "retain refused", now, actions)
                if pending.dispense_id is not None:
                    self._outbound.retaining.pop(pending.dispense_id, None)
                if result is ResultCode.NOTHING_PRESENTED:
                    self._mirror.tray_occupied = False
            case "set_alert":
                if isinstance(pending.command, SetAlert):
                    self._mirror.pattern_sent = (
                        pending.command.pattern if result is ResultCode.OK else None
                    )
            case "set_lock":
                if isinstance(pending.command, SetLock) and result is ResultCode.OK:
                    self._mirror.lock_actual = pending.command.locked
                    self._mirror.locked_by_agent = pending.command.locked

    def _dispense_result(
        self, pending: PendingCommand, result: ResultCode, now: Now, actions: list[Action]
    ) -> None:
        run = next((r for r in self._slotbook.runs if r.slot_id == pending.slot_id), None)
        if run is None or run.phase is not Phase.DISPENSING:
            return
        if result in (ResultCode.OK, ResultCode.ALREADY_DONE):
            self._slotbook.replace_run(lifecycle.confirmed(run, now.mono))
            if result is ResultCode.ALREADY_DONE:
                self._mirror.status_known = False  # ask whether the dose is in the tray
            return
        reason = {
            ResultCode.NO_ROLL: "no_roll",
            ResultCode.EMPTY: roll_check.ROLL_EMPTY,
            ResultCode.JAMMED: "fault_jam",
            ResultCode.TRAY_OCCUPIED: "tray_occupied",
            ResultCode.LOCKED: "locked",
            ResultCode.WRONG_SACHET: "wrong_sachet",
        }.get(result, f"dispenser_{result.name.lower()}")
        if result is ResultCode.NO_ROLL:
            self._forget_roll(now, actions, "")
        elif result is ResultCode.EMPTY and self._desk.roll is not None:
            self._desk.roll = replace(self._desk.roll, next_index=self._desk.roll.sachet_count)
            self._supply_conditions(now, actions)
        elif result is ResultCode.JAMMED:
            self._on_fault(FaultCode.JAM, True, "dispense refused", now, actions)
        elif result is ResultCode.TRAY_OCCUPIED:
            self._mirror.tray_occupied = True
        elif result is ResultCode.LOCKED:
            self._mirror.lock_actual = True
        elif result is ResultCode.WRONG_SACHET:
            self._desk.sachet = None
            self._mirror.status_known = False
        else:
            self._outbound.retry_at = now.mono + self._cfg.command_retry.total_seconds()
        self._hold(run.slot_id, reason, actions)

    def _discard_result(
        self, pending: PendingCommand, result: ResultCode, now: Now, actions: list[Action]
    ) -> None:
        if result is ResultCode.OK:
            return  # DoseRetained follows
        if pending.dispense_id is not None:
            self._desk.discarding.pop(pending.dispense_id, None)
        if result is ResultCode.BIN_FULL:
            self._on_fault(FaultCode.BIN_FULL, True, "discard refused", now, actions)
        elif result is ResultCode.WRONG_SACHET:
            self._desk.sachet = None
            self._mirror.status_known = False
        else:
            self._outbound.retry_at = now.mono + self._cfg.command_retry.total_seconds()

    # --- the level-triggered part: runs after every input ---------------------------------------

    def _advance(self, now: Now, actions: list[Action]) -> None:
        actions.extend(Emit(e) for e in self._alerts.release_due(now.mono))
        if (
            not self._mirror.link_up
            and self._mirror.link_down_since is not None
            and now.mono - self._mirror.link_down_since >= self._no_contact_s
        ):
            self._condition(actions, "no_contact", True, now)
        self._condition(
            actions, "no_schedule", self._binding is not None and self._schedule is None, now
        )
        if self._mirror.silenced_until is not None and now.mono >= self._mirror.silenced_until:
            self._mirror.silenced_until = None
            self._mirror.pattern_sent = None  # sound again
        if self._outbound.retry_at is not None and now.mono >= self._outbound.retry_at:
            self._outbound.retry_at = None
        self._run_timers(now, actions)
        trusted = now.trust is not TimeTrust.UNTRUSTED
        self._condition(actions, "clock_untrusted", not trusted, now, {"trust": now.trust.value})
        if trusted:
            self._pick_up(now, actions)
            self._settle_overdue(now, actions)
            self._was_untrusted = False
            self._attempt(now, actions)
            self._discard_stale(now, actions)
        else:
            self._was_untrusted = True
        self._sync_dispenser(now, actions)
        self._move_horizon()

    def _run_timers(self, now: Now, actions: list[Action]) -> None:
        for run in list(self._slotbook.runs):
            if run.presented_mono is None and run.confirmed_mono is None:
                continue  # not (maybe) in the tray: no timer runs (lifecycle.on_time agrees)
            result = lifecycle.on_time(run, self._cfg, now.mono)
            if result.missed is not None:
                self._settle(run, Outcome.MISSED, result.missed, now, actions)
                if self._has(Feature.RETAIN_BIN) and run.dispense_id is not None:
                    self._outbound.retain_queue.append(run.dispense_id)
                continue
            if result.run != run:
                self._slotbook.replace_run(result.run)
            for step in result.escalated:
                if step.notify:
                    self._emit(
                        actions,
                        "dose_not_taken",
                        {
                            "slot_id": run.slot_id,
                            "minutes_since_presented": int(step.after.total_seconds() // 60),
                            "pattern": step.pattern.name.lower(),
                        },
                    )
            if result.remind and self._mirror.silenced_until is None:
                self._mirror.pattern_sent = None  # re-sound: the pattern is sent again below

    def _pick_up(self, now: Now, actions: list[Action]) -> None:
        if self._schedule is None:
            return
        if self._slotbook.horizon is None:
            self._slotbook.horizon = self._slotbook.cursor = now.utc
        cursor = (
            self._slotbook.cursor if self._slotbook.cursor is not None else self._slotbook.horizon
        )
        upcoming = self._slotbook.next_scheduled(self._schedule)
        if upcoming is None or upcoming.due_utc > now.utc:
            return
        known = {r.slot_id for r in self._slotbook.runs}
        for slot in self._slotbook.slots(self._schedule).between(cursor, now.utc + _EPSILON):
            if slot.slot_id in known or self._slotbook.is_settled(slot.slot_id):
                continue
            run = SlotRun(slot.slot_id, slot.due_utc, self._local_iso(slot.due_utc))
            window = pause.covering(self._pauses, slot.due_utc)
            if window is not None:
                self._settle(run, Outcome.SKIPPED_PAUSED, window.pause_id, now, actions)
                continue
            self._slotbook.runs.append(run)
        self._slotbook.runs.sort(key=lambda r: (r.due_utc, r.slot_id))
        self._slotbook.cursor = now.utc + _EPSILON

    def _settle_overdue(self, now: Now, actions: list[Action]) -> None:
        for run in list(self._slotbook.runs):
            if run.in_tray or now.utc < lifecycle.settle_deadline(run, self._cfg):
                continue
            if self._was_untrusted:
                reason = "clock_untrusted"
            else:
                reason = run.held_reason or self._blocker(run, now) or lifecycle.LATE
            outcome, text = lifecycle.unsent_outcome(reason)
            vkp = catalogue.EMPTY_VKP if reason == roll_check.ROLL_EMPTY else None
            self._settle(run, outcome, text, now, actions, vkp=vkp)

    def _blocker(self, run: SlotRun, now: Now) -> str | None:
        """Why `run` cannot be dispensed right now (a stable reason token), or None."""
        if self._binding is None:
            return roll_check.NO_BINDING
        if any(r.in_tray and r.slot_id != run.slot_id for r in self._slotbook.runs):
            return "previous_dose_in_tray"
        if not self._mirror.link_up:
            return "no_link"
        roll = self._desk.roll
        if roll is None:
            return "no_roll"
        if roll.unverified:
            return "roll_unverified"
        verdict = roll_check.check_roll(
            roll.as_message(),
            self._binding.patient_ref,
            now.utc,
            period_tolerance=self._cfg.sachet_time_tolerance,
            expired_margin=self._cfg.roll_expired_margin,
        )
        if verdict.reason is not None:
            return verdict.reason
        blocking = self._mirror.blocking_fault()
        if blocking is not None:
            return f"fault_{blocking.name.lower()}"
        if not self._mirror.status_known:
            return "awaiting_status"
        if self._mirror.tray_occupied:
            return "tray_occupied"
        if self._mirror.lock_actual and not self._mirror.locked_by_agent:
            return "locked"
        if self._desk.sachet is None:
            return "no_sachet"
        sachet_verdict = roll_check.check_sachet(
            self._desk.sachet,
            self._binding.patient_ref,
            roll.roll_id,
            roll.next_index,
            run.due_utc,
            self._cfg.sachet_time_tolerance,
        )
        return sachet_verdict.reason

    def _attempt(self, now: Now, actions: list[Action]) -> None:
        run = self._slotbook.head()
        if run is None:
            return
        if any(p.kind in ("dispense", "discard") for p in self._outbound.pending.values()):
            return
        if self._desk.discarding:
            return  # a discarded sachet is on its way to the bin; the next SachetRead follows
        reason = self._blocker(run, now)
        if reason == roll_check.SACHET_STALE and self._can_discard(now):
            self._send_discard(roll_check.SACHET_STALE, now, actions)
            return
        if reason is not None:
            self._hold(run.slot_id, reason, actions)
            return
        if not self._can_send(now):
            return
        assert self._desk.sachet is not None
        assert self._desk.roll is not None
        if run.dispense_id is None:
            dispense_id = self._outbound.take_dispense_id()
            run = lifecycle.begin(
                run, dispense_id, self._desk.sachet.index, self._desk.roll.roll_id
            )
            self._slotbook.replace_run(run)
            actions.append(
                BeginDispense(run.slot_id, dispense_id, self._desk.sachet.index, run.due_utc)
            )
        assert run.dispense_id is not None
        command = Dispense(
            req_id=0, dispense_id=run.dispense_id, sachet_index=self._desk.sachet.index
        )
        self._outbound.send(
            actions, "dispense", command, slot_id=run.slot_id, dispense_id=run.dispense_id
        )

    def _hold(self, slot_id: str, reason: str, actions: list[Action]) -> None:
        for run in self._slotbook.runs:
            if run.slot_id == slot_id and run.held_reason != reason:
                if reason == "awaiting_status":
                    return  # transient: a Status is on its way
                self._slotbook.replace_run(replace(run, held_reason=reason))
                self._emit(actions, "dose_held", {"slot_id": slot_id, "reason": reason})
                return

    def _can_discard(self, now: Now) -> bool:
        return (
            self._has(Feature.RETAIN_BIN)
            and self._can_send(now)
            and self._mirror.status_known
            and FaultCode.BIN_FULL not in self._mirror.faults
            and self._mirror.blocking_fault() is None
            and pause.active(self._pauses, now.utc) is None
            and not self._desk.discarding
        )

    def _discard_stale(self, now: Now, actions: list[Action]) -> None:
        """Idle: a sachet at the reader meant for a settled slot goes into the bin."""
        sachet, roll = self._desk.sachet, self._desk.roll
        if sachet is None or roll is None or roll.unverified or self._binding is None:
            return
        if any(r.dispense_id is not None or r.in_tray for r in self._slotbook.runs):
            return
        if self._outbound.pending or self._schedule is None or self._slotbook.cursor is None:
            return
        if self._desk.roll_foreign(self._binding) or not self._can_discard(now):
            return
        identity = roll_check.check_sachet_identity(
            sachet, self._binding.patient_ref, roll.roll_id, roll.next_index
        )
        if not identity.ok:
            return
        waiting = [r.due_utc for r in self._slotbook.runs]
        upcoming = self._slotbook.next_scheduled(self._schedule)
        next_due = min(waiting) if waiting else (upcoming.due_utc if upcoming else None)
        if next_due is None:
            return
        timing = roll_check.sachet_timing(
            sachet.intended_utc_s, next_due, self._cfg.sachet_time_tolerance
        )
        if timing is roll_check.SachetTiming.STALE:
            self._send_discard("settled_slot", now, actions)

    def _sachet_matches_a_slot(self, sachet: SachetRead) -> bool | None:
        """Is the sachet packed for some dose time of the schedule (within the tolerance),
        settled or to come? None when that cannot be told (no time on the label, no schedule)."""
        intended = roll_check.wire_time(sachet.intended_utc_s)
        if intended is None or self._schedule is None:
            return None
        tolerance = self._cfg.sachet_time_tolerance
        start, end = intended - tolerance, intended + tolerance + _EPSILON
        window = self._slotbook.slots(self._schedule)
        if window.covers(start, end):
            return bool(window.between(start, end))
        # far from now (an old roll): ask the schedule, leave the window where the engine works
        return next(iter(self._schedule.slots_between(start, end)), None) is not None

    def _send_discard(self, reason: str, now: Now, actions: list[Action]) -> None:
        sachet = self._desk.sachet
        assert sachet is not None
        if self._sachet_matches_a_slot(sachet) is False:
            reason = NO_SLOT
        dispense_id = self._outbound.take_dispense_id()
        self._desk.discarding[dispense_id] = Discarding(sachet.index, sachet.intended_utc_s, reason)
        command = Discard(req_id=0, dispense_id=dispense_id, sachet_index=sachet.index)
        self._outbound.send(actions, "discard", command, dispense_id=dispense_id)

    def _desired_pattern(self) -> AlertPattern:
        silenced = self._mirror.silenced_until is not None
        return dispenser_mirror.desired_pattern(
            silenced, self._desk.roll_foreign(self._binding), self._slotbook.runs
        )

    def _sync_dispenser(self, now: Now, actions: list[Action]) -> None:
        """Send what the dispenser should have and (as far as we know) has not."""
        if not self._can_send(now):
            return
        known = KnownDispenser(
            status_known=self._mirror.status_known,
            lock_actual=self._mirror.lock_actual,
            locked_by_agent=self._mirror.locked_by_agent,
            pattern_sent=self._mirror.pattern_sent,
            capabilities=self._mirror.capabilities,
            bin_full=FaultCode.BIN_FULL in self._mirror.faults,
            in_flight=self._outbound.in_flight(),
        )
        wanted = WantedDispenser(
            locked=self._desk.roll_foreign(self._binding),
            pattern=self._desired_pattern(),
            retains=tuple(self._outbound.retain_queue),
        )
        plan = dispenser_mirror.plan_sync(known, wanted)
        for planned in plan.commands:
            if planned.kind == "retain" and planned.dispense_id is not None:
                self._outbound.retaining[planned.dispense_id] = self._outbound.recent.get(
                    planned.dispense_id, ""
                )
            self._outbound.send(
                actions, planned.kind, planned.command, dispense_id=planned.dispense_id
            )
        self._outbound.retain_queue = list(plan.retains_left)

    def _move_horizon(self) -> None:
        if self._slotbook.cursor is None:
            return
        candidates = [r.due_utc for r in self._slotbook.runs]
        floor = min([*candidates, self._slotbook.cursor])
        if self._slotbook.horizon is None or floor > self._slotbook.horizon:
            self._slotbook.horizon = floor
            self._slotbook.settled = [s for s in self._slotbook.settled if s.due_utc >= floor]
            self._pauses = pause.prune(self._pauses, floor)

    # --- helpers ------------------------------------------------------------------------------

    def _has(self, feature: Feature) -> bool:
        return self._mirror.has(feature)

    def _can_send(self, now: Now) -> bool:
        return self._mirror.link_up and self._outbound.retry_at is None

    def _condition(
        self,
        actions: list[Action],
        kind: str,
        present: bool,
        now: Now,
        fields: dict[str, object] | None = None,
    ) -> None:
        actions.extend(Emit(e) for e in self._alerts.condition(kind, present, now.mono, fields))

    def _emit(self, actions: list[Action], kind: str, fields: dict[str, object]) -> None:
        actions.append(Emit(catalogue.make_event(kind, fields)))

    def _latch(self, actions: list[Action], kind: str, fields: dict[str, object], now: Now) -> None:
        actions.append(Emit(self._alerts.latch(kind, fields, now.utc.isoformat())))

    def _settle(
        self,
        run: SlotRun,
        outcome: Outcome,
        reason: str | None,
        now: Now,
        actions: list[Action],
        taken_at: datetime | None = None,
        vkp: str | None = None,
    ) -> None:
        """The one place a slot gets its terminal outcome: one RecordOutcome, one slot_outcome."""
        self._slotbook.runs = [r for r in self._slotbook.runs if r.slot_id != run.slot_id]
        self._slotbook.settled.append(SettledSlot(run.slot_id, run.due_utc))
        self._slotbook.settle_count += 1
        if run.dispense_id is not None:
            self._outbound.remember_settled(run.dispense_id, run.slot_id)
        actions.append(RecordOutcome(run.slot_id, outcome, reason))
        fields = lifecycle.outcome_fields(run, outcome, reason, taken_at)
        if outcome in (Outcome.TAKEN, Outcome.SKIPPED_PAUSED):
            actions.append(Emit(catalogue.make_event("slot_outcome", fields)))
            return
        event = self._alerts.missed_outcome(
            f"dose_{outcome.value}", fields, now.utc.isoformat(), vkp or catalogue.MISSED_VKP
        )
        actions.append(Emit(event))


def _pause_fields(window: PauseWindow) -> dict[str, object]:
    return {
        "pause_id": window.pause_id,
        "start_utc": window.start_utc.isoformat(),
        "end_utc": iso_or_none(window.end_utc),
    }


def _wire_iso(seconds: int) -> str | None:
    value = roll_check.wire_time(seconds)
    return None if value is None else value.isoformat()


_ = EngineEvent  # re-exported names used by type checkers of callers
