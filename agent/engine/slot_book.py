"""The slot book: which scheduled slots are being worked on (runs), how far the schedule has been
picked up (cursor), which slots are settled, and the horizon before which everything is settled.
A component of the dose engine: plain state and questions about it, no I/O, no clock.

What happens to one run (dispensed, presented, reminded, missed) is `lifecycle`'s job; when a slot
is picked up, held or settled is decided by the engine, which keeps this book.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from agent.engine.lifecycle import SlotRun
from agent.engine.schedule import Schedule, Slot
from agent.engine.slot_window import SlotWindow
from agent.engine.state import SettledSlot


@dataclass(slots=True)
class SlotBook:
    horizon: datetime | None  # durable: slots due before this are settled (or predate install)
    settled: list[SettledSlot]  # durable: settled slots due at/after the horizon (early TAKE)
    cursor: datetime | None  # slots due up to here have been picked up
    # durable: `settled` is complete from here on (older records were pruned); None: all kept
    settled_known_from: datetime | None = None
    runs: list[SlotRun] = field(default_factory=list)  # not durable: open slots, due order
    # the last intake (DoseTaken), where the minimum interval runs from: wall time is durable,
    # the monotonic instant is known only in the process that saw it (and is then the measure)
    last_intake_utc: datetime | None = None
    last_intake_mono: float | None = None
    settle_count: int = 0  # settled slots so far (part of the next_scheduled memo key)
    # not durable: slots named HIGH ahead (dispenser empty while the clock was untrusted); a
    # restart names them again at most
    named_ahead: set[str] = field(default_factory=set)
    # not durable: the same slots, kept when a roll comes (the centre was told they are held)
    said_ahead: set[str] = field(default_factory=set)
    # caches of pure functions of the schedule
    window: SlotWindow | None = None  # the schedule's slots near now
    upcoming: tuple[tuple[object, ...], Slot | None] | None = None  # next_scheduled memo
    settled_ids: tuple[list[SettledSlot], int, set[str]] | None = None  # is_settled memo

    def run_by_dispense(self, dispense_id: int) -> SlotRun | None:
        for run in self.runs:
            if run.dispense_id == dispense_id:
                return run
        return None

    def replace_run(self, updated: SlotRun) -> None:
        self.runs = [updated if r.slot_id == updated.slot_id else r for r in self.runs]

    def head(self) -> SlotRun | None:
        """The slot to work on now: the earliest not yet in the tray, if no dose is in the tray."""
        runs = self.runs
        if not runs or any(r.in_tray for r in runs):  # (asked on every step, mostly empty)
            return None
        return runs[0]

    def is_settled(self, slot_id: str) -> bool:
        # the ids as a set, memoised on the list and its length: the engine only appends to
        # `settled` (one per settled slot) or replaces it (pruning), never edits it in place
        settled, memo = self.settled, self.settled_ids
        if memo is None or memo[0] is not settled or memo[1] != len(settled):
            memo = self.settled_ids = (settled, len(settled), {s.slot_id for s in settled})
        return slot_id in memo[2]

    def slots(self, schedule: Schedule) -> SlotWindow:
        """The slot cache of `schedule` (a new schedule starts a new one)."""
        if self.window is None or self.window.schedule is not schedule:
            self.window = SlotWindow(schedule)
        return self.window

    def next_scheduled(self, schedule: Schedule | None) -> Slot | None:
        """The first slot due at/after the cursor that is neither running nor settled.

        Memoised on everything it depends on: the cursor, the schedule, which slots are
        running (an early TAKE adds a run without moving the cursor) and the settled count.
        """
        if schedule is None or self.cursor is None:
            return None
        runs = self.runs
        running = tuple([r.slot_id for r in runs]) if runs else ()  # (a list: quicker to build)
        key = (self.cursor, schedule, running, self.settle_count)
        memo = self.upcoming
        if memo is not None and memo[0] == key:
            return memo[1]
        found: Slot | None = None
        for slot in self.slots(schedule).iter_from(self.cursor):
            slot_id = slot.slot_id
            if slot_id not in running and not self.is_settled(slot_id):
                found = slot
                break
        self.upcoming = (key, found)
        return found
