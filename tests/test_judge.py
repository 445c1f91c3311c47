"""The independent judge (agent.simulation.judge) on hand-made observations, no engine: each rule
fires on a history that breaks it and stays quiet on one that keeps it, and its reference schedule
follows docs/time-policy.md on the DST days of Europe/Oslo."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from agent.simulation.judge import (
    ALL_RULES,
    Judge,
    JudgeConfig,
    SachetLabel,
    World,
    parse_rules,
    reference_min_interval,
    reference_min_interval_of_rules,
    reference_slots,
)
from agent.simulation.violation import InvariantViolation

REF = "p-judge-1"
OSLO = "Europe/Oslo"
DAY = date(2026, 6, 1)  # CEST: local = UTC + 2
INSTALLED = datetime(2026, 5, 31, 22, 7, tzinfo=UTC)  # 00:07 local on DAY
UNTIL = datetime(2026, 6, 2, 22, 0, tzinfo=UTC)  # slots of DAY and 2 June must settle


def utc(hhmm: str, day: int = 1) -> datetime:
    """A UTC instant on June `day`, 2026."""
    h, m = hhmm.split(":")
    return datetime(2026, 6, day, int(h), int(m), tzinfo=UTC)


def judge(
    times: tuple[str, ...] = ("08:00", "20:00"),
    *,
    enforce: frozenset[str] = ALL_RULES,
    **kw: object,
) -> Judge:
    config = JudgeConfig(
        patient_ref=REF,
        zone=OSLO,
        times=times,
        effective_from=DAY,
        installed_utc=INSTALLED,
        expect_until_utc=UNTIL,
        sachet_time_tolerance=timedelta(minutes=30),
        enforce=enforce,
        seed=7,
        **kw,  # type: ignore[arg-type]
    )
    j = Judge(config)
    j.advance(INSTALLED)
    return j


def label(
    intended: datetime,
    *,
    index: int = 0,
    roll_ref: str = REF,
    sachet_ref: str = REF,
    expiry: datetime | None = datetime(2027, 1, 1, tzinfo=UTC),
) -> SachetLabel:
    return SachetLabel("R001", roll_ref, sachet_ref, index, intended, expiry)


def world(
    roll: str | None = REF,
    remaining: int = 10,
    *,
    jammed: bool = False,
    bin_full: bool = False,
    linked: bool = True,
    reader: SachetLabel | None = None,
    tray_occupied: bool = False,
    roll_label_readable: bool = True,
    clock_behind: timedelta = timedelta(0),
    clock_trusted: bool = True,
) -> World:
    return World(
        roll,
        remaining,
        jammed,
        bin_full,
        linked,
        reader,
        tray_occupied,
        roll_label_readable,
        clock_behind,
        clock_trusted,
    )


# the deviation category an outcome is recorded as (R3); a missed dose that was in the tray is
# "dose_missed" (pass it)
DEVIATIONS = {
    "missed": "dose_not_presented",
    "refused": "dose_refused",
    "taken_unconfirmed": "dose_unconfirmed",
}


def outcome(
    j: Judge,
    slot_id: str,
    result: str = "taken",
    priority: str = "info",
    deviation: str | None = None,
) -> None:
    # a dose not given is a latched alarm: it carries an alert id (R3)
    alert_id = f"alert-{slot_id}" if priority == "high" else None
    fields: dict[str, object] = {"slot_id": slot_id, "outcome": result}
    if deviation or result in DEVIATIONS:
        fields["deviation"] = deviation or DEVIATIONS[result]
    j.published("slot_outcome", priority, fields, alert_id)


def settle_all(j: Judge, *, but: tuple[str, ...] = ()) -> None:
    for slot_id in j.expected_slot_ids:
        if slot_id not in but:
            outcome(j, slot_id)


# --- the reference schedule: docs/time-policy.md, Europe/Oslo ------------------------------


def dues(times: tuple[str, ...], day: date) -> dict[str, datetime]:
    return {s.slot_id: s.due_utc for s in reference_slots(OSLO, times, day, day, day)}


def test_spring_forward_2026_03_29_follows_the_documented_table() -> None:
    got = dues(("01:30", "02:00", "02:30", "03:00"), date(2026, 3, 29))

    def t(h: int, m: int) -> datetime:
        return datetime(2026, 3, 29, h, m, tzinfo=UTC)

    # 02:00 and 02:30 do not exist: shifted forward by the gap (01:00 / 01:30 UTC), but an
    # earlier nominal time is never due after a later one, so 02:30 joins 03:00 at 01:00 UTC
    assert got == {
        "2026-03-29T01:30": t(0, 30),
        "2026-03-29T02:00": t(1, 0),
        "2026-03-29T02:30": t(1, 0),
        "2026-03-29T03:00": t(1, 0),
    }


def test_spring_forward_a_missing_time_alone_is_shifted_by_the_gap() -> None:
    assert dues(("02:30", "09:00"), date(2026, 3, 29)) == {
        "2026-03-29T02:30": datetime(2026, 3, 29, 1, 30, tzinfo=UTC),  # 03:30 CEST
        "2026-03-29T09:00": datetime(2026, 3, 29, 7, 0, tzinfo=UTC),
    }
    # two nominal times on one instant stay two slots, ordered by nominal time
    same = reference_slots(OSLO, ("03:15", "02:15"), date(2026, 3, 29), *[date(2026, 3, 29)] * 2)
    assert [(s.slot_id, s.due_utc.hour, s.due_utc.minute) for s in same] == [
        ("2026-03-29T02:15", 1, 15),
        ("2026-03-29T03:15", 1, 15),
    ]


def test_fall_back_2026_10_25_gives_the_repeated_hour_once_at_its_first_occurrence() -> None:
    got = dues(("01:30", "02:00", "02:30", "03:00"), date(2026, 10, 25))
    assert got == {
        "2026-10-25T01:30": datetime(2026, 10, 24, 23, 30, tzinfo=UTC),
        "2026-10-25T02:00": datetime(2026, 10, 25, 0, 0, tzinfo=UTC),
        "2026-10-25T02:30": datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # CEST, not 01:30 UTC
        "2026-10-25T03:00": datetime(2026, 10, 25, 2, 0, tzinfo=UTC),
    }


def test_rules_start_at_local_midnight_and_slots_come_in_due_order() -> None:
    slots = reference_slots(OSLO, ("20:00", "08:00"), DAY, date(2026, 5, 30), date(2026, 6, 2))
    assert [s.slot_id for s in slots] == [
        "2026-06-01T08:00",
        "2026-06-01T20:00",
        "2026-06-02T08:00",
        "2026-06-02T20:00",
    ]
    with pytest.raises(ValueError, match="HH:MM"):
        reference_slots(OSLO, ("8:00",), DAY, DAY, DAY)


def test_the_reference_agrees_with_the_engine_schedule_over_two_years() -> None:
    """A differential check: written from the docs, the reference gives the engine's slots for
    every template the harness uses (both DST changes of 2026 and 2027)."""
    from agent.engine.schedule import Schedule, ScheduleRule, parse_time
    from agent.simulation.harness import SCHEDULE_TEMPLATES

    first, last = date(2026, 1, 1), date(2027, 12, 31)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = datetime(2027, 12, 30, tzinfo=UTC)
    for times in (*SCHEDULE_TEMPLATES, ("01:30", "02:00", "02:30", "03:00")):
        rule = ScheduleRule(effective_from=first, times=tuple(parse_time(t) for t in times))
        engine = [
            (s.slot_id, s.due_utc) for s in Schedule.build(OSLO, [rule]).slots_between(start, end)
        ]
        ours = [
            (s.slot_id, s.due_utc)
            for s in reference_slots(OSLO, times, first, first, last)
            if start <= s.due_utc < end
        ]
        assert ours == engine, times


def test_the_judge_imports_nothing_from_the_engine() -> None:
    code = (
        "import sys, agent.simulation.judge\n"
        "bad = sorted(m for m in sys.modules if m.startswith('agent.engine'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=".")


# --- a clean day passes every rule -----------------------------------------------------------


def test_a_valid_history_passes_every_rule() -> None:
    j = judge()
    j.world(world())
    for day in (1, 2):
        for hhmm, slot in (("06:00", "08:00"), ("18:00", "20:00")):
            j.advance(utc(hhmm, day))
            j.presented(10 * day + len(slot), label(utc(hhmm, day)))
            j.published(
                "dose_presented",
                "info",
                {"slot_id": f"2026-06-0{day}T{slot}", "dispense_id": 10 * day + len(slot)},
            )
            j.advance(utc(hhmm, day) + timedelta(minutes=5))
            j.taken(10 * day + len(slot))
            j.published(
                "slot_outcome",
                "info",
                {
                    "slot_id": f"2026-06-0{day}T{slot}",
                    "outcome": "taken",
                    "dispense_id": 10 * day + len(slot),
                },
            )
    j.discarded(99, label(utc("06:00", 1), index=9))  # a leftover for a settled slot: stale
    j.published("sachet_discarded", "info", {"sachet_index": 9, "reason": "sachet_stale"})
    j.bin_fill(1, 30)
    j.finish(utc("23:00", 3))
    assert j.findings == []


# --- R1 ----------------------------------------------------------------------------------------


def test_r1_two_sachets_for_one_slot() -> None:
    j = judge()
    j.advance(utc("06:00"))
    j.presented(1, label(utc("06:00")))
    j.advance(utc("06:10"))
    with pytest.raises(InvariantViolation, match=r"judge R1 .*seed 7, true time 2026-06-01 06:10"):
        j.presented(2, label(utc("06:00"), index=1))


def test_r1_a_second_presentation_claimed_for_the_same_slot() -> None:
    j = judge(enforce=frozenset({"R1"}))
    j.advance(utc("06:00"))
    j.presented(1, label(utc("06:00")))
    j.published("dose_presented", "info", {"slot_id": "2026-06-01T08:00", "dispense_id": 1})
    j.presented(2, label(utc("18:00"), index=1))  # packed for 20:00 ...
    with pytest.raises(InvariantViolation, match="second sachet"):  # ... but given for 08:00
        j.published("dose_presented", "info", {"slot_id": "2026-06-01T08:00", "dispense_id": 2})


# --- R2 ----------------------------------------------------------------------------------------


def test_r2_two_intakes_closer_than_the_minimum_interval() -> None:
    j = judge()
    j.advance(utc("06:00"))
    j.taken(1)
    j.advance(utc("07:29"))
    with pytest.raises(InvariantViolation, match=r"R2 .*89.0 min after .*minimum 90.0 min"):
        j.taken(2)


def test_r2_quiet_at_the_interval_and_the_interval_is_a_parameter() -> None:
    j = judge()
    j.advance(utc("06:00"))
    j.taken(1)
    j.advance(utc("07:30"))
    j.taken(2)
    short = judge(min_intake_interval=timedelta(minutes=20))
    short.advance(utc("06:00"))
    short.taken(1)
    short.advance(utc("06:25"))
    short.taken(2)
    assert j.findings == short.findings == []


def test_r2_r4_sachets_taken_along_on_a_trip_are_not_intakes_but_must_be_for_it() -> None:
    """Hazard #5 (travel): the trip's sachets come out one after another; each must be packed
    for a slot of a travel pause, from a roll still good when that slot is due."""
    j = judge()
    j.advance(utc("05:00"))
    j.pause("trip", utc("05:00"), utc("22:00", day=2), take_along=True)
    for n, (hhmm, day) in enumerate((("06:00", 1), ("18:00", 1), ("06:00", 2))):
        j.presented(n, label(utc(hhmm, day), index=n))
        j.taken_for_travel(n)  # seconds apart: not intakes, so no R2
    assert j.findings == []
    stray = judge()
    stray.advance(utc("05:00"))
    stray.pause("hospital", utc("05:00"), utc("22:00", day=2))  # no sachets to take along
    stray.presented(1, label(utc("06:00")))
    with pytest.raises(InvariantViolation, match=r"R4 .*no slot of a travel pause"):
        stray.taken_for_travel(1)
    stale = judge()
    stale.advance(utc("05:00"))
    stale.pause("trip", utc("05:00"), utc("22:00", day=2), take_along=True)
    stale.presented(1, label(utc("06:00", day=2), expiry=utc("12:00")))
    with pytest.raises(InvariantViolation, match=r"R4 .*its roll expires before"):
        stale.taken_for_travel(1)


def test_r4_the_slots_own_dose_presented_before_a_trip_by_the_agents_clock_is_no_trip_sachet() -> (
    None
):
    """Wide world seed 338: the synchronised clock stepped back an hour; the agent presents the
    08:00 dose when its clock shows it, at true 07:00, after the trip began at 06:30 in true
    time but before it began by the agent's clock. Someone packing lifts it out: the agent
    packed nothing for the trip, and may settle the slot as taken (R12)."""
    j = judge(enforce=frozenset({"R4", "R12"}))
    j.world(world(clock_behind=timedelta(hours=1)))
    j.advance(utc("06:00"))
    j.pause("trip", utc("06:30"), utc("22:00", day=2), take_along=True)
    j.advance(utc("07:00"))
    j.presented(1, label(utc("06:00")))
    j.published("dose_presented", "info", {"dispense_id": 1})
    j.advance(utc("07:01"))
    j.taken_for_travel(1)
    j.published(
        "slot_outcome",
        "info",
        {"slot_id": "2026-06-01T08:00", "outcome": "taken", "dispense_id": 1},
    )
    j.advance(utc("08:00"))
    assert j.findings == []
    synced = judge(enforce=frozenset({"R4"}))  # the agent's clock showed the trip in force
    synced.world(world())
    synced.advance(utc("06:00"))
    synced.pause("trip", utc("06:30"), utc("22:00", day=2), take_along=True)
    synced.advance(utc("07:00"))
    synced.presented(1, label(utc("06:00")))
    synced.advance(utc("07:01"))
    with pytest.raises(InvariantViolation, match=r"R4 .*no slot of a travel pause"):
        synced.taken_for_travel(1)


@pytest.mark.parametrize(
    ("times", "interval"),
    [
        (("08:00", "09:00"), timedelta(minutes=30)),
        (("08:00", "08:30", "20:00"), timedelta(minutes=15)),
        (("20:00", "08:00", "14:00"), timedelta(hours=3)),
        (("00:15", "23:45"), timedelta(minutes=15)),  # across midnight
        (("00:05", "08:00", "23:15"), timedelta(minutes=25)),  # the mix's night doses
        (("09:00",), timedelta(hours=12)),  # 24 h apart: half, which is the cap
        (("07:30", "22:00"), timedelta(hours=4, minutes=45)),
    ],
)
def test_reference_min_interval_is_half_the_smallest_spacing(
    times: tuple[str, ...], interval: timedelta
) -> None:
    assert reference_min_interval(times) == interval


# --- R3 ----------------------------------------------------------------------------------------


def test_r3_a_slot_without_an_outcome_at_the_end() -> None:
    j = judge()
    settle_all(j, but=("2026-06-02T20:00",))
    with pytest.raises(InvariantViolation, match=r"R3 .*1 slot\(s\).*2026-06-02T20:00"):
        j.finish(utc("23:00", 3))


def test_r3_a_second_outcome_and_an_unknown_slot() -> None:
    j = judge(enforce=frozenset())
    outcome(j, "2026-06-01T08:00")
    outcome(j, "2026-06-01T08:00", "missed", "high")
    outcome(j, "2026-06-01T09:00")  # not a dose time
    outcome(j, "2026-05-31T20:00")  # before installation
    assert [f.rule for f in j.findings] == ["R3", "R3", "R3"]
    assert "second outcome" in j.findings[0].message
    assert "not in the schedule" in j.findings[1].message


def test_r3_slots_after_the_expectation_window_need_no_outcome() -> None:
    j = judge()
    settle_all(j)
    j.finish(utc("23:00", 3))  # 2026-06-03 slots are in the settle margin
    assert j.findings == []


# --- R4 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sachet", "message"),
    [
        (label(utc("06:00"), roll_ref="p-other"), "another patient's"),
        (label(utc("06:00"), sachet_ref="p-other"), "another patient's"),
        (label(utc("06:00"), expiry=utc("05:00")), "expired"),
        (label(utc("12:00")), "no slot of the schedule"),
    ],
)
def test_r4_a_wrong_sachet_presented(sachet: SachetLabel, message: str) -> None:
    j = judge()
    j.advance(utc("06:00"))
    with pytest.raises(InvariantViolation, match=message):
        j.presented(1, sachet)


def test_r4_a_sachet_given_for_a_slot_outside_the_tolerance() -> None:
    j = judge(enforce=frozenset({"R4"}))
    j.advance(utc("06:00"))
    j.presented(1, label(utc("06:00")))
    with pytest.raises(InvariantViolation, match=r"720\.0 min off"):
        j.published("dose_presented", "info", {"slot_id": "2026-06-01T20:00", "dispense_id": 1})


def test_r4_the_0800_sachet_given_as_the_0830_dose_when_tolerances_overlap() -> None:
    """Hazard #3: inside the 08:30 slot's tolerance, but packed for 08:00."""
    j = judge(("08:00", "08:30"), enforce=frozenset({"R4"}))
    j.advance(utc("06:30"))
    j.presented(1, label(utc("06:00")))
    with pytest.raises(InvariantViolation, match="packed for slot 2026-06-01T08:00"):
        j.published("dose_presented", "info", {"slot_id": "2026-06-01T08:30", "dispense_id": 1})
    ok = judge(("08:00", "08:30"))
    ok.advance(utc("06:30"))
    ok.presented(1, label(utc("06:30")))
    ok.published("dose_presented", "info", {"slot_id": "2026-06-01T08:30", "dispense_id": 1})
    assert ok.findings == []


