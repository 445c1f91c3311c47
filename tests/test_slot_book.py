"""The slot book on its own: finding a run, the head of the queue, settled slots, and the next
scheduled slot (neither running nor settled), whose memo must follow every change it depends on.

Expected slots are written out by hand: a daily 08:00 / 20:00 schedule in Europe/Oslo, which is
UTC+1 in March 2026 (07:00 and 19:00 UTC).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from test_engine import daily

from agent.engine.lifecycle import Phase, SlotRun
from agent.engine.slot_book import SlotBook
from agent.engine.state import SettledSlot


def utc(d: int, h: int) -> datetime:
    return datetime(2026, 3, d, h, 0, tzinfo=UTC)


def run(slot_id: str, due: datetime, **fields: object) -> SlotRun:
    return replace(SlotRun(slot_id, due, due.isoformat()), **fields)  # type: ignore[arg-type]


def book(**fields: object) -> SlotBook:
    return replace(SlotBook(horizon=None, settled=[], cursor=utc(2, 5)), **fields)  # type: ignore[arg-type]


MORNING = run("2026-03-02T08:00", utc(2, 7), dispense_id=11)
EVENING = run("2026-03-02T20:00", utc(2, 19), dispense_id=12)


def test_a_run_is_found_by_its_dispense_id_and_only_by_it() -> None:
    slots = book(runs=[MORNING, EVENING])
    assert slots.run_by_dispense(12) is EVENING
    assert slots.run_by_dispense(11) is MORNING
    assert slots.run_by_dispense(13) is None


def test_replace_run_changes_only_the_run_with_that_slot_id() -> None:
    slots = book(runs=[MORNING, EVENING])
    held = replace(EVENING, held_reason="no_roll")
    slots.replace_run(held)
    assert slots.runs == [MORNING, held]


def test_the_head_is_the_earliest_run_unless_a_dose_is_in_the_tray() -> None:
    assert book().head() is None
    assert book(runs=[MORNING, EVENING]).head() is MORNING
    presented = replace(MORNING, phase=Phase.PRESENTED)
    assert book(runs=[presented, EVENING]).head() is None
    confirmed = replace(MORNING, confirmed_mono=3.0)  # accepted, maybe cut: in the tray
    assert book(runs=[confirmed, EVENING]).head() is None


def test_is_settled_looks_for_that_slot_id() -> None:
    slots = book(settled=[SettledSlot("2026-03-02T08:00", utc(2, 7))])
    assert slots.is_settled("2026-03-02T08:00")
    assert not slots.is_settled("2026-03-02T20:00")


def test_the_slot_cache_is_kept_for_a_schedule_and_renewed_for_another() -> None:
    first, second = daily("08:00"), daily("08:00")
    slots = book()
    window = slots.slots(first)
    assert slots.slots(first) is window
    assert slots.slots(second) is not window
    assert slots.slots(second).schedule is second


def test_next_scheduled_skips_running_and_settled_slots() -> None:
    schedule = daily("08:00", "20:00")
    slots = book()
    assert slots.next_scheduled(None) is None
    assert book(cursor=None).next_scheduled(schedule) is None
    first = slots.next_scheduled(schedule)
    assert first is not None
    assert (first.slot_id, first.due_utc) == ("2026-03-02T08:00", utc(2, 7))
    slots.runs = [MORNING]  # picked up early (a TAKE): the cursor has not moved
    found = slots.next_scheduled(schedule)
    assert found is not None
    assert found.slot_id == "2026-03-02T20:00"
    slots.runs = []
    slots.settled = [SettledSlot("2026-03-02T08:00", utc(2, 7))]
    slots.settle_count = 1
    found = slots.next_scheduled(schedule)
    assert found is not None
    assert found.slot_id == "2026-03-02T20:00"


def test_the_memo_follows_the_cursor_and_the_schedule() -> None:
    slots = book()
    morning = daily("08:00")
    found = slots.next_scheduled(morning)
    assert found is not None
    assert found.slot_id == "2026-03-02T08:00"
    assert slots.next_scheduled(morning) == found  # asked again: the same answer
    slots.cursor = utc(2, 8)  # past 08:00 on the 2nd
    found = slots.next_scheduled(morning)
    assert found is not None
    assert found.slot_id == "2026-03-03T08:00"
    evening = daily("20:00")
    found = slots.next_scheduled(evening)
    assert found is not None
    assert found.slot_id == "2026-03-02T20:00"
