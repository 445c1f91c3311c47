"""Dose schedule: which doses fall due when. Pure: no I/O, no clock; every instant is passed in.

A schedule is a list of rules. Each rule takes effect at local midnight of its ``effective_from``
date (in the schedule's zone, default Europe/Oslo) and lasts until the next rule takes effect;
before the first rule there are no doses. A rule gives nominal local dose times for every day,
optionally replaced on chosen weekdays. A weekday override (or ``times``) may be empty: no doses
that day.

A *slot* is one dose on one local day. Its identity is the local date plus the nominal local time
(``slot_id`` = ``"2026-03-29T02:30"``), never the UTC instant, so a DST change can neither create a
second slot nor lose one, and a wall-clock step can never make a slot given twice.

DST semantics (exact; see docs/time-policy.md):

* A nominal time that does not exist (spring forward; Europe/Oslo 2026-03-29 and 2027-03-28, the
  wall clock jumps 02:00 -> 03:00) is due once, at the instant the wall clock would have shown it
  had it not jumped, i.e. shifted forward by the gap: 02:30 is due at 03:30 CEST = 01:30 UTC,
  02:00 at 03:00 CEST = 01:00 UTC. (This is zoneinfo's ``fold=0`` resolution.)
* A nominal time that happens twice (fall back; 2026-10-25 and 2027-10-31, 02:00-03:00 repeated) is
  due once, at its first occurrence (CEST, ``fold=0``): 02:30 is due at 00:30 UTC. Never twice.
* On a gap day two nominal times can resolve to the same instant (02:15 and 03:15 -> 01:15 UTC) or
  even out of order (02:30 -> 01:30 UTC but 03:00 -> 01:00 UTC). Both doses are kept, with distinct
  slot ids: the later nominal time keeps its instant and an earlier nominal time is never due after
  it (02:30 is then due at 01:00 UTC together with 03:00). Slots are ordered by ``due_utc`` and then
  by nominal local date and time, which is also ``slot_id`` order.
* ``MIN_SPACING`` is checked on nominal local times. On a spring-forward day doses either side of
  the gap are really one hour closer (01:50 and 03:10 are 20 min apart); after a fall-back the
  repeated hour makes them one hour further apart. This is accepted and documented, not rejected.

Minimum interval (SAFETY.md H3, double dose): every schedule has one, the shortest time the engine
lets pass between an intake and the next dose it makes available. Set it with ``min_interval``
(from MIN_INTERVAL_FLOOR to MIN_INTERVAL_MAX), or leave it None for the default: half the smallest
spacing between two doses of the schedule (``smallest_spacing``, nominal local times, across
midnight and rule changes too), at most DEFAULT_MIN_INTERVAL_MAX. Half the spacing is the usual
rule for a missed dose ("take it unless it is nearer the next one"); it lets a dose taken late
still be followed by the next one within that one's window. A schedule whose own doses are closer
than its minimum interval is refused. The engine measures the interval on elapsed time, so on a
spring-forward day a dose less than the interval after the previous intake waits.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from types import MappingProxyType
from zoneinfo import ZoneInfo

from agent.clock import DEFAULT_ZONE, UnknownTimeZone, load_zone

MIN_SPACING = timedelta(minutes=30)
MIN_INTERVAL_FLOOR = timedelta(minutes=15)  # a shorter "minimum interval" would not protect
MIN_INTERVAL_MAX = timedelta(hours=24)
DEFAULT_MIN_INTERVAL_MAX = timedelta(hours=12)  # the default for a schedule without two doses
# a schedule version may advance at most this much past the one in force (issue: a version of
# 2^63-1 once made every later update "older")
MAX_SCHEDULE_VERSION_STEP = 1000
MAX_DOSES_PER_DAY = 12
SEARCH_HORIZON_DAYS = 400  # next_slot_after gives up after this many days without a dose

# A slot's instant is its nominal local time shifted by at most one UTC offset change (< 1 day), so
# looking two local days beyond a window is always enough to find and order every slot inside it.
_MARGIN_DAYS = 2
_CHUNK_DAYS = 31  # slots are computed a month at a time, so long windows stay cheap in memory

_WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_SLOT_ID = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})T([0-9]{2}:[0-9]{2})")


class ScheduleError(ValueError):
    """Clear, human-readable message naming the offending field/value."""


def parse_time(text: str) -> time:
    """Parse a dose time written "HH:MM" (24-hour, two digits each, e.g. "08:00")."""
    match = _HHMM.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ScheduleError(
            f"invalid dose time {text!r}: expected HH:MM in 24-hour time, e.g. '08:00' or '21:30'"
        )
    return time(int(match[1]), int(match[2]))


def _minutes(t: time) -> int:
    return t.hour * 60 + t.minute


def _validated_day(value: object, where: str) -> tuple[time, ...]:
    """Check one day's dose times and return them sorted."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ScheduleError(f"{where}: expected a sequence of datetime.time, got {value!r}")
    times: list[time] = []
    for item in value:
        if not isinstance(item, time):
            raise ScheduleError(
                f"{where}: {item!r} is not a datetime.time (use parse_time('08:00'))"
            )
        if item.tzinfo is not None:
            raise ScheduleError(
                f"{where}: {item.isoformat()} has a time zone; dose times are naive local times "
                "in the schedule's zone"
            )
        if item.second or item.microsecond:
            raise ScheduleError(
                f"{where}: {item.isoformat()} is not on a whole minute; dose times have minute "
                "precision (seconds and microseconds must be 0)"
            )
        if item.fold:
            # fold would pick the second occurrence of a repeated hour; DST is the schedule's job.
            raise ScheduleError(f"{where}: {item.isoformat()} has fold=1; dose times need fold=0")
        times.append(item)
    times.sort()
    for earlier, later in pairwise(times):
        if earlier == later:
            raise ScheduleError(f"{where}: {earlier:%H:%M} is listed twice")
    if len(times) > MAX_DOSES_PER_DAY:
        raise ScheduleError(
            f"{where}: {len(times)} doses a day, at most {MAX_DOSES_PER_DAY} are allowed"
        )
    min_minutes = MIN_SPACING // timedelta(minutes=1)
    for earlier, later in pairwise(times):
        apart = _minutes(later) - _minutes(earlier)
        if apart < min_minutes:
            raise ScheduleError(
                f"{where}: {earlier:%H:%M} and {later:%H:%M} are only {apart} min apart; "
                f"doses must be at least {min_minutes} min apart"
            )
    return tuple(times)