def test_r4_slots_sharing_one_instant_cannot_be_told_apart() -> None:
    """Spring forward: 02:30 and 03:00 are both due at 01:00 UTC; either may take the sachet."""
    spring = date(2026, 3, 29)
    config = JudgeConfig(
        REF,
        OSLO,
        ("02:30", "03:00"),
        spring,
        datetime(2026, 3, 28, 23, 7, tzinfo=UTC),
        datetime(2026, 3, 29, 23, 0, tzinfo=UTC),
        timedelta(minutes=30),
    )
    j = Judge(config)
    at = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    j.advance(at)
    j.presented(1, SachetLabel("R1", REF, REF, 0, at, at + timedelta(days=30)))
    j.published("dose_presented", "info", {"slot_id": "2026-03-29T03:00", "dispense_id": 1})
    assert j.findings == []


# --- R5 ----------------------------------------------------------------------------------------


def test_r5_a_discard_before_its_slot_is_decided() -> None:
    j = judge()
    j.advance(utc("05:00"))
    with pytest.raises(InvariantViolation, match="2026-06-01T08:00 has no published outcome"):
        j.discarded(1, label(utc("06:00")))


def test_r5_a_plan_mismatch_discard_needs_a_decision_unless_configured() -> None:
    j = judge()
    j.advance(utc("05:00"))
    with pytest.raises(InvariantViolation, match="plan mismatch"):
        j.discarded(1, label(utc("12:00")))
    lenient = judge(discard_decisions=frozenset({"stale", "no_slot"}))
    lenient.advance(utc("05:00"))
    lenient.discarded(1, label(utc("12:00")))
    assert lenient.findings == []
    with pytest.raises(ValueError, match="unknown"):
        judge(discard_decisions=frozenset({"nurse_said_so"}))


def test_r5_a_persons_decision_covers_the_sachet_or_the_roll_it_names() -> None:
    j = judge()
    j.advance(utc("05:00"))
    j.discard_decided("R001", 1)
    j.discarded(1, label(utc("12:00"), index=1))  # decided: fine
    with pytest.raises(InvariantViolation, match="nobody decided"):
        j.discarded(2, label(utc("12:00", day=2), index=4))  # the decision named sachet 1 only
    whole = judge()
    whole.advance(utc("05:00"))
    whole.discard_decided("R001", None)
    whole.discarded(1, label(utc("12:00"), index=1))
    whole.discarded(2, label(utc("12:00", day=2), index=4))
    # a decision about unplanned sachets never covers one packed for a slot without an outcome
    with pytest.raises(InvariantViolation, match="has no published outcome"):
        whole.discarded(3, label(utc("18:00", day=2), index=5))
    refused = judge()
    refused.advance(utc("05:00"))
    refused.discard_decided("R001", 1)
    refused.decision_refused("R001", 1)  # the unit refused it: it never happened
    with pytest.raises(InvariantViolation, match="nobody decided"):
        refused.discarded(1, label(utc("12:00"), index=1))


def test_r5_after_a_schedule_update_with_the_sachets_time_it_is_a_slots_sachet() -> None:
    j = judge()
    j.advance(utc("08:00"))  # 10:00 local
    j.schedule_changed(DAY, ("08:00", "14:00", "20:00"))
    assert "2026-06-01T14:00" in j.expected_slot_ids
    with pytest.raises(InvariantViolation, match="2026-06-01T14:00 has no published outcome"):
        j.discarded(1, label(utc("12:00"), index=1))


# --- R6 ----------------------------------------------------------------------------------------


def test_r6_the_bin_overflows() -> None:
    j = judge()
    j.bin_fill(30, 30)
    with pytest.raises(InvariantViolation, match="31 sachets, capacity 30"):
        j.bin_fill(31, 30)


def test_r6_a_discard_never_takes_the_last_place_nor_goes_to_a_full_bin() -> None:
    """Hazard #5: a resume discarded 56 sachets into a bin of 30; every later dose was refused."""
    j = judge()
    j.bin_fill(29, 30, discards=1)
    j.bin_fill(30, 30)  # a dose taken back from the tray may take the last place
    assert j.findings == []
    with pytest.raises(InvariantViolation, match=r"R6 .*a discard took the bin's last place"):
        judge().bin_fill(30, 30, discards=1)
    with pytest.raises(InvariantViolation, match=r"R6 .*sent to a full bin"):
        judge().discard_refused_bin_full(7)


# --- R7 ----------------------------------------------------------------------------------------


def test_r7_a_missed_alarm_for_a_slot_due_in_a_pause() -> None:
    ok = judge()
    ok.pause("p1", utc("00:00"), utc("12:00"))
    ok.advance(utc("13:00"))
    outcome(ok, "2026-06-01T08:00", "skipped_paused")  # what should happen
    assert ok.findings == []
    j = judge()
    j.pause("p1", utc("00:00"), utc("12:00"))
    j.advance(utc("13:00"))  # reported after the pause: still an alarm for a paused slot
    with pytest.raises(InvariantViolation, match=r"R7 .*2026-06-01T08:00.*covers its due time"):
        outcome(j, "2026-06-01T08:00", "missed", "high")


def test_r7_a_missed_alarm_while_a_pause_is_in_force() -> None:
    """Hazard #5: the dose was in the tray when the pause began; its grace ends in the pause."""
    j = judge(enforce=frozenset({"R7"}))
    j.advance(utc("06:30"))
    j.pause("p1", utc("06:30"), None)
    j.advance(utc("07:00"))
    with pytest.raises(InvariantViolation, match="while pause p1 is in force"):
        outcome(j, "2026-06-01T08:00", "missed", "high")
    after = judge()
    after.pause("p1", utc("06:30"), None)
    after.advance(utc("06:40"))
    after.pause_ended("p1")
    after.advance(utc("07:00"))
    outcome(after, "2026-06-01T08:00", "missed", "high")  # the pause was over: a real alarm
    assert after.findings == []


def test_r7_a_pause_is_in_force_when_the_agents_clock_shows_its_start() -> None:
    """Wide world seed 318: the dose was in the tray before a pause; the synchronised clock
    stepped back an hour, so the grace ended before the pause's start by the agent's clock (it
    follows the clock, docs/time-policy.md), though after it in true time."""
    j = judge(enforce=frozenset({"R7"}))
    j.world(world(clock_behind=timedelta(hours=1)))
    j.advance(utc("06:30"))
    j.pause("p1", utc("06:50"), None)
    j.advance(utc("07:00"))  # the agent's clock shows 06:00: no pause yet
    outcome(j, "2026-06-01T08:00", "missed", "high")
    assert [f for f in j.findings if f.rule == "R7"] == []  # (R16 is not fed a dose here)
    late = judge(enforce=frozenset({"R7"}))
    late.world(world(clock_behind=timedelta(hours=1)))
    late.pause("p1", utc("06:50"), None)
    late.advance(utc("07:55"))  # the agent's clock shows 06:55: in force
    with pytest.raises(InvariantViolation, match="while pause p1 is in force"):
        outcome(late, "2026-06-01T08:00", "missed", "high")


# --- R9 ----------------------------------------------------------------------------------------


def presented_and_taken(j: Judge, dispense_id: int = 5) -> None:
    j.world(world())
    j.advance(utc("06:00"))  # 08:00 local
    j.presented(dispense_id, label(utc("06:00")))
    j.published(
        "dose_presented", "info", {"slot_id": "2026-06-01T08:00", "dispense_id": dispense_id}
    )
    j.advance(utc("06:04"))
    j.world(world(linked=False))  # the agent restarts: its DoseTaken is lost
    j.taken(dispense_id)
    j.world(world())


def test_r9_a_missed_alarm_for_a_presented_dose_the_patient_took() -> None:
    """Hazard #11: the DoseTaken was lost while the agent restarted."""
    j = judge()
    presented_and_taken(j)
    j.advance(utc("07:05"))
    with pytest.raises(
        InvariantViolation, match=r"R9 .*2026-06-01T08:00.*took at 2026-06-01 06:04"
    ):
        outcome(j, "2026-06-01T08:00", "missed", "high", "dose_missed")
    ok = judge()
    presented_and_taken(ok)
    outcome(ok, "2026-06-01T08:00", "taken_unconfirmed", "medium")
    assert ok.findings == []
    blind = judge()
    presented_and_taken(blind)
    blind.world(world(linked=False))  # the agent cannot see the tray: it cannot know
    blind.advance(utc("07:05"))
    outcome(blind, "2026-06-01T08:00", "missed", "high", "dose_missed")
    assert blind.findings == []


def test_r9_a_dose_taken_after_its_missed_outcome_is_no_false_alarm() -> None:
    j = judge()
    j.advance(utc("06:00"))
    j.presented(5, label(utc("06:00")))
    j.published("dose_presented", "info", {"slot_id": "2026-06-01T08:00", "dispense_id": 5})
    j.advance(utc("07:00"))
    outcome(j, "2026-06-01T08:00", "missed", "high", "dose_missed")  # grace over, no bin
    j.advance(utc("07:30"))
    j.taken(5)  # taken late: the alarm was right when it was raised
    assert j.findings == []


# --- R8 ----------------------------------------------------------------------------------------


def test_r8_a_jam_not_reported_within_the_bound() -> None:
    j = judge()
    j.advance(utc("03:00"))
    j.world(world(jammed=True))
    j.advance(utc("03:10"))  # exactly at the bound: still in time
    with pytest.raises(InvariantViolation, match=r"R8.jam .*true time 2026-06-01 03:10"):
        j.advance(utc("03:11"))


def test_r8_an_untrusted_clock_is_reported_and_its_end_too() -> None:
    j = judge(enforce=frozenset({"R8.clock_untrusted"}))
    j.advance(utc("03:00"))
    j.world(world(clock_trusted=False))  # a boot without time
    j.advance(utc("03:10"))
    with pytest.raises(InvariantViolation, match=r"R8.clock_untrusted .*2026-06-01 03:10"):
        j.advance(utc("03:11"))
    ok = judge(enforce=frozenset({"R8.clock_untrusted", "R12"}))
    ok.advance(utc("03:00"))
    ok.world(world(clock_trusted=False))
    ok.published("clock_untrusted", "high", {"trust": "untrusted"})
    ok.advance(utc("04:00"))
    ok.world(world())  # synchronised
    ok.advance(utc("04:14"))
    with pytest.raises(InvariantViolation, match=r"R12 .*end of clock_untrusted"):
        ok.advance(utc("04:16"))  # its end was never said
    ended = judge(enforce=frozenset({"R8.clock_untrusted", "R12"}))
    ended.advance(utc("03:00"))
    ended.world(world(clock_trusted=False))
    ended.published("clock_untrusted", "high", {"trust": "untrusted"})
    ended.world(world())
    ended.published("clock_untrusted_cleared", "info", {"trust": "synchronised"})
    ended.advance(utc("05:00"))
    assert ended.findings == []


def test_r8_a_reported_jam_and_one_cleared_in_time_are_fine() -> None:
    j = judge()
    j.advance(utc("03:00"))
    j.world(world(jammed=True))
    j.published("fault_jam", "medium", {})  # not HIGH: does not count
    j.advance(utc("03:05"))
    j.published("fault_jam", "high", {})
    j.advance(utc("04:00"))
    j.world(world())
    j.published("fault_jam_cleared", "info", {})
    j.world(world(jammed=True))  # a new episode
    j.advance(utc("04:09"))
    j.world(world())  # cleared before its bound
    j.advance(utc("05:00"))
    assert j.findings == []


def test_r8_the_bound_runs_only_while_the_agent_can_know() -> None:
    j = judge()
    j.advance(utc("03:00"))
    j.world(world(jammed=True, linked=False))
    j.advance(utc("05:00"))  # link down for two hours: the agent cannot know
    j.world(world(jammed=True, linked=True))
    j.advance(utc("05:10"))
    with pytest.raises(InvariantViolation, match=r"R8\.jam"):
        j.advance(utc("05:10") + timedelta(seconds=1))


def test_r8_a_wrong_roll_and_a_full_bin() -> None:
    j = judge(enforce=frozenset())
    j.advance(utc("03:00"))
    j.world(world(roll="p-other", bin_full=True))
    j.published("wrong_roll", "high", {})
    j.advance(utc("03:30"))
    assert [f.rule for f in j.findings] == ["R8.bin_full"]


def test_r8_an_unplanned_sachet_at_the_reader_needs_a_high_plan_mismatch_for_it() -> None:
    unplanned = label(utc("12:00"), index=1)  # 14:00 local: no dose time
    j = judge(enforce=frozenset({"R8.plan_mismatch"}))
    j.advance(utc("06:10"))
    j.world(world(reader=label(utc("06:00"))))  # the 08:00 sachet: no condition
    j.world(world(reader=unplanned))
    j.published("plan_mismatch", "medium", {"roll_id": "R001", "sachet_index": 1})  # not HIGH
    j.published("plan_mismatch", "high", {"roll_id": "R001", "sachet_index": 0})  # another one
    with pytest.raises(InvariantViolation, match=r"R8\.plan_mismatch"):
        j.advance(utc("06:21"))
    ok = judge()
    ok.advance(utc("06:10"))
    ok.world(world(reader=unplanned))
    ok.published("plan_mismatch", "high", {"roll_id": "R001", "sachet_index": 1})
    ok.advance(utc("10:00"))
    decided = judge()
    decided.advance(utc("06:10"))
    decided.world(world(reader=unplanned))
    decided.advance(utc("06:15"))
    decided.discard_decided("R001", None)  # decided before the bound: nothing to report
    decided.advance(utc("10:00"))
    planned = judge()
    planned.advance(utc("06:10"))
    planned.world(world(reader=unplanned))
    planned.schedule_changed(DAY, ("08:00", "14:00", "20:00"))  # its time is a dose time now
    planned.advance(utc("10:00"))
    foreign = judge()
    foreign.advance(utc("06:10"))
    foreign.world(world(roll="p-other", reader=label(utc("12:00"), roll_ref="p-other")))
    foreign.published("wrong_roll", "high", {})
    foreign.advance(utc("10:00"))  # another patient's roll is R8.wrong_roll, not a plan question
    assert ok.findings == decided.findings == planned.findings == foreign.findings == []


def test_a_schedule_update_changes_which_slots_need_an_outcome() -> None:
    j = judge()
    j.advance(utc("14:00"))  # 16:00 local on 1 June
    j.schedule_changed(DAY, ("08:00", "14:00", "20:00"))
    expected = j.expected_slot_ids
    assert "2026-06-01T14:00" not in expected  # due before the update reached the unit
    assert {"2026-06-01T20:00", "2026-06-02T14:00"} <= set(expected)
    outcome(j, "2026-06-01T14:00", "refused", "high")  # but it may get one
    j.schedule_changed(date(2026, 6, 2), ("08:00",))  # from tomorrow: only the morning dose
    assert "2026-06-02T20:00" not in j.expected_slot_ids
    outcome(j, "2026-06-02T20:00", "missed", "high")  # picked up before the change: allowed
    settle_all(j)
    j.finish(utc("23:00", day=2))
    assert j.findings == []


def test_r2_follows_the_minimum_interval_of_a_schedule_update() -> None:
    j = judge(enforce=frozenset({"R2"}), min_intake_interval=timedelta(hours=6))
    j.advance(utc("06:05"))
    j.taken(1)
    j.schedule_changed(DAY, ("08:00", "14:00", "20:00"), timedelta(hours=3))
    j.advance(utc("12:05"))  # the new 14:00 dose, 6 h after the first: fine under both
    j.taken(2)
    j.advance(utc("15:10"))
    j.taken(3)  # 3 h 5 min: fine under the new interval only
    j.advance(utc("17:00"))
    with pytest.raises(InvariantViolation, match=r"R2 .*minimum 180\.0 min"):
        j.taken(4)


