"""The adherence-and-deviation summary, from a real SQLite store: the scripted day (taken, missed,
wrong roll, travel) gives these counts and these deviations, each with its alert and outcome."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from scripted_day import RecordedDay, record_day

from agent.deviation_summary import (
    DoseCounts,
    RecordedEvent,
    day_period,
    month_period,
    recorded_events,
    summarise,
    summary_from_store,
)


def z(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


MONDAY = (z("2026-03-01T23:00:00Z"), z("2026-03-02T23:00:00Z"))  # 2 March, Oslo (CET)
EVENING = z("2026-03-02T23:00:00Z")


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecordedDay]:
    recorded = record_day(tmp_path_factory.mktemp("day") / "agent.db")
    yield recorded
    recorded.store.close()


def test_periods_are_local_days_and_months_in_utc() -> None:
    assert day_period(date(2026, 3, 2)) == MONDAY
    # the spring DST change: a day of 23 hours
    assert day_period(date(2026, 3, 29)) == (
        z("2026-03-28T23:00:00Z"),
        z("2026-03-29T22:00:00Z"),
    )
    assert month_period(2026, 3) == (z("2026-02-28T23:00:00Z"), z("2026-03-31T22:00:00Z"))
    assert month_period(2026, 12) == (z("2026-11-30T23:00:00Z"), z("2026-12-31T23:00:00Z"))


def test_every_event_of_the_day_is_read_back_from_the_audit_log(day: RecordedDay) -> None:
    events = recorded_events(day.store)
    assert [e.seq for e in events] == list(range(1, 31))
    assert events[7].kind == "slot_outcome"
    assert events[7].alert_id == "alert-000001"
    assert events[7].data["deviation"] == "dose_missed"


def test_the_daily_summary_counts_the_doses(day: RecordedDay) -> None:
    summary = summary_from_store(day.store, *MONDAY, now=EVENING)
    assert summary.doses == DoseCounts(
        planned=4, given=4, taken=3, late=0, missed=1, refused=0, open=0
    )
    assert summary.doses.adherence == 0.75


def test_the_daily_summary_lists_each_deviation_with_its_alert_and_outcome(
    day: RecordedDay,
) -> None:
    summary = summary_from_store(day.store, *MONDAY, now=EVENING)
    got = [
        (d.category, d.kind, d.seq, d.alert_id, d.vkp_code, d.outcome, d.acknowledged_by)
        for d in summary.deviations
    ]
    assert got == [
        ("alert_not_acknowledged", "slot_outcome", 8, "alert-000001", "3.3", "open", None),
        ("dose_missed", "slot_outcome", 8, "alert-000001", "3.3", "open", None),
        (
            "roll_fault",
            "wrong_roll",
            11,
            "alert-000002",
            "3.5",
            "acknowledged_and_resolved",
            "nurse-3",
        ),
    ]
    wrong = summary.deviations[2]
    assert wrong.acknowledged_at == z("2026-03-02T13:10:00Z")
    assert wrong.resolved_at == z("2026-03-02T13:20:00Z")
    assert wrong.resolved_by == "wrong_roll_cleared"
    assert summary.deviations[1].slot_id == "2026-03-02T12:00"
    assert summary.by_category() == {
        "alert_not_acknowledged": 1,
        "dose_missed": 1,
        "roll_fault": 1,
    }


def test_the_monthly_summary_counts_the_trip(day: RecordedDay) -> None:
    summary = summary_from_store(day.store, *month_period(2026, 3), now=z("2026-03-04T00:00:00Z"))
    assert summary.doses == DoseCounts(
        planned=8, given=8, taken=3, missed=1, dispensed_for_travel=4
    )
    assert summary.doses.adherence == 0.75


def test_a_summary_on_request_sees_only_what_had_happened(day: RecordedDay) -> None:
    """Asked at 13:15 for 12:00-13:30: the wrong roll is acknowledged, not yet removed."""
    now = z("2026-03-02T13:15:00Z")
    summary = summary_from_store(
        day.store, z("2026-03-02T12:00:00Z"), z("2026-03-02T13:30:00Z"), now
    )
    assert summary.doses == DoseCounts()  # no dose was due in the window
    assert summary.doses.adherence is None
    got = [(d.category, d.seq, d.outcome) for d in summary.deviations]
    assert got == [
        ("alert_not_acknowledged", 8, "open"),
        ("dose_missed", 8, "open"),
        ("roll_fault", 11, "acknowledged"),
    ]


def test_an_acknowledgement_later_than_the_limit_is_a_deviation(day: RecordedDay) -> None:
    summary = summary_from_store(day.store, *MONDAY, now=EVENING, ack_limit=timedelta(minutes=5))
    late = [d for d in summary.deviations if d.category == "alert_not_acknowledged"]
    assert [(d.seq, d.outcome, d.acknowledged_by) for d in late] == [
        (8, "open", None),
        (11, "acknowledged_late", "nurse-3"),
    ]


def test_the_summary_is_json(day: RecordedDay) -> None:
    payload: dict[str, Any] = summary_from_store(day.store, *MONDAY, now=EVENING).as_dict()
    assert payload["period_start"] == "2026-03-01T23:00:00Z"
    assert payload["ack_limit_s"] == 1800
    assert payload["doses"]["missed"] == 1
    assert payload["deviations"][2] == {
        "category": "roll_fault",
        "kind": "wrong_roll",
        "seq": 11,
        "event_id": payload["deviations"][2]["event_id"],
        "at": "2026-03-02T13:00:00Z",
        "priority": "high",
        "vkp_code": "3.5",
        "alert_id": "alert-000002",
        "slot_id": None,
        "outcome": "acknowledged_and_resolved",
        "acknowledged_by": "nurse-3",
        "acknowledged_at": "2026-03-02T13:10:00Z",
        "resolved_at": "2026-03-02T13:20:00Z",
        "resolved_by": "wrong_roll_cleared",
    }


def event(seq: int, kind: str, at: str, data: dict[str, Any], **kw: Any) -> RecordedEvent:
    return RecordedEvent(
        seq=seq,
        event_id=f"e{seq}",
        kind=kind,
        at=z(at),
        trust="synchronised",
        priority=kw.get("priority", "info"),
        vkp_code=kw.get("vkp_code"),
        alert_id=kw.get("alert_id"),
        data=data,
    )


def test_late_refused_and_unconfirmed_doses_and_a_condition_still_open() -> None:
    events = [
        event(
            1,
            "slot_outcome",
            "2026-03-02T08:00:00Z",
            {
                "slot_id": "a",
                "due_utc": "2026-03-02T07:00:00+00:00",
                "outcome": "missed",
                "reason": "not_taken",
                "presented_at": "2026-03-02T07:00:00+00:00",
            },
            priority="high",
            alert_id="alert-1",
            vkp_code="3.3",
        ),
        event(2, "dose_taken_late", "2026-03-02T08:20:00Z", {"slot_id": "a"}, priority="medium"),
        event(
            3,
            "slot_outcome",
            "2026-03-02T12:00:00Z",
            {
                "slot_id": "b",
                "due_utc": "2026-03-02T11:00:00+00:00",
                "outcome": "refused",
                "reason": "foreign_roll",
                "presented_at": None,
            },
            priority="high",
            alert_id="alert-2",
            vkp_code="3.3",
        ),
        event(
            4,
            "slot_outcome",
            "2026-03-02T17:00:00Z",
            {
                "slot_id": "c",
                "due_utc": "2026-03-02T16:00:00+00:00",
                "outcome": "taken_unconfirmed",
                "reason": "tray_emptied_unseen",
                "presented_at": "2026-03-02T16:00:00+00:00",
            },
            priority="medium",
            alert_id="alert-3",
        ),
        event(
            5,
            "alert_acknowledged",
            "2026-03-02T17:05:00Z",
            {
                "alert_id": "alert-3",
                "kind": "dose_taken_unconfirmed",
                "by": "op-1",
                "resolved": True,
            },
        ),
        event(6, "fault_jam", "2026-03-02T18:00:00Z", {}, priority="high", vkp_code="3.14"),
        event(7, "fault_jam_cleared", "2026-03-03T09:00:00Z", {}, vkp_code="3.14"),
    ]
    summary = summarise(events, *MONDAY, now=EVENING, ack_limit=timedelta(minutes=30))
    assert summary.doses == DoseCounts(
        planned=3, given=2, taken=0, taken_unconfirmed=1, late=1, missed=1, refused=1
    )
    assert summary.doses.adherence == 0.0
    got = [(d.category, d.seq, d.outcome) for d in summary.deviations]
    assert got == [
        ("alert_not_acknowledged", 1, "open"),
        ("dose_missed", 1, "open"),
        ("dose_late", 2, "recorded"),
        ("alert_not_acknowledged", 3, "open"),
        ("dose_refused", 3, "open"),
        ("dose_unconfirmed", 4, "acknowledged_and_resolved"),
        ("dispensing_stopped", 6, "open"),  # cleared only the next morning, after `now`
    ]
    later = summarise(events, *MONDAY, now=z("2026-03-03T10:00:00Z"))
    (jam,) = [d for d in later.deviations if d.kind == "fault_jam"]
    assert (jam.outcome, jam.resolved_at) == ("resolved", z("2026-03-03T09:00:00Z"))


def test_a_period_that_does_not_end_after_it_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="must end after"):
        summarise([], EVENING, EVENING, now=EVENING)


def test_an_event_that_names_an_earlier_alert_is_recorded_not_raised() -> None:
    missed = event(
        1,
        "slot_outcome",
        "2026-03-02T08:00:00Z",
        {
            "slot_id": "a",
            "due_utc": "2026-03-02T07:00:00Z",
            "outcome": "missed",
            "reason": "not_taken",
        },
        priority="high",
        alert_id="alert-1",
        vkp_code="3.3",
    )
    late = event(2, "dose_taken_late", "2026-03-02T09:00:00Z", {"slot_id": "a"}, alert_id="alert-1")
    # the acknowledgement names the alert in the envelope only
    ack = event(3, "alert_acknowledged", "2026-03-02T08:10:00Z", {"by": "op-2"}, alert_id="alert-1")
    summary = summarise([missed, late, ack], *MONDAY, now=EVENING)
    got = [
        (d.category, d.seq, d.alert_id, d.outcome, d.acknowledged_by) for d in summary.deviations
    ]
    assert got == [
        ("dose_missed", 1, "alert-1", "acknowledged_and_resolved", "op-2"),
        ("dose_late", 2, "alert-1", "recorded", None),
    ]
