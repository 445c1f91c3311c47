"""A cache of one schedule's slots over a window of wall time.

`Schedule.slots_between` and `Schedule.next_slot_after` recompute the local days around every
query (each a few hundred microseconds: zone conversions for a month of nominal times). The
engine asks on every step, nearly always about the same few days, so it keeps the slots of a
window of days and answers from it; a query outside the window recomputes the window around the
query. The answers are exactly the schedule's (the window is `slots_between` itself, and a query
is answered from it only when it lies wholly inside), so a wall-clock jump in either direction
needs no invalidation. A changed schedule needs a new `SlotWindow`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from datetime import datetime, timedelta

from agent.engine.schedule import Schedule, Slot

DEFAULT_AHEAD = timedelta(days=16)  # window length after the query that (re)fills it
DEFAULT_BEHIND = timedelta(days=2)  # kept before it: sachets and restarts look back a little
_EPSILON = timedelta(microseconds=1)


class SlotWindow:
    """Slots of `schedule` due in [start, end), refilled around a query that falls outside."""

    def __init__(
        self,
        schedule: Schedule,
        ahead: timedelta = DEFAULT_AHEAD,
        behind: timedelta = DEFAULT_BEHIND,
    ) -> None:
        if ahead <= timedelta(0) or behind < timedelta(0):
            raise ValueError("ahead must be positive and behind not negative")
        self.schedule = schedule
        self._ahead = ahead
        self._behind = behind
        self._start: datetime | None = None
        self._end: datetime | None = None
        self._slots: list[Slot] = []
        self._dues: list[datetime] = []
        self.refills = 0  # for tests and profiling: how often the window was recomputed

    def covers(self, start: datetime, end: datetime) -> bool:
        """[start, end) lies inside the window: `between` answers it without recomputing."""
        return (
            self._start is not None
            and self._end is not None
            and self._start <= start
            and end <= self._end
        )

    def _fill(self, start: datetime, end: datetime) -> None:
        self._start, self._end = start, end
        self._slots = list(self.schedule.slots_between(start, end))
        self._dues = [slot.due_utc for slot in self._slots]
        self.refills += 1

    def between(self, start: datetime, end: datetime) -> list[Slot]:
        """Exactly `schedule.slots_between(start, end)`: start <= due < end, in slot order."""
        if end <= start:
            return []
        if not self.covers(start, end):
            self._fill(start - self._behind, max(end, start + self._ahead))
        return self._slots[bisect_left(self._dues, start) : bisect_left(self._dues, end)]

    def iter_from(self, utc: datetime) -> Iterator[Slot]:
        """Every slot with due >= utc, in slot order (as `slots_between(utc, forever)` would be).

        Walks the window a window's length at a time; over a stretch without doses it asks the
        schedule for the next one (which gives up after its own search horizon).
        """
        start = utc
        while True:
            fresh = False
            if not (self._start is not None and self._start <= start < self._end_or(start)):
                self._fill(start - self._behind, start + self._ahead)
                fresh = True
            chunk = self.between(start, self._end_or(start))
            if not chunk and not fresh:  # near the window's end: look a full window ahead
                self._fill(start - self._behind, start + self._ahead)
                chunk = self.between(start, self._end_or(start))
            end = self._end_or(start)  # read before yielding: a caller may move the window
            yield from chunk
            if not chunk:
                following = self.schedule.next_slot_after(end - _EPSILON)  # due >= end
                if following is None:
                    return
                end = following.due_utc
            start = end

    def _end_or(self, default: datetime) -> datetime:
        return self._end if self._end is not None else default