def test_r8_an_empty_roll_at_a_due_time_needs_a_high_outcome_for_that_slot() -> None:
    j = judge(enforce=frozenset({"R8.roll_empty"}))
    j.world(world(remaining=0))
    j.advance(utc("06:05"))  # 08:00 local is due at 06:00 UTC
    outcome(j, "2026-06-01T20:00", "missed", "high")  # another slot's alarm does not count
    with pytest.raises(InvariantViolation, match=r"roll_empty \(slot 2026-06-01T08:00\)"):
        j.advance(utc("06:11"))
    ok = judge(enforce=frozenset({"R8.roll_empty"}))
    ok.world(world(remaining=0))
    ok.advance(utc("06:05"))
    outcome(ok, "2026-06-01T08:00", "missed", "high")
    ok.advance(utc("07:00"))
    refilled = judge()
    refilled.world(world(remaining=0))
    refilled.advance(utc("06:05"))
    refilled.world(world(remaining=28))  # the nurse came in time
    refilled.advance(utc("07:00"))
    r8 = [f for j in (ok, refilled) for f in j.findings if f.rule.startswith("R8")]
    assert r8 == []  # (ok's outcome at 06:05 gives the dose up early: R16's, not judged here)


def test_r8_an_empty_roll_is_reported_by_a_high_hold_of_that_slot() -> None:
    held: dict[str, object] = {"slot_id": "2026-06-01T08:00", "reason": "roll_empty"}
    j = judge(enforce=frozenset({"R8.roll_empty"}))
    j.world(world(remaining=0))
    j.advance(utc("06:05"))
    j.published("dose_held", "low", held)  # low does not report it
    with pytest.raises(InvariantViolation, match=r"roll_empty \(slot 2026-06-01T08:00\)"):
        j.advance(utc("06:11"))
    ok = judge(enforce=frozenset({"R8.roll_empty"}))
    ok.world(world(remaining=0))
    ok.advance(utc("06:05"))
    ok.published("dose_held", "high", held)
    ok.advance(utc("07:00"))
    assert ok.findings == []


def test_r8_an_empty_roll_is_due_when_the_agents_clock_stepped_back_shows_the_due_time() -> None:
    """Seeds 32 and 41 of the wide world: the synchronised wall clock stepped back an hour
    before the 08:00 dose on an empty roll. A slot is due when the agent's clock shows it
    (docs/time-policy.md): the agent cannot know it an hour earlier, so the bound runs from then."""
    held: dict[str, object] = {"slot_id": "2026-06-01T08:00", "reason": "roll_empty"}
    j = judge(enforce=frozenset({"R8.roll_empty"}))
    j.world(world(remaining=0, clock_behind=timedelta(hours=1)))
    j.advance(utc("07:05"))  # true 06:00 passed an hour ago; the agent's clock shows 06:05
    j.published("dose_held", "high", held)
    j.advance(utc("08:00"))
    assert j.findings == []
    late = judge(enforce=frozenset({"R8.roll_empty"}))
    late.world(world(remaining=0, clock_behind=timedelta(hours=1)))
    with pytest.raises(InvariantViolation, match=r"roll_empty \(slot 2026-06-01T08:00\)"):
        late.advance(utc("07:11"))
    # NTP corrects the clock at 06:30: the slot is due for the agent at once, reported by 06:40
    corrected = judge(enforce=frozenset({"R8.roll_empty"}))
    corrected.world(world(remaining=0, clock_behind=timedelta(hours=1)))
    corrected.advance(utc("06:30"))
    corrected.world(world(remaining=0))
    with pytest.raises(InvariantViolation, match=r"roll_empty \(slot 2026-06-01T08:00\)"):
        corrected.advance(utc("06:41"))


def test_r8_a_dose_presented_early_is_not_kept_back_by_the_empty_roll_after_it() -> None:
    j = judge(enforce=frozenset({"R8.roll_empty"}))
    j.advance(utc("05:45"))  # TAKE early: the last sachet, for 08:00 local, is cut now
    j.presented(1, label(utc("06:00")))
    j.world(world(remaining=0))
    j.advance(utc("06:30"))  # due at 06:00 UTC with the roll empty: nothing to report
    assert j.findings == []


def test_reference_min_interval_of_rules_counts_the_change_of_rule() -> None:
    # each rule alone: 6 h (08:00/20:00) and 2 h 45 (02:30 ... 21:00, across midnight 5 h 30)
    assert reference_min_interval_of_rules([("08:00", "20:00")]) == timedelta(hours=6)
    assert reference_min_interval_of_rules(
        [("08:00", "20:00"), ("02:30", "09:00", "15:00", "21:00")]
    ) == timedelta(hours=2, minutes=45)
    # the night of the change: 22:00 the day before, 01:00 on the new rule's first day
    assert reference_min_interval_of_rules([("10:00", "22:00"), ("01:00", "13:00")]) == timedelta(
        hours=1, minutes=30
    )


# --- R4, R8: rolls and sachets nobody can check -------------------------------------------


@pytest.mark.parametrize(
    ("sachet", "message"),
    [
        (label(utc("06:00"), expiry=None), "expiry cannot be read"),
        (SachetLabel("R001", REF, REF, 0, utc("06:00"), None), "expiry cannot be read"),
        (
            SachetLabel("R001", REF, REF, 0, utc("06:00"), utc("06:00", 9), readable=False),
            "reader cannot read",
        ),
        (SachetLabel("R001", REF, REF, 0, None, utc("06:00", 9)), "packed for no time"),
        (SachetLabel("R001", "", REF, 0, utc("06:00"), utc("06:00", 9)), "another patient's"),
    ],
)
def test_r4_a_sachet_nobody_can_check_is_never_presented(sachet: SachetLabel, message: str) -> None:
    j = judge(enforce=frozenset({"R4"}))
    j.advance(utc("06:00"))
    with pytest.raises(InvariantViolation, match=message):
        j.presented(1, sachet)


def test_r8_a_roll_whose_leader_cannot_be_read_needs_a_high_roll_rejected() -> None:
    j = judge(enforce=frozenset({"R8.roll_unreadable"}))
    j.advance(utc("03:00"))
    j.world(world(roll_label_readable=False))
    j.published("wrong_roll", "high", {})  # not what it is
    with pytest.raises(InvariantViolation, match=r"R8\.roll_unreadable"):
        j.advance(utc("03:11"))
    ok = judge()
    ok.advance(utc("03:00"))
    ok.world(world(roll_label_readable=False))
    ok.published("roll_rejected", "high", {"roll_id": "R001"})
    ok.advance(utc("04:00"))
    blank = judge(enforce=frozenset({"R8.wrong_roll", "R8.roll_unreadable"}))
    blank.advance(utc("03:00"))
    blank.world(world(roll="", roll_label_readable=False))  # names nobody: a wrong roll
    with pytest.raises(InvariantViolation, match=r"R8\.wrong_roll"):
        blank.advance(utc("03:11"))
    assert ok.findings == []


@pytest.mark.parametrize(
    "sachet",
    [
        SachetLabel("R001", REF, REF, 3, utc("06:00"), utc("06:00", 9), readable=False),
        SachetLabel("R001", REF, REF, 3, None, utc("06:00", 9)),
        SachetLabel("R001", REF, "p-judge-l", 3, utc("06:00"), utc("06:00", 9)),
    ],
)
def test_r8_an_unusable_sachet_at_the_reader_needs_a_high_report(sachet: SachetLabel) -> None:
    j = judge(enforce=frozenset({"R8.sachet_unusable", "R8.plan_mismatch"}))
    j.advance(utc("03:00"))
    j.world(world(reader=sachet))
    j.published("sachet_rejected", "high", {"roll_id": "R001", "index": 2, "reason": "x"})
    with pytest.raises(InvariantViolation, match=r"R8\.sachet_unusable"):  # named another one
        j.advance(utc("03:11"))
    for report in (
        ("sachet_rejected", {"roll_id": "R001", "index": 3, "reason": "x"}),
        ("fault_reader", {"detail": "sachet 3 unreadable"}),
    ):
        ok = judge()
        ok.advance(utc("03:00"))
        ok.world(world(reader=sachet))
        ok.published(report[0], "high", {**report[1]})
        ok.advance(utc("05:00"))
        ok.world(world(reader=label(utc("06:00"), index=4)))  # taken off: the next one is fine
        ok.advance(utc("06:00"))
        assert ok.findings == []


def test_r8_an_unusable_sachet_on_another_patients_roll_is_the_wrong_roll() -> None:
    j = judge(enforce=frozenset())
    j.advance(utc("03:00"))
    foreign = SachetLabel("X1", "p-other", "p-other", 0, None, utc("06:00", 9))
    j.world(world(roll="p-other", reader=foreign))
    j.published("wrong_roll", "high", {})
    j.advance(utc("05:00"))
    assert j.findings == []


# --- R10: phantom dispenser events ----------------------------------------------------------


def test_r10_a_phantom_must_be_reported_unless_one_was_just_reported() -> None:
    j = judge(enforce=frozenset({"R10"}))
    j.world(world())
    j.advance(utc("03:00"))
    j.phantom(0xFFFF_FFFF)
    j.published("phantom_dispenser_event", "medium", {"dispense_id": 0xFFFF_FFFF})
    j.advance(utc("03:05"))
    j.phantom(2**31)  # within the engine's rate limit of the first report: nothing owed
    j.advance(utc("04:00"))
    j.phantom(None)  # the dose in the tray with another sachet index
    with pytest.raises(InvariantViolation, match=r"R10 .*condition phantom"):
        j.advance(utc("04:11"))


def test_r10_a_phantom_id_never_becomes_a_dose() -> None:
    j = judge(enforce=frozenset({"R10"}))
    j.world(world())
    j.advance(utc("05:50"))
    j.phantom(4_000_000_000)
    j.published("phantom_dispenser_event", "medium", {"dispense_id": 4_000_000_000})
    with pytest.raises(InvariantViolation, match="only a phantom"):
        j.published(
            "dose_presented", "info", {"slot_id": "2026-06-01T08:00", "dispense_id": 4_000_000_000}
        )


def test_r10_no_intake_nobody_made_and_no_dose_held_for_an_empty_tray() -> None:
    j = judge(enforce=frozenset({"R10"}))
    j.world(world())
    j.advance(utc("06:00"))
    j.presented(7, label(utc("06:00")))
    j.world(world(tray_occupied=True))
    with pytest.raises(InvariantViolation, match="nobody lifted"):
        j.published(
            "slot_outcome",
            "info",
            {"slot_id": "2026-06-01T08:00", "outcome": "taken", "dispense_id": 7},
        )
    empty = judge(enforce=frozenset({"R10"}))
    empty.world(world())
    empty.advance(utc("19:00"))  # the tray empty and the agent linked all day
    with pytest.raises(InvariantViolation, match=r"tray has been empty since"):
        empty.published(
            "slot_outcome",
            "high",
            {
                "slot_id": "2026-06-01T20:00",
                "outcome": "missed",
                "reason": "not_dispensed:tray_occupied",
            },
        )
    # a tray really occupied, or emptied (or the link back) only shortly before the due time
    held = judge()
    held.world(world(tray_occupied=True))
    held.advance(utc("17:55"))
    held.world(world())
    held.advance(utc("19:00"))
    held.published(
        "slot_outcome",
        "high",
        {
            "slot_id": "2026-06-01T20:00",
            "outcome": "missed",
            "reason": "not_dispensed:previous_dose_in_tray",
            "deviation": "dose_not_presented",
        },
        "alert-000001",
    )
    relinked = judge()
    relinked.world(world(linked=False))
    relinked.advance(utc("17:55"))
    relinked.world(world())
    relinked.advance(utc("19:00"))
    relinked.published(
        "slot_outcome",
        "high",
        {
            "slot_id": "2026-06-01T20:00",
            "outcome": "refused",
            "reason": "tray_occupied",
            "deviation": "dose_refused",
        },
        "alert-000001",
    )
    assert held.findings == relinked.findings == []


# --- R11: the centre's commands ------------------------------------------------------------


def test_r11_an_acknowledgement_and_a_silence_are_confirmed_at_once() -> None:
    j = judge(enforce=frozenset({"R11"}))
    j.advance(utc("03:00"))
    j.published("wrong_roll", "high", {"roll_id": "X1"}, "a-1")
    j.centre_command("acknowledge", "a-1")
    j.published("alert_acknowledged", "info", {"alert_id": "a-1", "by": "op"})
    j.centre_command("acknowledge", "a-1")  # a second time: nothing owed (idempotent)
    j.centre_command("acknowledge", "a-9")  # an id it never published: nothing owed
    j.centre_command("silence")
    j.published("alert_silenced", "info", {"seconds": 600.0})
    j.advance(utc("04:00"))
    j.published("fault_jam", "high", {}, "a-2")
    j.centre_command("acknowledge", "a-2")
    j.published("alert_acknowledged", "info", {"alert_id": "a-1"})  # the wrong one
    with pytest.raises(InvariantViolation, match=r"R11 .*no alert_acknowledged with alert_id a-2"):
        j.advance(utc("04:01"))
    quiet = judge(enforce=frozenset({"R11"}))
    quiet.advance(utc("03:00"))
    quiet.centre_command("silence")
    with pytest.raises(InvariantViolation, match=r"R11 .*no alert_silenced"):
        quiet.advance(utc("03:01"))


def test_r11_decisions_schedule_updates_and_pauses_are_confirmed_unless_refused() -> None:
    j = judge(enforce=frozenset({"R11"}))
    j.advance(utc("03:00"))
    j.centre_command("discard", "R001")
    j.published("plan_mismatch_decided", "info", {"roll_id": "R001", "decision": "discard"})
    j.centre_command("schedule", 2)
    j.published("schedule_changed", "info", {"version": 2})
    j.centre_command("pause", "p-1")
    j.published("pause_started", "info", {"pause_id": "p-1"})
    j.centre_command("discard", "R002")
    j.centre_refused()  # the unit refused it: nothing owed
    j.advance(utc("04:00"))
    j.centre_command("resume", "p-1")
    j.published("pause_ended", "info", {"pause_id": "p-2"})  # another pause
    with pytest.raises(InvariantViolation, match=r"no pause_ended with pause_id p-1"):
        j.advance(utc("04:01"))


# --- R12: the centre's record of the medicine ---------------------------------------------


def test_r12_every_sachet_the_dispenser_moves_is_reported() -> None:
    j = judge(enforce=frozenset({"R12"}))
    j.world(world())
    j.advance(utc("06:00"))
    j.presented(1, label(utc("06:00")))
    j.published("dose_presented", "info", {"slot_id": "2026-06-01T08:00", "dispense_id": 1})
    j.retained(1)
    j.published("dose_retained", "info", {"dispense_id": 1, "slot_id": "2026-06-01T08:00"})
    j.published(
        "slot_outcome",
        "high",
        {"slot_id": "2026-06-01T08:00", "outcome": "missed", "deviation": "dose_missed"},
        "alert-1",
    )
    j.discarded(2, label(utc("06:00"), index=1))  # a leftover of the settled 08:00 dose
    j.published("sachet_discarded", "info", {"sachet_index": 1})
    j.advance(utc("18:00"))
    j.presented(3, label(utc("18:00"), index=2))
    j.published("dose_presented", "info", {"slot_id": "2026-06-01T20:00", "dispense_id": 3})
    j.advance(utc("18:05"))
    j.taken(3)
    j.advance(utc("18:19"))  # in time
    j.published(
        "slot_outcome",
        "info",
        {"slot_id": "2026-06-01T20:00", "outcome": "taken", "dispense_id": 3},
    )
    j.advance(utc("22:00"))
    assert j.findings == []
    move: Callable[[Judge], object]  # gives the lambdas below their parameter's type
    for move, report in (
        (lambda k: k.presented(9, label(utc("06:00"))), "dose 9 presented"),
        (lambda k: k.discarded(9, label(utc("06:00"), index=4)), "sachet 4 discarded"),
        (lambda k: k.retained(9), "dose 9 retained"),
        (lambda k: k.taken(9), "dose 9 taken"),
        (lambda k: k.taken_for_travel(9), "dose 9 taken along"),
    ):
        silent = judge(enforce=frozenset({"R12"}))
        silent.world(world())
        silent.advance(utc("06:00"))
        move(silent)
        silent.published("dose_presented", "info", {"dispense_id": 8})  # another dose
        silent.advance(utc("06:15"))  # the record's bound: 15 min
        with pytest.raises(InvariantViolation, match=f"report of {report}"):
            silent.advance(utc("06:16"))