@dataclass(frozen=True, slots=True)
class ScheduleRule:
    """Dose times from ``effective_from`` (local date, inclusive) until the next rule.

    Validated on construction; ``times`` and each weekday's times are stored sorted, and
    ``weekday_times`` is stored as a read-only copy.
    """

    effective_from: date  # local date from which this rule applies (inclusive)
    times: tuple[time, ...]  # default dose times every day (naive local times, minute precision)
    # 0=Monday..6=Sunday; replaces `times` that weekday
    weekday_times: Mapping[int, tuple[time, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.effective_from, date) or isinstance(self.effective_from, datetime):
            raise ScheduleError(
                f"effective_from: expected a datetime.date, got {self.effective_from!r}"
            )
        where = f"rule effective from {self.effective_from.isoformat()}"
        times = _validated_day(self.times, f"{where}: times")
        if not isinstance(self.weekday_times, Mapping):
            raise ScheduleError(
                f"{where}: weekday_times must be a mapping of weekday (0=Monday..6=Sunday) to "
                f"times, got {self.weekday_times!r}"
            )
        overrides: dict[int, tuple[time, ...]] = {}
        for weekday, day_times in self.weekday_times.items():
            if isinstance(weekday, bool) or not isinstance(weekday, int) or not 0 <= weekday <= 6:
                raise ScheduleError(
                    f"{where}: weekday_times key {weekday!r} is not a weekday; use 0 (Monday) "
                    "to 6 (Sunday)"
                )
            overrides[weekday] = _validated_day(
                day_times, f"{where}: weekday_times[{weekday}] ({_WEEKDAY_NAMES[weekday]})"
            )
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "weekday_times", MappingProxyType(dict(sorted(overrides.items()))))

    def times_for_weekday(self, weekday: int) -> tuple[time, ...]:
        return self.weekday_times.get(weekday, self.times)


