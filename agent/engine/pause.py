"""Temporary stop (hospital, respite, holiday): which slots a set of pause windows covers.

A window covers slots due in [start, end); an open end lasts until resumed. Paused slots end
`skipped_paused` at their due time, so no missed-dose alarm is raised while the patient is away.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from agent.engine.types import EngineInputError, PauseWindow


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


def _check_aware(value: datetime, name: str) -> None:
    if value.utcoffset() is None:
        raise EngineInputError(f"{name} must be timezone-aware, got {value!r}")


def start(pauses: tuple[PauseWindow, ...], window: PauseWindow) -> tuple[PauseWindow, ...]:
    """Add a pause window; raises EngineInputError for an inconsistent one."""
    if not window.pause_id:
        raise EngineInputError("a pause needs a pause_id")
    _check_aware(window.start_utc, "pause start")
    if window.end_utc is not None:
        _check_aware(window.end_utc, "pause end")
        if window.end_utc <= window.start_utc:
            raise EngineInputError(
                f"pause {window.pause_id!r} ends ({window.end_utc.isoformat()}) before it starts "
                f"({window.start_utc.isoformat()})"
            )
    if any(p.pause_id == window.pause_id for p in pauses):
        raise EngineInputError(f"pause id {window.pause_id!r} already exists")
    return tuple(sorted((*pauses, window), key=lambda p: (p.start_utc, p.pause_id)))


def end(
    pauses: tuple[PauseWindow, ...], pause_id: str | None, now_utc: datetime
) -> tuple[tuple[PauseWindow, ...], PauseWindow]:
    """End a pause now (by id, or whichever is active). A pause that has not started yet is
    cancelled. Returns (pauses, the window as ended); raises EngineInputError if none matches."""
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
        return rest, replace(target, end_utc=target.start_utc)  # cancelled before it began
    if target.end_utc is not None and target.end_utc <= now_utc:
        return pauses, target  # already over: nothing changes
    ended = replace(target, end_utc=now_utc)
    return tuple(sorted((*rest, ended), key=lambda p: (p.start_utc, p.pause_id))), ended


def prune(pauses: tuple[PauseWindow, ...], horizon_utc: datetime) -> tuple[PauseWindow, ...]:
    """Forget windows that ended before the horizon: they can cover no unsettled slot."""
    return tuple(p for p in pauses if p.end_utc is None or p.end_utc > horizon_utc)
