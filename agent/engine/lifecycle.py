"""The per-slot state machine.

    WAITING ──(dispensable)──> DISPENSING ──(DosePresented)──> PRESENTED ──(DoseTaken)──> taken
       │                           │                              └─(mono grace over)──> missed
       └──(due + undispensed_deadline on wall time)──> missed "not_dispensed:<why>" | refused <why>
    paused at due time ──> skipped_paused

A slot enters WAITING at its due time (or earlier via the TAKE button inside the early window).
Once a dispense id is assigned (DISPENSING) the slot is never given another one. Timers of a
presented dose (reminders, escalation, missed) run on the monotonic clock only.

After a restart an open slot comes back as it was stored (docs/engine.md, "Restart policy"): a
presented one is PRESENTED but `unreconciled` (as is a presented one after a link drop) until the
dispenser's Status says whether the tray still holds it; one begun but never seen presented is
DISPENSING and `maybe_executed`, so its Dispense is sent again with the same id and the
dispenser's idempotency answers whether it was cut.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from agent.clock import utc_text, utc_text_or_none
from agent.engine import roll_check
from agent.engine.types import EngineConfig, EscalationStep, Outcome
from protocol.messages import AlertPattern


class Phase(enum.StrEnum):
    WAITING = "waiting"  # due, not yet sent to the dispenser
    DISPENSING = "dispensing"  # dispense id assigned; presentation not yet reported
    PRESENTED = "presented"  # in the tray


# Reasons for which the agent itself refused to give the dose (outcome `refused`); any other
# reason a slot could not be dispensed makes it `missed` with "not_dispensed:<reason>".
REFUSAL_REASONS = frozenset(
    {
        roll_check.FOREIGN_ROLL,
        roll_check.NO_BINDING,
        roll_check.ROLL_EXPIRED,
        roll_check.ROLL_PERIOD_PASSED,
        roll_check.ROLL_LABEL_INVALID,
        roll_check.SACHET_FOREIGN,
        roll_check.SACHET_WRONG_ROLL,
        roll_check.SACHET_OUT_OF_ORDER,
        roll_check.SACHET_STALE,
        roll_check.SACHET_TIME_MISMATCH,
        roll_check.SACHET_TIME_UNKNOWN,
        roll_check.PLAN_MISMATCH,
        "roll_unverified",
        "clock_untrusted",
        "min_interval",
    }
)

NOT_TAKEN = "not_taken"
NOT_PRESENTED = "not_presented"
RESTART_UNKNOWN = "restart_unknown"  # open at a restart, the dispenser never said where it is
TRAY_UNKNOWN = "tray_unknown"  # grace over while the link is down since the presentation
LATE = "late"
# taken_unconfirmed: presented, then the agent could not hear the dispenser (a restart, a link
# drop: its DoseTaken may be lost), and the next Status found the tray empty
TRAY_EMPTIED_UNSEEN = "tray_emptied_unseen"
# missed: the dispenser executed the dispense id (ALREADY_DONE) but the agent never saw the dose
# presented, and it is not in the tray: perhaps taken, perhaps never given; in doubt, not given
DISPENSE_UNCONFIRMED = "dispense_unconfirmed"
# missed: ALREADY_DONE for a dispense id no Dispense of this unit can have executed: the
# dispenser remembers ids this unit never used (nothing was cut)
DISPENSE_ID_CONFLICT = "dispense_id_conflict"
MIN_INTERVAL = "min_interval"  # held: too soon after the last intake (SAFETY.md H3)


@dataclass(frozen=True, slots=True)
class SlotRun:
    """One slot from the moment it is due until its outcome."""

    slot_id: str
    due_utc: datetime
    due_local: str  # ISO local time with offset, for people reading events
    phase: Phase = Phase.WAITING
    dispense_id: int | None = None
    sachet_index: int | None = None
    roll_id: str | None = None
    held_reason: str | None = None  # why it could not be dispensed (last seen)
    held_empty: bool = False  # held while the dispenser was empty: said HIGH once (VKP 3.7)
    # named held ahead (clock untrusted, dispenser empty): the centre reads it held since, so
    # a dose due behind the tray says it waits for it, even with a roll loaded meanwhile
    said_held: bool = False
    confirmed_mono: float | None = None  # dispenser accepted the Dispense (OK / ALREADY_DONE)
    presented_mono: float | None = None
    presented_at: datetime | None = None
    pattern: AlertPattern = AlertPattern.REMINDER
    reminders_sent: int = 0
    escalations_done: int = 0
    # escalation steps count from here (None: `presented_mono`); after a restart, the
    # presentation's wall time on the new monotonic clock, so a step keeps its time (grace does
    # not: it starts again at the restart)
    escalate_from_mono: float | None = None
    restored: bool = False  # open at a restart: fresh grace window from the restart
    # pre-dispensed for a trip (travel pause): no reminders, escalation or missed alarm; the
    # engine gives it `travel_collect_timeout` to be lifted out (docs/engine.md, "Travel")
    travel: bool = False
    # presented, and since then a restart or link drop may have lost its DoseTaken: the next
    # Status says whether it is still in the tray
    unreconciled: bool = False
    maybe_executed: bool = False  # a Dispense of this id may have been cut unseen
    unseen_done: bool = False  # ALREADY_DONE, never seen presented: a Status decides

    @property
    def in_tray(self) -> bool:
        """A dose is (or may be) in the tray: no other slot may be dispensed."""
        return self.phase is Phase.PRESENTED or self.confirmed_mono is not None

    @property
    def awaiting_dispense(self) -> bool:
        return not self.in_tray


def settle_deadline(run: SlotRun, config: EngineConfig) -> datetime:
    """Wall instant after which a slot not yet in the tray ends without being given."""
    return run.due_utc + config.undispensed_deadline


def unsent_outcome(reason: str) -> tuple[Outcome, str]:
    """Outcome of a slot that was never presented, from the reason it was held."""
    if reason in REFUSAL_REASONS:
        return Outcome.REFUSED, reason
    return Outcome.MISSED, f"not_dispensed:{reason}"


def begin(run: SlotRun, dispense_id: int, sachet_index: int, roll_id: str) -> SlotRun:
    if run.dispense_id is not None:
        raise ValueError(f"slot {run.slot_id} already has dispense id {run.dispense_id}")
    return replace(
        run,
        phase=Phase.DISPENSING,
        dispense_id=dispense_id,
        sachet_index=sachet_index,
        roll_id=roll_id,
        held_reason=None,
        held_empty=False,
    )


def confirmed(run: SlotRun, now_mono: float) -> SlotRun:
    if run.confirmed_mono is not None:
        return run
    return replace(run, confirmed_mono=now_mono)


def presented(run: SlotRun, now_mono: float, presented_at: datetime | None) -> SlotRun:
    return replace(
        run,
        phase=Phase.PRESENTED,
        presented_mono=now_mono,
        presented_at=presented_at,
        pattern=AlertPattern.REMINDER,
        reminders_sent=0,
        escalations_done=0,
        escalate_from_mono=None,
        maybe_executed=False,
        unseen_done=False,
        unreconciled=False,
    )


def restored(
    run: SlotRun,
    now_mono: float,
    presented_at: datetime | None,
    *,
    config: EngineConfig,
    since_presented: timedelta | None,
    escalations_done: int = 0,
) -> SlotRun:
    """An open slot found at restart. Presented before: it may still be in the tray (grace
    starts now; the first Status reconciles it). Never seen presented: its Dispense may or may
    not have been cut, so it is sent again with the same id (`maybe_executed`).

    A presented dose keeps its escalation: the steps already taken (stored) stay taken, so a
    patient called urgently is never called less urgently because the agent restarted; the
    next steps keep their time from the presentation (`since_presented`, by the wall clock; one
    stepped back only delays them, never undoes a stored step). None (the clock is not trusted):
    they count from the restart, late rather than early (an early step would tell the centre
    the dose was not taken before its time)."""
    if presented_at is None:
        return replace(run, phase=Phase.DISPENSING, restored=True, maybe_executed=True)
    fresh = replace(presented(run, now_mono, presented_at), restored=True, unreconciled=True)
    steps = _steps(config)
    done = min(max(escalations_done, 0), len(steps))
    since = 0.0 if since_presented is None else max(_seconds(since_presented), 0.0)
    return replace(
        fresh,
        escalations_done=done,
        pattern=steps[done - 1].pattern if done else fresh.pattern,
        escalate_from_mono=now_mono - since,
    )


_steps_memo: tuple[EngineConfig, tuple[EscalationStep, ...]] | None = None


def _steps(config: EngineConfig) -> tuple[EscalationStep, ...]:
    # sorted once per configuration (an engine has one; asked for every dose in the tray on
    # every step); the memo holds the config, so `is` cannot match a new one at an old address
    global _steps_memo
    memo = _steps_memo
    if memo is None or memo[0] is not config:
        memo = _steps_memo = (config, tuple(sorted(config.escalation, key=lambda s: s.after)))
    return memo[1]


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


def next_timer(run: SlotRun, config: EngineConfig) -> float | None:
    """Monotonic instant of the next timed decision for a dose in (or maybe in) the tray."""
    if run.phase is Phase.PRESENTED and run.presented_mono is not None:
        start = run.presented_mono
        grace = _seconds(config.grace)
        instants = [start + grace]
        steps = _steps(config)
        if run.escalations_done < len(steps):
            escalate_from = start if run.escalate_from_mono is None else run.escalate_from_mono
            instants.append(escalate_from + _seconds(steps[run.escalations_done].after))
        repeat = _seconds(config.reminder_repeat)
        if repeat > 0:
            instants.append(start + repeat * (run.reminders_sent + 1))
        return min(instants)
    if run.confirmed_mono is not None:
        return run.confirmed_mono + _seconds(config.grace)
    return None


@dataclass(frozen=True, slots=True)
class TimerResult:
    run: SlotRun
    escalated: tuple[EscalationStep, ...] = ()
    remind: bool = False  # re-sound the current pattern
    missed: str | None = None  # reason, when the dose is now missed


def on_time(run: SlotRun, config: EngineConfig, now_mono: float) -> TimerResult:
    """Apply every timed decision due at `now_mono` (idempotent: nothing twice)."""
    if run.phase is not Phase.PRESENTED or run.presented_mono is None:
        if run.confirmed_mono is not None and now_mono >= run.confirmed_mono + _seconds(
            config.grace
        ):
            return TimerResult(
                run, missed=DISPENSE_UNCONFIRMED if run.unseen_done else NOT_PRESENTED
            )
        return TimerResult(run)
    # Each instant is compared as the same sum `next_timer` announced (start + offset): at that
    # deadline `now - start >= offset` can be false by one float ulp, and the decision would
    # never be taken while the deadline stays where it is.
    start = run.presented_mono
    if now_mono >= start + _seconds(config.grace):
        if not run.unreconciled:
            return TimerResult(run, missed=NOT_TAKEN)
        # not heard from the dispenser since a restart or link drop: perhaps taken (in doubt,
        # not given, HIGH); if the tray turns out empty, its Retain says so (dose_not_in_tray)
        return TimerResult(run, missed=RESTART_UNKNOWN if run.restored else TRAY_UNKNOWN)
    steps = _steps(config)
    escalated: list[EscalationStep] = []
    pattern = run.pattern
    done = run.escalations_done
    escalate_from = start if run.escalate_from_mono is None else run.escalate_from_mono
    while done < len(steps) and now_mono >= escalate_from + _seconds(steps[done].after):
        escalated.append(steps[done])
        pattern = steps[done].pattern
        done += 1
    repeat = _seconds(config.reminder_repeat)
    reminders = int((now_mono - start) // repeat) if repeat > 0 else 0
    if repeat > 0 and now_mono >= start + repeat * (reminders + 1):
        reminders += 1  # the same rounding, for the reminder `next_timer` announced
    remind = reminders > run.reminders_sent or bool(escalated)
    if not remind:
        return TimerResult(run)  # nothing due yet: no copy (this runs on every engine step)
    updated = replace(
        run,
        pattern=pattern,
        escalations_done=done,
        reminders_sent=max(reminders, run.reminders_sent),
    )
    return TimerResult(updated, tuple(escalated), remind)


def iso(value: datetime | None) -> str | None:
    return utc_text_or_none(value)


def outcome_fields(
    run: SlotRun, outcome: Outcome, reason: str | None, taken_at: datetime | None
) -> dict[str, object]:
    """The `slot_outcome` event's fields (JSON-safe)."""
    return {
        "slot_id": run.slot_id,
        "due_local": run.due_local,
        "due_utc": utc_text(run.due_utc),
        "outcome": outcome.value,
        "reason": reason,
        "dispense_id": run.dispense_id,
        "sachet_index": run.sachet_index,
        "roll_id": run.roll_id,
        "presented_at": iso(run.presented_at),
        "taken_at": iso(taken_at),
    }
