"""DoseEngine: the pure, deterministic heart of the agent (decisions explained in docs/engine.md).

`step(input, now)` returns actions; nothing here does I/O, reads a clock or uses randomness, and
output order never depends on set or hash order, so a simulated year replays exactly.

Commands to the dispenser are *level-triggered*: after every input the engine compares what it
wants (lock, alert pattern, fresh status) with what it knows the dispenser has, and sends only the
difference. So a Tick that is not at a deadline changes nothing, and a lost command is simply sent
again once the link is back. That difference is computed in `dispenser_mirror`; what survives a
restart is `EngineState` in `state`.

The one command that is not level-triggered is `KeepAlive` (SPEC 4.7): it is sent only on a `Tick`,
so it proves that the shell's timer loop, which decides doses, is alive; its instant is one of
the engine's deadlines.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from agent.clock import (
    Now,
    TimeTrust,
    detect_wall_jump,
    load_zone,
    utc_text,
    utc_text_or_none,
)
from agent.engine import catalogue, dispenser_mirror, lifecycle, pause, roll_check
from agent.engine.alert_desk import AlertDesk
from agent.engine.alerts import ConditionBook
from agent.engine.dispenser_mirror import (
    KEEPALIVES_PER_TIMEOUT,
    DispenserMirror,
    KnownDispenser,
    StuckDose,
    WantedDispenser,
)
from agent.engine.lifecycle import Phase, SlotRun
from agent.engine.outbound import (
    DISCARD_BUSY_TRIES,
    RETAIN_BIN_FULL_TRIES,
    Outbound,
    PendingCommand,
)
from agent.engine.roll_desk import Discarding, RollDesk
from agent.engine.schedule import MAX_SCHEDULE_VERSION_STEP, Schedule, Slot
from agent.engine.slot_book import SlotBook
from agent.engine.state import (
    DiscardDecision,
    EngineState,
    LeftDose,
    OpenSlot,
    OpenSlotRecord,
    RetainedDose,
    RollInfo,
    SettledSlot,
    TakenDose,
    UnplannedHold,
)
from agent.engine.status import EngineStatus, NextSlotStatus, OpenSlotStatus
from agent.engine.types import (
    AcknowledgeAlert,
    Action,
    BeginDispense,
    Binding,
    CommandOutcome,
    DiscardUnplanned,
    Emit,
    EndPause,
    EngineConfig,
    EngineInput,
    EngineInputError,
    FromDispenser,
    LinkDown,
    LinkUp,
    Outcome,
    PanelPress,
    PauseWindow,
    Priority,
    RecordOutcome,
    RecordPresented,
    SetBinding,
    SetSchedule,
    Silence,
    StartPause,
    StateUnreadable,
    Tick,
)
from protocol.messages import (
    AlertPattern,
    BinLevel,
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
    KeepAlive,
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
# the stored state could not be read: nothing is dispensed until a person acknowledges the alert
STATE_UNREADABLE = "state_unreadable"
# dose_held reason: the sachets at the reader are for past dose times and more of them than the
# bin can take beside its reserve (or its level is unknown): a nurse must act (backlog_needs_nurse)
BACKLOG_EXCEEDS_BIN = "backlog_exceeds_bin"
# the sachet at the reader must go to the bin and the dispenser kept refusing its Discard (BUSY,
# DISCARD_BUSY_TRIES times): the dose behind it waits, and says so
DISCARD_REFUSED = "discard_refused"
# condition, and dose_held reason of the doses it blocks: a dose whose slot has ended is still in
# the tray and the dispenser will not (or cannot) take it back into the bin (StuckDose)
DOSE_STUCK_IN_TRAY = "dose_stuck_in_tray"
# dose_held reason: every u32 dispense id is used (a damaged counter; no lifetime gets there)
DISPENSE_IDS_EXHAUSTED = "dispense_ids_exhausted"
# travel pre-dispense waits (does not give up) while one of these holds: it passes or the trip ends
TRAVEL_WAITS_ON = frozenset(
    {
        "no_link",
        "awaiting_status",
        "tray_occupied",
        DOSE_STUCK_IN_TRAY,
        "previous_dose_in_tray",
        "no_sachet",
        "locked",
    }
)
_EPSILON = timedelta(microseconds=1)
# while the clock is untrusted and the dispenser empty: the doses named ahead (a day of them)
_NAME_AHEAD = timedelta(days=1)
# How long records of settled slots are kept behind the horizon (bounded: a few per day)
_SETTLED_RECORDS_KEPT = timedelta(days=2)
# ... and at most this long for the loaded roll's sachets (a 30-day pause and a 14-day roll)
_SETTLED_RECORDS_MAX = timedelta(days=45)


# --- the engine --------------------------------------------------------------------------------


class DoseEngine:
    def __init__(self, config: EngineConfig, state: EngineState, now: Now) -> None:
        self._cfg = config
        self._no_contact_s = config.no_contact_after.total_seconds()
        self._keepalive_s = (
            None if config.keepalive_timeout is None else config.keepalive_timeout.total_seconds()
        )
        self._binding = state.binding
        self._schedule = state.schedule
        self._schedule_version = state.schedule_version
        self._pauses = state.pauses
        # a kind that is no longer a condition (plan_mismatch latches now) is never cleared
        raised = tuple(k for k in state.raised_conditions if catalogue.spec(k).condition)
        self._alerts = AlertDesk(
            chatty_s=config.chatty_min_interval.total_seconds(),
            latched=state.latched_alerts,
            book=ConditionBook(present=raised, raised=raised),
            next_alert_seq=state.next_alert_seq,
        )
        self._desk = RollDesk(
            roll=state.roll, unplanned=state.unplanned, decisions=state.discard_decisions
        )
        self._slotbook = SlotBook(
            horizon=state.horizon_utc,
            settled=list(state.settled),
            cursor=state.horizon_utc,
            settled_known_from=state.settled_known_from_utc,
            last_intake_utc=state.last_intake_utc,
        )
        self._outbound = Outbound(starts=state.starts + 1, next_dispense_id=state.next_dispense_id)
        for left in state.left_in_tray:
            self._outbound.remember_settled(
                left.dispense_id,
                left.slot_id,
                left.sachet_index,
                left.alert_id,
                in_tray=True,
                presented=left.presented,
            )
        for taken in state.taken_recently:  # its DoseTaken again is a repeat
            self._outbound.remember_settled(
                taken.dispense_id, taken.slot_id, taken.sachet_index, taken=True
            )
        for kept in state.retained_recently:  # its DoseRetained again is a repeat
            self._outbound.remember_retained(kept.dispense_id, kept.slot_id, kept.sachet_index)
        self._mirror = DispenserMirror(
            link_down_since=now.mono, locked_by_agent=state.locked_by_agent
        )
        # not durable: learned again from the dispenser after a restart
        # memos of pure functions, keyed on all they read (each was a cost on every step)
        self._wall_memo: tuple[object, object, list[datetime]] | None = None
        self._sachet_memo: tuple[object, object, list[Slot] | None] | None = None
        self._lockdown_memo: tuple[object, bool] | None = None
        self._tolerance_memo: tuple[object, datetime, timedelta] | None = None
        self._last_now: Now | None = now
        self._was_untrusted = False
        self._left_unclaimed = bool(state.left_in_tray)  # until the first Status: `_reclaim_left`
        self._restore_open_slots(state.open_slots, now)
        # what a new engine decides on its first step (a restored slot held for no link, an
        # untrusted clock after a boot) is due at its start, not at whatever input comes next
        self._first_step_due: float | None = now.mono

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
                    r.escalations_done,
                )
                for r in self._slotbook.runs
                if r.dispense_id is not None
            ),
            settled=tuple(self._slotbook.settled),
            settled_known_from_utc=self._slotbook.settled_known_from,
            last_intake_utc=self._slotbook.last_intake_utc,
            roll=self._desk.roll,
            raised_conditions=self._alerts.book.raised,
            locked_by_agent=self._mirror.locked_by_agent,
            next_alert_seq=self._alerts.next_alert_seq,
            starts=self._outbound.starts,
            unplanned=self._desk.unplanned,
            discard_decisions=self._desk.decisions,
            left_in_tray=tuple(LeftDose(*left) for left in self._outbound.left_in_tray()),
            taken_recently=tuple(TakenDose(*t) for t in self._outbound.taken_doses()),
            retained_recently=tuple(RetainedDose(*r) for r in self._outbound.retained_doses()),
        )

    @property
    def locked_down(self) -> bool:
        """Started from a state that could not be read, and no person has decided yet: the
        `state_unreadable` alert is latched as resolved, so it lasts until acknowledged."""
        latched = self._alerts.latched
        memo = self._lockdown_memo  # keyed on the tuple's identity: asked several times a step
        if memo is None or memo[0] is not latched:
            memo = (latched, any(a.kind == STATE_UNREADABLE for a in latched))
            self._lockdown_memo = memo
        return memo[1]

    def step(self, inp: EngineInput, now: Now) -> list[Action]:
        self._validate(inp, now)  # raises before anything changes
        self._first_step_due = None
        actions: list[Action] = []
        self._note_time(now, actions)
        self._dispatch(inp, now, actions)
        self._advance(now, actions)
        return actions

    def next_deadline(self, now: Now) -> float | None:
        instants: list[float] = []
        if self._first_step_due is not None:
            instants.append(self._first_step_due)
        trusted = now.trust is not TimeTrust.UNTRUSTED
        if trusted and self._schedule is not None and self._slotbook.cursor is not None:
            upcoming = self._slotbook.next_scheduled(self._schedule)
            if upcoming is not None:
                instants.append(self._mono_at(upcoming.due_utc, now))
        for run in self._slotbook.runs:
            if run.travel:
                collect_by = _travel_collect_by(run, self._cfg)
                if collect_by is not None:
                    instants.append(collect_by)
                elif trusted:  # not dispensed yet (a failed command): given up at its due time
                    instants.append(self._mono_at(run.due_utc, now))
                continue
            timer = lifecycle.next_timer(run, self._cfg)
            if timer is not None:
                instants.append(timer)
            elif trusted:
                instants.append(self._mono_at(lifecycle.settle_deadline(run, self._cfg), now))
                if run.held_reason is not None and run.due_utc > now.utc:
                    # started early by TAKE and held: at its time a hold may become HIGH
                    instants.append(self._mono_at(run.due_utc, now))
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
        if self._mirror.keepalive_due is not None:
            instants.append(self._mirror.keepalive_due)
        if self._interval_blocks(now) and any(
            r.awaiting_dispense and not r.travel for r in self._slotbook.runs
        ):
            instants.append(self._interval_release_mono(now))
        return min(instants) if instants else None

    def _wall_changes(self, now_utc: datetime) -> list[datetime]:
        """Wall instants at which a time-dependent check changes its verdict, not yet seen by a
        step: after the last step (or `now_utc`, if the clock went back). One at exactly `now_utc`
        that no step has seen is still due (a shell that woke at that instant for another
        reason, without stepping, must not lose it)."""
        memo = self._wall_memo
        if memo is None or memo[0] is not self._desk.roll or memo[1] is not self._pauses:
            memo = (self._desk.roll, self._pauses, self._verdict_changes())
            self._wall_memo = memo
        seen = now_utc if self._last_now is None else min(self._last_now.utc, now_utc)
        return [at for at in memo[2] if at > seen]

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
        cfg = self._cfg
        for window in self._pauses:
            changes.append(window.start_utc)
            if window.end_utc is not None:
                changes.append(window.end_utc)
                # the end notice, and backlog_needs_nurse from then on: also once the notice is
                # sent, for a clock stepped back before it clears the backlog until it comes again
                changes.append(max(window.start_utc, window.end_utc - cfg.pause_end_notice))
            else:
                changes.append(
                    window.start_utc + (window.reminders_sent + 1) * cfg.pause_reminder_every
                )
            overdue = pause.overdue_at(self._pauses, window, cfg.pause_max)
            if window.end_utc is None or overdue < window.end_utc:
                changes.append(overdue)  # (a window ending first cannot become overdue)
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
            unplanned=self._desk.unplanned,
        )

    # --- restart ------------------------------------------------------------------------------

    def _restore_open_slots(self, open_slots: tuple[OpenSlot, ...], now: Now) -> None:
        """Open slots come back as stored; none is settled before the dispenser is asked (a
        tray emptied while the agent was away is no missed dose), see `_reconcile`."""
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
            self._slotbook.runs.append(
                lifecycle.restored(
                    run,
                    now.mono,
                    slot.presented_utc,
                    config=self._cfg,
                    since_presented=None
                    if slot.presented_utc is None or now.trust is TimeTrust.UNTRUSTED
                    else now.utc - slot.presented_utc,
                    escalations_done=slot.escalations_done,
                )
            )
        if self._slotbook.horizon is not None:
            # restored runs are in the book; never picked up a second time
            self._slotbook.cursor = self._slotbook.horizon

    # --- input validation (response-centre inputs may be inconsistent) ------------------------

    def _validate(self, inp: EngineInput, now: Now) -> None:
        match inp:
            case StartPause(window=window):
                pause.start(self._pauses, window, self._cfg.pause_max)
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
                # a bounded step: one huge version must not lock out every later real update
                if version > self._schedule_version + MAX_SCHEDULE_VERSION_STEP:
                    raise EngineInputError(
                        f"schedule version {version} jumps more than {MAX_SCHEDULE_VERSION_STEP} "
                        f"past {self._schedule_version}",
                        "version_step_too_large",
                    )
            case DiscardUnplanned():
                self._check_discard_decision(inp)
            case _:
                pass

    # --- time ---------------------------------------------------------------------------------

    def _note_time(self, now: Now, actions: list[Action]) -> None:
        previous, self._last_now = self._last_now, now
        # `previous is now`: the same reading (the shell steps each input an action caused at
        # the instant that caused it), so the wall clock cannot have jumped in between
        if previous is None or previous is now or now.mono < previous.mono:
            return
        jump = detect_wall_jump(previous, now)
        if jump is not None:
            self._emit(
                actions,
                "clock_jumped",
                {
                    "delta_s": jump.total_seconds(),
                    "from_utc": utc_text(previous.utc),
                    "to_utc": utc_text(now.utc),
                    "trust": now.trust.value,
                },
            )

    def _mono_at(self, wall: datetime, now: Now) -> float:
        return now.mono + (wall - now.utc).total_seconds()

    def _local_iso(self, due_utc: datetime) -> str:
        zone: ZoneInfo = load_zone(self._schedule.zone) if self._schedule else load_zone("UTC")
        return due_utc.astimezone(zone).isoformat()

    def _local_wire_iso(self, seconds: int) -> str | None:
        value = roll_check.wire_time(seconds)
        return None if value is None else self._local_iso(value)

    # --- dispatch -----------------------------------------------------------------------------

    def _dispatch(self, inp: EngineInput, now: Now, actions: list[Action]) -> None:
        match inp:
            case Tick():
                self._keep_alive(now, actions)
            case FromDispenser(message=message):
                self._on_message(message, now, actions)
            case CommandOutcome():
                self._on_outcome(inp, now, actions)
            case LinkUp(capabilities=caps):
                self._mirror.link_up, self._mirror.capabilities = True, caps
                self._mirror.link_down_since = None
                self._mirror.status_known = False
                self._mirror.pattern_sent = None  # the dispenser may have rebooted
                self._mirror.bin_capacity = self._mirror.bin_count = None  # BinLevel follows
                self._mirror.bin_unreported = 0
                # Hello disarmed the dispenser's watchdog (SPEC 4.7.5): arm it at the next Tick
                self._mirror.keepalive_due = (
                    now.mono
                    if self._keepalive_s is not None and self._has(Feature.AGENT_WATCHDOG)
                    else None
                )
                self._mirror.keepalive_refused = False
                self._outbound.retry_at = None
                self._condition(actions, "no_contact", False, now)
            case LinkDown():
                if self._mirror.link_up:
                    self._mirror.link_down_since = now.mono
                self._mirror.link_up = False
                self._mirror.status_known = False
                for pending in self._outbound.pending.values():
                    if pending.kind == "dispense" and pending.slot_id is not None:
                        self._mark_maybe_executed(pending.slot_id, True)  # outcome unknown
                # a DoseTaken the dispenser gives up on meanwhile is lost: the next Status says
                self._slotbook.runs = [
                    replace(r, unreconciled=True)
                    if r.phase is Phase.PRESENTED and not r.travel  # travel: its own timeout
                    else r
                    for r in self._slotbook.runs
                ]
                self._mirror.keepalive_due = None
                self._outbound.pending.clear()  # their outcomes (if any) are ignored from now on
                # a Discard sent or under way may never be answered now (a dispenser that lost
                # power mid-cut): not waited for; a late DoseRetained of it is still ours
                for dispense_id in list(self._desk.discarding):
                    self._desk.give_up(dispense_id)
            case SetBinding(binding=binding):
                self._on_binding(binding, now, actions)
            case SetSchedule(schedule=schedule, version=version):
                replaced = self._schedule
                self._schedule, self._schedule_version = schedule, version
                if self._slotbook.horizon is None:
                    self._slotbook.horizon = now.utc
                self._slotbook.cursor = self._slotbook.horizon
                self._emit(actions, "schedule_changed", {"version": version})
                self._review_sachet(now, actions, replaced)
            case StartPause(window=window):
                self._pauses = pause.start(self._pauses, window, self._cfg.pause_max)
                self._emit(actions, "pause_started", _pause_fields(window))
                for run in list(self._slotbook.runs):
                    if run.dispense_id is None and pause.covers(window, run.due_utc):
                        self._settle(run, Outcome.SKIPPED_PAUSED, window.pause_id, now, actions)
            case EndPause(pause_id=pause_id):
                self._pauses, ended = pause.end(self._pauses, pause_id, now.utc)
                ended_fields: dict[str, object] = {
                    **_pause_fields(ended),
                    "cancelled": ended.start_utc >= now.utc,  # the window never began
                    "ended_at": utc_text(now.utc),
                }
                self._emit(actions, "pause_ended", ended_fields)
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
            case DiscardUnplanned():
                self._decide_discard(inp, actions)
            case PanelPress():
                self._on_panel_press(now, actions)
            case StateUnreadable(reason=reason, binding=binding):
                fields: dict[str, object] = {"reason": reason, "binding": binding}
                event = self._alerts.latch(
                    STATE_UNREADABLE, fields, now.utc.isoformat(), resolved=True
                )
                actions.append(Emit(event))

    def _on_binding(self, binding: Binding | None, now: Now, actions: list[Action]) -> None:
        if binding == self._binding:
            return
        self._binding = binding
        # another patient (or none): the previous one's last intake says nothing about them
        self._slotbook.last_intake_utc = self._slotbook.last_intake_mono = None
        if self._slotbook.horizon is None and self._schedule is not None:
            self._slotbook.horizon = self._slotbook.cursor = now.utc
        self._emit(actions, "binding_changed", {"bound": binding is not None})
        if self._desk.roll is not None and not self._desk.roll.unverified:
            self._check_roll(self._desk.roll, now, actions, announce=False)
        self._review_sachet(now, actions)

    # --- dispenser messages -------------------------------------------------------------------

    def _on_message(self, message: Message, now: Now, actions: list[Action]) -> None:
        match message:
            case RollInserted():
                known = self._desk.is_known_roll(message)
                self._desk.sachet = None  # its SachetRead follows
                self._desk.keep_decisions_of(message.roll_id)
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
                self._on_lid(is_open, now, actions)
            case PowerChanged():
                self._on_power(message.mains, message.battery_pct, now, actions)
            case FaultChanged():
                self._on_fault(message.fault, message.active, message.detail, now, actions)
            case LowSupply(roll_id=roll_id, remaining=remaining):
                # the dispenser's fixed threshold (4, and 0 too: SPEC 4.4) is not ours: few doses
                # left is raised by our threshold, never for an empty roll (roll_empty says so)
                if roll_check.is_low(remaining, self._cfg.low_supply_threshold):
                    self._condition(
                        actions,
                        "low_supply",
                        True,
                        now,
                        {"roll_id": roll_id, "remaining": remaining},
                    )
            case Status():
                self._apply_status(message, now, actions)
            case BinLevel(capacity=capacity, count=count):
                self._mirror.bin_capacity, self._mirror.bin_count = capacity, count
                self._mirror.bin_unreported = 0
                if (
                    count < capacity
                    and FaultCode.BIN_FULL in self._mirror.faults
                    and self._outbound.retain_queue
                ):
                    # room again, says the level, while a dose waits to go back: the Status
                    # says whether the bin fault is over too (then the Retain goes out)
                    self._mirror.status_known = False
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
        if verdict.ok and roll_check.wire_time(sachet.intended_utc_s) is None:
            # no slot can ever be given it: said now, not when the dose behind it is refused
            verdict = roll_check.Verdict(ok=False, reason=roll_check.SACHET_TIME_UNKNOWN)
        self._review_sachet(now, actions)
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
        run = self._slotbook.run_by_dispense(msg.dispense_id)
        kept = self._outbound.retained.get(msg.dispense_id)
        if run is None and kept is not None and kept[0] is not None:
            # a dose taken back into the bin, so presented before: a repeat; no dose in the tray,
            # nothing to take back (a discarded sachet, no slot's, was never presented)
            self._repeated(msg, kept[0], kept[1], now, actions)
            return
        slot_id = self._outbound.recent.get(msg.dispense_id)
        if run is None and slot_id is None:
            self._phantom("DosePresented", msg.dispense_id, msg.sachet_index, None, now, actions)
            return
        expected = run.sachet_index if run is not None else self._settled_sachet(msg.dispense_id)
        if expected is not None and msg.sachet_index != expected:
            self._phantom(
                "DosePresented", msg.dispense_id, msg.sachet_index, expected, now, actions
            )
            return
        if (
            run is None
            and slot_id is not None
            and (
                msg.dispense_id in self._outbound.taken
                or msg.dispense_id in self._outbound.presented
            )
        ):
            # taken, or seen presented (it may still lie in the tray, and is handled as such):
            # a repeat, no news of a dose in the tray
            self._repeated(msg, slot_id, msg.sachet_index, now, actions)
            return
        self._mirror.tray_occupied = True
        if self._desk.roll is not None and not self._desk.roll.unverified:
            self._desk.roll = replace(
                self._desk.roll, next_index=max(self._desk.roll.next_index, msg.sachet_index + 1)
            )
            self._supply_conditions(now, actions)
        if run is None:
            # presented after its slot ended (not seen presented before): told once; the same
            # report again is a repeat
            self._outbound.presented.add(msg.dispense_id)
            self._emit(
                actions,
                "unexpected_dispenser_event",
                {"message": "DosePresented", "dispense_id": msg.dispense_id, "slot_id": slot_id},
            )
            if self._has(Feature.RETAIN_BIN):  # settled already: into the bin
                self._owe_retain(msg.dispense_id, slot_id, now, actions)
            return
        if run.phase is Phase.PRESENTED:
            return  # repeated report: the first one stands (and is stored)
        self._record_presented(run, now, actions)

    def _repeated(
        self,
        msg: DosePresented | DoseTaken | DoseRetained,
        slot_id: str | None,
        expected: int,
        now: Now,
        actions: list[Action],
    ) -> None:
        """A dose event the engine has handled already, sent again (a retransmission after a
        lost ACK, also to a restarted agent, or a stale report): it changes nothing. Recorded,
        so that its ACK follows a commit like any other; naming another sachet than `expected`,
        it is a phantom."""
        message = type(msg).__name__
        if msg.sachet_index != expected:
            self._phantom(message, msg.dispense_id, msg.sachet_index, expected, now, actions)
            return
        self._emit(
            actions,
            "dose_event_repeated",
            {
                "message": message,
                "dispense_id": msg.dispense_id,
                "sachet_index": msg.sachet_index,
                "slot_id": slot_id,
            },
        )

    def _record_presented(self, run: SlotRun, now: Now, actions: list[Action]) -> None:
        self._slotbook.replace_run(lifecycle.presented(run, now.mono, now.utc))
        actions.append(RecordPresented(run.slot_id))
        self._emit(
            actions,
            "dose_presented",
            {
                "slot_id": run.slot_id,
                "dispense_id": run.dispense_id,
                "sachet_index": run.sachet_index,
            },
        )

    def _on_taken(self, msg: DoseTaken, now: Now, actions: list[Action]) -> None:
        run = self._slotbook.run_by_dispense(msg.dispense_id)
        slot_id = self._outbound.recent.get(msg.dispense_id)
        if run is None and slot_id is None:
            self._phantom("DoseTaken", msg.dispense_id, msg.sachet_index, None, now, actions)
            return
        expected = run.sachet_index if run is not None else self._settled_sachet(msg.dispense_id)
        if expected is not None and msg.sachet_index != expected:
            # not the sachet this slot (or the dose left in the tray) was given: in doubt, that
            # dose is not taken
            self._phantom("DoseTaken", msg.dispense_id, msg.sachet_index, expected, now, actions)
            return
        if run is None and msg.dispense_id in self._outbound.taken:
            # its DoseTaken is handled already: a repeat (a retransmission after a lost ACK, a
            # phantom repeat), no second intake (SAFETY.md H3); its sachet was checked above
            self._repeated(msg, slot_id, msg.sachet_index, now, actions)
            return
        self._mirror.tray_occupied = False
        if run is not None and run.travel:
            trip = self._trip_of(run)
            self._settle(
                run,
                Outcome.DISPENSED_FOR_TRAVEL,
                trip.pause_id if trip else None,
                now,
                actions,
                taken_at=now.utc,
            )
            if trip is not None:
                self._replace_pause(replace(trip, travel_dispensed=trip.travel_dispensed + 1))
            return
        if run is not None:
            self._note_intake(now)
            self._settle(run, Outcome.TAKEN, None, now, actions, taken_at=now.utc)
            return
        # a missed dose left in the tray (no bin, or a full one) taken late: an intake like any
        # other, so the next dose waits the minimum interval (SAFETY.md H3)
        self._note_intake(now)
        self._outbound.taken.add(msg.dispense_id)
        self._outbound.retain_queue = [
            d for d in self._outbound.retain_queue if d != msg.dispense_id
        ]
        self._unstick(msg.dispense_id, now, actions)
        self._emit(
            actions,
            "dose_taken_late",
            {
                # the missed slot's alert this intake is news about (never a second alert)
                "alert_id": self._outbound.recent_alerts.get(msg.dispense_id),
                "slot_id": slot_id,
                "dispense_id": msg.dispense_id,
                "taken_at": utc_text(now.utc),
                "next_dose_not_before_utc": utc_text_or_none(self._interval_release_utc()),
            },
        )

    def _on_retained(self, msg: DoseRetained, now: Now, actions: list[Action]) -> None:
        if msg.dispense_id in self._outbound.retained:
            self._on_retained_again(msg, now, actions)
            return
        expected = self._retained_sachet(msg.dispense_id)
        if expected is not None and msg.sachet_index != expected:
            # not the sachet that Discard named (or that was dispensed for that dose): a phantom,
            # the Discard still awaited, the dose still in the tray
            self._phantom("DoseRetained", msg.dispense_id, msg.sachet_index, expected, now, actions)
            return
        discard = self._desk.settled_discard(msg.dispense_id)
        if discard is not None:
            self._mirror.bin_unreported += 1  # in the bin now; its BinLevel follows (SPEC 4.8)
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
            if discard.decision is not None:
                fields["decided_by"] = discard.decision.by
                fields["source"] = discard.decision.source
                self._desk.decisions = tuple(
                    d
                    for d in self._desk.decisions
                    if d != discard.decision or d.sachet_index is None  # used up: one sachet
                )
            self._outbound.remember_retained(msg.dispense_id, None, msg.sachet_index)
            self._emit(actions, "sachet_discarded", fields)
            return
        slot_id = self._outbound.retaining.pop(msg.dispense_id, None) or self._outbound.recent.get(
            msg.dispense_id
        )
        if msg.dispense_id in self._outbound.retain_queue:
            # a Retain whose reply was lost went through: in the bin, owed no more
            self._outbound.retain_queue.remove(msg.dispense_id)
        if slot_id is None and self._slotbook.run_by_dispense(msg.dispense_id) is None:
            self._phantom("DoseRetained", msg.dispense_id, msg.sachet_index, None, now, actions)
            return
        self._mirror.bin_unreported += 1
        self._mirror.tray_occupied = False
        self._unstick(msg.dispense_id, now, actions)
        self._outbound.remember_retained(msg.dispense_id, slot_id, msg.sachet_index)
        self._emit(
            actions,
            "dose_retained",
            {"slot_id": slot_id, "dispense_id": msg.dispense_id, "sachet_index": msg.sachet_index},
        )

    def _on_retained_again(self, msg: DoseRetained, now: Now, actions: list[Action]) -> None:
        """A DoseRetained of a dose taken back, or a sachet discarded, that was handled already:
        a repeat (a retransmission after a lost ACK, also to a restarted agent). It changes
        nothing: the bin holds it once, the tray is as it is now. Recorded, so that its ACK
        follows a commit like any other; naming another sachet, it is a phantom."""
        slot_id, index = self._outbound.retained[msg.dispense_id]
        self._repeated(msg, slot_id, index, now, actions)

    def _settled_sachet(self, dispense_id: int) -> int | None:
        return self._outbound.recent_sachets.get(dispense_id)

    def _retained_sachet(self, dispense_id: int) -> int | None:
        """The sachet index a DoseRetained of `dispense_id` must name: its Discard's (waited for
        or given up on), else the dose's (open or recently settled); None: not known."""
        discard = self._desk.discarding.get(dispense_id) or self._desk.unanswered.get(dispense_id)
        if discard is not None:
            return discard.sachet_index
        run = self._slotbook.run_by_dispense(dispense_id)
        if run is not None and run.sachet_index is not None:
            return run.sachet_index
        return self._settled_sachet(dispense_id)

    def _phantom(
        self,
        message: str,
        dispense_id: int,
        sachet_index: int,
        expected_index: int | None,
        now: Now,
        actions: list[Action],
    ) -> None:
        """A dose event matching nothing the agent commanded: it changes nothing the engine
        believes (tray, roll position, slots) and is reported, rate limited (a firmware fault or
        a frame from somewhere else must not flood the centre)."""
        if not self._alerts.chatty_allowed("phantom_dispenser_event", now.mono):
            return
        fields: dict[str, object] = {
            "message": message,
            "dispense_id": dispense_id,
            "sachet_index": sachet_index,
            "reason": "unknown_dispense_id" if expected_index is None else "sachet_index_mismatch",
        }
        if expected_index is not None:
            fields["expected_sachet_index"] = expected_index
        self._emit(actions, "phantom_dispenser_event", fields)

    def _on_button(
        self, msg: ButtonPressed, now: Now, actions: list[Action], button: str | None = None
    ) -> None:
        fields: dict[str, object] = {"button": button or msg.button.name.lower()}
        if msg.button is ButtonId.TAKE:
            started, refused = self._take_early(now)
            if started:
                return
            if refused is not None:
                fields["reason"] = refused
            if refused == lifecycle.MIN_INTERVAL:
                fields["not_before_utc"] = utc_text_or_none(self._interval_release_utc())
        kind = "help_requested" if msg.button is ButtonId.HELP else "button_pressed"
        if not self._alerts.chatty_allowed(kind, now.mono):
            return
        self._emit(actions, kind, fields)

    def _on_panel_press(self, now: Now, actions: list[Action]) -> None:
        """The unit's own take now / help button: the dispenser's TAKE when a dose is within
        reach (the same checks and refusals decide), else a help call, so a press is never
        silently lost on a patient who wants a dose and cannot have one."""
        why, next_due = self._out_of_reach(now)
        if why is None:
            self._on_button(ButtonPressed(ButtonId.TAKE), now, actions, button="panel")
            return
        if not self._alerts.chatty_allowed("panel_help_requested", now.mono):
            return
        fields: dict[str, object] = {"reason": why}
        if why == "no_dose_due":
            fields["next_due_utc"] = utc_text_or_none(next_due)
        self._emit(actions, "panel_help_requested", fields)

    def _out_of_reach(self, now: Now) -> tuple[str | None, datetime | None]:
        """Why no dose is within reach of a TAKE now (None: one is), and the next one's due."""
        if self._slotbook.runs:
            return None, None  # in the tray, due, held or started early: TAKE says what next
        if self._binding is None:
            return "not_bound", None
        if self._schedule is None or self._slotbook.cursor is None:
            return "no_schedule", None
        if now.trust is TimeTrust.UNTRUSTED:
            return "clock_untrusted", None
        upcoming = self._slotbook.next_scheduled(self._schedule)
        if upcoming is None:
            return "no_dose_due", None
        if pause.covering(self._pauses, upcoming.due_utc):
            return "paused", upcoming.due_utc
        if upcoming.due_utc - now.utc > self._cfg.early_window or self._slotbook.is_settled(
            upcoming.slot_id
        ):
            return "no_dose_due", upcoming.due_utc
        return None, upcoming.due_utc

    def _take_early(self, now: Now) -> tuple[bool, str | None]:
        """TAKE inside the early window of the next slot: make it due now.

        Returns whether it did, and if a dose would otherwise have started, why not: the
        previous dose is still in the tray, or the minimum interval since the last intake has
        not passed (an early TAKE never brings two doses closer than that).
        """
        if (
            now.trust is TimeTrust.UNTRUSTED
            or self._schedule is None
            or self._slotbook.cursor is None
        ):
            return False, None
        if self._slotbook.runs:
            # a dose in the tray, a slot due and held, or one already started early by TAKE:
            # the press is not a request for the next slot (and never a second run of one)
            return False, None
        upcoming = self._slotbook.next_scheduled(self._schedule)
        if upcoming is None or upcoming.due_utc - now.utc > self._cfg.early_window:
            return False, None
        if self._slotbook.is_settled(upcoming.slot_id) or pause.covering(
            self._pauses, upcoming.due_utc
        ):
            return False, None
        if self._mirror.tray_occupied:
            return False, "tray_occupied"  # a missed dose left in the tray is still reachable
        if self._interval_blocks(now):
            return False, lifecycle.MIN_INTERVAL
        self._slotbook.runs.append(
            SlotRun(upcoming.slot_id, upcoming.due_utc, self._local_iso(upcoming.due_utc))
        )
        return True, None

    # --- the minimum interval between two intakes (SAFETY.md H3) -----------------------------

    def _tray_emptied_unseen(self, now: Now) -> None:
        """A dose we knew in the tray is gone without a DoseTaken or DoseRetained (lost with the
        link): in doubt the patient took it, at the latest now (SAFETY.md H3)."""
        self._note_intake(now)

    def _note_intake(self, now: Now) -> None:
        self._slotbook.last_intake_utc = now.utc
        self._slotbook.last_intake_mono = now.mono

    def _min_interval(self) -> timedelta | None:
        if self._schedule is None or self._slotbook.last_intake_utc is None:
            return None
        return self._schedule.effective_min_interval

    def _interval_release_utc(self) -> datetime | None:
        """Wall instant from which the next dose may be made available (for people to read)."""
        interval = self._min_interval()
        if interval is None or self._slotbook.last_intake_utc is None:
            return None
        return self._slotbook.last_intake_utc + interval

    def _interval_release_mono(self, now: Now) -> float:
        interval = self._min_interval()
        assert interval is not None
        if self._slotbook.last_intake_mono is not None:
            return self._slotbook.last_intake_mono + interval.total_seconds()
        release = self._interval_release_utc()
        assert release is not None
        return self._mono_at(release, now)

    def _interval_blocks(self, now: Now) -> bool:
        """Is it too soon after the last intake to make another dose available?

        Measured on the monotonic clock when this process saw the intake (a wall-clock step
        cannot shorten it), else (after a restart) on wall time.
        """
        interval = self._min_interval()
        if interval is None:
            return False
        if self._slotbook.last_intake_mono is not None:
            return now.mono < self._slotbook.last_intake_mono + interval.total_seconds()
        release = self._interval_release_utc()
        return release is not None and now.utc + _EPSILON < release

    def _on_lid(self, is_open: bool, now: Now, actions: list[Action]) -> None:
        self._condition(actions, "lid_open", is_open, now)
        if not is_open:
            self._desk.lid_closed()

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
        if active and fault in (FaultCode.JAM, FaultCode.CUTTER):
            # a cut that failed sends no DoseRetained (SPEC 4.2): not waited for
            sent = {p.dispense_id for p in self._outbound.pending.values() if p.kind == "discard"}
            for dispense_id in [d for d in self._desk.discarding if d not in sent]:
                self._desk.give_up(dispense_id)
        if active and fault not in self._mirror.faults:
            self._mirror.faults.append(fault)
        elif not active:
            self._mirror.faults = [f for f in self._mirror.faults if f is not fault]
        kind = f"fault_{fault.name.lower()}"
        self._condition(actions, kind, active, now, {"detail": detail})

    def _apply_status(self, status: Status, now: Now, actions: list[Action]) -> None:
        self._mirror.status_known = True
        if self._mirror.tray_occupied and not status.tray_occupied:
            self._tray_emptied_unseen(now)
        if not status.tray_occupied:
            # nothing to take back: each dose owed to the bin is told as not in the tray (what
            # a Retain would have found), and a stuck dose is gone
            for dispense_id in self._outbound.retain_queue:
                self._emit(
                    actions,
                    "dose_not_in_tray",
                    {"slot_id": self._outbound.recent.get(dispense_id), "dispense_id": dispense_id},
                )
            self._outbound.retain_queue.clear()
            self._unstick(None, now, actions)
        self._mirror.tray_occupied = status.tray_occupied
        self._mirror.lock_actual = status.locked
        if (
            status.locked
            and status.alert is AlertPattern.FAULT
            and not self._mirror.locked_by_agent
        ):
            # the fail-safe of an earlier process of this agent (lock + FAULT after a store
            # fault; nothing else locks, SPEC 4.5): ours to lift now that the state is read back.
            # Safe: no Dispense leaves before its BeginDispense is committed
            self._mirror.locked_by_agent = True
            if not (self._desk.roll_foreign(self._binding) or self.locked_down):
                self._emit(actions, "failsafe_lock_lifted", {})  # else kept: wanted locked
        self._mirror.pattern_sent = status.alert
        self._on_lid(status.lid_open, now, actions)
        self._on_power(status.mains, status.battery_pct, now, actions)
        for fault in FaultCode:
            active = bool(status.active_faults & (1 << fault))
            if active != (fault in self._mirror.faults) or (
                # told to the centre before a restart (durable), gone by now: cleared here
                not active and self._alerts.is_raised(f"fault_{fault.name.lower()}")
            ):
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
        self._reconcile(status.tray_occupied, now, actions)
        if self._left_unclaimed:
            self._left_unclaimed = False
            if status.tray_occupied:
                self._reclaim_left(now, actions)

    def _reclaim_left(self, now: Now, actions: list[Action]) -> None:
        """The first Status after a start finds the tray occupied and no open slot's dose can be
        in it: the newest dose the stored state names as left there is. What was owed to the bin
        or stuck lived in memory only: it is owed again (a Retain once the bin has room) or,
        without a bin, named stuck again, so the bin takes it back after a restart too and a
        later dose's hold names it (not the bare tray_occupied)."""
        if self._mirror.stuck is not None or self._outbound.retain_queue:
            return
        if any(r.dispense_id is not None for r in self._slotbook.runs):
            return  # an open slot's dose may be the one in the tray: the reconciliation decides
        newest = next(
            (d for d in reversed(self._outbound.recent) if d in self._outbound.in_tray), None
        )
        if newest is None:
            return
        slot_id = self._outbound.recent.get(newest)
        if self._has(Feature.RETAIN_BIN):
            self._owe_retain(newest, slot_id, now, actions)
        else:
            self._stick(newest, slot_id, "no_retain_bin", now, actions)

    def _reconcile(self, tray_occupied: bool, now: Now, actions: list[Action]) -> None:
        """What a Status says about open slots whose dose may or may not be in the tray."""
        for run in list(self._slotbook.runs):
            if run.travel:
                continue  # lifted out for a trip, or given up on by its own timeout
            if run.unreconciled:  # presented; since then the agent may have missed events
                if not tray_occupied:
                    # lifted out while the agent could not hear it (its DoseTaken lost): not a
                    # missed dose, not a confirmed one; in doubt an intake (SAFETY.md H3)
                    self._note_intake(now)
                    self._settle(
                        run,
                        Outcome.TAKEN_UNCONFIRMED,
                        lifecycle.TRAY_EMPTIED_UNSEEN,
                        now,
                        actions,
                    )
                elif now.utc >= run.due_utc + self._cfg.grace + self._cfg.undispensed_deadline:
                    # still there hours after its slot: no fresh grace for a dose that late
                    self._miss(run, lifecycle.NOT_TAKEN, now, actions)
                else:
                    self._slotbook.replace_run(replace(run, unreconciled=False))
            elif run.phase is Phase.DISPENSING and run.confirmed_mono is not None:
                if tray_occupied:
                    self._record_presented(run, now, actions)
                elif run.unseen_done:
                    # cut at some time, never seen presented, not in the tray: perhaps taken,
                    # perhaps never given. In doubt: not given, and said so (HIGH); and in doubt
                    # an intake, at the latest now, for the minimum interval (SAFETY.md H3)
                    self._note_intake(now)
                    self._settle(run, Outcome.MISSED, lifecycle.DISPENSE_UNCONFIRMED, now, actions)

    # --- command outcomes ---------------------------------------------------------------------

    def _on_outcome(self, outcome: CommandOutcome, now: Now, actions: list[Action]) -> None:
        pending = self._outbound.pending.pop(outcome.correlation, None)
        if pending is None:
            return  # from before a link drop or a restart: no longer ours to act on
        reply = outcome.reply
        if pending.kind == "keep_alive":
            self._keep_alive_result(reply, actions)
            return
        if reply is None or (isinstance(reply, CommandResult) and reply.result is ResultCode.BUSY):
            self._outbound.retry_at = now.mono + self._cfg.command_retry.total_seconds()
            if pending.kind == "set_alert":
                self._mirror.pattern_sent = None
            if pending.kind == "retain" and pending.dispense_id is not None:
                self._outbound.retain_queue.append(pending.dispense_id)
            if pending.kind == "discard" and pending.dispense_id is not None:
                self._discard_unanswered(pending.dispense_id, reply, now, actions)
            if pending.kind == "dispense" and pending.slot_id is not None:
                # no reply: it may have been cut; BUSY: refused before anything moved
                self._mark_maybe_executed(pending.slot_id, reply is None)
                failure = f"command_failed:{outcome.failure or 'busy'}"
                self._hold(pending.slot_id, failure, now, actions)
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
                slot_id = None
                if pending.dispense_id is not None:
                    slot_id = self._outbound.retaining.pop(pending.dispense_id, None)
                if result is ResultCode.BIN_FULL and pending.dispense_id is not None:
                    self._retain_refused(pending.dispense_id, slot_id, now, actions)
                elif result is ResultCode.NOTHING_PRESENTED and pending.dispense_id is not None:
                    self._unstick(pending.dispense_id, now, actions)
                if result is ResultCode.NOTHING_PRESENTED:
                    # that dose is not in the tray (taken or removed unseen; another one may be):
                    # said to the centre, whose alert for the slot stands; the tray is asked again
                    self._mirror.status_known = False
                    self._emit(
                        actions,
                        "dose_not_in_tray",
                        {
                            "slot_id": slot_id
                            or self._outbound.recent.get(pending.dispense_id or 0),
                            "dispense_id": pending.dispense_id,
                        },
                    )
            case "set_alert":
                if isinstance(pending.command, SetAlert):
                    self._mirror.pattern_sent = (
                        pending.command.pattern if result is ResultCode.OK else None
                    )
            case "set_lock":
                if isinstance(pending.command, SetLock) and result is ResultCode.OK:
                    self._mirror.lock_actual = pending.command.locked
                    self._mirror.locked_by_agent = pending.command.locked

    def _mark_maybe_executed(self, slot_id: str, maybe: bool) -> None:
        for run in self._slotbook.runs:
            if run.slot_id == slot_id and run.phase is Phase.DISPENSING:
                self._slotbook.replace_run(replace(run, maybe_executed=maybe))

    def _dispense_result(
        self, pending: PendingCommand, result: ResultCode, now: Now, actions: list[Action]
    ) -> None:
        run = next((r for r in self._slotbook.runs if r.slot_id == pending.slot_id), None)
        if run is None or run.phase is not Phase.DISPENSING:
            return
        if result is ResultCode.OK:
            self._slotbook.replace_run(
                replace(lifecycle.confirmed(run, now.mono), maybe_executed=False)
            )
            self._condition(actions, "dispense_id_conflict", False, now)
            return
        if result is ResultCode.ALREADY_DONE:
            self._already_done(run, now, actions)
            return
        # Any other answer: the dispenser checks executed ids first (SPEC 4.4), so it was not cut.
        run = replace(run, maybe_executed=False)
        self._slotbook.replace_run(run)
        reason = {
            ResultCode.NO_ROLL: "no_roll",
            ResultCode.EMPTY: roll_check.ROLL_EMPTY,
            ResultCode.JAMMED: "fault_jam",
            ResultCode.TRAY_OCCUPIED: "tray_occupied",
            ResultCode.LOCKED: "locked",
            ResultCode.WRONG_SACHET: "wrong_sachet",
        }.get(result, f"dispenser_{result.name.lower()}")
        if result is ResultCode.REJECTED and FaultCode.READER in self._mirror.faults:
            reason = "fault_reader"  # a probe under the reader fault: refused for that fault
        if result is ResultCode.NO_ROLL:
            self._forget_roll(now, actions, "")
        elif result is ResultCode.EMPTY and self._desk.roll is not None:
            self._desk.roll = replace(self._desk.roll, next_index=self._desk.roll.sachet_count)
            self._supply_conditions(now, actions)
        elif result is ResultCode.JAMMED:
            if FaultCode.CUTTER in self._mirror.faults:
                # JAMMED means a jam or a cutter fault (SPEC 4.9): the known cutter fault (a
                # probe may be sent under it) explains it; no jam to report that never clears
                reason = "fault_cutter"
            else:
                self._on_fault(FaultCode.JAM, True, "dispense refused", now, actions)
        elif result is ResultCode.TRAY_OCCUPIED:
            self._mirror.tray_occupied = True
        elif result is ResultCode.LOCKED:
            self._mirror.lock_actual = True
        elif result is ResultCode.WRONG_SACHET:
            sent = pending.command
            if (
                isinstance(sent, Dispense)
                and self._desk.sachet is not None
                and sent.sachet_index == self._desk.sachet.index
            ):
                self._desk.sachet = None  # what we knew of the reader was wrong
            self._mirror.status_known = False
        else:
            self._outbound.retry_at = now.mono + self._cfg.command_retry.total_seconds()
        if run.travel:
            self._travel_give_up(run, reason, now, actions)
            return
        self._hold(run.slot_id, reason, now, actions)

    def _already_done(self, run: SlotRun, now: Now, actions: list[Action]) -> None:
        """The dispenser executed this dispense id before. Never another sachet for the slot, and
        never counted as given unless the dose is seen (SPEC 4.4)."""
        if run.maybe_executed:
            # one of our own Dispenses of it was cut unseen (a lost reply, a restart): a Status
            # says whether the dose is in the tray (presented) or gone (not given, in doubt)
            self._slotbook.replace_run(
                replace(lifecycle.confirmed(run, now.mono), maybe_executed=False, unseen_done=True)
            )
            self._mirror.status_known = False
            return
        # No Dispense of ours can have cut it: the dispenser remembers ids this unit never used
        # (a dispenser from another unit, a replaced store). Nothing moved; the dose is not given.
        self._condition(
            actions,
            "dispense_id_conflict",
            True,
            now,
            {"dispense_id": run.dispense_id, "slot_id": run.slot_id},
        )
        self._settle(run, Outcome.MISSED, lifecycle.DISPENSE_ID_CONFLICT, now, actions)

    def _discard_unanswered(
        self, dispense_id: int, reply: Message | None, now: Now, actions: list[Action]
    ) -> None:
        """A Discard answered BUSY or not at all: no cut is waited for (else no dose is given
        again); the sachet goes again when the dispenser can take it (`_can_discard`)."""
        if reply is None:
            # it may have been cut (a late DoseRetained is still ours): a Status says where the
            # reader is before anything else is cut
            self._desk.give_up(dispense_id)
            self._mirror.status_known = False
            return
        self._desk.discarding.pop(dispense_id, None)  # BUSY: nothing moved (SPEC 4.9)
        tries = self._desk.refused_busy()
        if tries == DISCARD_BUSY_TRIES:
            detail = reply.detail if isinstance(reply, CommandResult) else ""
            self._emit(
                actions,
                "dispenser_command_failed",
                {"command": "discard", "result": "busy", "detail": detail},
            )

    def _discard_result(
        self, pending: PendingCommand, result: ResultCode, now: Now, actions: list[Action]
    ) -> None:
        if result is ResultCode.OK:
            self._condition(actions, "dispense_id_conflict", False, now)
            return  # DoseRetained follows
        if pending.dispense_id is not None:
            self._desk.discarding.pop(pending.dispense_id, None)
        if result is ResultCode.BIN_FULL:
            self._on_fault(FaultCode.BIN_FULL, True, "discard refused", now, actions)
        elif result is ResultCode.JAMMED and FaultCode.CUTTER not in self._mirror.faults:
            # as for a Dispense: a jam the engine missed; it blocks every cut until it clears
            # (not a Discard every command retry, each told to the centre)
            self._on_fault(FaultCode.JAM, True, "discard refused", now, actions)
        elif result is ResultCode.WRONG_SACHET:
            self._desk.sachet = None
            self._mirror.status_known = False
        else:
            if result is ResultCode.ALREADY_DONE:
                # a discard always has a fresh id: the dispenser remembers ids this unit never
                # used; nothing was cut (tried again later with the next id)
                self._condition(
                    actions,
                    "dispense_id_conflict",
                    True,
                    now,
                    {"dispense_id": pending.dispense_id, "slot_id": None},
                )
            self._outbound.retry_at = now.mono + self._cfg.command_retry.total_seconds()

    # --- the level-triggered part: runs after every input ---------------------------------------

    def _advance(self, now: Now, actions: list[Action]) -> None:
        released = self._alerts.release_due(now.mono)
        if released:
            actions.extend(Emit(e) for e in released)
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
        trusted = now.trust is not TimeTrust.UNTRUSTED
        if trusted and (self._pauses or self._alerts.is_raised("pause_overdue")):
            self._pause_duties(now, actions)  # before the timers: no missed alarm while away
        self._run_timers(now, actions)
        book = self._alerts.book
        if not trusted or "clock_untrusted" in book.present or "clock_untrusted" in book.raised:
            # (else a clear that says nothing: its fields are not built on every step)
            self._condition(
                actions, "clock_untrusted", not trusted, now, {"trust": now.trust.value}
            )
        if trusted:
            self._pick_up(now, actions)
            self._settle_overdue(now, actions)
            self._was_untrusted = False
            self._attempt(now, actions)
            if self._pauses:
                self._travel(now, actions)
            self._discard_stale(now, actions)
            self._backlog_condition(now, actions)
        else:
            self._was_untrusted = True
            self._name_ahead_while_untrusted(now, actions)
        self._sync_dispenser(now, actions)
        self._move_horizon()

    # --- pause: duties while away, reminders, the travel pre-dispense --------------------------

    def _pause_duties(self, now: Now, actions: list[Action]) -> None:
        """While a pause is in force no slot is open (so none can end missed): a slot already
        due is skipped, a dose in the tray is taken back (or reported left there). Then the
        reminders and the maximum duration."""
        active = pause.active(self._pauses, now.utc)
        if active is not None:
            for run in list(self._slotbook.runs):
                if run.travel:
                    continue
                if run.dispense_id is not None:
                    self._away_with_dose_in_tray(run, active, now, actions)
                elif run.due_utc <= now.utc or pause.covers(active, run.due_utc):
                    self._settle(run, Outcome.SKIPPED_PAUSED, active.pause_id, now, actions)
        self._pause_notices(now, actions)
        since = pause.paused_since(self._pauses, now.utc)
        if active is None or since is None or now.utc - since < self._cfg.pause_max:
            self._condition(actions, "pause_overdue", False, now)
            return
        fields: dict[str, object] = {
            "pause_id": active.pause_id,
            "paused_since_utc": utc_text(since),
            "max_days": self._cfg.pause_max / timedelta(days=1),
        }
        self._condition(actions, "pause_overdue", True, now, fields)

    def _away_with_dose_in_tray(
        self, run: SlotRun, window: PauseWindow, now: Now, actions: list[Action]
    ) -> None:
        """A dose dispensed (maybe in the tray) when the pause came into force: the slot ends
        skipped_paused, never missed; the dose goes back into the bin if the dispenser can take
        it, else the centre hears (LOW) that it is left in the tray for a nurse to remove."""
        self._settle(run, Outcome.SKIPPED_PAUSED, window.pause_id, now, actions)
        self._take_back_or_report(run, window.pause_id, now, actions)

    def _take_back_or_report(
        self, run: SlotRun, pause_id: str, now: Now, actions: list[Action]
    ) -> None:
        assert run.dispense_id is not None
        if self._seen_gone(run):
            # nothing to take back nor for a person to lift out: a dose reported stuck that is
            # not there would hide the next one left in the tray (one condition; year seed 94)
            self._outbound.in_tray.discard(run.dispense_id)
            self._emit(
                actions,
                "dose_not_in_tray",
                {"slot_id": run.slot_id, "dispense_id": run.dispense_id},
            )
            return
        if not self._has(Feature.RETAIN_BIN):
            why: str | None = "no_retain_bin"
            self._stick(run.dispense_id, run.slot_id, "no_retain_bin", now, actions)
        else:
            why = "bin_full" if self._bin_full_for_retain() else None
            self._owe_retain(run.dispense_id, run.slot_id, now, actions)  # waits for room
        if why is None:
            return
        self._emit(
            actions,
            "dose_left_in_tray",
            {
                "slot_id": run.slot_id,
                "dispense_id": run.dispense_id,
                "pause_id": pause_id,
                "reason": why,
            },
        )

    def _seen_gone(self, run: SlotRun) -> bool:
        """Cut unseen (ALREADY_DONE: the cut came before) and a Status since shows the tray
        empty: lifted out while the agent could not hear it (a trip's packer, a carer)."""
        return (
            run.unseen_done
            and run.phase is not Phase.PRESENTED
            and self._mirror.status_known
            and self._mirror.tray_occupied is False
            and self._has(Feature.TRAY_SENSOR)  # without it the Status cannot tell
        )

    def _pause_notices(self, now: Now, actions: list[Action]) -> None:
        """An open-ended pause is reminded every `pause_reminder_every`; a pause with an end is
        announced `pause_end_notice` before it. Both say what the resume will need."""
        cfg, changed, updated = self._cfg, False, []
        for window in self._pauses:
            if pause.covers(window, now.utc):
                if window.end_utc is None:
                    earned = pause.reminders_due(window, now.utc, cfg.pause_reminder_every)
                    if earned > window.reminders_sent:
                        since = now.utc - window.start_utc
                        self._emit(
                            actions,
                            "pause_reminder",
                            {
                                **_pause_fields(window),
                                "days_in_force": round(since / timedelta(days=1), 2),
                                "max_days": cfg.pause_max / timedelta(days=1),
                                "overdue_at": utc_text(
                                    pause.overdue_at(self._pauses, window, cfg.pause_max)
                                ),
                                "resume_now": self._plan_at(now.utc).fields(),
                            },
                        )
                        window, changed = replace(window, reminders_sent=earned), True
                elif not window.end_notice_sent and now.utc >= (
                    window.end_utc - cfg.pause_end_notice
                ):
                    self._emit(
                        actions,
                        "pause_ending",
                        {**_pause_fields(window), "resume": self._plan_at(window.end_utc).fields()},
                    )
                    window, changed = replace(window, end_notice_sent=True), True
            updated.append(window)
        if changed:
            self._pauses = tuple(updated)

    def _replace_pause(self, window: PauseWindow) -> None:
        self._pauses = tuple(window if p.pause_id == window.pause_id else p for p in self._pauses)

    def _trip_of(self, run: SlotRun) -> PauseWindow | None:
        """The travel pause a pre-dispensed slot belongs to."""
        for window in self._pauses:
            if window.reason == "travel" and pause.covers(window, run.due_utc):
                return window
        return None

    def _travel(self, now: Now, actions: list[Action]) -> None:
        """Travel pre-dispense (VKP 3.15): while a travel pause asking for it is in force, the
        trip's sachets are dispensed one after another, each once the previous one was lifted
        out, each checked as for a dose (right patient and roll, in order, packed for a slot of
        the trip, the roll not expired when that slot is due). It stops for good at the first
        sachet that fails a check; it waits while the dispenser cannot cut (no link, tray ...)."""
        for window in self._pauses:
            if window.take_along and window.end_utc is not None and now.utc >= window.end_utc:
                self._travel_finish(window, "pause_ended", now, actions)
        trip = next((w for w in self._pauses if w.take_along and pause.covers(w, now.utc)), None)
        if trip is None or self._schedule is None:
            return
        if self._slotbook.runs:  # one at a time: a sachet is in the tray (or on its way)
            failed = [r for r in self._slotbook.runs if r.travel and not r.in_tray]
            if failed and not self._dispenser_busy():
                self._travel_retry(failed[0], now, actions)  # its Dispense was not delivered
            return
        if self._dispenser_busy():
            return
        assert trip.end_utc is not None
        slots = self._slotbook.slots(self._schedule).between(trip.start_utc, trip.end_utc)
        if all(self._trip_slot_over(s, now) for s in slots):
            self._travel_finish(trip, None, now, actions)
            return
        probe = SlotRun(slots[0].slot_id, slots[0].due_utc, "", travel=True)
        reason = self._blocker(probe, now)
        if _travel_waits(reason):
            return
        if reason is not None and reason not in (
            roll_check.SACHET_STALE,
            roll_check.SACHET_TIME_MISMATCH,
        ):
            self._travel_finish(trip, reason, now, actions)  # the roll itself is refused
            return
        sachet = self._desk.sachet
        assert sachet is not None  # the blocker said no_sachet otherwise
        target, why = self._travel_target(slots, sachet, now)
        if target is None:
            self._travel_finish(trip, why, now, actions)
            return
        run = SlotRun(target.slot_id, target.due_utc, self._local_iso(target.due_utc), travel=True)
        reason = self._travel_blocker(run, now)
        if _travel_waits(reason):
            return
        if reason is not None:
            self._travel_finish(trip, reason, now, actions)
        elif self._can_send(now):
            self._dispense(run, actions)

    def _trip_slot_over(self, slot: Slot, now: Now) -> bool:
        """Settled, or already due (then it is settled or being settled: its record may be
        pruned from the slot book once the horizon passes it)."""
        return slot.due_utc <= now.utc or self._slotbook.is_settled(slot.slot_id)

    def _travel_target(
        self, slots: list[Slot], sachet: SachetRead, now: Now
    ) -> tuple[Slot | None, str | None]:
        """The slot of the trip the sachet at the reader is packed for (the nearest within the
        tolerance, not yet settled), or None and why it is not one. A sachet packed for after the
        trip ends it: reason None when every slot of the trip was taken along."""
        intended = roll_check.wire_time(sachet.intended_utc_s)
        if intended is None:
            return None, roll_check.SACHET_TIME_UNKNOWN
        tolerance = self._cfg.sachet_time_tolerance
        if intended > slots[-1].due_utc + tolerance:
            return None, "sachets_missing"  # some slot of the trip has none left on the roll
        nearest = min(slots, key=lambda s: (abs(s.due_utc - intended), s.slot_id))
        if abs(nearest.due_utc - intended) > tolerance:
            before = intended < slots[0].due_utc - tolerance
            return None, roll_check.SACHET_STALE if before else roll_check.SACHET_TIME_MISMATCH
        if self._trip_slot_over(nearest, now):
            return None, roll_check.SACHET_STALE  # its slot already ended (due before it came)
        return nearest, None

    def _travel_blocker(self, run: SlotRun, now: Now) -> str | None:
        """The dose checks for a travel sachet, and one more: the roll must not have expired by
        the time the slot it is packed for is due (that is when the patient takes it)."""
        reason = self._blocker(run, now)
        if reason is not None:
            return reason
        roll = self._desk.roll
        expiry = roll_check.wire_time(roll.expiry_utc_s) if roll is not None else None
        if expiry is not None and run.due_utc >= expiry - self._cfg.roll_expired_margin:
            return roll_check.ROLL_EXPIRED
        return None

    def _travel_retry(self, run: SlotRun, now: Now, actions: list[Action]) -> None:
        """A travel Dispense that could not be delivered (timeout, BUSY): the same dispense id
        again when nothing blocks, given up when its slot falls due or a check fails."""
        if now.utc >= run.due_utc:
            self._travel_give_up(run, "not_dispensed_in_time", now, actions)
            return
        reason = self._travel_blocker(run, now)
        if _travel_waits(reason):
            return
        if reason is not None:
            self._travel_give_up(run, reason, now, actions)
        elif self._can_send(now):
            self._dispense(run, actions)

    def _travel_give_up(self, run: SlotRun, why: str, now: Now, actions: list[Action]) -> None:
        """A travel sachet not taken along: its slot is skipped (never missed), a dose left in
        the tray goes back into the bin (or is reported), and the rest of the trip is not
        dispensed: a sachet nobody collects must not be followed by more."""
        trip = self._trip_of(run)
        pause_id = trip.pause_id if trip is not None else "travel"
        self._settle(run, Outcome.SKIPPED_PAUSED, pause_id, now, actions)
        if run.in_tray:
            self._take_back_or_report(run, pause_id, now, actions)
        if trip is not None and trip.take_along:
            self._travel_finish(trip, why, now, actions)

    def _travel_finish(
        self, trip: PauseWindow, why: str | None, now: Now, actions: list[Action]
    ) -> None:
        """The pre-dispense is over: `travel_dispensed` when every slot of the trip was taken
        along, else `travel_short` (VKP 3.15, not enough doses for the trip) with the numbers."""
        planned = 0
        if trip.end_utc is not None and self._schedule is not None:
            slots = self._slotbook.slots(self._schedule)
            planned = len(slots.between(trip.start_utc, trip.end_utc))
        trip = next((p for p in self._pauses if p.pause_id == trip.pause_id), trip)
        self._replace_pause(replace(trip, take_along=False))
        fields: dict[str, object] = {
            "pause_id": trip.pause_id,
            "planned": planned,
            "dispensed": trip.travel_dispensed,
        }
        if why is None and trip.travel_dispensed >= planned:
            self._emit(actions, "travel_dispensed", fields)
            return
        self._emit(actions, "travel_short", {**fields, "reason": why or "slots_already_due"})

    def _run_timers(self, now: Now, actions: list[Action]) -> None:
        for run in list(self._slotbook.runs):
            if run.presented_mono is None and run.confirmed_mono is None:
                continue  # not (maybe) in the tray: no timer runs (lifecycle.on_time agrees)
            if run.travel:
                collect_by = _travel_collect_by(run, self._cfg)
                if collect_by is not None and now.mono >= collect_by:
                    why = "not_collected" if run.phase is Phase.PRESENTED else "not_presented"
                    self._travel_give_up(run, why, now, actions)
                continue
            result = lifecycle.on_time(run, self._cfg, now.mono)
            if result.missed is not None:
                self._miss(run, result.missed, now, actions)
                continue
            if result.run is not run:  # on_time returns the run itself when nothing changed
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

    def _miss(self, run: SlotRun, reason: str, now: Now, actions: list[Action]) -> None:
        """A dose dispensed (or maybe dispensed) and not taken: missed, and back into the bin
        (a Retain finds nothing if it is not in the tray)."""
        self._settle(run, Outcome.MISSED, reason, now, actions)
        if run.dispense_id is None:
            return
        if self._has(Feature.RETAIN_BIN):
            self._owe_retain(run.dispense_id, run.slot_id, now, actions)
        elif run.phase is Phase.PRESENTED:
            self._stick(run.dispense_id, run.slot_id, "no_retain_bin", now, actions)

    # --- a dose owed to the bin, and one stuck in the tray --------------------------------------

    def _bin_full_for_retain(self) -> bool:
        """The dispenser said its bin is full, or its level leaves no place for one more."""
        room = self._bin_room()
        return FaultCode.BIN_FULL in self._mirror.faults or (room is not None and room < 1)

    def _owe_retain(
        self, dispense_id: int, slot_id: str | None, now: Now, actions: list[Action]
    ) -> None:
        """The dose goes back into the bin as soon as the bin has room (plan_sync waits for it);
        until then it is stuck in the tray and the centre hears which one."""
        if self._bin_full_for_retain():
            self._stick(dispense_id, slot_id, "bin_full", now, actions)
        self._outbound.owe_retain(dispense_id)

    def _retain_refused(
        self, dispense_id: int, slot_id: str | None, now: Now, actions: list[Action]
    ) -> None:
        """BIN_FULL: the dose stays owed, and goes out again once the dispenser reports room
        (its bin fault cleared; the refusal raised it here), at most RETAIN_BIN_FULL_TRIES."""
        slot_id = slot_id or self._outbound.recent.get(dispense_id)
        tries = self._outbound.retain_refusals.get(dispense_id, 0) + 1
        self._outbound.retain_refusals[dispense_id] = tries
        if tries < RETAIN_BIN_FULL_TRIES:
            self._outbound.owe_retain(dispense_id)
            self._stick(dispense_id, slot_id, "bin_full", now, actions)
        else:
            self._stick(dispense_id, slot_id, "retain_refused", now, actions)

    def _stick(
        self, dispense_id: int, slot_id: str | None, reason: str, now: Now, actions: list[Action]
    ) -> None:
        self._mirror.stuck = StuckDose(dispense_id, slot_id, reason)
        fields: dict[str, object] = {
            "slot_id": slot_id,
            "dispense_id": dispense_id,
            "reason": reason,
        }
        self._condition(actions, DOSE_STUCK_IN_TRAY, True, now, fields)

    def _unstick(self, dispense_id: int | None, now: Now, actions: list[Action]) -> None:
        """The stuck dose (`dispense_id`; None: whatever was in the tray) is out of the tray:
        taken back, lifted out, or the tray found empty. After a restart the stored state names
        the doses that may lie in the tray (`left_in_tray`): the removal of one clears the
        raised condition as before; else an empty tray does."""
        stuck = self._mirror.stuck
        left = self._outbound.in_tray
        was_left = dispense_id in left
        if dispense_id is None:
            left.clear()
        else:
            left.discard(dispense_id)
        if dispense_id is not None and (stuck is None or stuck.dispense_id != dispense_id):
            if stuck is None and was_left:  # after a restart: the dose the stored state named
                fields: dict[str, object] = {
                    "slot_id": self._outbound.recent.get(dispense_id),
                    "dispense_id": dispense_id,
                }
                self._condition(actions, DOSE_STUCK_IN_TRAY, False, now, fields)
            return
        self._mirror.stuck = None
        fields = {}
        if stuck is not None:
            self._outbound.retain_refusals.pop(stuck.dispense_id, None)
            fields = {"slot_id": stuck.slot_id, "dispense_id": stuck.dispense_id}
        self._condition(actions, DOSE_STUCK_IN_TRAY, False, now, fields)

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
            # named HIGH ahead while the clock was untrusted and the dispenser empty: said once
            named = slot.slot_id in self._slotbook.named_ahead
            self._slotbook.named_ahead.discard(slot.slot_id)
            said = slot.slot_id in self._slotbook.said_ahead
            self._slotbook.said_ahead.discard(slot.slot_id)
            run = SlotRun(
                slot.slot_id,
                slot.due_utc,
                self._local_iso(slot.due_utc),
                held_empty=named and self._dispenser_empty(),
                said_held=said,
            )
            window = pause.covering(self._pauses, slot.due_utc)
            if window is not None:
                self._settle(run, Outcome.SKIPPED_PAUSED, window.pause_id, now, actions)
                continue
            self._slotbook.runs.append(run)
        self._slotbook.runs.sort(key=lambda r: (r.due_utc, r.slot_id))
        self._slotbook.cursor = now.utc + _EPSILON

    def _name_ahead_while_untrusted(self, now: Now, actions: list[Action]) -> None:
        """The clock is untrusted (no dose is given, no slot picked up) and the dispenser is
        empty: the doses of the next day after the last trusted instant cannot be given either
        way, and the agent cannot tell when each comes due. Each is named HIGH (VKP 3.7) ahead,
        once, so that a nurse brings a roll (SAFETY.md H4); at its time it is held LOW."""
        book = self._slotbook
        if (
            not self._dispenser_empty()
            or self._schedule is None
            or self._binding is None
            or book.cursor is None
        ):
            book.named_ahead.clear()  # a roll came: what was said ahead is void
            return
        known = {r.slot_id for r in book.runs}
        for slot in book.slots(self._schedule).between(book.cursor, book.cursor + _NAME_AHEAD):
            slot_id = slot.slot_id
            if slot_id in known or slot_id in book.named_ahead or book.is_settled(slot_id):
                continue
            if pause.covering(self._pauses, slot.due_utc) is not None:
                continue  # skipped, not held
            book.named_ahead.add(slot_id)
            book.said_ahead.add(slot_id)
            event: dict[str, object] = {
                "slot_id": slot_id,
                "reason": "clock_untrusted",
                "dispenser_empty": True,
                "due_utc": utc_text(slot.due_utc),
            }
            actions.append(
                Emit(
                    catalogue.make_event(
                        "dose_held", event, priority=Priority.HIGH, vkp_code=catalogue.EMPTY_VKP
                    )
                )
            )

    def _settle_overdue(self, now: Now, actions: list[Action]) -> None:
        for run in list(self._slotbook.runs):
            if run.travel or run.in_tray or now.utc < lifecycle.settle_deadline(run, self._cfg):
                continue
            if run.maybe_executed:
                # a Dispense of it may have been cut unseen: never sent again this late
                self._miss(run, lifecycle.DISPENSE_UNCONFIRMED, now, actions)
                continue
            if self._was_untrusted:
                reason = "clock_untrusted"
            else:
                reason = run.held_reason or self._blocker(run, now) or lifecycle.LATE
            outcome, text = lifecycle.unsent_outcome(reason)
            # not given because the dispenser was empty: as the hold said (VKP 3.7)
            empty = reason in (roll_check.ROLL_EMPTY, "no_roll") or (
                run.held_empty and self._dispenser_empty()
            )
            vkp = catalogue.EMPTY_VKP if empty else None
            self._settle(run, outcome, text, now, actions, vkp=vkp)

    def _probe_cannot_cut(self, run: SlotRun) -> bool:
        """Asking again after `run`'s Dispense (same id, same sachet index) cannot cut a sachet:
        a Status since the link came up put the reader past that sachet, and the dispenser cuts
        only the sachet a Dispense names (SPEC 4.3) and answers an executed id ALREADY_DONE
        (4.4). Such a probe makes no dose available, so the minimum interval does not hold it:
        held, it learnt nothing until the slot's deadline (a dose lifted out unseen after a cut
        whose reply was lost counted as an intake and held the probe of its own slot)."""
        roll = self._desk.roll
        return (
            run.maybe_executed
            and run.sachet_index is not None
            and self._mirror.status_known
            and roll is not None
            and not roll.unverified
            and roll.next_index > run.sachet_index
        )

    def _blocker(self, run: SlotRun, now: Now) -> str | None:
        """Why `run` cannot be dispensed right now (a stable reason token), or None."""
        if self.locked_down:
            return STATE_UNREADABLE
        if self._binding is None:
            return roll_check.NO_BINDING
        if any(r.in_tray and r.slot_id != run.slot_id for r in self._slotbook.runs):
            return "previous_dose_in_tray"
        if not run.travel and self._interval_blocks(now) and not self._probe_cannot_cut(run):
            # sachets taken along on a trip come out one after another; they are not intakes
            return lifecycle.MIN_INTERVAL
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
        # A Dispense of this slot may have cut the roll's last sachet unseen: asking again with
        # its id is safe on an empty roll (nothing is left to cut) and says whether it was cut.
        empty_probe = verdict.reason == roll_check.ROLL_EMPTY and run.maybe_executed
        if verdict.reason is not None and not empty_probe:
            return verdict.reason
        # A Dispense of this id may have been cut unseen: it is asked again with the same id and
        # sachet index. The dispenser answers ALREADY_DONE if it was cut, and cuts nothing into
        # an occupied tray or from another sachet (SPEC 4.3, 4.4), so only a cut that never
        # happened can happen now, and only of the sachet checked for this slot.
        probe = run.maybe_executed
        # Asking is no new dispense: the executed id is checked before the faults (SPEC 4.4),
        # and under a jam, cutter or reader fault an id never cut is refused. Under any other
        # fault the ask could cut a sachet: not sent (in doubt, no dispense).
        fault_probe = probe and self._mirror.cuts_nothing_new()
        blocking = self._mirror.blocking_fault()
        if blocking is not None and not fault_probe:
            return f"fault_{blocking.name.lower()}"
        if not self._mirror.status_known:
            return "awaiting_status"
        if self._mirror.tray_occupied and not probe:
            return "tray_occupied" if self._mirror.stuck is None else DOSE_STUCK_IN_TRAY
        if self._mirror.lock_actual and not self._mirror.locked_by_agent:
            return "locked"
        if run.dispense_id is None and self._outbound.ids_exhausted():
            return DISPENSE_IDS_EXHAUSTED
        if empty_probe:
            return None
        if self._desk.sachet is None:
            if (
                fault_probe
                and FaultCode.READER in self._mirror.faults
                and run.roll_id == roll.roll_id
            ):
                # no SachetRead comes while the reader fails (SPEC 4.3); were it to mend before
                # the ask arrives, only this roll's sachet checked for this slot could be cut
                return None
            return "no_sachet"
        if probe and self._desk.sachet.index != run.sachet_index:
            return None
        sachet_verdict = roll_check.check_sachet(
            self._desk.sachet,
            self._binding.patient_ref,
            roll.roll_id,
            roll.next_index,
            run.due_utc,
            self._sachet_tolerance(run.due_utc),
        )
        reason = sachet_verdict.reason
        if reason in (roll_check.SACHET_STALE, roll_check.SACHET_TIME_MISMATCH) and (
            self._sachet_matches_a_slot(self._desk.sachet) is False
        ):
            # packed for no dose time at all: only a person's decision moves it (hazard H6)
            if self._desk.decision_for(self._desk.sachet) is None:
                return roll_check.PLAN_MISMATCH
            return roll_check.DISCARD_DECIDED
        return reason

    def _attempt(self, now: Now, actions: list[Action]) -> None:
        run = self._slotbook.head()
        if run is None:
            self._hold_behind_tray(now, actions)
            return
        if run.travel:
            return  # a travel sachet is `_travel`'s
        if self._dispenser_busy():
            return
        reason = self._blocker(run, now)
        stale = reason == roll_check.SACHET_STALE and not run.maybe_executed
        if stale and not self._backlog_fits(run.due_utc):
            reason = BACKLOG_EXCEEDS_BIN  # never fill the bin with it: a nurse decides
        elif reason is not None and (stale or reason == roll_check.DISCARD_DECIDED):
            # a stale sachet, or one a person decided on: this one sachet to the bin
            if self._can_discard(now):
                self._send_discard(reason, now, actions)
                return
            if self._discard_refused():
                reason = DISCARD_REFUSED
        if reason is not None:
            fields: dict[str, object] = {}
            if reason == lifecycle.MIN_INTERVAL:
                fields["not_before_utc"] = utc_text_or_none(self._interval_release_utc())
            stuck = self._mirror.stuck
            if reason == DOSE_STUCK_IN_TRAY and stuck is not None:
                fields["stuck_slot_id"] = stuck.slot_id
                fields["stuck_dispense_id"] = stuck.dispense_id
                fields["stuck_reason"] = stuck.reason
            self._hold(run.slot_id, reason, now, actions, fields)
            if self._dispenser_empty():
                # the doses due behind it cannot be given either: each is named HIGH at its
                # own time (VKP 3.7), not only when its slot ends
                for later in self._slotbook.runs:
                    if later is not run and not later.travel and now.utc >= later.due_utc:
                        self._hold(later.slot_id, reason, now, actions)
            return
        if self._can_send(now):
            self._dispense(run, actions)

    def _hold_behind_tray(self, now: Now, actions: list[Action]) -> None:
        """A dose is in the tray: a slot held before for a reason of its own (a roll since
        replaced, the link since back) now waits for the tray. Its hold says so, else the centre
        reads the old reason until the tray empties (a nurse sent for a roll already loaded).
        A slot due while the dispenser is empty is held too, held before or not: emptying the
        tray will not give it (no sachet left), so a nurse must come now (HIGH, VKP 3.7, H4)."""
        for later in self._slotbook.runs:
            if later.in_tray or later.travel:
                continue
            if later.held_reason is None and (
                now.utc < later.due_utc
                # named held ahead: the centre reads it held, so its wait for the tray is said
                # (and the held light shows it), even with sachets left
                or not (self._dispenser_empty() or later.said_held)
            ):
                continue  # not due, or due and given once the tray empties: nothing to say
            reason = self._blocker(later, now)
            if reason is not None:
                self._hold(later.slot_id, reason, now, actions)  # (said once per reason)

    def _dispenser_busy(self) -> bool:
        """A cut is under way: a Dispense or Discard awaits its result, or a discarded sachet is
        on its way to the bin (the next SachetRead follows)."""
        if self._desk.discarding:
            return True
        return any(p.kind in ("dispense", "discard") for p in self._outbound.pending.values())

    def _dispense(self, run: SlotRun, actions: list[Action]) -> None:
        """Send the Dispense for `run` (a dispense id is taken once and persisted first by
        BeginDispense; a retry sends the same id). Only after every check passed."""
        assert self._desk.roll is not None
        if run.dispense_id is None:
            assert self._desk.sachet is not None
            dispense_id = self._outbound.take_dispense_id()
            run = lifecycle.begin(
                run, dispense_id, self._desk.sachet.index, self._desk.roll.roll_id
            )
            if any(r.slot_id == run.slot_id for r in self._slotbook.runs):
                self._slotbook.replace_run(run)
            else:
                self._slotbook.runs.append(run)
                self._slotbook.runs.sort(key=lambda r: (r.due_utc, r.slot_id))
            actions.append(
                BeginDispense(run.slot_id, dispense_id, self._desk.sachet.index, run.due_utc)
            )
        if run.maybe_executed and run.sachet_index is not None:
            index = run.sachet_index  # the sachet it may have cut (none may be at the reader)
        else:
            assert self._desk.sachet is not None
            index = self._desk.sachet.index
            if run.sachet_index != index:
                run = replace(run, sachet_index=index)  # its dose events must name this sachet
                self._slotbook.replace_run(run)
        assert run.dispense_id is not None
        command = Dispense(req_id=0, dispense_id=run.dispense_id, sachet_index=index)
        self._outbound.send(
            actions, "dispense", command, slot_id=run.slot_id, dispense_id=run.dispense_id
        )

    def _hold(
        self,
        slot_id: str,
        reason: str,
        now: Now,
        actions: list[Action],
        fields: dict[str, object] | None = None,
    ) -> None:
        for run in self._slotbook.runs:
            if run.slot_id != slot_id:
                continue
            # from the dose's time on (VKP 3.7: not handed over *at the planned time*); a dose
            # asked for early by TAKE is held LOW until then: a nurse may still come in time
            empty = self._dispenser_empty() and now.utc >= run.due_utc
            if run.held_reason == reason and (run.held_empty or not empty):
                return
            if reason == "awaiting_status":
                return  # transient: a Status is on its way
            self._slotbook.replace_run(
                replace(run, held_reason=reason, held_empty=run.held_empty or empty)
            )
            event: dict[str, object] = {"slot_id": slot_id, "reason": reason, **(fields or {})}
            if empty:
                event["dispenser_empty"] = True
            if not empty or run.held_empty:
                # said HIGH once for this slot: a later reason (a link drop ...) is no new alarm
                self._emit(actions, "dose_held", event)
                return
            # The dose cannot be given at its time because the dispenser is empty: a nurse must
            # bring a roll now, not when the slot ends an hour later (VKP 3.7). HIGH whatever
            # the first reason in the blocker's order: no roll can give it either way.
            actions.append(
                Emit(
                    catalogue.make_event(
                        "dose_held", event, priority=Priority.HIGH, vkp_code=catalogue.EMPTY_VKP
                    )
                )
            )
            return

    def _dispenser_empty(self) -> bool:
        """The loaded roll has no sachet left, or the dispenser said no roll is loaded (a Status
        since the link came up, or RollRemoved; right after a restart the roll is not known)."""
        roll = self._desk.roll
        if roll is None:
            return self._mirror.status_known
        return roll.remaining == 0

    def _can_discard(self, now: Now) -> bool:
        return (
            self._has(Feature.RETAIN_BIN)
            and self._can_send(now)
            and self._mirror.status_known
            and FaultCode.BIN_FULL not in self._mirror.faults
            and self._mirror.blocking_fault() is None
            and pause.active(self._pauses, now.utc) is None
            and not self._desk.discarding
            and not self._discard_refused()
            and not self._outbound.retains_owed()  # the tray first: its dose blocks every dose
            and self._bin_takes_discard()
            and not self.locked_down
        )

    def _discard_refused(self) -> bool:
        """The dispenser refused the sachet at the reader's Discard BUSY as often as it may be
        asked (until it reports its lid closed, or another sachet is at the reader)."""
        sachet = self._desk.sachet
        return sachet is not None and self._desk.busy_tries(sachet) >= DISCARD_BUSY_TRIES

    # --- the bin (SPEC 4.8) and the backlog of sachets for past dose times ------------------

    def _bin_room(self) -> int | None:
        """Free places in the bin after what is on its way (discards, retains sent or owed);
        None when the dispenser does not report its level."""
        if not self._has(Feature.BIN_LEVEL):
            return None
        owed = len(self._desk.discarding) + len(self._outbound.retaining)
        return self._mirror.bin_room(owed + len(self._outbound.retain_queue))

    def _bin_takes_discard(self) -> bool:
        """One more sachet fits beside the reserve (kept for a dose that must go back from the
        tray). A dispenser that does not report its level bounds a discard by refusing it
        (BIN_FULL); one that reports it but has not yet: wait for it."""
        if not self._has(Feature.BIN_LEVEL):
            return True
        room = self._bin_room()
        return room is not None and room - 1 >= self._cfg.bin_reserve

    def _backlog(self, until: datetime) -> int | None:
        """Sachets on the roll packed for dose times before `until`: the one at the reader and
        those behind it, counted on the schedule (one sachet per dose time) and capped by what
        is left on the roll. None: not known (no verified roll, or no readable sachet)."""
        roll, sachet = self._desk.roll, self._desk.sachet
        if roll is None or roll.unverified or self._schedule is None:
            return None
        if sachet is None:
            return None if roll.remaining else 0
        intended = roll_check.wire_time(sachet.intended_utc_s)
        if intended is None:
            return None
        tolerance = self._cfg.sachet_time_tolerance
        if intended >= until - tolerance:
            return 0  # the sachet at the reader is for `until` or later
        behind = self._slotbook.slots(self._schedule).between(intended - tolerance, until)
        return min(max(1, len(behind)), max(1, roll.remaining))

    def _plan_at(self, until: datetime) -> pause.ResumePlan:
        """What resuming (or giving the next dose) at `until` needs."""
        room = self._bin_room()
        capacity = self._mirror.bin_capacity if room is not None else None
        return pause.resume_plan(self._backlog(until), room, capacity, self._cfg.bin_reserve)

    def _backlog_fits(self, next_due: datetime) -> bool:
        """May the stale sachets before `next_due` go into the bin, one by one? Only if all of
        them fit: a bin filled halfway through a backlog would refuse every dose after it."""
        return self._plan_at(next_due).fits

    def _backlog_condition(self, now: Now, actions: list[Action]) -> None:
        """`backlog_needs_nurse` while the sachets for past dose times cannot be discarded: from
        `pause_end_notice` before a pause ends (so a nurse can come before the patient does), and
        after it as long as they block the next dose."""
        if self._desk.sachet is None:
            # nothing read at the reader (no roll, a roll just announced, a cut on its way):
            # not known right now, so the condition stays as it is
            return
        raised = self._alerts.is_raised("backlog_needs_nurse")
        plan: pause.ResumePlan | None = None
        pause_id: str | None = None
        active = pause.active(self._pauses, now.utc) if self._pauses else None
        if active is not None:
            end = active.end_utc
            if end is not None and now.utc >= end - self._cfg.pause_end_notice:
                plan, pause_id = self._plan_at(end), active.pause_id
        elif self._schedule is not None:
            waiting = [r.due_utc for r in self._slotbook.runs if not r.travel]
            upcoming = self._slotbook.next_scheduled(self._schedule) if not waiting else None
            next_due = min(waiting) if waiting else (upcoming.due_utc if upcoming else None)
            if next_due is not None:
                timing = roll_check.sachet_timing(
                    self._desk.sachet.intended_utc_s, next_due, self._cfg.sachet_time_tolerance
                )
                if timing is roll_check.SachetTiming.STALE:
                    plan = self._plan_at(next_due)
        if plan is not None and (
            plan.sachets_to_discard is None
            or (self._has(Feature.BIN_LEVEL) and self._mirror.bin_capacity is None)
        ):
            return  # not known right now (a roll just announced, a bin level on its way): as is
        present = plan is not None and not plan.fits
        if not present and not raised:
            return
        fields = None if plan is None else {"pause_id": pause_id, **plan.fields()}
        self._condition(actions, "backlog_needs_nurse", present, now, fields)

    def _discard_stale(self, now: Now, actions: list[Action]) -> None:
        """Idle: a sachet at the reader meant for a settled slot goes into the bin."""
        sachet, roll = self._desk.sachet, self._desk.roll
        if sachet is None or roll is None or roll.unverified or self._binding is None:
            return
        if self._outbound.pending or self._schedule is None or self._slotbook.cursor is None:
            return
        runs = self._slotbook.runs
        if runs and any(r.dispense_id is not None or r.in_tray for r in runs):
            return
        # Which slot the sachet is for comes first (pure questions, cheap or memoised): on
        # nearly every step it is the next dose's sachet, and then nothing else needs asking.
        unplanned = self._sachet_matches_a_slot(sachet) is False
        next_due: datetime | None = None
        if not unplanned:
            if runs:
                next_due = min(r.due_utc for r in runs)
            else:
                upcoming = self._slotbook.next_scheduled(self._schedule)
                next_due = upcoming.due_utc if upcoming else None
            if next_due is None:
                return
            timing = roll_check.sachet_timing(
                sachet.intended_utc_s, next_due, self._sachet_tolerance(next_due)
            )
            if timing is not roll_check.SachetTiming.STALE:
                return
        if self._desk.roll_foreign(self._binding) or not self._can_discard(now):
            return
        identity = roll_check.check_sachet_identity(
            sachet, self._binding.patient_ref, roll.roll_id, roll.next_index
        )
        if not identity.ok:
            return
        if unplanned:
            # a sachet the schedule lacks goes to the bin, whenever it comes, on a person's
            # decision only: _send_discard refuses it without one (hazard H6)
            self._send_discard(roll_check.DISCARD_DECIDED, now, actions)
            return
        assert next_due is not None  # (stale for it)
        if self._backlog_fits(next_due):
            self._send_discard("settled_slot", now, actions)

    def _sachet_tolerance(self, due_utc: datetime) -> timedelta:
        """The sachet-time tolerance for the slot due at `due_utc`: the configured one, strictly
        below half the schedule's smallest spacing and half the distance to the slots next to
        it (which a DST change can bring closer), so a sachet is given only for the slot it was
        packed for (SAFETY.md H2)."""
        configured = self._cfg.sachet_time_tolerance
        if self._schedule is None:
            return configured
        # a pure function of the schedule (and its slots) and the due time: memoised, as the
        # idle checks ask it for the same next slot on every step
        memo = self._tolerance_memo
        if memo is not None and memo[0] is self._schedule and memo[1] == due_utc:
            return memo[2]
        tolerance = self._capped_tolerance(self._schedule, configured, due_utc)
        self._tolerance_memo = (self._schedule, due_utc, tolerance)
        return tolerance

    def _capped_tolerance(
        self, schedule: Schedule, configured: timedelta, due_utc: datetime
    ) -> timedelta:
        spacing = schedule.smallest_spacing
        tolerance = roll_check.capped_tolerance(configured, [] if spacing is None else [spacing])
        # only a neighbour nearer than twice the tolerance can lower it further
        reach = 2 * tolerance
        near = self._slotbook.slots(schedule).between(due_utc - reach, due_utc + reach + _EPSILON)
        return roll_check.capped_tolerance(tolerance, [abs(s.due_utc - due_utc) for s in near])

    def _slots_for_sachet(self, sachet: SachetRead) -> list[Slot] | None:
        """The dose times of the schedule the sachet is packed for (within the tolerance),
        settled or to come; None when that cannot be told (no time on the label, no schedule).
        Memoised on the sachet and the schedule (asked on every idle step)."""
        memo = self._sachet_memo
        if memo is not None and memo[0] is sachet and memo[1] is self._schedule:
            return memo[2]
        found: list[Slot] | None = None
        intended = roll_check.wire_time(sachet.intended_utc_s)
        if intended is not None and self._schedule is not None:
            tolerance = self._cfg.sachet_time_tolerance
            start, end = intended - tolerance, intended + tolerance + _EPSILON
            window = self._slotbook.slots(self._schedule)
            if window.covers(start, end):
                found = window.between(start, end)
            else:
                # far from now (an old roll): ask the schedule, leave the window where it works
                found = list(self._schedule.slots_between(start, end))
        self._sachet_memo = (sachet, self._schedule, found)
        return found

    def _sachet_matches_a_slot(self, sachet: SachetRead) -> bool | None:
        """Is the sachet packed for some dose time of the schedule? None: cannot be told."""
        slots = self._slots_for_sachet(sachet)
        return None if slots is None else bool(slots)

    def _send_discard(self, reason: str, now: Now, actions: list[Action]) -> None:
        sachet = self._desk.sachet
        assert sachet is not None
        unplanned = self._sachet_matches_a_slot(sachet) is False
        decision = self._desk.decision_for(sachet) if unplanned else None
        if unplanned and decision is None:
            # the one place a Discard is built: never for a sachet the schedule lacks without
            # a person's decision (hazard H6); _review_sachet holds it with a latched alert
            return
        if self._outbound.ids_exhausted():
            return  # a Discard needs an id too; the slot is held with DISPENSE_IDS_EXHAUSTED
        dispense_id = self._outbound.take_dispense_id()
        self._desk.discarding[dispense_id] = Discarding(
            sachet.index, sachet.intended_utc_s, reason, decision
        )
        command = Discard(req_id=0, dispense_id=dispense_id, sachet_index=sachet.index)
        self._outbound.send(actions, "discard", command, dispense_id=dispense_id)

    # --- plan mismatch: a sachet the schedule lacks waits for a person (hazard H6) -------------

    def _unplanned_at_reader(self) -> SachetRead | None:
        """The sachet at the reader if it is this patient's, next on the loaded roll, and packed
        for no dose time of the schedule."""
        sachet, roll = self._desk.sachet, self._desk.roll
        if sachet is None or roll is None or roll.unverified or self._binding is None:
            return None
        if self._desk.roll_foreign(self._binding):
            return None
        identity = roll_check.check_sachet_identity(
            sachet, self._binding.patient_ref, roll.roll_id, roll.next_index
        )
        if not identity.ok or self._sachet_matches_a_slot(sachet) is not False:
            return None
        return sachet

    def _review_sachet(
        self, now: Now, actions: list[Action], replaced: Schedule | None = None
    ) -> None:
        """Hold a sachet the schedule lacks with a latched HIGH alert (VKP 3.22: check the plan)
        until a person decides; end the hold when the decision is made otherwise: a schedule
        that has its time, or another sachet at the reader (the roll changed on site)."""
        sachet = self._desk.sachet
        unplanned = self._unplanned_at_reader()
        hold = self._desk.unplanned
        if hold is not None and sachet is not None:
            if (sachet.roll_id, sachet.index) != (hold.roll_id, hold.sachet_index):
                self._end_hold(hold, "roll_changed", now, actions)
            elif self._sachet_matches_a_slot(sachet) is True:
                self._end_hold(hold, "schedule_updated", now, actions)
                if replaced is not None:
                    self._settle_passed_slots(hold, replaced, now, actions)
        if unplanned is None or self._desk.unplanned is not None:
            return  # nothing to hold, or still waiting for a decision on the held one
        if self._desk.decision_for(unplanned) is not None:
            return  # decided already (the whole roll): it goes to the bin
        fields: dict[str, object] = {
            "roll_id": unplanned.roll_id,
            "sachet_index": unplanned.index,
            "intended_utc": _wire_iso(unplanned.intended_utc_s),
            "intended_local": self._local_wire_iso(unplanned.intended_utc_s),
        }
        event = self._alerts.latch("plan_mismatch", fields, now.utc.isoformat())
        actions.append(Emit(event))
        assert event.alert_id is not None
        self._desk.unplanned = UnplannedHold(
            unplanned.roll_id, unplanned.index, unplanned.intended_utc_s, event.alert_id
        )

    def _end_hold(
        self, hold: UnplannedHold, decision: str, now: Now, actions: list[Action]
    ) -> None:
        """The hold ends without a discard decision (that is `_decide_discard`)."""
        self._desk.unplanned = None
        self._alerts.resolve("plan_mismatch")
        fields: dict[str, object] = {
            "alert_id": hold.alert_id,
            "decision": decision,
            "roll_id": hold.roll_id,
            "sachet_index": hold.sachet_index,
            "by": None,
            "source": None,
            "schedule_version": self._schedule_version,
        }
        self._emit(actions, "plan_mismatch_decided", fields)

    def _settle_passed_slots(
        self, hold: UnplannedHold, replaced: Schedule, now: Now, actions: list[Action]
    ) -> None:
        """The new schedule has the held sachet's time. Its slots from that time up to the
        cursor are new (the old schedule lacked them) and passed while undecided: nothing could
        be cut to reach their sachets, which wait behind the held one on the roll, and the
        cursor will not pick them up. Each gets its outcome now, so that every sachet later
        discarded as a leftover belongs to a settled slot and no slot is left without one.
        A slot due before the settled records are complete (`settled_known_from`: older ones
        were pruned) is left alone: it may have been settled under an older schedule, and a
        second outcome is refused by the ledger."""
        cursor, schedule = self._slotbook.cursor, self._schedule
        intended = roll_check.wire_time(hold.intended_utc_s)
        if cursor is None or schedule is None or intended is None:
            return
        start = intended - self._cfg.sachet_time_tolerance  # (from the cursor on: picked up)
        known_from = self._slotbook.settled_known_from
        if known_from is not None:
            start = max(start, known_from)
        known = {slot.slot_id for slot in replaced.slots_between(start, cursor)}
        running = {r.slot_id for r in self._slotbook.runs}
        for slot in schedule.slots_between(start, cursor):
            if slot.slot_id in known or slot.slot_id in running:
                continue  # picked up (and settled or running) under the old schedule
            if self._slotbook.is_settled(slot.slot_id):
                continue
            # named HIGH ahead while the clock was untrusted and the dispenser empty: said once
            named = slot.slot_id in self._slotbook.named_ahead
            self._slotbook.named_ahead.discard(slot.slot_id)
            said = slot.slot_id in self._slotbook.said_ahead
            self._slotbook.said_ahead.discard(slot.slot_id)
            run = SlotRun(
                slot.slot_id,
                slot.due_utc,
                self._local_iso(slot.due_utc),
                held_empty=named and self._dispenser_empty(),
                said_held=said,
            )
            window = pause.covering(self._pauses, slot.due_utc)
            if window is not None:
                self._settle(run, Outcome.SKIPPED_PAUSED, window.pause_id, now, actions)
            else:
                self._settle(run, Outcome.REFUSED, roll_check.PLAN_MISMATCH, now, actions)

    def _check_discard_decision(self, decision: DiscardUnplanned) -> None:
        """Refuse a decision that does not fit what is loaded (nothing changes)."""
        roll = self._desk.roll
        if not decision.by:
            raise EngineInputError("a discard decision needs who decided", "invalid_command")
        if roll is None or roll.unverified or roll.roll_id != decision.roll_id:
            loaded = "no roll" if roll is None or roll.unverified else f"roll {roll.roll_id!r}"
            raise EngineInputError(
                f"roll {decision.roll_id!r} is not the roll loaded ({loaded} is)",
                "roll_not_loaded",
            )
        if self._desk.roll_foreign(self._binding):
            raise EngineInputError(
                "the loaded roll is another patient's: it is never cut, not even into the bin",
                "foreign_roll",
            )
        if decision.sachet_index is None:
            return
        sachet = self._desk.sachet
        if sachet is None or (sachet.roll_id, sachet.index) != (
            decision.roll_id,
            decision.sachet_index,
        ):
            at = "none" if sachet is None else f"index {sachet.index}"
            raise EngineInputError(
                f"sachet {decision.sachet_index} is not at the reader ({at} is)",
                "sachet_not_at_reader",
            )
        if self._unplanned_at_reader() is None:
            raise EngineInputError(
                f"sachet {decision.sachet_index} is packed for a dose time of the schedule (or "
                "is not this roll's next sachet): it is not discarded on this command",
                "sachet_planned",
            )

    def _decide_discard(self, decision: DiscardUnplanned, actions: list[Action]) -> None:
        made = DiscardDecision(
            decision.roll_id, decision.sachet_index, decision.by, decision.source
        )
        kept = tuple(
            d
            for d in self._desk.decisions
            if not (d.roll_id == made.roll_id and made.sachet_index in (None, d.sachet_index))
        )
        self._desk.decisions = (*kept, made)
        hold = self._desk.unplanned
        alert_id = None
        if hold is not None and self._covers(made, hold):
            alert_id = hold.alert_id
            self._desk.unplanned = None
            self._alerts.resolve("plan_mismatch")
        self._emit(
            actions,
            "plan_mismatch_decided",
            {
                "alert_id": alert_id,
                "decision": "discard",
                "roll_id": made.roll_id,
                "sachet_index": made.sachet_index,
                "by": made.by,
                "source": made.source,
                "schedule_version": self._schedule_version,
            },
        )

    @staticmethod
    def _covers(decision: DiscardDecision, hold: UnplannedHold) -> bool:
        return decision.roll_id == hold.roll_id and decision.sachet_index in (
            None,
            hold.sachet_index,
        )

    def signal_pattern(self, now: Now) -> AlertPattern:
        """The pattern the unit's own buzzer and lights show (drivers/gpio_panel.py): what the
        dispenser is asked to show, except that HELD stays HELD (the panel has no feature bits)."""
        return self._pattern(now, held_supported=True)

    def dose_held(self) -> bool:
        """A due dose is held (not given, the engine knows why): the panel's held light."""
        return any(r.held_reason is not None and not r.in_tray for r in self._slotbook.runs)

    def _desired_pattern(self, now: Now, fault: bool | None = None) -> AlertPattern:
        return self._pattern(now, held_supported=self._has(Feature.HELD_PATTERN), fault=fault)

    def _pattern(
        self, now: Now, *, held_supported: bool, fault: bool | None = None
    ) -> AlertPattern:
        """`fault`: a foreign roll or the unit locked down, when the caller knows it already."""
        # an untrusted clock holds every dose and hides which are due: in doubt, one is held
        holding_all = (
            now.trust is TimeTrust.UNTRUSTED
            and self._binding is not None
            and self._schedule is not None
        )
        if fault is None:
            fault = self._desk.roll_foreign(self._binding) or self.locked_down
        return dispenser_mirror.desired_pattern(
            self._mirror.silenced_until is not None,
            fault,
            self._slotbook.runs,
            holding_all,
            held_supported,
        )

    def _keep_alive(self, now: Now, actions: list[Action]) -> None:
        """Feed the dispenser's agent watchdog (SPEC 4.7) when due. Called on a Tick only: the
        timer loop that decides doses feeds it, so a hung loop (or a dead Pi) starves it. Not held
        back by `command_retry`: a watchdog starved by a failed command would alarm."""
        due = self._mirror.keepalive_due
        if due is None or now.mono < due or self._keepalive_s is None or not self._mirror.link_up:
            return
        self._mirror.keepalive_due = now.mono + self._keepalive_s / KEEPALIVES_PER_TIMEOUT
        command = KeepAlive(req_id=0, timeout_s=round(self._keepalive_s))
        self._outbound.send(actions, "keep_alive", command)

    def _keep_alive_result(self, reply: Message | None, actions: list[Action]) -> None:
        """No reply: the next KeepAlive is due within a third of the timeout anyway, and other
        commands are not held back. A refusal is reported once per link (every third of the
        timeout would be a flood), and KeepAlives go on: a refused frame is still heard, so a
        watchdog armed before keeps being fed instead of sounding a false alarm."""
        if (
            not isinstance(reply, CommandResult)
            or reply.result in (ResultCode.OK, ResultCode.BUSY)
            or self._mirror.keepalive_refused
        ):
            return
        self._mirror.keepalive_refused = True
        self._emit(
            actions,
            "dispenser_command_failed",
            {"command": "keep_alive", "result": reply.result.name.lower(), "detail": reply.detail},
        )

    def _sync_dispenser(self, now: Now, actions: list[Action]) -> None:
        """Send what the dispenser should have and (as far as we know) has not."""
        if not self._can_send(now):
            return
        mirror = self._mirror
        locked = self._desk.roll_foreign(self._binding) or self.locked_down
        pattern = self._desired_pattern(now, fault=locked)  # FAULT exactly while locked
        if dispenser_mirror.in_sync(
            mirror.status_known,
            mirror.lock_actual,
            mirror.locked_by_agent,
            mirror.pattern_sent,
            locked,
            pattern,
            self._outbound.retain_queue,
        ):
            return  # the common case: nothing to send (plan_sync would plan nothing)
        known = KnownDispenser(
            status_known=self._mirror.status_known,
            lock_actual=self._mirror.lock_actual,
            locked_by_agent=self._mirror.locked_by_agent,
            pattern_sent=self._mirror.pattern_sent,
            capabilities=self._mirror.capabilities,
            bin_full=FaultCode.BIN_FULL in self._mirror.faults,
            in_flight=self._outbound.in_flight(),
            bin_room=(
                self._mirror.bin_room(len(self._desk.discarding) + len(self._outbound.retaining))
                if self._has(Feature.BIN_LEVEL)
                else None
            ),
        )
        wanted = WantedDispenser(
            locked=locked, pattern=pattern, retains=tuple(self._outbound.retain_queue)
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
        # min(the open slots' due times, then the cursor): the first earliest, as min() picks
        # it, without building a list on every step
        floor: datetime | None = None
        for run in self._slotbook.runs:
            if floor is None or run.due_utc < floor:
                floor = run.due_utc
        cursor = self._slotbook.cursor
        if floor is None or cursor < floor:
            floor = cursor
        if self._slotbook.horizon is None or floor > self._slotbook.horizon:
            self._slotbook.horizon = floor
            # a schedule update during a plan hold settles the slots that passed behind it
            # (_settle_passed_slots); settled records are kept for a while (and back to the held
            # sachet's time) so that no slot is settled twice: schedule A, then one without A's
            # time (the sachet of A's last slot is held), then A again
            keep_from = floor - _SETTLED_RECORDS_KEPT
            hold = self._desk.unplanned
            intended = None if hold is None else roll_check.wire_time(hold.intended_utc_s)
            if intended is not None:
                keep_from = min(keep_from, intended - self._cfg.sachet_time_tolerance)
            # and back to the loaded roll's first sachet: any of its sachets can still come to
            # the reader (after a pause, say) and be held for a plan decision (bounded)
            roll = self._desk.roll
            first = None if roll is None else roll_check.wire_time(roll.first_dose_utc_s)
            if first is not None:
                first = max(first, floor - _SETTLED_RECORDS_MAX)
                keep_from = min(keep_from, first - self._cfg.sachet_time_tolerance)
            kept = [s for s in self._slotbook.settled if s.due_utc >= keep_from]
            if len(kept) != len(self._slotbook.settled):
                known = self._slotbook.settled_known_from
                self._slotbook.settled_known_from = (
                    keep_from if known is None else max(known, keep_from)
                )
            self._slotbook.settled = kept
            self._pauses = pause.prune(self._pauses, floor)

    # --- helpers ------------------------------------------------------------------------------

    def _has(self, feature: Feature) -> bool:
        # (the mirror's `has`, one call less: asked several times on every step)
        return dispenser_mirror.has_feature(self._mirror.capabilities, feature)

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
        events = self._alerts.condition(kind, present, now.mono, fields)
        if events:  # asked several times on every step, nearly always without news
            actions.extend(Emit(e) for e in events)

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
        actions.append(RecordOutcome(run.slot_id, outcome, reason))
        fields = lifecycle.outcome_fields(run, outcome, reason, taken_at)
        if outcome in (Outcome.TAKEN, Outcome.SKIPPED_PAUSED, Outcome.DISPENSED_FOR_TRAVEL):
            if run.dispense_id is not None:
                self._outbound.remember_settled(
                    run.dispense_id,
                    run.slot_id,
                    run.sachet_index,
                    # a dose taken (or packed for a trip) is out of the tray; one the pause
                    # caught may still lie there
                    in_tray=outcome is Outcome.SKIPPED_PAUSED,
                    taken=outcome is not Outcome.SKIPPED_PAUSED,
                    presented=run.phase is Phase.PRESENTED,
                )
            actions.append(Emit(catalogue.make_event("slot_outcome", fields)))
            return
        if outcome is Outcome.TAKEN_UNCONFIRMED:
            # no alarm, but a person confirms with the patient and acknowledges it
            event = self._alerts.missed_outcome(
                f"dose_{outcome.value}", fields, now.utc.isoformat(), None, Priority.MEDIUM
            )
        else:
            event = self._alerts.missed_outcome(
                f"dose_{outcome.value}", fields, now.utc.isoformat(), vkp or catalogue.MISSED_VKP
            )
        if run.dispense_id is not None:
            self._outbound.remember_settled(
                run.dispense_id,
                run.slot_id,
                run.sachet_index,
                event.alert_id,
                # taken unconfirmed: the tray was found empty
                in_tray=outcome is not Outcome.TAKEN_UNCONFIRMED,
                presented=run.phase is Phase.PRESENTED,
            )
        actions.append(Emit(event))


def _pause_fields(window: PauseWindow) -> dict[str, object]:
    return {
        "pause_id": window.pause_id,
        "start_utc": utc_text(window.start_utc),
        "end_utc": utc_text_or_none(window.end_utc),
        "reason": window.reason,
        "take_along": window.take_along,
    }


def _travel_waits(reason: str | None) -> bool:
    """A hold the travel pre-dispense waits out (it passes, or the trip ends) rather than gives
    up on: the dispenser cannot cut right now."""
    return reason is not None and (reason in TRAVEL_WAITS_ON or reason.startswith("fault_"))


def _travel_collect_by(run: SlotRun, config: EngineConfig) -> float | None:
    """Monotonic instant a travel sachet must have been lifted out by (None: not dispensed)."""
    since = run.presented_mono if run.presented_mono is not None else run.confirmed_mono
    return None if since is None else since + config.travel_collect_timeout.total_seconds()


def _wire_iso(seconds: int) -> str | None:
    return utc_text_or_none(roll_check.wire_time(seconds))
