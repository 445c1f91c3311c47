"""The daily and monthly adherence-and-deviation summaries: when they are owed
(agent/summary_schedule.py, expected values worked out by hand from the Oslo calendar) and that the
daemon records each one once, as an event, with the period it covers."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from e2e_support import write_config

from agent.clock import TimeTrust, VirtualClock
from agent.config import load_config
from agent.daemon import SUMMARY_DAY_KEY, Daemon
from agent.engine.catalogue import make_event
from agent.engine.types import Emit
from agent.runtime import unit_edges
from agent.store.db import Store
from agent.summary_schedule import (
    MAX_LISTED_DEVIATIONS,
    Period,
    due_periods,
    next_run_utc,
    summary_event_data,
)

OSLO = "Europe/Oslo"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def labels(now: datetime, last: date | None) -> list[str]:
    return [f"{p.kind}:{p.label}" for p in due_periods(now, OSLO, last).periods]


def test_yesterday_is_owed_from_four_in_the_morning_local() -> None:
    # 2026-11-28 02:59Z is 03:59 in Oslo (CET): the 26th is the latest day owed, not yet the 27th
    assert labels(utc(2026, 11, 28, 2, 59), None) == ["day:2026-11-26"]
    assert labels(utc(2026, 11, 28, 3, 0), None) == ["day:2026-11-27"]
    # summer (CEST): 04:00 local is 02:00Z
    # (the 30th is the last of June: its month follows)
    assert labels(utc(2026, 7, 2, 1, 59), None) == ["day:2026-06-30", "month:2026-06"]
    assert labels(utc(2026, 7, 2, 2, 0), None) == ["day:2026-07-01"]


def test_a_day_already_summarised_is_not_owed_again() -> None:
    assert labels(utc(2026, 11, 28, 12, 0), date(2026, 11, 27)) == []


def test_next_run_is_four_local_in_winter_and_in_summer() -> None:
    assert next_run_utc(utc(2026, 11, 28, 12, 0), OSLO) == utc(2026, 11, 29, 3, 0)
    assert next_run_utc(utc(2026, 7, 1, 1, 0), OSLO) == utc(2026, 7, 1, 2, 0)  # 03:00 CEST
    assert next_run_utc(utc(2026, 7, 1, 2, 0), OSLO) == utc(2026, 7, 2, 2, 0)  # at 04:00: next
    # the night DST ends (2026-10-25): 04:00 CET that morning is 03:00Z
    assert next_run_utc(utc(2026, 10, 24, 23, 0), OSLO) == utc(2026, 10, 25, 3, 0)


def test_periods_are_local_days_23_and_25_hours_long_at_the_dst_changes() -> None:
    [spring] = due_periods(utc(2026, 3, 30, 12, 0), OSLO, date(2026, 3, 28)).periods
    assert (spring.label, spring.start_utc, spring.end_utc) == (
        "2026-03-29",
        utc(2026, 3, 28, 23, 0),  # 00:00 CET
        utc(2026, 3, 29, 22, 0),  # 00:00 CEST: 23 hours
    )
    [autumn] = due_periods(utc(2026, 10, 26, 12, 0), OSLO, date(2026, 10, 24)).periods
    assert (autumn.start_utc, autumn.end_utc) == (
        utc(2026, 10, 24, 22, 0),
        utc(2026, 10, 25, 23, 0),
    )


def test_days_missed_are_made_up_oldest_first_with_the_month_after_its_last_day() -> None:
    owed = due_periods(utc(2026, 11, 2, 10, 0), OSLO, date(2026, 10, 29))
    assert [f"{p.kind}:{p.label}" for p in owed.periods] == [
        "day:2026-10-30",
        "day:2026-10-31",
        "month:2026-10",
        "day:2026-11-01",
    ]
    month = owed.periods[2]
    # October 2026: 1st 00:00 CEST to November 1st 00:00 CET
    assert (month.start_utc, month.end_utc) == (utc(2026, 9, 30, 22, 0), utc(2026, 10, 31, 23, 0))
    assert month.last_day == date(2026, 10, 31)
    assert owed.days_skipped == 0


def test_catch_up_stops_a_month_back_and_counts_the_days_left_out() -> None:
    owed = due_periods(utc(2026, 11, 28, 10, 0), OSLO, date(2026, 1, 1))
    days = [p for p in owed.periods if p.kind == "day"]
    assert (days[0].label, days[-1].label, len(days)) == ("2026-10-28", "2026-11-27", 31)
    assert [p.label for p in owed.periods if p.kind == "month"] == ["2026-10"]
    # 2 January to 27 October 2026: 30+28+31+30+31+30+31+31+30+27 days
    assert owed.days_skipped == 299


def test_a_long_deviation_list_is_cut_and_says_how_many_are_not_listed() -> None:
    period = Period(
        "month", "2026-10", utc(2026, 9, 30, 22), utc(2026, 10, 31, 23), date(2026, 10, 31)
    )
    entries = [{"seq": n} for n in range(MAX_LISTED_DEVIATIONS + 7)]
    data = summary_event_data(period, {"deviations": entries, "doses": {}})
    assert (data["period"], data["label"]) == ("month", "2026-10")
    assert data["deviations"] == entries[:MAX_LISTED_DEVIATIONS]
    assert data["deviations_not_listed"] == 7
    short = summary_event_data(period, {"deviations": entries[:3]})
    assert (short["deviations"], short["deviations_not_listed"]) == (entries[:3], 0)


# --- the daemon records them ------------------------------------------------------------------


def make_daemon(tmp_path: Path, store: Store, clock: VirtualClock) -> Daemon:
    config = load_config(
        write_config(tmp_path, unit_id="u-1", broker_port=1, device=tmp_path / "tty")
    )
    return Daemon(
        config,
        clock=clock,
        store=store,
        edges=unit_edges(config),
    )


def summaries(store: Store) -> list[dict[str, object]]:
    found = []
    for record in store.audit_records(after_seq=0, limit=10_000):
        payload = record.body.get("payload")
        if record.body.get("kind") == "adherence_summary" and isinstance(payload, dict):
            found.append(payload["data"])
    return found


def test_the_daemon_records_each_owed_summary_once_counting_the_day_s_deviations(
    tmp_path: Path,
) -> None:
    (tmp_path / "state").mkdir()
    # Tuesday 2026-11-24 10:00 in Oslo
    clock = VirtualClock(utc(2026, 11, 24, 9, 0))
    with Store.open(tmp_path / "state" / "agent.sqlite3") as store:
        daemon = make_daemon(tmp_path, store, clock)
        daemon._record_startup()  # binds the config's patient
        daemon._record_owed_summaries(clock.now())
        assert [s["label"] for s in summaries(store)] == ["2026-11-23"]
        # a jam on the 24th, another on the 25th
        daemon.apply([Emit(make_event("fault_jam", {}))], clock.now())
        clock.advance(timedelta(days=1).total_seconds())
        daemon.apply([Emit(make_event("fault_jam", {}))], clock.now())
        daemon._record_owed_summaries(clock.now())  # 25th 10:00: the 24th is owed
        daemon._record_owed_summaries(clock.now())  # and only once
        recorded = summaries(store)
        assert [s["label"] for s in recorded] == ["2026-11-23", "2026-11-24"]
        assert recorded[0]["deviations_by_category"] == {}
        assert recorded[1]["deviations_by_category"] == {"dispensing_stopped": 1}
        assert recorded[1]["period_start"] == "2026-11-23T23:00:00Z"
        assert store.get_kv(SUMMARY_DAY_KEY) == "2026-11-24"
        # off for three days: the 25th, 26th and 27th are made up, in order
        clock.advance(timedelta(days=3).total_seconds())
        daemon._record_owed_summaries(clock.now())
        assert [s["label"] for s in summaries(store)][2:] == [
            "2026-11-25",
            "2026-11-26",
            "2026-11-27",
        ]
        assert summaries(store)[2]["deviations_by_category"] == {"dispensing_stopped": 1}


def test_the_summary_event_is_info_without_a_vkp_code(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    clock = VirtualClock(utc(2026, 11, 24, 9, 0))
    with Store.open(tmp_path / "state" / "agent.sqlite3") as store:
        daemon = make_daemon(tmp_path, store, clock)
        daemon._record_startup()
        daemon._record_owed_summaries(clock.now())
        [event] = [e for e in store.pending_events(limit=100) if e.kind == "adherence_summary"]
        assert (event.payload["priority"], event.payload["vkp_code"]) == ("info", None)


def test_no_summary_while_time_is_untrusted(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    clock = VirtualClock(utc(2026, 11, 24, 9, 0), trust=TimeTrust.UNTRUSTED)
    with Store.open(tmp_path / "state" / "agent.sqlite3") as store:
        daemon = make_daemon(tmp_path, store, clock)
        daemon._record_startup()
        assert daemon._summaries_owed_now() == []
        clock.set_trust(TimeTrust.SYNCHRONISED)
        assert [p.label for p in daemon._summaries_owed_now()] == ["2026-11-23"]