def test_r12_the_bound_runs_while_the_agent_is_linked_and_ends_are_reported() -> None:
    away = judge(enforce=frozenset({"R12"}))
    away.world(world(linked=False))
    away.advance(utc("06:00"))
    away.taken(4)  # the agent cannot hear it: nothing owed (R3 and R9 judge its slot)
    away.advance(utc("09:00"))
    assert away.findings == []
    jam = judge(enforce=frozenset({"R12"}))
    jam.advance(utc("03:00"))
    jam.world(world(jammed=True))
    jam.published("fault_jam", "high", {})
    jam.advance(utc("03:30"))
    jam.world(world())
    with pytest.raises(InvariantViolation, match="report of end of jam"):
        jam.advance(utc("03:46"))
    unreported = judge(enforce=frozenset({"R12"}))  # its start was never reported: R8's finding
    unreported.advance(utc("03:00"))
    unreported.world(world(jammed=True))
    unreported.advance(utc("03:05"))
    unreported.world(world())
    unreported.advance(utc("04:00"))
    assert unreported.findings == []


def test_r9_and_r12_cover_sachets_packed_for_a_trip() -> None:
    j = judge(enforce=frozenset({"R9"}))
    j.world(world())
    j.pause("trip", utc("05:00"), utc("22:00", 2), take_along=True)
    j.advance(utc("05:00"))
    j.presented(6, label(utc("06:00")))
    j.published("dose_presented", "info", {"slot_id": "2026-06-01T08:00", "dispense_id": 6})
    j.advance(utc("05:01"))
    j.taken_for_travel(6)
    with pytest.raises(InvariantViolation, match=r"R9 .*2026-06-01T08:00"):
        j.published(
            "slot_outcome", "high", {"slot_id": "2026-06-01T08:00", "outcome": "missed"}, "alert-1"
        )


def test_r13_a_trip_is_reported_complete_only_if_every_slot_was_packed() -> None:
    def trip(packed: int) -> Judge:
        j = judge(enforce=frozenset({"R13"}))
        j.world(world())
        j.pause("trip", utc("05:00"), utc("22:00", 2), take_along=True)  # 4 slots: 1 and 2 June
        j.advance(utc("05:00"))
        for k, due in enumerate((utc("06:00"), utc("18:00"), utc("06:00", 2), utc("18:00", 2))):
            if k < packed:
                j.presented(k + 1, label(due, index=k))
                j.taken_for_travel(k + 1)
        return j

    complete = trip(4)
    complete.published(
        "travel_dispensed", "info", {"pause_id": "trip", "planned": 4, "dispensed": 4}
    )
    short = trip(3)
    short.published(
        "travel_short", "medium", {"pause_id": "trip", "planned": 4, "dispensed": 3, "reason": "x"}
    )
    assert complete.findings == short.findings == []
    with pytest.raises(InvariantViolation, match=r"R13 .*3 sachets taken along for its 4 slots"):
        trip(3).published(
            "travel_dispensed", "info", {"pause_id": "trip", "planned": 3, "dispensed": 3}
        )
    with pytest.raises(InvariantViolation, match=r"R13 .*says 2 sachets taken along, 3 were"):
        trip(3).published(
            "travel_short", "medium", {"pause_id": "trip", "planned": 4, "dispensed": 2}
        )


def test_r8_a_pause_in_force_longer_than_its_maximum_needs_a_high_pause_overdue() -> None:
    j = judge(enforce=frozenset({"R8.pause_overdue"}), pause_max=timedelta(hours=2))
    j.world(world())
    j.pause("open", utc("01:00"), None)
    j.advance(utc("02:59"))
    j.pause("after", utc("03:30"), utc("04:00"))  # a later one with an end: within its maximum
    j.advance(utc("03:05"))
    with pytest.raises(InvariantViolation, match=r"R8\.pause_overdue"):
        j.advance(utc("03:11"))
    ok = judge(pause_max=timedelta(hours=2))
    ok.world(world())
    ok.pause("open", utc("01:00"), None)
    ok.advance(utc("03:05"))
    ok.published("pause_overdue", "high", {"pause_id": "open"})
    ok.advance(utc("04:00"))
    ok.pause_ended("open")
    ok.advance(utc("09:00"))
    chained = judge(enforce=frozenset({"R8.pause_overdue"}), pause_max=timedelta(hours=2))
    chained.world(world())
    chained.pause("a", utc("01:00"), utc("02:00"))
    chained.pause("b", utc("02:00"), utc("04:00"))  # end to start: one chain from 01:00
    with pytest.raises(InvariantViolation, match=r"R8\.pause_overdue"):
        chained.advance(utc("03:11"))
    assert ok.findings == []


def test_r8_pause_overdue_runs_from_when_the_agents_clock_shows_the_maximum() -> None:
    """Wide world seed 361: the synchronised clock stepped back an hour during a long pause.
    The agent reaches the pause's maximum when its clock shows it, an hour late in true time;
    the judge read the maximum in true time. An untrusted clock (seed 316: the Pi booted in the
    pause with a guessed time) cannot tell how long the pause has lasted: the bound runs from
    when the clock is trusted again."""
    behind = judge(enforce=frozenset({"R8.pause_overdue"}), pause_max=timedelta(hours=2))
    behind.world(world(clock_behind=timedelta(hours=1)))
    behind.pause("open", utc("01:00"), None)
    behind.advance(utc("04:05"))  # the agent's clock shows 03:05: overdue for it at 03:00
    behind.published("pause_overdue", "high", {"pause_id": "open"})
    behind.advance(utc("05:00"))
    assert behind.findings == []
    late = judge(enforce=frozenset({"R8.pause_overdue"}), pause_max=timedelta(hours=2))
    late.world(world(clock_behind=timedelta(hours=1)))
    late.pause("open", utc("01:00"), None)
    with pytest.raises(InvariantViolation, match=r"R8\.pause_overdue"):
        late.advance(utc("04:11"))
    untrusted = judge(enforce=frozenset({"R8.pause_overdue"}), pause_max=timedelta(hours=2))
    untrusted.world(world(clock_trusted=False))
    untrusted.pause("open", utc("01:00"), None)
    untrusted.advance(utc("05:00"))  # no trusted clock: it cannot know
    assert [f for f in untrusted.findings if f.rule == "R8.pause_overdue"] == []
    untrusted.world(world())  # NTP: it knows now, and has the bound to say it
    untrusted.advance(utc("05:09"))
    with pytest.raises(InvariantViolation, match=r"R8\.pause_overdue"):
        untrusted.advance(utc("05:11"))


# --- enforcement and reporting ------------------------------------------------------------


def test_rules_not_enforced_are_recorded_not_raised() -> None:
    j = judge(enforce=parse_rules("R1,R8.jam"))
    j.advance(utc("06:00"))
    j.taken(1)
    j.advance(utc("06:10"))
    j.taken(2)  # R2: recorded
    j.world(world(remaining=0))
    j.advance(utc("18:30"))  # R8.roll_empty for 20:00 local: recorded
    assert j.counts() == {"R2": 1, "R8.roll_empty": 1}
    assert "R2" in j.first_findings()
    assert "2026-06-01 06:10:00Z" in j.first_findings()["R2"]


def test_rule_lists_parse() -> None:
    assert parse_rules("all") == ALL_RULES
    assert parse_rules("none") == frozenset()
    assert parse_rules("R2, R8.jam") == {"R2", "R8.jam"}
    with pytest.raises(ValueError, match="unknown judge rules"):
        parse_rules("R99")
    with pytest.raises(ValueError, match="true time"):
        Judge(JudgeConfig(REF, OSLO, ("08:00",), DAY, INSTALLED, UNTIL, timedelta(0))).taken(1)
    j = judge()
    j.advance(utc("06:00"))
    with pytest.raises(ValueError, match="went back"):
        j.advance(utc("05:00"))


def test_r8_r13_a_dose_time_a_schedule_update_dropped_needs_no_report_nor_sachet() -> None:
    """Seeds 48 and 96 of the mix (dose times moved): the old times still to come stay in the
    judge's reference as optional (an early TAKE may have picked one up), but no dose is due
    then: an empty roll at such a time is nothing to report (R8.roll_empty), and a trip needs no
    sachet for it (R13 counted 9 slots of a day's trip with two doses)."""
    j = judge(enforce=frozenset({"R8.roll_empty", "R13"}))
    j.world(world())
    j.advance(utc("04:00"))  # 06:00 local: the centre moves 08:00/20:00 to 09:00/21:00
    j.schedule_changed(DAY, ("09:00", "21:00"))
    j.pause("trip", utc("05:00"), utc("22:00", 2), take_along=True)
    j.advance(utc("05:00"))
    for k, due in enumerate((utc("07:00"), utc("19:00"), utc("07:00", 2), utc("19:00", 2))):
        j.presented(k + 1, label(due, index=k))
        j.taken_for_travel(k + 1)
    j.published("travel_dispensed", "info", {"pause_id": "trip", "planned": 4, "dispensed": 4})
    assert j.findings == []
    home = judge(enforce=frozenset({"R8.roll_empty"}))
    home.advance(utc("04:00"))
    home.schedule_changed(DAY, ("09:00", "21:00"))
    home.world(world(remaining=0))
    home.advance(utc("06:30"))  # 08:00 local, no dose time any more: the roll may be empty
    assert home.findings == []
    with pytest.raises(InvariantViolation, match=r"roll_empty \(slot 2026-06-01T09:00\)"):
        home.advance(utc("07:11"))  # but 09:00 local is one


def test_r8_an_empty_roll_is_reported_by_a_high_hold_naming_the_slot_ahead() -> None:
    """An agent whose clock is untrusted cannot tell when a dose comes due: with the roll empty
    it names the dose HIGH ahead. That reports it while the roll stays empty; a refill voids it
    (the dose may be given after all, and if the roll runs empty again it is news)."""
    ahead: dict[str, object] = {"slot_id": "2026-06-01T08:00", "reason": "clock_untrusted"}
    j = judge(enforce=frozenset({"R8.roll_empty"}))
    j.world(world(remaining=0))
    j.advance(utc("04:00"))
    j.published("dose_held", "high", ahead)
    j.world(world(roll=None))  # the patient pulls the roll out and puts it back: still empty
    j.world(world(remaining=0))
    j.advance(utc("07:00"))
    assert j.findings == []
    refilled = judge(enforce=frozenset({"R8.roll_empty"}))
    refilled.world(world(remaining=0))
    refilled.advance(utc("04:00"))
    refilled.published("dose_held", "high", ahead)
    refilled.world(world(remaining=1))
    refilled.advance(utc("05:00"))
    refilled.world(world(remaining=0))
    with pytest.raises(InvariantViolation, match=r"roll_empty \(slot 2026-06-01T08:00\)"):
        refilled.advance(utc("06:11"))
    low = judge(enforce=frozenset({"R8.roll_empty"}))
    low.world(world(remaining=0))
    low.advance(utc("04:00"))
    low.published("dose_held", "low", ahead)
    with pytest.raises(InvariantViolation, match=r"roll_empty \(slot 2026-06-01T08:00\)"):
        low.advance(utc("06:11"))


# --- R3: an outcome tells the truth about its slot -------------------------------------------


def test_r3_an_outcome_must_name_its_slots_due_instant() -> None:
    j = judge()
    j.advance(utc("07:00"))
    # 08:00 in Oslo on 1 June (CEST) is 06:00 UTC
    right: dict[str, object] = {
        "due_utc": "2026-06-01T06:00:00Z",
        "due_local": "2026-06-01T08:00:00+02:00",
    }
    j.published("slot_outcome", "info", {"slot_id": "2026-06-01T08:00", "outcome": "taken"} | right)
    assert j.findings == []
    for name, wrong in (
        ("due_utc", "2026-06-01T08:00:00Z"),  # the local time read as UTC
        ("due_local", "2026-06-01T08:00:00+01:00"),  # the winter offset in summer
        ("due_utc", "not a time"),
    ):
        k = judge()
        k.advance(utc("07:00"))
        fields = {"slot_id": "2026-06-01T08:00", "outcome": "taken"} | right | {name: wrong}
        with pytest.raises(InvariantViolation, match=rf"R3 .*says {name} {re.escape(wrong)}"):
            k.published("slot_outcome", "info", fields)


@pytest.mark.parametrize(
    ("result", "priority", "alert_id", "alarm_ok"),
    [
        ("missed", "high", "alert-000007", True),
        ("refused", "high", "alert-000007", True),
        ("missed", "high", None, False),  # not latched: nobody has to acknowledge it
        ("missed", "medium", "alert-000007", False),
        ("refused", "info", None, False),
        ("taken", "info", None, True),
        ("skipped_paused", "info", None, True),
        ("dispensed_for_travel", "info", None, True),
        ("taken_unconfirmed", "medium", "alert-000007", True),
    ],
)
def test_r3_a_dose_not_given_is_a_latched_high_alarm(
    result: str, priority: str, alert_id: str | None, alarm_ok: bool
) -> None:
    j = judge(enforce=frozenset())  # recorded, not raised
    j.advance(utc("07:00"))
    j.published(
        "slot_outcome", priority, {"slot_id": "2026-06-01T08:00", "outcome": result}, alert_id
    )
    found = [f for f in j.findings if "latched HIGH alarm" in f.message]
    assert (found == []) is alarm_ok


# --- R12: a report of a cut sachet names that sachet ------------------------------------------


def test_r12_dose_presented_and_the_outcome_name_the_sachet_that_was_cut() -> None:
    j = judge()
    j.world(world())
    j.advance(utc("06:00"))
    j.presented(7, label(utc("06:00"), index=4))
    slot = "2026-06-01T08:00"
    j.published("dose_presented", "info", {"slot_id": slot, "dispense_id": 7, "sachet_index": 4})
    j.advance(utc("06:05"))
    j.taken(7)
    j.published(
        "slot_outcome",
        "info",
        {
            "slot_id": slot,
            "outcome": "taken",
            "dispense_id": 7,
            "sachet_index": 4,
            "roll_id": "R001",
        },
    )
    assert j.findings == []
    for fields in (
        {"sachet_index": 5},
        {"sachet_index": None},
        {"sachet_index": 4, "roll_id": "R002"},
    ):
        k = judge(enforce=frozenset())
        k.world(world())
        k.advance(utc("06:00"))
        k.presented(7, label(utc("06:00"), index=4))
        k.published("dose_presented", "info", {"slot_id": slot, "dispense_id": 7} | fields)
        k.advance(utc("06:05"))
        k.taken(7)
        k.published(
            "slot_outcome", "info", {"slot_id": slot, "outcome": "taken", "dispense_id": 7} | fields
        )
        named = [
            f for f in k.findings if f.rule == "R12" and "the dispenser cut sachet 4" in f.message
        ]
        assert len(named) == 2, k.findings


# --- what the centre records, told truthfully ---------------------------------------------------


def test_r3_an_outcome_is_recorded_as_the_deviation_of_what_happened() -> None:
    """The municipality records a dose not given by category: refused, not presented, missed
    in the tray, unconfirmed; a dose given is no deviation."""
    for result, wrong in (
        ("refused", None),
        ("refused", "dose_not_presented"),
        ("missed", None),
        ("taken_unconfirmed", "dose_refused"),
        ("taken", "dose_missed"),
    ):
        j = judge(enforce=frozenset({"R3"}))
        j.advance(utc("07:00"))
        alert_id = None if result == "taken" else "alert-1"
        fields: dict[str, object] = {"slot_id": "2026-06-01T08:00", "outcome": result}
        if wrong is not None:
            fields["deviation"] = wrong
        with pytest.raises(InvariantViolation, match=r"R3 .*recorded as deviation"):
            j.published("slot_outcome", "high", fields, alert_id)
    # the agent said the dose was in the tray: missed in the tray, not "not presented"
    shown = judge(enforce=frozenset({"R3"}))
    shown.world(world())
    shown.advance(utc("06:00"))
    shown.presented(5, label(utc("06:00")))
    shown.published("dose_presented", "info", {"slot_id": "2026-06-01T08:00", "dispense_id": 5})
    shown.advance(utc("07:00"))
    with pytest.raises(InvariantViolation, match=r"not 'dose_missed'"):
        outcome(shown, "2026-06-01T08:00", "missed", "high", "dose_not_presented")
    ok = judge()
    ok.advance(utc("07:00"))
    outcome(ok, "2026-06-01T08:00", "refused", "high")
    outcome(ok, "2026-06-01T20:00", "missed", "high")
    assert ok.findings == []


