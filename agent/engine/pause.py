"""Temporary stop (hospital, respite, travel): which slots a set of pause windows covers, how long
the unit has been paused, and what a resume will need.

A window covers slots due in [start, end); an open end lasts until resumed. Paused slots end
`skipped_paused` at their due time, so no missed-dose alarm is raised while the patient is away.
No pause lasts longer than a maximum: a longer one is refused, and an open-ended one (or a chain
of windows) that runs longer is overdue (docs/engine.md, "Pause").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from agent.clock import utc_text
from agent.engine.types import PAUSE_REASONS, EngineInputError, PauseWindow


def covers(window: PauseWindow, due_utc: datetime) -> bool:
    return window.start_utc <= due_utc and (window.end_utc is None or due_utc < window.end_utc)


def covering(pauses: Iterable[PauseWindow], due_utc: datetime) -> PauseWindow | None:
    """The first window that covers a slot due at `due_utc`, if any."""
    for window in pauses:
        if covers(window, due_utc):
            return window
    return None


def active(pauses: Iterable[PauseWindow], now_utc: datetime) -> PauseWindow | None:
    """The window in force now (same rule as for a slot due now)."""
    return covering(pauses, now_utc)


# Pause times lie before year 3000, as every other time the engine keeps (state.py, roll labels):
# the engine adds reminder periods and days to them, which must not overflow `datetime`.
LATEST_PAUSE_TIME = datetime(3000, 1, 1, tzinfo=UTC)


def _check_aware(value: datetime, name: str) -> None:
    if value.utcoffset() is None:
        raise EngineInputError(f"{name} must be timezone-aware, got {value!r}")
    if value >= LATEST_PAUSE_TIME:
        raise EngineInputError(f"{name} {value.isoformat()} is not before year 3000")


def days(delta: timedelta) -> str:
    """A duration for people: "30 days", "1.5 days"."""
    return f"{delta / timedelta(days=1):g} days"


def start(
    pauses: tuple[PauseWindow, ...], window: PauseWindow, max_duration: timedelta
) -> tuple[PauseWindow, ...]:
    """Add a pause window; raises EngineInputError for an inconsistent one."""
    if not window.pause_id:
        raise EngineInputError("a pause needs a pause_id")
    if window.reason not in PAUSE_REASONS:
        raise EngineInputError(
            f"pause reason {window.reason!r}: expected one of {', '.join(PAUSE_REASONS)}"
        )
    _check_aware(window.start_utc, "pause start")
    if window.end_utc is not None:
        _check_aware(window.end_utc, "pause end")
        if window.end_utc <= window.start_utc:
            raise EngineInputError(
                f"pause {window.pause_id!r} ends ({utc_text(window.end_utc)}) before it starts "
                f"({utc_text(window.start_utc)})"
            )
        if window.end_utc - window.start_utc > max_duration:
            raise EngineInputError(
                f"pause {window.pause_id!r} lasts {days(window.end_utc - window.start_utc)}; "
                f"the maximum is {days(max_duration)} (set an end within it, or pause open-ended "
                "and resume)"
            )
    if window.take_along and (window.reason != "travel" or window.end_utc is None):
        raise EngineInputError(
            f"pause {window.pause_id!r}: take_along needs reason travel and an end (the trip's "
            "sachets are dispensed for the period it covers)"
        )
    if window.reminders_sent or window.end_notice_sent or window.travel_dispensed:
        raise EngineInputError("a new pause carries no bookkeeping")
    if any(p.pause_id == window.pause_id for p in pauses):
        raise EngineInputError(f"pause id {window.pause_id!r} already exists")
    return tuple(sorted((*pauses, window), key=lambda p: (p.start_utc, p.pause_id)))


def end(
    pauses: tuple[PauseWindow, ...], pause_id: str | None, now_utc: datetime
) -> tuple[tuple[PauseWindow, ...], PauseWindow]:
    """End a pause now (by id, or whichever is active). A pause that has not started yet is
    cancelled. Returns (pauses, the window as ended, or as it was planned when cancelled before
    it began); raises EngineInputError if none matches."""
    if pause_id is None:
        target = active(pauses, now_utc)
        if target is None:
            raise EngineInputError("no pause is active")
    else:
        found = [p for p in pauses if p.pause_id == pause_id]
        if not found:
            raise EngineInputError(f"no pause with id {pause_id!r}")
        target = found[0]
    rest = tuple(p for p in pauses if p.pause_id != target.pause_id)
    if target.start_utc >= now_utc:
        return rest, target  # cancelled before it began
    if target.end_utc is not None and target.end_utc <= now_utc:
        return pauses, target  # already over: nothing changes
    ended = replace(target, end_utc=now_utc)
    return tuple(sorted((*rest, ended), key=lambda p: (p.start_utc, p.pause_id))), ended


def paused_since(pauses: Iterable[PauseWindow], now_utc: datetime) -> datetime | None:
    """Since when the unit has been paused without a break, if a pause is in force now: the
    start of the chain of windows (overlapping or end-to-start) that covers `now_utc`."""
    if active(pauses, now_utc) is None:
        return None
    since = now_utc
    ordered = sorted(pauses, key=lambda p: p.start_utc, reverse=True)
    moved = True
    while moved:  # walk back over every window reaching `since`
        moved = False
        for window in ordered:
            reaches = window.end_utc is None or window.end_utc >= since
            if window.start_utc < since and reaches:
                since, moved = window.start_utc, True
    return since


def overdue_at(pauses: Iterable[PauseWindow], window: PauseWindow, limit: timedelta) -> datetime:
    """When the chain of windows that `window` starts in has been in force for `limit`."""
    chain_start = paused_since(pauses, window.start_utc) or window.start_utc
    return chain_start + limit


def reminders_due(window: PauseWindow, now_utc: datetime, every: timedelta) -> int:
    """How many reminders an open-ended window in force since its start has earned by now."""
    if window.end_utc is not None or now_utc < window.start_utc:
        return 0
    return (now_utc - window.start_utc) // every


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """What resuming at some instant needs: the sachets on the roll packed for dose times before
    it (they cannot be given and must leave the roll), and whether the bin can take them.

    `action`: "none" (nothing to discard), "discard_automatically" (they fit; the agent cuts them
    into the bin), "swap_roll_or_remove_by_hand" (they do not fit, or the bin level is unknown: a
    nurse swaps the roll for one starting at the resume, or takes them off the roll / empties the
    bin), "check_roll" (no roll, or its sachet cannot be read: a nurse must look)."""

    sachets_to_discard: int | None  # None: unknown (no roll, no sachet at the reader)
    bin_room: int | None  # free places in the bin; None: the dispenser does not report it
    bin_capacity: int | None
    bin_reserve: int
    action: str

    @property
    def fits(self) -> bool:
        return self.action in ("none", "discard_automatically")

    def fields(self) -> dict[str, object]:
        return {
            "sachets_to_discard": self.sachets_to_discard,
            "bin_room": self.bin_room,
            "bin_capacity": self.bin_capacity,
            "bin_reserve": self.bin_reserve,
            "action": self.action,
        }


def resume_plan(
    sachets_to_discard: int | None, bin_room: int | None, bin_capacity: int | None, reserve: int
) -> ResumePlan:
    """The plan for a backlog of `sachets_to_discard`. One sachet is what a single missed slot
    leaves and is judged per discard (the dispenser's own BIN_FULL bounds it when the level is
    unknown); more are discarded only when the bin is known to hold them beside the reserve."""
    if sachets_to_discard is None:
        action = "check_roll"
    elif sachets_to_discard == 0:
        action = "none"
    elif bin_room is None:
        action = "discard_automatically" if sachets_to_discard == 1 else BY_HAND
    elif sachets_to_discard <= bin_room - reserve:
        action = "discard_automatically"
    else:
        action = BY_HAND
    return ResumePlan(sachets_to_discard, bin_room, bin_capacity, reserve, action)


BY_HAND = "swap_roll_or_remove_by_hand"


def prune(pauses: tuple[PauseWindow, ...], horizon_utc: datetime) -> tuple[PauseWindow, ...]:
    """Forget windows that ended before the horizon: they can cover no unsettled slot. A window
    that a kept one continues (overlapping or end to start) is kept too: the chain's length is
    how long the unit has been paused (`paused_since`, pause_overdue)."""
    kept = [p for p in pauses if p.end_utc is None or p.end_utc > horizon_utc]
    grown = True
    while grown:
        grown = False
        for window in pauses:
            if window in kept or window.end_utc is None:
                continue
            end = window.end_utc
            if any(window.start_utc < k.start_utc <= end for k in kept):
                kept.append(window)
                grown = True
    return tuple(p for p in pauses if p in kept)
