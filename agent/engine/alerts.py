"""Latched alerts and de-duplicated / rate-limited conditions.

Why each rule exists: the response centre drowns in noise. So a *condition* (mains lost, jam, lid
open ...) is raised once and cleared once (`<kind>_cleared`); chatty ones are raised at most once
per interval; and a missed dose or a wrong roll *latches* until a person acknowledges it, where
acknowledged is not resolved (a wrong roll is resolved when it is removed). The kinds themselves
are in `agent.engine.catalogue`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from agent.engine.catalogue import make_event, spec
from agent.engine.types import EngineEvent, EngineInputError

# --- conditions: raised once, cleared once, chatty ones rate limited ------------------------


@dataclass(frozen=True, slots=True)
class ConditionBook:
    """Which conditions are present, which the centre was told about, and when chatty ones were
    last raised (monotonic seconds; not durable)."""

    present: tuple[str, ...] = ()
    raised: tuple[str, ...] = ()  # told to the centre and not yet cleared (durable)
    last_raised_mono: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class ConditionChange:
    book: ConditionBook
    events: tuple[EngineEvent, ...]


def _last_raised(book: ConditionBook, kind: str) -> float | None:
    for name, at in book.last_raised_mono:
        if name == kind:
            return at
    return None


def _may_raise(book: ConditionBook, kind: str, now_mono: float, interval_s: float) -> bool:
    if not spec(kind).chatty:
        return True
    last = _last_raised(book, kind)
    return last is None or now_mono - last >= interval_s


def _with_raised(book: ConditionBook, kind: str, now_mono: float) -> ConditionBook:
    stamps = tuple(item for item in book.last_raised_mono if item[0] != kind)
    return replace(book, raised=(*book.raised, kind), last_raised_mono=(*stamps, (kind, now_mono)))


def set_condition(
    book: ConditionBook,
    kind: str,
    present: bool,
    now_mono: float,
    interval_s: float,
    fields: dict[str, object] | None = None,
) -> ConditionChange:
    """Record whether a condition is present; return the events (at most one) this causes."""
    if not spec(kind).condition:
        raise KeyError(f"{kind!r} is not a condition")
    if present:
        if kind not in book.present:
            book = replace(book, present=(*book.present, kind))
        if kind in book.raised or not _may_raise(book, kind, now_mono, interval_s):
            return ConditionChange(book, ())
        return ConditionChange(_with_raised(book, kind, now_mono), (make_event(kind, fields),))
    book = replace(book, present=tuple(k for k in book.present if k != kind))
    if kind not in book.raised:
        return ConditionChange(book, ())
    book = replace(book, raised=tuple(k for k in book.raised if k != kind))
    return ConditionChange(book, (make_event(f"{kind}_cleared", fields),))


def held_back(book: ConditionBook) -> tuple[str, ...]:
    """Chatty conditions present but not raised because of the rate limit."""
    return tuple(k for k in book.present if k not in book.raised)


def next_release(book: ConditionBook, interval_s: float) -> float | None:
    """Monotonic instant a held-back chatty condition may be raised."""
    instants = [
        last + interval_s
        for kind in held_back(book)
        if (last := _last_raised(book, kind)) is not None
    ]
    return min(instants) if instants else None


def release_due(book: ConditionBook, now_mono: float, interval_s: float) -> ConditionChange:
    """Raise held-back conditions whose rate-limit interval has ended."""
    events: list[EngineEvent] = []
    for kind in held_back(book):
        if _may_raise(book, kind, now_mono, interval_s):
            book = _with_raised(book, kind, now_mono)
            events.append(make_event(kind, {"held_back": True}))
    return ConditionChange(book, tuple(events))


def rate_limited(last_mono: float | None, now_mono: float, interval_s: float) -> bool:
    """For one-shot chatty events (buttons): True if one was sent less than `interval_s` ago."""
    return last_mono is not None and now_mono - last_mono < interval_s


# --- latched alerts --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LatchedAlert:
    alert_id: str
    kind: str
    raised_at: str  # ISO UTC
    acknowledged_by: str | None = None
    acknowledged_at: str | None = None
    resolved: bool = False  # the cause is gone (a missed dose is resolved when raised)

    @property
    def active(self) -> bool:
        """Shown as active until a person acknowledged it *and* its cause is gone."""
        return self.acknowledged_by is None or not self.resolved


def latch(alerts: tuple[LatchedAlert, ...], alert: LatchedAlert) -> tuple[LatchedAlert, ...]:
    if any(a.alert_id == alert.alert_id for a in alerts):
        raise ValueError(f"alert id {alert.alert_id!r} already used")
    return (*alerts, alert)


def _prune(alerts: tuple[LatchedAlert, ...]) -> tuple[LatchedAlert, ...]:
    return tuple(a for a in alerts if a.active)


def acknowledge(
    alerts: tuple[LatchedAlert, ...], alert_id: str, by: str, at: str
) -> tuple[tuple[LatchedAlert, ...], LatchedAlert | None]:
    """Acknowledge one alert. Returns the new tuple and the acknowledged alert, or None if it was
    already acknowledged (idempotent). Unknown ids raise EngineInputError."""
    if not by:
        raise EngineInputError("an acknowledgement needs the name of who acknowledged")
    for alert in alerts:
        if alert.alert_id != alert_id:
            continue
        if alert.acknowledged_by is not None:
            return alerts, None
        acked = replace(alert, acknowledged_by=by, acknowledged_at=at)
        updated = tuple(acked if a.alert_id == alert_id else a for a in alerts)
        return _prune(updated), acked
    raise EngineInputError(f"no active alert with id {alert_id!r}")


def resolve(
    alerts: tuple[LatchedAlert, ...], kind: str
) -> tuple[tuple[LatchedAlert, ...], tuple[LatchedAlert, ...]]:
    """Mark every unresolved alert of `kind` resolved; returns (alerts, the ones resolved now)."""
    now_resolved = tuple(
        replace(a, resolved=True) for a in alerts if a.kind == kind and not a.resolved
    )
    ids = {a.alert_id for a in now_resolved}
    updated = tuple(replace(a, resolved=True) if a.alert_id in ids else a for a in alerts)
    return _prune(updated), now_resolved


def unresolved(alerts: tuple[LatchedAlert, ...], kind: str) -> LatchedAlert | None:
    for alert in alerts:
        if alert.kind == kind and not alert.resolved:
            return alert
    return None