def test_r12_a_dose_is_said_left_in_the_tray_only_for_want_of_a_bin() -> None:
    j = judge(enforce=frozenset({"R12"}))
    j.advance(utc("06:00"))
    for reason in ("no_retain_bin", "bin_full"):
        j.published("dose_left_in_tray", "low", {"dispense_id": 5, "reason": reason})
    assert j.findings == []
    with pytest.raises(InvariantViolation, match=r"R12 .*dose_left_in_tray .*gives reason None"):
        j.published("dose_left_in_tray", "low", {"dispense_id": 5, "reason": None})


def test_r11_a_pause_reminder_says_how_long_and_only_for_an_open_ended_pause() -> None:
    def paused(end: datetime | None = None) -> Judge:
        j = judge(enforce=frozenset({"R11"}), pause_max=timedelta(days=30))
        j.pause("p1", utc("06:00"), end)
        j.advance(utc("06:00", 8))
        return j

    ok = paused()
    ok.published(
        "pause_reminder",
        "low",
        {"pause_id": "p1", "end_utc": None, "days_in_force": 7.0, "max_days": 30.0},
    )
    assert ok.findings == []
    for fields in (
        {"days_in_force": 7.0, "max_days": 15.0},  # the maximum misstated
        {"days_in_force": 3.5, "max_days": 30.0},  # how long misstated
    ):
        with pytest.raises(InvariantViolation, match=r"R11 .*pause_reminder for p1 says"):
            paused().published("pause_reminder", "low", {"pause_id": "p1", **fields})
    with pytest.raises(InvariantViolation, match=r"R11 .*which has an end"):
        paused(utc("06:00", 20)).published(
            "pause_reminder",
            "low",
            {"pause_id": "p1", "end_utc": "2026-06-20T06:00:00Z", "days_in_force": 7.0},
        )


def test_r13_a_trip_is_reported_once() -> None:
    j = judge(enforce=frozenset({"R13"}))
    j.world(world())
    j.pause("trip", utc("05:00"), utc("07:00"), take_along=True)  # one slot: 08:00 local
    j.advance(utc("05:00"))
    j.presented(1, label(utc("06:00")))
    j.taken_for_travel(1)
    j.published("travel_dispensed", "info", {"pause_id": "trip", "planned": 1, "dispensed": 1})
    assert j.findings == []
    with pytest.raises(InvariantViolation, match=r"R13 .*travel_short for trip trip, which was"):
        j.published("travel_short", "medium", {"pause_id": "trip", "planned": 1, "dispensed": 1})


# --- R14: the dispenser at home -----------------------------------------------------------------


def home(
    *, pattern: str = "OFF", locked: bool = False, roll: str | None = REF, **kw: object
) -> World:
    return replace(world(roll, **kw), pattern=pattern, locked=locked)  # type: ignore[arg-type]


def r14(j: Judge) -> list[str]:
    return [f.message for f in j.findings if f.rule == "R14"]  # other rules are not fed here


def test_r14_a_dose_in_the_tray_calls_the_patient_unless_silenced() -> None:
    def shown(j: Judge) -> None:
        j.world(home())
        j.advance(utc("06:00"))
        j.presented(5, label(utc("06:00")))
        j.world(home(tray_occupied=True))  # the dispenser still shows OFF
        j.published("dose_presented", "info", {"slot_id": "2026-06-01T08:00", "dispense_id": 5})

    j = judge(enforce=frozenset({"R14"}))
    shown(j)
    j.advance(utc("06:10"))
    with pytest.raises(InvariantViolation, match=r"R14 .*lies in the tray and the dispenser shows"):
        j.advance(utc("06:11"))
    ok = judge(enforce=frozenset({"R14"}))
    shown(ok)
    ok.advance(utc("06:01"))
    ok.world(home(pattern="REMINDER", tray_occupied=True))
    ok.advance(utc("06:40"))
    ok.world(home(pattern="URGENT", tray_occupied=True))
    ok.advance(utc("06:50"))
    ok.taken(5)
    ok.world(home(pattern="OFF"))  # the tray is empty: the call ends
    ok.advance(utc("09:00"))
    assert r14(ok) == []
    quiet = judge(enforce=frozenset({"R14"}))
    quiet.advance(utc("05:59"))
    quiet.silenced(timedelta(minutes=30))
    shown(quiet)
    quiet.advance(utc("06:29"))  # silenced: OFF is what the centre asked for
    assert r14(quiet) == []
    with pytest.raises(InvariantViolation, match=r"R14 "):
        quiet.advance(utc("06:41"))  # the silence ended 06:29 and still nothing shows


def test_r14_the_cassette_is_locked_exactly_while_another_patients_roll_is_loaded() -> None:
    j = judge(enforce=frozenset({"R14"}))
    j.world(home())
    j.advance(utc("06:00"))
    j.world(home(roll="p-other"))  # not locked yet: the agent has the bound to do it
    j.advance(utc("06:09"))
    j.world(home(roll="p-other", locked=True, pattern="FAULT"))
    j.advance(utc("07:00"))
    j.world(home(locked=True))  # the patient's roll again, still locked
    j.advance(utc("07:09"))
    j.world(home())
    j.advance(utc("08:00"))
    assert r14(j) == []
    for roll, locked in (("p-other", False), ("", False), (REF, True), (None, True)):
        k = judge(enforce=frozenset({"R14"}))
        k.world(home())
        k.advance(utc("06:00"))
        k.world(home(roll=roll, locked=locked))
        with pytest.raises(InvariantViolation, match=r"R14 .*the cassette is"):
            k.advance(utc("06:11"))
    unlinked = judge(enforce=frozenset({"R14"}))
    unlinked.world(home(roll="p-other", linked=False))  # the agent cannot act: no bound yet
    unlinked.advance(utc("12:00"))
    assert r14(unlinked) == []
    unlinked.world(home(roll="p-other", pattern="FAULT"))
    with pytest.raises(InvariantViolation, match=r"R14 .*unlocked"):
        unlinked.advance(utc("12:11"))


def test_r14_another_patients_roll_shows_fault_unless_silenced() -> None:
    j = judge(enforce=frozenset({"R14"}))
    j.world(home())
    j.advance(utc("06:00"))
    j.world(home(roll="p-other", locked=True))  # locked, but the dispenser stays dark
    j.advance(utc("06:09"))
    assert r14(j) == []  # within the bound
    with pytest.raises(InvariantViolation, match=r"R14 .*shows OFF, not FAULT, with another's"):
        j.advance(utc("06:11"))
    ok = judge(enforce=frozenset({"R14"}))
    ok.world(home())
    ok.advance(utc("06:00"))
    ok.world(home(roll="", locked=True))  # a blank leader names nobody: not the patient's
    ok.advance(utc("06:05"))
    ok.world(home(roll="", locked=True, pattern="FAULT"))
    ok.advance(utc("06:30"))
    ok.silenced(timedelta(minutes=30))
    ok.world(home(roll="", locked=True, pattern="OFF"))  # the centre silenced the unit
    ok.advance(utc("06:59"))
    assert r14(ok) == []
    with pytest.raises(InvariantViolation, match=r"R14 .*not FAULT"):
        ok.advance(utc("07:11"))  # the silence ended at 07:00


# --- R17: a damaged stored state ------------------------------------------------------------------


def r17(j: Judge) -> list[str]:
    return [f.message for f in j.findings if f.rule == "R17"]


def damaged(*, enforce: frozenset[str] = frozenset({"R17"}), binding: str = "kept") -> Judge:
    """The agent restarted at 05:00 and found its stored state damaged."""
    j = judge(enforce=enforce)
    j.world(home(pattern="OFF"))
    j.advance(utc("05:00"))
    j.agent_restarted()
    j.state_damaged(binding)
    return j


def test_r17_a_damaged_state_is_reported_high_and_latched_with_the_binding() -> None:
    j = damaged()
    j.advance(utc("05:09"))
    with pytest.raises(InvariantViolation, match=r"R17 .*no HIGH state_unreadable"):
        j.advance(utc("05:11"))
    for priority, alert_id, binding in (
        ("medium", "alert-000009", "kept"),
        ("high", None, "kept"),
        ("high", "alert-000009", "unreadable"),  # the binding read: it is kept
    ):
        k = damaged()
        with pytest.raises(InvariantViolation, match=r"R17 .*a latched HIGH alarm"):
            k.published("state_unreadable", priority, {"binding": binding}, alert_id)
    ok = damaged(binding="unreadable")
    ok.published("state_unreadable", "high", {"binding": "unreadable"}, "alert-000009")
    ok.advance(utc("05:30"))
    assert r17(ok) == []
    sound = judge(enforce=frozenset({"R17"}))
    with pytest.raises(InvariantViolation, match=r"R17 .*no damaged state"):
        sound.published("state_unreadable", "high", {"binding": "kept"}, "alert-000001")


def locked_down() -> Judge:
    j = damaged(enforce=frozenset({"R14", "R16", "R17"}))
    j.world(home(pattern="FAULT", locked=True))
    j.published("state_unreadable", "high", {"binding": "kept"}, "alert-000009")
    return j


def test_r17_nothing_is_cut_until_a_person_acknowledges() -> None:
    j = locked_down()
    j.advance(utc("06:00"))  # the 08:00 dose is due (06:00 UTC): the lockdown stops it
    j.world(home(pattern="FAULT", locked=True, reader=label(utc("06:00"))))
    j.advance(utc("06:30"))
    assert r17(j) == []
    assert [f for f in j.findings if f.rule == "R16"] == []
    with pytest.raises(InvariantViolation, match=r"R17 .*presented while the unit is locked down"):
        j.presented(5, label(utc("06:00")))
    k = locked_down()
    k.advance(utc("06:00"))
    with pytest.raises(InvariantViolation, match=r"R17 .*discarded while the unit is locked down"):
        k.discarded(5, label(utc("02:00")))
    ok = locked_down()
    ok.advance(utc("05:50"))
    ok.centre_command("acknowledge", "alert-000009")
    ok.published("alert_acknowledged", "info", {"alert_id": "alert-000009"})
    ok.world(home(reader=label(utc("06:00"))))  # unlocked, dark again
    ok.advance(utc("06:00"))
    ok.presented(5, label(utc("06:00")))
    ok.advance(utc("06:01"))
    assert r17(ok) == []
    refused = locked_down()
    refused.advance(utc("05:50"))
    refused.centre_command("acknowledge", "alert-000009")
    refused.centre_refused()  # the unit did not take it: still locked down
    with pytest.raises(InvariantViolation, match=r"R17 "):
        refused.presented(5, label(utc("06:00")))


def test_r17_a_locked_down_unit_locks_its_cassette_and_shows_fault() -> None:
    for shown in (home(pattern="FAULT"), home(pattern="OFF", locked=True)):
        j = damaged(enforce=frozenset({"R14"}))
        j.published("state_unreadable", "high", {"binding": "kept"}, "alert-000009")
        j.world(shown)
        with pytest.raises(InvariantViolation, match=r"R14 .*locked down"):
            j.advance(utc("05:11"))
    ok = locked_down()
    ok.advance(utc("05:40"))
    ok.centre_command("acknowledge", "alert-000009")
    ok.world(home())  # unlocked and dark once a person decided
    ok.advance(utc("06:00"))
    assert r14(ok) == []


def test_r14_the_reminder_escalates_at_its_time_even_across_a_restart() -> None:
    def shown(j: Judge) -> None:
        j.world(home())
        j.advance(utc("06:00"))
        j.presented(5, label(utc("06:00")))
        j.world(home(tray_occupied=True, pattern="REMINDER"))
        j.published("dose_presented", "info", {"slot_id": "2026-06-01T08:00", "dispense_id": 5})

    def escalating() -> Judge:
        return judge(enforce=frozenset({"R14"}), escalate_after=timedelta(minutes=30))

    ok = escalating()
    shown(ok)
    ok.advance(utc("06:30"))
    ok.world(home(tray_occupied=True, pattern="URGENT"))
    ok.advance(utc("06:59"))
    assert r14(ok) == []
    late = escalating()
    shown(late)
    with pytest.raises(InvariantViolation, match=r"R14 .*shows REMINDER, not URGENT or FAULT"):
        late.advance(utc("06:41"))
    early = escalating()
    shown(early)
    early.advance(utc("06:05"))
    early.world(home(tray_occupied=True, pattern="URGENT"))
    with pytest.raises(InvariantViolation, match=r"R14 .*shows URGENT, not REMINDER or FAULT"):
        early.advance(utc("06:16"))
    # the agent stores the step and keeps its time: a restart is no excuse (year simulation,
    # seed 3, 2027-01-29: URGENT fell back to REMINDER after a restart)
    restarted = escalating()
    shown(restarted)
    restarted.advance(utc("06:20"))
    restarted.agent_restarted()  # before the escalation: it still comes at 06:30
    with pytest.raises(InvariantViolation, match=r"R14 .*shows REMINDER, not URGENT or FAULT"):
        restarted.advance(utc("06:41"))
    dropped = escalating()
    shown(dropped)
    dropped.advance(utc("06:35"))
    dropped.world(home(tray_occupied=True, pattern="URGENT"))
    dropped.advance(utc("06:40"))
    dropped.agent_restarted()  # after it: never back to REMINDER
    dropped.world(home(tray_occupied=True, pattern="REMINDER"))
    with pytest.raises(InvariantViolation, match=r"R14 .*shows REMINDER, not URGENT or FAULT"):
        dropped.advance(utc("06:51"))
    # a restart with a clock the agent does not trust cannot tell how long the dose waited: a
    # step not yet shown may come late; one shown is never undone
    untrusted = escalating()
    shown(untrusted)
    untrusted.advance(utc("06:20"))
    untrusted.agent_restarted(clock_trusted=False)
    untrusted.advance(utc("06:50"))
    assert r14(untrusted) == []
    untrusted.world(home(tray_occupied=True, pattern="URGENT"))
    untrusted.advance(utc("06:52"))
    untrusted.agent_restarted(clock_trusted=False)
    untrusted.world(home(tray_occupied=True, pattern="REMINDER"))
    with pytest.raises(InvariantViolation, match=r"R14 .*shows REMINDER, not URGENT or FAULT"):
        untrusted.advance(utc("07:03"))
    kept = escalating()
    shown(kept)
    kept.advance(utc("06:30"))
    kept.world(home(tray_occupied=True, pattern="URGENT"))
    kept.advance(utc("06:40"))
    kept.agent_restarted()
    kept.advance(utc("06:59"))
    assert r14(kept) == []


def test_r14_a_due_dose_the_agent_holds_shows_held() -> None:
    j = judge(enforce=frozenset({"R14"}))
    j.world(home())
    j.advance(utc("05:00"))
    j.published("dose_held", "low", {"slot_id": "2026-06-01T08:00", "reason": "min_interval"})
    j.advance(utc("05:59"))  # not due yet: no pattern owed
    j.world(home(pattern="HELD"))
    j.advance(utc("06:20"))
    j.presented(5, label(utc("06:00")))
    j.world(home(tray_occupied=True, pattern="REMINDER"))
    j.published("dose_presented", "info", {"slot_id": "2026-06-01T08:00", "dispense_id": 5})
    j.advance(utc("06:30"))
    assert r14(j) == []
    dark = judge(enforce=frozenset({"R14"}))
    dark.world(home())
    dark.advance(utc("06:00"))
    dark.published("dose_held", "high", {"slot_id": "2026-06-01T08:00", "reason": "no_roll"})
    with pytest.raises(InvariantViolation, match=r"R14 .*slot 2026-06-01T08:00 is held .*OFF"):
        dark.advance(utc("06:11"))


def test_r14_a_held_dose_is_due_when_the_agents_clock_shows_it() -> None:
    """Wide world seed 251: the synchronised clock stepped back an hour before the 20:00 dose,
    said held ahead. At true 19:00 UTC the agent's clock shows 18:00: nothing is due for it, the
    dispenser rightly shows OFF; the judge read the due instant in true time."""
    j = judge(enforce=frozenset({"R14"}))
    j.world(home(clock_behind=timedelta(hours=1)))
    j.advance(utc("05:00"))
    j.published("dose_held", "low", {"slot_id": "2026-06-01T08:00", "reason": "no_roll"})
    j.advance(utc("06:00"))
    j.world(home(clock_behind=timedelta(hours=1), bin_full=True))  # any later look at the unit
    j.advance(utc("06:30"))
    assert r14(j) == []
    j.advance(utc("07:00"))
    j.world(home(clock_behind=timedelta(hours=1)))  # due by the agent's clock: HELD owed
    with pytest.raises(InvariantViolation, match=r"R14 .*slot 2026-06-01T08:00 is held .*OFF"):
        j.advance(utc("07:11"))