@dataclass(frozen=True, slots=True, order=True)
class Slot:
    """One dose on one local day."""

    due_utc: datetime  # the exact instant the dose is due (aware UTC)
    local_date: date  # the local calendar day the slot belongs to
    local_time: (
        time  # the nominal local time from the schedule (e.g. 02:30 even if it didn't exist)
    )
    # slot_id, formatted once: the engine asks it on every step, a slot is built once per window
    _slot_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # (strftime's %H:%M is three times slower; dose times have whole minutes)
        t = self.local_time
        slot_id = f"{self.local_date.isoformat()}T{t.hour:02d}:{t.minute:02d}"
        object.__setattr__(self, "_slot_id", slot_id)

    @property
    def slot_id(self) -> str:
        """Stable and unique per unit: local date + nominal local time, e.g. "2026-03-29T02:30"."""
        return self._slot_id


def _effective_from(rule: ScheduleRule) -> date:
    return rule.effective_from


def _require_aware(value: datetime, name: str) -> None:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ScheduleError(f"{name} must be a timezone-aware datetime, got {value!r}")


def _require_date(value: date, name: str) -> None:
    if not isinstance(value, date) or isinstance(value, datetime):
        raise ScheduleError(f"{name} must be a datetime.date, got {value!r}")


def _days(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


@dataclass(frozen=True, slots=True)
class _Spacing:
    """The smallest gap between two consecutive nominal dose times, and where it is."""

    minutes: int
    where: str  # "the 08:00 and 08:30 doses of the rule effective from ..."


def _smallest(a: _Spacing | None, b: _Spacing | None) -> _Spacing | None:
    if a is None:
        return b
    if b is None:
        return a
    return b if b.minutes < a.minutes else a


def _spacing_within_days(rules: Iterable[ScheduleRule]) -> _Spacing | None:
    smallest: _Spacing | None = None
    for rule in rules:
        days = [("every day", rule.times)]
        days += [(_WEEKDAY_NAMES[d], t) for d, t in rule.weekday_times.items()]
        for which, times in days:
            for earlier, later in pairwise(times):
                where = (
                    f"the {earlier:%H:%M} and {later:%H:%M} doses ({which}) of the rule "
                    f"effective from {rule.effective_from.isoformat()}"
                )
                smallest = _smallest(smallest, _Spacing(_minutes(later) - _minutes(earlier), where))
    return smallest


def _in_minutes(value: timedelta) -> str:
    return f"{value.total_seconds() / 60:g} min"


@dataclass(frozen=True, slots=True)
class Schedule:
    """A validated dose schedule in one IANA zone. Build it with ``Schedule.build``."""

    zone: str = DEFAULT_ZONE  # IANA name
    rules: tuple[ScheduleRule, ...] = ()  # validated: sorted by effective_from, no two same date
    # the shortest time from an intake to the next dose made available; None: the default (see
    # the module docstring and `effective_min_interval`)
    min_interval: timedelta | None = None
    _tz: ZoneInfo = field(init=False, repr=False, compare=False)
    _spacing: _Spacing | None = field(init=False, repr=False, compare=False)
    # the two answers below, computed once: the engine asks them on nearly every step
    _spacing_td: timedelta | None = field(init=False, repr=False, compare=False)
    _min_interval_td: timedelta = field(init=False, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        zone: str = DEFAULT_ZONE,
        rules: Iterable[ScheduleRule] = (),
        min_interval: timedelta | None = None,
    ) -> Schedule:
        """Sort the rules by ``effective_from`` and validate everything; raises ScheduleError."""
        rule_list = list(rules)
        for rule in rule_list:
            if not isinstance(rule, ScheduleRule):
                raise ScheduleError(f"rules: expected ScheduleRule items, got {rule!r}")
        return cls(
            zone=zone,
            rules=tuple(sorted(rule_list, key=_effective_from)),
            min_interval=min_interval,
        )

    @property
    def smallest_spacing(self) -> timedelta | None:
        """The smallest time between two consecutive nominal dose times (within a day, across
        midnight, across a rule change); None when the schedule never has two doses in a row."""
        return self._spacing_td

    @property
    def effective_min_interval(self) -> timedelta:
        """`min_interval`, or the default: half the smallest spacing, at most 12 h."""
        return self._min_interval_td

    def __post_init__(self) -> None:
        try:
            tz = load_zone(self.zone)
        except UnknownTimeZone as exc:
            raise ScheduleError(f"zone: {exc}") from exc
        object.__setattr__(self, "_tz", tz)
        if not isinstance(self.rules, tuple):
            raise ScheduleError(f"rules: expected a tuple of ScheduleRule, got {self.rules!r}")
        if not self.rules:
            raise ScheduleError("rules: a schedule needs at least one rule")
        for rule in self.rules:
            if not isinstance(rule, ScheduleRule):
                raise ScheduleError(f"rules: expected ScheduleRule items, got {rule!r}")
        for earlier, later in pairwise(self.rules):
            if earlier.effective_from == later.effective_from:
                raise ScheduleError(
                    f"rules: two rules take effect on {later.effective_from.isoformat()}; "
                    "each effective_from date may appear only once"
                )
            if earlier.effective_from > later.effective_from:
                raise ScheduleError(
                    "rules: must be sorted by effective_from "
                    f"({earlier.effective_from.isoformat()} comes before "
                    f"{later.effective_from.isoformat()}); use Schedule.build to sort them"
                )
        spacing = _smallest(_spacing_within_days(self.rules), self._check_spacing_across_midnight())
        object.__setattr__(self, "_spacing", spacing)
        spacing_td = None if spacing is None else timedelta(minutes=spacing.minutes)
        object.__setattr__(self, "_spacing_td", spacing_td)
        if self.min_interval is not None:
            effective = self.min_interval
        elif spacing_td is None:
            effective = DEFAULT_MIN_INTERVAL_MAX
        else:
            effective = min(spacing_td / 2, DEFAULT_MIN_INTERVAL_MAX)
        object.__setattr__(self, "_min_interval_td", effective)
        self._check_min_interval(spacing)

    def _check_min_interval(self, spacing: _Spacing | None) -> None:
        value = self.min_interval
        if value is None:
            return
        if not isinstance(value, timedelta):
            raise ScheduleError(f"min_interval: expected a datetime.timedelta, got {value!r}")
        if not MIN_INTERVAL_FLOOR <= value <= MIN_INTERVAL_MAX:
            floor, top = (m // timedelta(minutes=1) for m in (MIN_INTERVAL_FLOOR, MIN_INTERVAL_MAX))
            raise ScheduleError(
                f"min_interval: {_in_minutes(value)} is outside {floor}..{top} min (a shorter "
                "interval would not prevent a double dose)"
            )
        if spacing is not None and value > timedelta(minutes=spacing.minutes):
            raise ScheduleError(
                f"min_interval: {_in_minutes(value)} is longer than the {spacing.minutes} min "
                f"between {spacing.where}; the schedule's own doses may not be closer than its "
                "minimum interval (shorten it, or leave it out for half the smallest spacing)"
            )

    def _check_spacing_across_midnight(self) -> _Spacing | None:
        """The last dose of a day and the first of the next must also respect MIN_SPACING.

        Every distinct pair of consecutive days lies within a week after a rule takes effect (the
        first pair straddles the change from the previous rule). Returns the smallest such gap.
        """
        min_minutes = MIN_SPACING // timedelta(minutes=1)
        one_day = timedelta(days=1)
        smallest: _Spacing | None = None
        for rule in self.rules:
            start = rule.effective_from - one_day if rule.effective_from > date.min else date.min
            for day in _days(start, rule.effective_from + timedelta(days=6)):
                today, tomorrow = self.times_on(day), self.times_on(day + one_day)
                if not today or not tomorrow:
                    continue
                apart = 24 * 60 - _minutes(today[-1]) + _minutes(tomorrow[0])
                where = (
                    f"the {today[-1]:%H:%M} dose on {day.isoformat()} "
                    f"({_WEEKDAY_NAMES[day.weekday()]}) and the {tomorrow[0]:%H:%M} dose the "
                    "next day"
                )
                if apart < min_minutes:
                    raise ScheduleError(
                        f"rules: {where} are only {apart} min apart; doses must be at least "
                        f"{min_minutes} min apart"
                    )
                smallest = _smallest(smallest, _Spacing(apart, where))
        return smallest

    def times_on(self, local_date: date) -> tuple[time, ...]:
        """Nominal dose times on a local date: the rule in effect that day, with weekday override.

        Empty before the first rule takes effect.
        """
        _require_date(local_date, "local_date")
        index = bisect_right(self.rules, local_date, key=_effective_from) - 1
        if index < 0:
            return ()
        return self.rules[index].times_for_weekday(local_date.weekday())

    def slots_between(self, start_utc: datetime, end_utc: datetime) -> Iterator[Slot]:
        """Slots with ``start_utc <= due_utc < end_utc``, ascending by (due_utc, slot_id)."""
        _require_aware(start_utc, "start_utc")
        _require_aware(end_utc, "end_utc")
        return self._slots_between(start_utc, end_utc)

    def _slots_between(self, start_utc: datetime, end_utc: datetime) -> Iterator[Slot]:
        if end_utc <= start_utc:
            return
        first = self._local_date(start_utc) - timedelta(days=_MARGIN_DAYS)
        last = self._local_date(end_utc) + timedelta(days=_MARGIN_DAYS)
        for slot in self._iter_slots(first, last):
            if start_utc <= slot.due_utc < end_utc:
                yield slot

    def next_slot_after(self, utc: datetime) -> Slot | None:
        """The first slot with ``due_utc > utc``; None if none within SEARCH_HORIZON_DAYS."""
        _require_aware(utc, "utc")
        first = self._local_date(utc) - timedelta(days=_MARGIN_DAYS)
        last = first + timedelta(days=SEARCH_HORIZON_DAYS + _MARGIN_DAYS)
        for slot in self._iter_slots(first, last):
            if slot.due_utc > utc:
                return slot
        return None

    def slot_for_id(self, slot_id: str) -> Slot | None:
        """The slot with this id, or None if the schedule has no such dose that day.

        A malformed id (not "YYYY-MM-DDTHH:MM") raises ScheduleError.
        """
        match = _SLOT_ID.fullmatch(slot_id) if isinstance(slot_id, str) else None
        if match is None:
            raise ScheduleError(f"invalid slot id {slot_id!r}: expected YYYY-MM-DDTHH:MM")
        try:
            day = date.fromisoformat(match[1])
            nominal = parse_time(match[2])
        except ValueError as exc:
            raise ScheduleError(f"invalid slot id {slot_id!r}: {exc}") from exc
        if nominal not in self.times_on(day):
            return None
        for slot in self._slots_in_days(day, day):
            if slot.local_time == nominal:
                return slot
        return None  # pragma: no cover - times_on(day) said the slot exists

    def _local_date(self, utc: datetime) -> date:
        return utc.astimezone(self._tz).date()

    def _iter_slots(self, first: date, last: date) -> Iterator[Slot]:
        chunk_start = first
        while chunk_start <= last:
            chunk_end = min(last, chunk_start + timedelta(days=_CHUNK_DAYS - 1))
            yield from self._slots_in_days(chunk_start, chunk_end)
            chunk_start = chunk_end + timedelta(days=1)

    def _slots_in_days(self, first: date, last: date) -> list[Slot]:
        """Slots on local dates first..last, in nominal order, with final due instants.

        Walking backwards from beyond ``last``, no slot may fall due after a slot with a later
        nominal time (the gap-day rule in the module docstring); this makes due_utc non-decreasing.
        """
        lookahead_end = last + timedelta(days=_MARGIN_DAYS)
        nominal = [(day, t) for day in _days(first, lookahead_end) for t in self.times_on(day)]
        slots: list[Slot] = []
        latest_allowed: datetime | None = None
        for day, nominal_time in reversed(nominal):
            # fold=0: a skipped time moves on by the gap; a repeated one is its first occurrence
            due = datetime.combine(day, nominal_time, tzinfo=self._tz).astimezone(UTC)
            if latest_allowed is not None and due > latest_allowed:
                due = latest_allowed
            latest_allowed = due
            if day <= last:
                slots.append(Slot(due_utc=due, local_date=day, local_time=nominal_time))
        slots.reverse()
        return slots
