"""The adherence-and-deviation summary of a period (a day, a month, or on request).

What a municipality's management reads to see risk (Helsetilsynet 2024: events were not recorded
as deviations): how many doses were planned, handed over, taken, taken late, missed and refused,
and every deviation of the period with its alert and what became of it (acknowledged by whom and
when, resolved by what, or still open). A latched alert not acknowledged within `ack_limit` is a
deviation of its own (`alert_not_acknowledged`).

Pure: `summarise` takes the recorded events (and the ledger's open slots) and the instant the
summary is made; `recorded_events` / `summary_from_store` read them from the store. Events come
from the audit log, which keeps every event for the life of the patient's service (the outbox
keeps only the newest delivered ones). A dose counts in the period its slot was due in; a
deviation in the period it happened in; its outcome is looked up in every event up to `now`.

The daemon records one as an `adherence_summary` event each morning for the day before, and each
month for the month before (agent/summary_schedule.py says when); `Summary.as_dict` is its data.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from agent.engine.catalogue import (
    CATALOGUE,
    CLEARED_SUFFIX,
    deviation_of,
    raises_latched_alert,
)
from agent.engine.deviation import Deviation
from agent.store.db import Store
from agent.store.ledger import SlotRecord
from agent.store.outbox import AUDIT_KIND_EVENT

DEFAULT_ACK_LIMIT = timedelta(minutes=30)  # a latched alert unacknowledged longer is a deviation
HANDED_OVER = frozenset({"taken", "taken_unconfirmed", "dispensed_for_travel"})
# events that resolve the latched alert named in data.alert_id
RESOLVING_KINDS = frozenset({"wrong_roll_cleared", "plan_mismatch_decided"})
_PAGE = 500


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """One event as the unit recorded it (the audit log's copy)."""

    seq: int
    event_id: str
    kind: str
    at: datetime  # occurred_at, UTC
    trust: str
    priority: str
    vkp_code: str | None
    alert_id: str | None
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class DoseCounts:
    planned: int = 0  # slots due in the period: with an outcome, or begun and still open
    given: int = 0  # reached the tray (or handed over for a trip)
    taken: int = 0
    taken_unconfirmed: int = 0
    late: int = 0  # taken after the slot ended missed (also counted in missed)
    missed: int = 0
    refused: int = 0
    skipped_paused: int = 0
    dispensed_for_travel: int = 0
    open: int = 0  # begun, no outcome yet

    @property
    def adherence(self) -> float | None:
        """Taken (on time) / doses meant to be taken at home; None when there were none."""
        at_home = self.planned - self.skipped_paused - self.dispensed_for_travel - self.open
        return None if at_home <= 0 else self.taken / at_home


@dataclass(frozen=True, slots=True)
class DeviationEntry:
    category: str
    kind: str
    seq: int
    event_id: str
    at: datetime
    priority: str
    vkp_code: str | None
    alert_id: str | None
    slot_id: str | None
    # a latched alert: open | acknowledged | acknowledged_and_resolved (a missed dose's slot is
    # settled already: acknowledged closes it); a condition: open | resolved; a report of
    # something that happened: recorded; alert_not_acknowledged: open | acknowledged_late
    outcome: str
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None  # the kind of the event that resolved it


@dataclass(frozen=True, slots=True)
class Summary:
    start: datetime
    end: datetime
    made_at: datetime
    ack_limit: timedelta
    doses: DoseCounts
    deviations: tuple[DeviationEntry, ...] = field(default_factory=tuple)

    def by_category(self) -> dict[str, int]:
        return dict(sorted(Counter(d.category for d in self.deviations).items()))

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe, times in UTC with Z (the payload the daemon will publish)."""
        doses = {f.name: getattr(self.doses, f.name) for f in fields(DoseCounts)}
        return {
            "period_start": _z(self.start),
            "period_end": _z(self.end),
            "made_at": _z(self.made_at),
            "ack_limit_s": int(self.ack_limit.total_seconds()),
            "doses": doses,
            "adherence": self.doses.adherence,
            "deviations_by_category": self.by_category(),
            "deviations": [_entry_dict(d) for d in self.deviations],
        }


# -- periods --------------------------------------------------------------------------------


def day_period(day: date, tz: str = "Europe/Oslo") -> tuple[datetime, datetime]:
    """Local midnight to local midnight, in UTC (23 or 25 hours on a DST change day)."""
    zone = ZoneInfo(tz)
    start = datetime.combine(day, time(0), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def month_period(year: int, month: int, tz: str = "Europe/Oslo") -> tuple[datetime, datetime]:
    zone = ZoneInfo(tz)
    following = date(year + month // 12, month % 12 + 1, 1)
    start = datetime.combine(date(year, month, 1), time(0), tzinfo=zone)
    end = datetime.combine(following, time(0), tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


# -- reading the store ----------------------------------------------------------------------


def recorded_events(store: Store) -> list[RecordedEvent]:
    """Every event in the audit log, in seq order."""
    events: list[RecordedEvent] = []
    after = 0
    while True:
        page = store.audit_records(after_seq=after, limit=_PAGE)
        if not page:
            return events
        after = page[-1].seq
        events.extend(
            _from_body(record.body, record.at_utc, record.trust)
            for record in page
            if record.kind == AUDIT_KIND_EVENT
        )


def summary_from_store(
    store: Store,
    start: datetime,
    end: datetime,
    now: datetime,
    ack_limit: timedelta = DEFAULT_ACK_LIMIT,
) -> Summary:
    return summarise(recorded_events(store), start, end, now, ack_limit, store.open_slots())


def _from_body(body: Mapping[str, Any], at_utc: str, trust: str) -> RecordedEvent:
    payload: Mapping[str, Any] = body.get("payload") or {}
    data = payload.get("data")
    return RecordedEvent(
        seq=int(body["seq"]),
        event_id=str(body["event_id"]),
        kind=str(body["kind"]),
        at=_parse(at_utc),
        trust=trust,
        priority=str(payload.get("priority", "info")),
        vkp_code=payload.get("vkp_code"),
        alert_id=payload.get("alert_id"),
        data=data if isinstance(data, dict) else {},
    )


# -- the summary ----------------------------------------------------------------------------


def summarise(
    events: Iterable[RecordedEvent],
    start: datetime,
    end: datetime,
    now: datetime,
    ack_limit: timedelta = DEFAULT_ACK_LIMIT,
    open_slots: Iterable[SlotRecord] = (),
) -> Summary:
    if not start < end:
        raise ValueError("the period must end after it starts")
    ordered = sorted((e for e in events if e.at <= now), key=lambda e: e.seq)
    doses = _count_doses(ordered, start, end, open_slots)
    deviations: list[DeviationEntry] = []
    for index, event in enumerate(ordered):
        if not start <= event.at < end:
            continue
        category = deviation_of(event.kind, event.data)
        if category is not None:
            deviations.append(_entry(event, category.value, ordered[index + 1 :]))
    deviations += _late_acknowledgements(deviations, now, ack_limit)
    deviations.sort(key=lambda d: (d.at, d.seq, d.category))
    return Summary(start, end, now, ack_limit, doses, tuple(deviations))


def _count_doses(
    events: list[RecordedEvent],
    start: datetime,
    end: datetime,
    open_slots: Iterable[SlotRecord],
) -> DoseCounts:
    outcomes: Counter[str] = Counter()
    given = 0
    in_period: set[str] = set()
    for event in events:
        if event.kind != "slot_outcome":
            continue
        due = _parse_or_none(event.data.get("due_utc"))
        if due is None or not start <= due < end:
            continue
        in_period.add(str(event.data.get("slot_id")))
        outcome = str(event.data.get("outcome"))
        outcomes[outcome] += 1
        in_tray = deviation_of(event.kind, event.data) is Deviation.DOSE_MISSED
        if outcome in HANDED_OVER or in_tray or event.data.get("presented_at") is not None:
            given += 1
    late = sum(
        1 for e in events if e.kind == "dose_taken_late" and e.data.get("slot_id") in in_period
    )
    still_open = sum(
        1
        for slot in open_slots
        if (due := _parse_or_none(slot.due_utc)) is not None and start <= due < end
    )
    return DoseCounts(
        planned=sum(outcomes.values()) + still_open,
        given=given,
        taken=outcomes["taken"],
        taken_unconfirmed=outcomes["taken_unconfirmed"],
        late=late,
        missed=outcomes["missed"],
        refused=outcomes["refused"],
        skipped_paused=outcomes["skipped_paused"],
        dispensed_for_travel=outcomes["dispensed_for_travel"],
        open=still_open,
    )


def _entry(event: RecordedEvent, category: str, later: list[RecordedEvent]) -> DeviationEntry:
    """The deviation `event`, with what the later events say became of it."""
    acked: RecordedEvent | None = None
    resolved: RecordedEvent | None = None
    spec = CATALOGUE.get(event.kind)
    if event.alert_id is not None and raises_latched_alert(event.kind):
        for other in later:
            if _named_alert(other) != event.alert_id:
                continue
            if other.kind == "alert_acknowledged" and acked is None:
                acked = other
                if other.data.get("resolved") is True and resolved is None:
                    resolved = other
            elif other.kind in RESOLVING_KINDS and resolved is None:
                resolved = other
        settled = resolved is not None or event.kind == "slot_outcome"
        if acked is None:
            outcome = "open"
        else:
            outcome = "acknowledged_and_resolved" if settled else "acknowledged"
    elif spec is not None and spec.condition:
        cleared = event.kind + CLEARED_SUFFIX
        resolved = next((o for o in later if o.kind == cleared), None)
        outcome = "open" if resolved is None else "resolved"
    else:
        outcome = "recorded"  # a report of something that happened: nothing stays open
    return DeviationEntry(
        category=category,
        kind=event.kind,
        seq=event.seq,
        event_id=event.event_id,
        at=event.at,
        priority=event.priority,
        vkp_code=event.vkp_code,
        alert_id=event.alert_id,
        slot_id=_str_or_none(event.data.get("slot_id")),
        outcome=outcome,
        acknowledged_by=None if acked is None else _str_or_none(acked.data.get("by")),
        acknowledged_at=None if acked is None else acked.at,
        resolved_at=None if resolved is None else resolved.at,
        resolved_by=None if resolved is None else resolved.kind,
    )


def _late_acknowledgements(
    entries: list[DeviationEntry], now: datetime, ack_limit: timedelta
) -> list[DeviationEntry]:
    """A latched alert acknowledged after `ack_limit`, or not yet and `ack_limit` is over."""
    found = []
    for entry in entries:
        if entry.alert_id is None or entry.outcome == "recorded":
            continue  # raises no alert (one that names an alert raised before is recorded)
        deadline = entry.at + ack_limit
        acked_at = entry.acknowledged_at
        if (acked_at is not None and acked_at > deadline) or (acked_at is None and now > deadline):
            found.append(
                DeviationEntry(
                    category=Deviation.ALERT_NOT_ACKNOWLEDGED.value,
                    kind=entry.kind,
                    seq=entry.seq,
                    event_id=entry.event_id,
                    at=entry.at,
                    priority=entry.priority,
                    vkp_code=entry.vkp_code,
                    alert_id=entry.alert_id,
                    slot_id=entry.slot_id,
                    outcome="acknowledged_late" if acked_at is not None else "open",
                    acknowledged_by=entry.acknowledged_by,
                    acknowledged_at=acked_at,
                )
            )
    return found


# -- helpers --------------------------------------------------------------------------------


def _parse(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"time without an offset: {text!r}")
    return value.astimezone(UTC)


def _parse_or_none(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return _parse(value)
    except ValueError:
        return None


def _named_alert(event: RecordedEvent) -> str | None:
    """The alert an event refers to: data.alert_id, or the envelope's."""
    named = event.data.get("alert_id")
    return named if isinstance(named, str) else event.alert_id


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _z(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _entry_dict(entry: DeviationEntry) -> dict[str, Any]:
    return {
        "category": entry.category,
        "kind": entry.kind,
        "seq": entry.seq,
        "event_id": entry.event_id,
        "at": _z(entry.at),
        "priority": entry.priority,
        "vkp_code": entry.vkp_code,
        "alert_id": entry.alert_id,
        "slot_id": entry.slot_id,
        "outcome": entry.outcome,
        "acknowledged_by": entry.acknowledged_by,
        "acknowledged_at": _z(entry.acknowledged_at),
        "resolved_at": _z(entry.resolved_at),
        "resolved_by": entry.resolved_by,
    }