def test_r14_the_dispenser_stops_calling_once_the_dose_is_gone_or_settled() -> None:
    j = judge(enforce=frozenset({"R14"}))
    j.world(home())
    j.advance(utc("06:00"))
    j.presented(5, label(utc("06:00")))
    j.world(home(tray_occupied=True, pattern="REMINDER"))
    j.published("dose_presented", "info", {"slot_id": "2026-06-01T08:00", "dispense_id": 5})
    j.advance(utc("06:05"))
    j.taken(5)
    j.world(home(pattern="REMINDER"))  # taken, and the unit keeps calling
    j.advance(utc("06:14"))
    assert r14(j) == []  # within the bound
    with pytest.raises(InvariantViolation, match=r"R14 .*shows REMINDER with no dose of an open"):
        j.advance(utc("06:16"))


def test_r12_the_centre_hears_a_dose_not_taken_at_its_escalation_and_not_before() -> None:
    def shown() -> Judge:
        j = judge(enforce=frozenset({"R12"}), escalate_after=timedelta(minutes=30))
        j.world(world())
        j.advance(utc("06:00"))
        j.presented(5, label(utc("06:00")))
        j.world(world(tray_occupied=True))
        j.published("dose_presented", "info", {"slot_id": "2026-06-01T08:00", "dispense_id": 5})
        return j

    ok = shown()
    ok.advance(utc("06:30"))
    ok.published("dose_not_taken", "medium", {"slot_id": "2026-06-01T08:00"})
    ok.advance(utc("06:59"))
    assert [f for f in ok.findings if f.rule == "R12"] == []
    with pytest.raises(InvariantViolation, match=r"R12 .*dose of slot 2026-06-01T08:00 not taken"):
        shown().advance(utc("06:46"))  # never said
    early = shown()
    early.advance(utc("06:10"))
    with pytest.raises(InvariantViolation, match=r"R12 .*dose_not_taken for slot 2026-06-01T08:00"):
        early.published("dose_not_taken", "medium", {"slot_id": "2026-06-01T08:00"})


def test_r12_a_dose_not_taken_is_judged_to_the_accuracy_of_a_trusted_clock() -> None:
    # wide world seed 192: the dose is presented at true 20:00:00.001011 while the agent's
    # synchronised wall clock reads 20:00:00.001000 (it is right to a second, not to a
    # microsecond); the Pi reboots, its clock now exact, and re-times the escalation from the
    # stored wall time: dose_not_taken at true 20:30:00.001001, 10 us "early". A nurse reading
    # it is told the truth; a step a second or more early is not excused
    presented_at = datetime(2026, 6, 1, 6, 0, 0, 11, tzinfo=UTC)

    def shown() -> Judge:
        j = judge(enforce=frozenset({"R12"}), escalate_after=timedelta(minutes=30))
        j.world(world())
        j.advance(presented_at)
        j.presented(5, label(utc("06:00")))
        j.world(world(tray_occupied=True))
        j.published("dose_presented", "info", {"slot_id": "2026-06-01T08:00", "dispense_id": 5})
        return j

    hair = shown()
    hair.advance(datetime(2026, 6, 1, 6, 30, 0, 1, tzinfo=UTC))
    hair.published("dose_not_taken", "medium", {"slot_id": "2026-06-01T08:00"})
    assert [f for f in hair.findings if f.rule == "R12"] == []
    second = shown()
    second.advance(datetime(2026, 6, 1, 6, 29, 59, 0, tzinfo=UTC))
    with pytest.raises(InvariantViolation, match=r"R12 .*dose_not_taken for slot 2026-06-01T08:00"):
        second.published("dose_not_taken", "medium", {"slot_id": "2026-06-01T08:00"})


def test_r11_a_command_the_rules_refuse_is_not_taken() -> None:
    j = judge(enforce=frozenset({"R11"}))
    j.advance(utc("06:00"))
    j.forbid("schedule_13_doses", "schedule_changed", "version", 3)
    j.published("schedule_changed", "info", {"version": 2})  # another update: fine
    with pytest.raises(InvariantViolation, match=r"R11 .*schedule_changed after a command the"):
        j.published("schedule_changed", "info", {"version": 3})
    k = judge(enforce=frozenset({"R11"}))
    k.advance(utc("06:00"))
    k.forbid("silence_zero", "alert_silenced")
    k.advance(utc("06:01"))  # forbidden only at the instant it was refused
    k.published("alert_silenced", "info", {})
    assert k.findings == []


def test_r15_a_roll_is_past_its_period_only_when_its_leader_says_so() -> None:
    def held(last_dose: datetime) -> Judge:
        j = judge(enforce=frozenset({"R15"}))
        j.advance(utc("06:00"))
        sachet = replace(label(utc("06:00")), roll_last_dose_utc=last_dose)
        j.world(world(reader=sachet))
        j.published(
            "dose_held", "low", {"slot_id": "2026-06-01T08:00", "reason": "roll_period_passed"}
        )
        return j

    ok = held(utc("05:20"))  # 40 min ago: past the 30 min tolerance and the clock slack
    ok.advance(utc("07:00"))
    assert ok.findings == []
    moment = held(utc("06:00"))  # a claim about the roll the agent knew, corrected at once
    moment.published("dose_presented", "info", {"slot_id": "2026-06-01T08:00", "dispense_id": 4})
    moment.advance(utc("07:00"))
    assert [f for f in moment.findings if f.rule == "R15"] == []
    wrong = held(utc("06:00"))  # this very slot is the roll's last dose
    with pytest.raises(InvariantViolation, match=r"R15 .*leader of roll R001 gives its last"):
        wrong.advance(utc("06:11"))


def test_r15_the_roll_period_is_judged_on_the_agents_clock_when_it_runs_ahead() -> None:
    # the synchronised wall clock stepped an hour ahead (not corrected yet): at true 06:00 the
    # agent reads 07:00, and the roll whose last dose is 06:00 is past its period by the only
    # clock it has (wide world seed 131)
    def held(ahead: timedelta) -> Judge:
        j = judge(enforce=frozenset({"R15"}))
        j.advance(utc("06:00"))
        sachet = replace(label(utc("06:00")), roll_last_dose_utc=utc("06:00"))
        j.world(replace(world(reader=sachet), clock_ahead=ahead))
        j.published(
            "dose_held", "low", {"slot_id": "2026-06-01T08:00", "reason": "roll_period_passed"}
        )
        return j

    ahead = held(timedelta(hours=1))
    ahead.advance(utc("07:00"))
    assert ahead.findings == []
    with pytest.raises(InvariantViolation, match=r"R15 .*leader of roll R001 gives its last"):
        held(timedelta(minutes=20)).advance(utc("06:11"))  # 06:20 by it: not past yet


def test_r14_a_restart_ends_the_centres_silence() -> None:
    # the agent keeps a silence in memory only: restarted, it calls the patient to the dose in
    # the tray again, URGENT past the escalation (wide world seed 273)
    j = judge(enforce=frozenset({"R14"}))
    j.world(home())
    j.advance(utc("05:59"))
    j.silenced(timedelta(minutes=60))
    j.advance(utc("06:00"))
    j.presented(5, label(utc("06:00")))
    j.world(home(tray_occupied=True))
    j.published("dose_presented", "info", {"slot_id": "2026-06-01T08:00", "dispense_id": 5})
    j.advance(utc("06:35"))
    j.agent_restarted()
    j.world(home(pattern="URGENT", tray_occupied=True))
    j.advance(utc("06:50"))
    assert r14(j) == []
    j.world(home(pattern="OFF", tray_occupied=True))  # silent after the restart: not asked
    with pytest.raises(InvariantViolation, match=r"R14 .*lies in the tray and the dispenser shows"):
        j.advance(utc("07:01"))


# --- R16: a dose is given when nothing stops it --------------------------------------------------

R16 = frozenset({"R16"})
DUE = utc("06:00")  # 08:00 local, the first slot of DAY


def ready(**kw: object) -> World:
    """Nothing stops the 08:00 dose: the patient's roll, its sachet for 08:00 at the reader, the
    agent linked with a trusted clock, the tray empty, no fault."""
    sachet = replace(label(DUE, index=3), roll_last_dose_utc=utc("18:00", day=14))
    return replace(home(reader=sachet), **kw)  # type: ignore[arg-type]


def r16(j: Judge) -> list[str]:
    return [f.message for f in j.findings if f.rule == "R16"]


def test_r16_a_dose_nothing_stops_must_be_given_within_the_bound() -> None:
    withheld = judge(enforce=R16)
    withheld.world(ready())
    withheld.advance(DUE)
    withheld.advance(utc("06:02"))  # the bound: 2 min
    with pytest.raises(InvariantViolation, match=r"R16 .*slot 2026-06-01T08:00 .*not given: "):
        withheld.advance(utc("06:03"))
    given = judge(enforce=R16)
    given.world(ready())
    given.advance(DUE)
    given.presented(5, label(DUE, index=3))
    given.world(ready(tray_occupied=True))
    given.published("dose_presented", "info", {"slot_id": "2026-06-01T08:00", "dispense_id": 5})
    given.advance(utc("07:30"))
    assert r16(given) == []
    early = judge(enforce=R16)  # TAKE at 05:40: given before its due instant, owed nothing more
    early.world(ready())
    early.advance(utc("05:40"))
    early.presented(5, label(DUE, index=3))
    early.world(ready(tray_occupied=True))
    early.advance(utc("05:50"))
    early.taken(5)
    early.world(ready(reader=None, remaining=0))
    early.advance(utc("07:30"))
    assert r16(early) == []


def test_r16_a_dose_withheld_for_a_reason_the_judge_does_not_know_is_a_violation() -> None:
    """An engine that holds a dose for no true reason (an untrue dose_held, a refusal) and lets
    its slot end: the hold itself excuses nothing."""
    j = judge(enforce=R16)
    j.world(ready())
    j.advance(DUE)
    j.published("dose_held", "low", {"slot_id": "2026-06-01T08:00", "reason": "no_link"})
    with pytest.raises(InvariantViolation, match=r"R16 .*nothing has stopped it since 2026-06-01 "):
        j.advance(utc("07:00"))


STOPS: dict[str, World] = {
    "no roll": ready(roll_patient_ref=None, reader=None, remaining=0),
    "another patient's roll": ready(roll_patient_ref="p-other"),
    "a leader that cannot be read": ready(roll_label_readable=False),
    "an expired roll": ready(reader=replace(label(DUE, index=3), roll_expiry_utc=utc("05:00"))),
    "a roll past its period": ready(
        reader=replace(label(DUE, index=3), roll_last_dose_utc=utc("05:00"))
    ),
    "no sachet at the reader": ready(reader=None, remaining=0),
    "the next slot's sachet at the reader": ready(reader=label(utc("18:00"), index=4)),
    "a sachet for no slot": ready(reader=label(utc("11:00"), index=4)),
    "an unreadable sachet": ready(reader=replace(label(DUE, index=3), readable=False)),
    "a sachet without a time": ready(reader=replace(label(DUE, index=3), intended_utc=None)),
    "another patient's sachet": ready(reader=label(DUE, index=3, sachet_ref="p-other")),
    "a jam": ready(jammed=True, faults=frozenset({"JAM"})),
    "a cutter fault": ready(faults=frozenset({"CUTTER"})),
    "a full bin": ready(bin_full=True),
    "the lid open": ready(lid_open=True),
    "a locked cassette": ready(locked=True),
    "a dose in the tray": ready(tray_occupied=True),
    "the agent not linked": ready(agent_linked=False),
    "an untrusted clock": ready(clock_trusted=False),
    "a clock an hour behind": ready(clock_behind=timedelta(hours=1)),
}


@pytest.mark.parametrize("stop", sorted(STOPS))
def test_r16_a_dose_stopped_by_the_world_is_owed_nothing(stop: str) -> None:
    j = judge(enforce=R16)
    j.world(STOPS[stop])
    j.advance(DUE)
    j.advance(utc("06:30"))
    assert j.dose_stop(j._by_id["2026-06-01T08:00"], utc("06:30"))[0] is not None
    assert r16(j) == []


def test_r16_the_bound_runs_from_when_the_stop_ends_until_the_slot_ends() -> None:
    j = judge(enforce=R16)
    j.world(ready(agent_linked=False))
    j.advance(DUE)
    j.advance(utc("06:20"))
    j.world(ready())  # the link is back: the dose is owed from now
    j.advance(utc("06:22"))
    with pytest.raises(
        InvariantViolation, match=r"R16 .*nothing has stopped it since 2026-06-01 06:20"
    ):
        j.advance(utc("06:23"))
    late = judge(enforce=R16)  # back only as the slot ends (due + the window): owed nothing
    late.world(ready(agent_linked=False))
    late.advance(DUE)
    late.advance(utc("06:59"))
    late.world(ready())
    late.advance(utc("07:30"))
    assert r16(late) == []


def test_r16_a_pause_and_the_minimum_interval_stop_a_dose_until_they_end() -> None:
    paused = judge(enforce=R16)
    paused.world(ready())
    paused.advance(utc("05:00"))
    paused.pause("P1", utc("05:30"), utc("12:00"))
    paused.advance(utc("07:30"))
    assert r16(paused) == []
    interval = judge(("08:00", "20:00"), enforce=R16, min_intake_interval=timedelta(hours=1))
    interval.world(ready(tray_occupied=True))
    interval.advance(utc("05:30"))
    interval.taken(9)  # an intake at 05:30 (the dose before): not before 06:30
    interval.world(ready())
    interval.advance(DUE)
    interval.advance(utc("06:31"))
    assert r16(interval) == []
    # released by time alone at 06:30, with nothing between: the bound runs from then
    with pytest.raises(InvariantViolation, match=r"R16 .*stopped it since 2026-06-01 06:30"):
        interval.advance(utc("06:40"))


def test_r16_an_intake_out_of_the_agents_hearing_counts_from_when_it_can_hear_of_it() -> None:
    j = judge(enforce=R16, min_intake_interval=timedelta(hours=1))
    j.world(ready(tray_occupied=True, agent_linked=False))
    j.advance(utc("05:00"))
    j.taken(9)
    j.world(ready(agent_linked=False))
    j.advance(utc("05:40"))
    j.world(ready())  # linked again at 05:40: it may count the intake from here, to 06:40
    j.advance(DUE)
    j.advance(utc("06:40"))
    assert r16(j) == []
    with pytest.raises(InvariantViolation, match=r"R16 .*stopped it since 2026-06-01 06:40"):
        j.advance(utc("06:43"))


def test_r16_doses_are_given_in_order() -> None:
    """Two doses 30 min apart, the 08:00 sachet missing (the 08:30 one at the reader): the 08:30
    dose waits while the 08:00 slot is open (seeds 13 and 23 of the suite's world)."""
    j = judge(("08:00", "08:30"), enforce=R16, min_intake_interval=timedelta(minutes=15))
    j.world(ready(reader=label(utc("06:30"), index=4)))
    j.advance(DUE)
    j.advance(utc("06:45"))
    assert r16(j) == []  # 08:00: no sachet for it; 08:30: behind the open 08:00 slot
    j.advance(utc("07:00"))  # the 08:00 slot ends: the 08:30 dose is owed from now
    with pytest.raises(
        InvariantViolation, match=r"R16 .*slot 2026-06-01T08:30 .*since 2026-06-01 07:00"
    ):
        j.advance(utc("07:03"))


# --- R18: a sachet a person decided to discard goes to the bin -----------------------------------


def r18(j: Judge) -> list[str]:
    return [f.message for f in j.findings if f.rule == "R18"]


def decided_at_reader(**kw: object) -> tuple[Judge, SachetLabel]:
    """At 05:00 the sachet at the reader is packed for 12:00 (no dose time): a plan mismatch a
    person decides at 05:00."""
    j = judge(enforce=frozenset({"R18"}))
    unplanned = label(utc("10:00"), index=1)  # 12:00 local
    j.advance(utc("05:00"))
    j.world(replace(world(reader=unplanned), **{"bin_room": 10, **kw}))  # type: ignore[arg-type]
    j.discard_decided("R001", 1)
    return j, unplanned


