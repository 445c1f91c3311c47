"""When the unit publishes its adherence-and-deviation summaries, and for which periods.

Pure: the daemon asks `due_periods` what is owed at an instant and `next_run_utc` when to ask
again. A day's summary is made at `SUMMARY_HOUR` local time the next morning, not at midnight:
a dose due late in the evening is only settled (taken or missed) a slot window later, and a
summary made at midnight would list it as open. A month's summary follows the daily summary of its
last day. Periods are local (Europe/Oslo by default), so a DST change day is 23 or 25 hours long.

After a Pi that was off (or an agent that was stopped) the days missed are made up, oldest first,
at most `CATCH_UP_DAYS` back; older days are left out and the count of them is returned so the
daemon can say so. The first run of a unit owes only yesterday: a new installation has no history
to summarise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from agent.deviation_summary import day_period, month_period

SUMMARY_HOUR = 4  # local; after the last dose of a day has settled, before the first of the next
CATCH_UP_DAYS = 31  # a month of daily summaries at most after a long outage
# Deviations listed in one summary event at most (the counts by category are always complete;
# the centre has every deviation as its own event too). Keeps a bad month's event small.
MAX_LISTED_DEVIATIONS = 200


@dataclass(frozen=True, slots=True)
class Period:
    kind: str  # "day" | "month"
    label: str  # "2026-11-27" | "2026-11"
    start_utc: datetime
    end_utc: datetime
    last_day: date  # the last local day the period covers (what the daemon stores as done)


@dataclass(frozen=True, slots=True)
class Owed:
    periods: tuple[Period, ...]
    days_skipped: int  # days older than CATCH_UP_DAYS that get no summary


def latest_summarisable_day(now_utc: datetime, tz: str) -> date:
    """The last local day whose summary is due at `now_utc` (yesterday after SUMMARY_HOUR,
    else the day before)."""
    local = now_utc.astimezone(ZoneInfo(tz))
    days_back = 1 if local.time() >= time(SUMMARY_HOUR) else 2
    return local.date() - timedelta(days=days_back)


def next_run_utc(now_utc: datetime, tz: str) -> datetime:
    """The next instant (after `now_utc`) at SUMMARY_HOUR local time."""
    zone = ZoneInfo(tz)
    local = now_utc.astimezone(zone)
    day = local.date() if local.time() < time(SUMMARY_HOUR) else local.date() + timedelta(days=1)
    # SUMMARY_HOUR is never inside a DST gap in Europe (those are at 02:00-03:00)
    return datetime.combine(day, time(SUMMARY_HOUR), tzinfo=zone).astimezone(UTC)


def due_periods(now_utc: datetime, tz: str, last_day_done: date | None) -> Owed:
    """The periods owed at `now_utc`, oldest first, given the last day already summarised."""
    latest = latest_summarisable_day(now_utc, tz)
    if last_day_done is None:
        first = latest
    elif last_day_done >= latest:
        return Owed((), 0)
    else:
        first = last_day_done + timedelta(days=1)
    earliest_kept = latest - timedelta(days=CATCH_UP_DAYS - 1)
    skipped = max(0, (earliest_kept - first).days)
    first = max(first, earliest_kept)
    periods: list[Period] = []
    day = first
    while day <= latest:
        start, end = day_period(day, tz)
        periods.append(Period("day", day.isoformat(), start, end, day))
        if (day + timedelta(days=1)).month != day.month:
            m_start, m_end = month_period(day.year, day.month, tz)
            periods.append(Period("month", f"{day.year:04d}-{day.month:02d}", m_start, m_end, day))
        day += timedelta(days=1)
    return Owed(tuple(periods), skipped)


def summary_event_data(period: Period, summary: Mapping[str, object]) -> dict[str, object]:
    """The `adherence_summary` event's data: the period, then the summary (its deviation list
    cut to MAX_LISTED_DEVIATIONS, oldest first, with the number left out)."""
    data: dict[str, object] = {"period": period.kind, "label": period.label, **summary}
    listed = summary.get("deviations")
    if isinstance(listed, list) and len(listed) > MAX_LISTED_DEVIATIONS:
        data["deviations"] = listed[:MAX_LISTED_DEVIATIONS]
        data["deviations_not_listed"] = len(listed) - MAX_LISTED_DEVIATIONS
    else:
        data["deviations_not_listed"] = 0
    return data