def test_r18_a_decided_sachet_is_cut_into_the_bin_within_the_bound() -> None:
    j, _ = decided_at_reader()
    j.advance(utc("05:09"))
    assert r18(j) == []
    with pytest.raises(InvariantViolation, match=r"R18 .*sachet 1 of roll R001.*still at the"):
        j.advance(utc("05:11"))
    ok, unplanned = decided_at_reader()
    ok.advance(utc("05:02"))
    ok.discarded(7, unplanned)
    ok.world(replace(world(reader=label(utc("18:00"), index=2)), bin_room=9))  # the next one
    ok.advance(utc("06:00"))
    assert r18(ok) == []
    undecided = judge(enforce=frozenset({"R18"}))
    undecided.advance(utc("05:00"))
    undecided.world(replace(world(reader=label(utc("10:00"), index=1)), bin_room=10))
    undecided.advance(utc("06:00"))  # nobody decided: it waits (R8.plan_mismatch's business)
    assert r18(undecided) == []


def test_r18_what_stops_a_discard_gives_it_time() -> None:
    for stop in (
        {"bin_room": 1},  # the last place is kept for a dose from the tray (R6)
        {"bin_room": None},
        {"lid_open": True},
        {"tray_occupied": True},
        {"linked": False},
        {"faults": frozenset({"CUTTER"})},
        {"retain_bin": False},
    ):
        j, _ = decided_at_reader(**{k: v for k, v in stop.items() if k != "linked"})
        if "linked" in stop:
            j.world(replace(world(reader=label(utc("10:00"), index=1), linked=False), bin_room=10))
        j.advance(utc("07:00"))
        assert r18(j) == [], stop
        j.world(replace(world(reader=label(utc("10:00"), index=1)), bin_room=10))  # it ends
        j.advance(utc("07:09"))
        with pytest.raises(InvariantViolation, match=r"R18 "):
            j.advance(utc("07:11"))
    paused, _ = decided_at_reader()
    paused.pause("trip", utc("05:05"), utc("09:00"))  # the pause begins within the bound
    paused.advance(utc("08:59"))
    assert r18(paused) == []


# --- R19: the national code of a dose not given; R20: no alarm flood ----------------------------


def test_r19_a_dose_not_handed_over_carries_vkp_3_3_or_3_7() -> None:
    def published(j: Judge, result: str, code: str | None, kind: str = "slot_outcome") -> None:
        fields: dict[str, object] = {"slot_id": "2026-06-01T08:00", "outcome": result}
        priority = "info" if result in ("taken", "skipped_paused") else "high"
        j.published(kind, priority, fields, "alert-000001", code)

    for result, code in (("missed", "3.3"), ("refused", "3.7"), ("taken", None)):
        ok = judge(enforce=frozenset({"R19"}))
        published(ok, result, code)
        assert [f for f in ok.findings if f.rule == "R19"] == []
    for result, code in (("missed", None), ("refused", "3.22"), ("taken", "3.3")):
        j = judge(enforce=frozenset({"R19"}))
        with pytest.raises(InvariantViolation, match=r"R19 .*carries VKP code"):
            published(j, result, code)
    held = judge(enforce=frozenset({"R19"}))
    held.published("dose_held", "high", {"slot_id": "2026-06-01T08:00"}, None, "3.7")
    held.published("dose_held", "low", {"slot_id": "2026-06-01T08:00"}, None, None)
    assert [f for f in held.findings if f.rule == "R19"] == []
    with pytest.raises(InvariantViolation, match=r"R19 "):
        held.published("dose_held", "high", {"slot_id": "2026-06-01T08:00"}, None, None)
    unseen = judge(enforce=frozenset({"R19"}))  # published without its code: not judged
    unseen.published("slot_outcome", "high", {"slot_id": "2026-06-01T08:00", "outcome": "missed"})
    assert [f for f in unseen.findings if f.rule == "R19"] == []


def test_r20_a_chatty_event_at_most_once_per_interval_unless_the_agent_restarted() -> None:
    j = judge(enforce=frozenset({"R20"}))
    j.advance(utc("05:00"))
    j.published("button_pressed", "low", {"button": "take"})
    j.advance(utc("05:15"))
    j.published("button_pressed", "low", {"button": "take"})  # a full interval later
    j.published("lid_open", "low", {})  # another kind
    j.advance(utc("05:20"))
    j.agent_restarted()  # it does not remember the last one
    j.published("lid_open", "low", {})
    assert j.findings == []
    with pytest.raises(InvariantViolation, match=r"R20 .*lid_open at .*at most one per 0:15:00"):
        j.published("lid_open", "low", {})


# --- a dispenser without some feature bits (SPEC 3, "What each bit obliges") --------------------


def unit(
    *,
    held_pattern: bool = True,
    retain_bin: bool = True,
    lock_supported: bool = True,
    silence_alarm: bool = False,
    **kw: object,
) -> World:
    """What `home` shows, on a dispenser model with or without these features."""
    return replace(
        home(**kw),  # type: ignore[arg-type]
        held_pattern=held_pattern,
        retain_bin=retain_bin,
        lock_supported=lock_supported,
        silence_alarm=silence_alarm,
    )


def test_r14_a_dispenser_without_held_pattern_shows_fault_for_a_held_dose() -> None:
    """SPEC 3: a dispenser without HELD_PATTERN refuses HELD; the agent shows FAULT instead."""
    for shown in ("OFF", "HELD"):
        j = judge(enforce=frozenset({"R14"}))
        j.world(unit(held_pattern=False, pattern=shown))
        j.advance(utc("06:00"))
        j.published("dose_held", "high", {"slot_id": "2026-06-01T08:00", "reason": "no_roll"})
        with pytest.raises(
            InvariantViolation, match=rf"R14 .*is held .*shows {shown}, not FAULT since"
        ):
            j.advance(utc("06:11"))
    ok = judge(enforce=frozenset({"R14"}))
    ok.world(unit(held_pattern=False))
    ok.advance(utc("06:00"))
    ok.published("dose_held", "high", {"slot_id": "2026-06-01T08:00", "reason": "no_roll"})
    ok.world(unit(held_pattern=False, pattern="FAULT"))
    ok.advance(utc("06:59"))
    assert r14(ok) == []
    # the slot ends: no dose is held any more, and FAULT has no reason left
    outcome(ok, "2026-06-01T08:00", "missed", "high")
    ok.advance(utc("07:09"))
    assert r14(ok) == []
    with pytest.raises(InvariantViolation, match=r"R14 .*shows FAULT with no roll of another"):
        ok.advance(utc("07:11"))


def test_r14_the_dispenser_shows_fault_only_for_a_reason() -> None:
    """No alarm for nothing: FAULT only for another's roll, a lockdown, the dispenser's own
    silence alarm, or (without HELD_PATTERN) a held dose or an untrusted clock."""
    bare = judge(enforce=frozenset({"R14"}))
    bare.world(unit())
    bare.advance(utc("03:00"))
    bare.world(unit(pattern="FAULT"))
    bare.advance(utc("03:09"))
    assert r14(bare) == []  # within the bound
    with pytest.raises(InvariantViolation, match=r"R14 .*shows FAULT with no roll of another"):
        bare.advance(utc("03:11"))
    # a dispenser with HELD_PATTERN shows HELD for a held dose: FAULT is no stand-in for it
    held = judge(enforce=frozenset({"R14"}))
    held.world(unit())
    held.advance(utc("06:00"))
    held.published("dose_held", "high", {"slot_id": "2026-06-01T08:00", "reason": "no_roll"})
    held.world(unit(pattern="FAULT"))
    with pytest.raises(InvariantViolation, match=r"R14 .*shows FAULT with no roll of another"):
        held.advance(utc("06:11"))
    reasons: tuple[World, ...] = (
        unit(roll="p-other", locked=True, pattern="FAULT"),
        unit(pattern="FAULT", silence_alarm=True),
        unit(pattern="FAULT", held_pattern=False, clock_trusted=False),
    )
    for reason in reasons:
        ok = judge(enforce=frozenset({"R14"}))
        ok.world(unit())
        ok.advance(utc("03:00"))
        ok.world(reason)
        ok.advance(utc("04:00"))
        assert r14(ok) == [], reason
    unlinked = judge(enforce=frozenset({"R14"}))
    unlinked.world(unit(pattern="FAULT", linked=False))  # the agent cannot act: no bound
    unlinked.advance(utc("04:00"))
    assert r14(unlinked) == []


def test_r14_no_gated_command_goes_to_a_dispenser_without_its_bit() -> None:
    j = judge(enforce=frozenset({"R14"}))
    j.world(unit(roll="p-other", lock_supported=False, pattern="FAULT"))
    j.advance(utc("06:00"))
    with pytest.raises(InvariantViolation, match=r"R14 .*sent SetLock to a dispenser that lacks"):
        j.unsupported("SetLock")


def test_r12_a_dose_left_in_a_tray_without_a_bin_is_reported_with_its_reason() -> None:
    """SPEC 3: without RETAIN_BIN a dose not taken stays in the tray; the centre hears which one
    and why (a person must lift it out)."""

    def missed(
        reported: tuple[str, dict[str, object]] | None, *, retain_bin: bool = False
    ) -> Judge:
        j = judge(enforce=frozenset({"R12"}))
        j.world(unit(retain_bin=retain_bin))
        j.advance(utc("06:00"))
        j.presented(5, label(utc("06:00")))
        j.world(unit(retain_bin=retain_bin, tray_occupied=True, pattern="REMINDER"))
        j.published("dose_presented", "info", {"slot_id": "2026-06-01T08:00", "dispense_id": 5})
        j.advance(utc("07:00"))
        j.published(
            "slot_outcome",
            "high",
            {"slot_id": "2026-06-01T08:00", "outcome": "missed", "dispense_id": 5},
            "alert-1",
        )
        if reported is not None:
            j.published(reported[0], "medium", reported[1])
        j.advance(utc("07:14"))
        return j

    for kind in ("dose_stuck_in_tray", "dose_left_in_tray"):
        ok = missed((kind, {"dispense_id": 5, "reason": "no_retain_bin"}))
        ok.advance(utc("07:30"))
        assert [f for f in ok.findings if f.rule == "R12"] == []
    wrong: tuple[tuple[str, dict[str, object]] | None, ...] = (
        None,
        ("dose_stuck_in_tray", {"dispense_id": 5, "reason": "bin_full"}),
        ("dose_stuck_in_tray", {"dispense_id": 6, "reason": "no_retain_bin"}),
    )
    for report in wrong:
        j = missed(report)
        with pytest.raises(InvariantViolation, match=r"R12 .*dose 5 left in a tray without a bin"):
            j.advance(utc("07:16"))
    binned = missed(None, retain_bin=True)  # a dispenser with a bin takes it back instead
    binned.advance(utc("07:30"))
    assert [f for f in binned.findings if f.rule == "R12"] == []


# --- the unit's own held light, true rejections, a binding lost ------------------------------


def test_r14_the_units_held_light_is_on_while_a_due_dose_is_held_and_only_for_a_held_one() -> None:
    def held_at_0600(panel: bool) -> Judge:
        j = judge(enforce=frozenset({"R14"}))
        j.world(replace(home(pattern="HELD"), panel_held=False))
        j.advance(utc("05:00"))
        j.published("dose_held", "high", {"slot_id": "2026-06-01T08:00", "reason": "no_roll"})
        j.advance(utc("06:00"))  # due now
        j.world(replace(home(pattern="HELD"), panel_held=panel))
        return j

    dark = held_at_0600(False)
    dark.advance(utc("06:10"))
    with pytest.raises(InvariantViolation, match=r"R14 .*held and the unit's held light is off"):
        dark.advance(utc("06:11"))
    lit = held_at_0600(True)
    lit.advance(utc("06:30"))
    assert r14(lit) == []
    lost = held_at_0600(False)  # seed 74: the Pi booted with a guessed time, two hours behind
    lost.world(replace(home(pattern="HELD", clock_trusted=False), panel_held=False))
    lost.advance(utc("06:30"))  # it cannot tell the dose is due: no light owed
    assert r14(lost) == []
    stray = judge(enforce=frozenset({"R14"}))
    stray.world(home())
    stray.advance(utc("05:00"))
    stray.world(replace(home(), panel_held=True))  # nothing held at all
    stray.advance(utc("05:09"))
    with pytest.raises(InvariantViolation, match=r"R14 .*held light is on with no dose held"):
        stray.advance(utc("05:11"))
    early = judge(enforce=frozenset({"R14"}))  # TAKE at 05:00, answered "held": lit early
    early.world(home())
    early.advance(utc("05:00"))
    early.published("dose_held", "low", {"slot_id": "2026-06-01T08:00", "reason": "no_roll"})
    early.world(replace(home(pattern="HELD"), panel_held=True))
    early.advance(utc("05:40"))
    assert r14(early) == []
    outcome(early, "2026-06-01T08:00", "missed", "high")  # the slot ended: nothing held now
    early.advance(utc("05:49"))
    with pytest.raises(InvariantViolation, match=r"R14 .*held light is on with no dose held"):
        early.advance(utc("05:51"))
    unseen = judge(enforce=frozenset({"R14"}))
    unseen.world(replace(home(), panel_held=None))  # the Pi is down: its panel is not judged
    unseen.advance(utc("05:30"))
    assert r14(unseen) == []


def test_r15_a_sachet_is_rejected_only_when_it_truly_cannot_be_given() -> None:
    good = label(utc("06:00"), index=3)
    for shown, truthful in (
        (good, False),
        (replace(good, patient_ref="p-other"), True),
        (replace(good, intended_utc=None), True),
        (replace(good, readable=False), True),
    ):
        j = judge(enforce=frozenset({"R15"}))
        j.world(home(reader=shown))
        j.advance(utc("05:00"))
        rejected = {"roll_id": "R001", "index": 3, "reason": "sachet_foreign"}
        if truthful:
            j.published("sachet_rejected", "high", rejected)
            assert [f for f in j.findings if f.rule == "R15"] == []
        else:
            with pytest.raises(InvariantViolation, match=r"R15 .*sachet 3 of roll R001: readable"):
                j.published("sachet_rejected", "high", rejected)
    never_seen = judge(enforce=frozenset({"R15"}))
    never_seen.world(home(reader=good))
    never_seen.published("sachet_rejected", "high", {"roll_id": "R001", "index": 9})
    assert [f for f in never_seen.findings if f.rule == "R15"] == []


def test_r17_a_lost_binding_owes_no_dose_until_a_person_binds_the_unit_again() -> None:
    def acknowledged() -> Judge:
        j = damaged(enforce=R16 | {"R17"}, binding="unreadable")
        j.world(ready(pattern="FAULT", locked=True))
        j.published("state_unreadable", "high", {"binding": "unreadable"}, "alert-000009")
        j.advance(utc("05:30"))
        j.centre_command("acknowledge", "alert-000009")
        j.world(ready())
        return j

    unbound = acknowledged()
    for at in (DUE, utc("06:03"), utc("07:30")):
        unbound.advance(at)  # the 08:00 dose (06:00 UTC) is not owed: nobody is bound
    assert r16(unbound) == []
    rebound = acknowledged()
    rebound.advance(utc("05:40"))
    rebound.centre_command("bind")
    rebound.bound()
    rebound.advance(DUE)
    with pytest.raises(InvariantViolation, match=r"R16 .*slot 2026-06-01T08:00 .*not given"):
        rebound.advance(utc("06:03"))
    with pytest.raises(
        InvariantViolation, match=r"R17 .*a latched HIGH alarm saying binding 'kept'"
    ):
        # the roll's record alone was damaged: a report that the binding is lost is untrue
        damaged().published("state_unreadable", "high", {"binding": "unreadable"}, "alert-1")


def test_r16_a_held_dose_is_not_given_up_before_its_window_ends() -> None:
    def held(end_at: datetime) -> Judge:
        j = judge(enforce=R16)
        j.world(ready(lid_open=True))  # the lid stops the dose
        j.advance(DUE)
        j.published("dose_held", "low", {"slot_id": "2026-06-01T08:00", "reason": "lid_open"})
        j.advance(end_at)
        outcome(j, "2026-06-01T08:00", "missed", "high")
        return j

    with pytest.raises(InvariantViolation, match=r"R16 .*given up at 2026-06-01 06:10"):
        held(utc("06:10"))  # the lid may close within the hour: the dose may still come
    assert r16(held(utc("07:00"))) == []  # its window (60 min) has passed


# --- R21: the battery conditions at their documented levels ------------------------------------


def battery_walk(j: Judge, levels: tuple[int, ...], start: str = "01:00") -> None:
    """The battery at each level 20 min apart from `start`, the agent raising and clearing at
    once as docs/engine.md's table says (written out here: battery_low at <= 20 %, cleared at
    >= 25 %; battery_empty at <= 3 %, cleared at >= 5 %; each raised once, cleared once)."""
    at = utc(start)
    raised: set[str] = set()
    for pct in levels:
        j.advance(at)
        j.battery(pct)
        for name, raise_at, clear_at in (("battery_low", 20, 25), ("battery_empty", 3, 5)):
            if name not in raised and pct <= raise_at:
                j.published(name, "low", {"battery_pct": pct, "mains": False})
                raised.add(name)
            elif name in raised and pct >= clear_at:
                j.published(f"{name}_cleared", "info", {"battery_pct": pct, "mains": True})
                raised.discard(name)
        at += timedelta(minutes=20)
    j.advance(at)


WALK = (26, 25, 21, 20, 19, 6, 5, 4, 3, 2, 3, 4, 5, 6, 24, 25, 26, 100)


def test_r21_battery_conditions_raised_and_cleared_at_their_levels_pass() -> None:
    j = judge(enforce=frozenset({"R21"}))
    j.world(world())
    battery_walk(j, WALK)
    battery_walk(j, (50, 15, 2, 100), start="10:00")  # the plain world's power loss
    assert j.findings == []


def test_r21_a_clear_owed_at_its_level_and_not_published_is_late() -> None:
    """The engine clearing battery_empty at 6 % instead of 5 %: the clear owed at 5 % is late."""
    j = judge(enforce=frozenset({"R21"}))
    j.world(world())
    battery_walk(j, (26, 25, 21, 20, 19, 6, 5, 4, 3, 2, 3, 4))
    j.battery(5)
    j.advance(utc("05:10"))  # within the bound: not late yet
    late = r"R21 .*battery is at 5 % .*no battery_empty_cleared"
    with pytest.raises(InvariantViolation, match=late):
        j.advance(utc("05:21"))


def test_r21_the_bound_runs_while_the_agent_is_linked() -> None:
    j = judge(enforce=frozenset({"R21"}))
    j.world(world(linked=False))
    j.advance(utc("01:00"))
    j.battery(20)
    j.advance(utc("03:00"))  # the agent cannot hear the dispenser: nothing owed yet
    j.world(world())
    j.advance(utc("03:09"))
    assert j.findings == []
    with pytest.raises(InvariantViolation, match=r"R21 .*battery is at 20 % .*no battery_low "):
        j.advance(utc("03:11"))


@pytest.mark.parametrize(
    ("levels", "kind", "message"),
    [
        ((26, 25, 21), "battery_low", r"battery_low with the battery at 21 %: .*raised at <= 20"),
        ((3, 4), "battery_empty_cleared", r"at 4 %: .*cleared at >= 5 %"),  # no hysteresis
        ((19, 24), "battery_low_cleared", r"at 24 %: .*cleared at >= 25 %"),
        ((5,), "battery_empty", r"battery_empty with the battery at 5 %"),
        ((50,), "battery_low_cleared", r"at 50 %: it was not raised"),
        ((19,), "battery_low", r"at 19 %: it was raised already"),
    ],
)
def test_r21_a_condition_raised_or_cleared_off_its_level_is_flagged(
    levels: tuple[int, ...], kind: str, message: str
) -> None:
    j = judge(enforce=frozenset({"R21"}))
    j.world(world())
    battery_walk(j, levels)
    with pytest.raises(InvariantViolation, match=r"R21 .*" + message):
        j.published(kind, "low", {"battery_pct": levels[-1], "mains": False})


def test_r20_a_help_pressed_while_linked_is_told_unless_one_was_told_within_the_interval() -> None:
    j = judge(enforce=frozenset({"R20"}))
    j.world(world())
    j.advance(utc("05:00"))
    j.help_pressed()
    j.published("help_requested", "medium", {"button": "help"})
    j.advance(utc("05:00") + timedelta(seconds=30))
    j.help_pressed()  # again within a minute: the first one told it
    j.advance(utc("05:01"))
    j.world(world(linked=False))
    j.advance(utc("05:30"))
    j.help_pressed()  # the agent cannot hear it
    j.advance(utc("05:31"))
    j.world(world())
    assert j.findings == []
    j.help_pressed()  # 31 min after the last one told: owed
    with pytest.raises(InvariantViolation, match=r"R20 .*HELP pressed at .*no help_requested"):
        j.advance(utc("05:32"))


# --- R22: few doses left, as the roll has them ---------------------------------------------------


def supply_world(left: int, *, linked: bool = True, expiry: datetime | None = None) -> World:
    """The patient's roll with `left` sachets, the next one at the reader (expiring in 2027)."""
    at_reader = label(utc("18:00"), expiry=expiry or datetime(2027, 1, 1, tzinfo=UTC))
    return world(remaining=left, linked=linked, reader=at_reader if left else None)


def supply_walk(j: Judge, lefts: tuple[int, ...], start: str = "01:00") -> None:
    """The patient's roll down through `lefts`, 20 min a cut, the agent raising and clearing at
    once as docs/engine.md says (written out here: low_supply with 1 to 4 sachets left, cleared
    by a fuller roll or an empty one)."""
    at = utc(start)
    raised = False
    for left in lefts:
        j.advance(at)
        j.world(supply_world(left))
        low = 0 < left <= 4
        if low and not raised:
            j.published("low_supply", "low", {"roll_id": "R001", "remaining": left})
        elif raised and not low:
            j.published("low_supply_cleared", "info", {"roll_id": "R001", "remaining": left})
        raised = low
        at += timedelta(minutes=20)
    j.advance(at)


def test_r22_low_supply_raised_and_cleared_as_the_roll_has_few_left_passes() -> None:
    j = judge(enforce=frozenset({"R22"}))
    supply_walk(j, (6, 5, 4, 3, 2, 1, 0, 30, 29, 4, 3, 40))
    assert j.findings == []


def test_r22_a_raise_owed_by_few_left_and_not_published_is_late() -> None:
    """An engine that never raises low_supply (or raises it only at 1 left)."""
    j = judge(enforce=frozenset({"R22"}))
    j.world(supply_world(5))
    j.advance(utc("01:00"))
    j.world(supply_world(4))
    j.advance(utc("01:10"))  # within the bound
    with pytest.raises(InvariantViolation, match=r"R22.level .*4 sachets left .*no low_supply"):
        j.advance(utc("01:11"))


def test_r22_the_bound_runs_while_the_agent_is_linked() -> None:
    j = judge(enforce=frozenset({"R22"}))
    j.world(supply_world(3, linked=False))
    j.advance(utc("03:00"))
    j.world(supply_world(3))
    j.advance(utc("03:09"))
    assert j.findings == []
    with pytest.raises(InvariantViolation, match=r"R22.level .*no low_supply"):
        j.advance(utc("03:11"))


@pytest.mark.parametrize(
    ("left", "kind", "rule", "message"),
    [
        (
            3,
            "low_supply_cleared",
            "R22.level",
            r"still has 3 sachets left",
        ),  # a LowSupply clears it
        (5, "low_supply", "R22.level", r"low_supply \(remaining 5\) while the roll has 5"),
        (0, "low_supply", "R22.empty", r"low_supply \(remaining 0\) while the roll has 0"),
    ],
)
def test_r22_low_supply_raised_or_cleared_off_its_level_is_flagged(
    left: int, kind: str, rule: str, message: str
) -> None:
    j = judge(enforce=frozenset({rule}))
    supply_walk(j, (6, 5, 4, 3, 2, 1) if kind == "low_supply" else (6, 5, 4))
    j.world(supply_world(left))
    with pytest.raises(InvariantViolation, match=rf"{re.escape(rule)} .*{message}"):
        j.published(kind, "low", {"roll_id": "R001", "remaining": left})


def test_r22_a_low_supply_naming_no_roll_may_be_passed_on_at_once() -> None:
    """The dispenser's own LowSupply naming no roll (a firmware fault): its word, passed on."""
    j = judge(enforce=frozenset({"R22"}))
    j.world(supply_world(30))
    j.advance(utc("02:00"))
    j.low_supply_phantom()
    j.published("low_supply", "low", {"roll_id": "", "remaining": 65535})
    j.advance(utc("02:20"))
    j.published("low_supply_cleared", "info", {"roll_id": "R001", "remaining": 29})
    assert j.findings == []
    with pytest.raises(InvariantViolation, match=r"R22.level .*remaining 65535"):
        j.published("low_supply", "low", {"roll_id": "", "remaining": 65535})  # not at once


# --- R20: the unit's own panel button ---------------------------------------------------------

EARLY = timedelta(minutes=60)  # the engine's early window, passed in


def panel_judge(morning_given: bool = True) -> Judge:
    """The judge of 08:00 and 20:00 local (06:00Z, 18:00Z) on 1 June, the morning dose given."""
    j = judge(enforce=frozenset({"R20"}), early_window=EARLY)
    j.world(world())
    if morning_given:
        j.advance(utc("06:05"))
        outcome(j, "2026-06-01T08:00")
    return j


def test_r20_a_panel_press_is_answered_at_once_unless_one_was_told_within_the_interval() -> None:
    j = panel_judge()
    j.advance(utc("10:00"))  # 12:00 local; the next dose 20:00 local (18:00Z)
    j.panel_pressed()
    j.published(
        "panel_help_requested",
        "medium",
        {"reason": "no_dose_due", "next_due_utc": "2026-06-01T18:00:00+00:00"},
    )
    j.advance(utc("10:05"))
    j.panel_pressed()  # told 5 min ago: rate limited
    j.advance(utc("10:06"))
    assert j.findings == []


def test_r20_a_panel_press_silently_lost_is_flagged() -> None:
    j = panel_judge()
    j.advance(utc("10:00"))
    j.panel_pressed()
    with pytest.raises(InvariantViolation, match=r"R20 .*panel pressed at .*silently lost"):
        j.advance(utc("10:00") + timedelta(seconds=1))


@pytest.mark.parametrize(
    ("at", "fields", "message"),
    [
        (
            "10:00",
            {"reason": "clock_untrusted"},
            r"'clock_untrusted': the agent's clock is trusted",
        ),
        ("10:00", {"reason": "paused"}, r"'paused': the next dose .* is in no pause"),
        ("10:00", {"reason": "no_dose_due"}, r"names no next dose"),
        ("10:00", {"reason": "not_bound"}, r"'not_bound': the unit is bound"),
        ("10:00", {"reason": "no_schedule"}, r"has a schedule"),
        ("10:00", {"reason": None}, r"None: not a reason"),
        # 17:30Z: the 18:00Z dose is within the early window
        (
            "17:30",
            {"reason": "no_dose_due", "next_due_utc": "2026-06-01T18:00:00+00:00"},
            r"within the early window",
        ),
        # 06:30Z: the 06:00Z dose is due without an outcome
        (
            "06:30",
            {"reason": "no_dose_due", "next_due_utc": "2026-06-01T18:00:00+00:00"},
            r"slot .* is due without an outcome",
        ),
    ],
)
def test_r20_a_panel_help_call_with_an_untrue_reason_is_flagged(
    at: str, fields: dict[str, object], message: str
) -> None:
    j = panel_judge(morning_given=at != "06:30")
    j.advance(utc(at))
    j.panel_pressed()
    with pytest.raises(
        InvariantViolation, match=r"R20 .*panel_help_requested with reason .*" + message
    ):
        j.published("panel_help_requested", "medium", fields)


def test_r20_a_panel_help_call_paused_inside_a_pause_passes() -> None:
    j = panel_judge()
    j.pause("p1", utc("09:00"), utc("20:00"))
    j.advance(utc("10:00"))
    j.panel_pressed()
    j.published("panel_help_requested", "medium", {"reason": "paused"})
    assert j.findings == []


def test_r20_the_panel_taken_as_take_only_with_a_dose_within_reach() -> None:
    j = panel_judge()
    j.advance(utc("17:30"))  # within the early window of the 18:00Z dose: TAKE
    j.panel_pressed()
    j.published("button_pressed", "low", {"button": "panel", "reason": "min_interval"})
    assert j.findings == []
    j.advance(utc("17:55"))
    settle_all(j)  # every slot has its outcome: no dose within reach at 10:00 next day
    j.advance(utc("10:00", day=2))
    j.panel_pressed()
    with pytest.raises(InvariantViolation, match=r"R20 .*panel taken as TAKE with no dose within"):
        j.published("button_pressed", "low", {"button": "panel"})


def test_r8_a_pause_overdue_before_any_pause_has_lasted_its_maximum_is_a_false_alarm() -> None:
    j = judge(enforce=frozenset({"R8.pause_overdue"}), pause_max=timedelta(hours=2))
    j.world(world())
    j.advance(utc("00:30"))
    with pytest.raises(InvariantViolation, match=r"R8\.pause_overdue .*no pause in force has"):
        j.published("pause_overdue", "high", {"pause_id": "none"})  # no pause at all
    early = judge(enforce=frozenset({"R8.pause_overdue"}), pause_max=timedelta(hours=2))
    early.world(world())
    early.pause("open", utc("01:00"), None)
    early.advance(utc("02:30"))  # in force for 1.5 h of 2
    with pytest.raises(InvariantViolation, match=r"R8\.pause_overdue .*no pause in force has"):
        early.published("pause_overdue", "high", {"pause_id": "open"})


# --- R23: a refusal of the dispenser is told, and only a refusal --------------------------------


def test_r23_a_refused_command_is_told_at_once() -> None:
    j = judge(enforce=frozenset({"R23"}))
    j.world(world())
    j.advance(utc("06:00"))
    j.dispenser_refused("dispense", "tray_occupied")
    j.published(
        "dispenser_command_failed", "low", {"command": "dispense", "result": "tray_occupied"}
    )
    j.advance(utc("06:01"))
    assert j.findings == []
    j.dispenser_refused("discard", "bin_full")
    with pytest.raises(InvariantViolation, match=r"R23 .*refused discard \(bin_full\) .*no disp"):
        j.advance(utc("06:02"))


@pytest.mark.parametrize("result", ["ok", "already_done"])
def test_r23_a_command_carried_out_is_no_refusal(result: str) -> None:
    j = judge(enforce=frozenset({"R23"}))
    j.world(world())
    j.advance(utc("06:00"))
    with pytest.raises(InvariantViolation, match=rf"R23 .*for dispense with result {result}"):
        j.published("dispenser_command_failed", "low", {"command": "dispense", "result": result})


def test_r22_a_roll_refused_as_expired_owes_no_low_supply() -> None:
    """Year seed 8: a nurse put in an expired roll of 4 sachets; the unit refuses it (no dose
    from it), so it owes no low_supply."""
    j = judge(enforce=frozenset({"R22"}))
    j.advance(utc("01:00"))
    j.world(supply_world(4, expiry=utc("00:00")))
    j.advance(utc("02:00"))
    assert j.findings == []


# --- R24: a dose event sent again changes nothing -------------------------------------------------


def test_r24_a_repeat_answered_by_a_record_of_it_or_by_nothing_holds() -> None:
    j = judge(enforce=frozenset({"R24"}))
    j.advance(utc("08:05"))
    j.repeat_answered("DoseTaken", ["dose_event_repeated"], [])
    j.repeat_answered("DosePresented", [], [])
    assert j.findings == []


@pytest.mark.parametrize(
    ("message", "kinds", "commands", "named"),
    [
        ("DoseTaken", ["dose_event_repeated", "slot_outcome"], [], "slot_outcome"),
        ("DoseTaken", ["dose_taken_late"], [], "dose_taken_late"),
        ("DoseRetained", ["dose_retained"], [], "dose_retained"),
        ("DoseRetained", ["sachet_discarded"], [], "sachet_discarded"),
        ("DosePresented", ["dose_presented"], [], "dose_presented"),
        ("DosePresented", ["unexpected_dispenser_event"], ["Retain"], "Retain"),
        ("DosePresented", [], ["Dispense"], "Dispense"),
        ("DoseRetained", [], ["Discard"], "Discard"),
    ],
)
def test_r24_a_repeat_taken_as_news_or_moving_a_sachet_breaks_it(
    message: str, kinds: list[str], commands: list[str], named: str
) -> None:
    j = judge(enforce=frozenset({"R24"}))
    j.advance(utc("08:05"))
    with pytest.raises(InvariantViolation, match=rf"R24 .*{message} sent again.*{named}"):
        j.repeat_answered(message, kinds, commands)


def test_r24_other_answers_and_commands_are_not_its_business() -> None:
    """A phantom report (a repeat the engine no longer remembers), a Status asked: not news of
    a dose, no sachet moved."""
    j = judge(enforce=frozenset({"R24"}))
    j.advance(utc("08:05"))
    j.repeat_answered("DoseRetained", ["phantom_dispenser_event"], ["GetStatus", "SetAlert"])
    assert j.findings == []
