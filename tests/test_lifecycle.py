"""The per-slot state machine: presented -> taken | missed (monotonic grace), retain, reminders
and escalation at their offsets, early TAKE, undispensed deadline, outcome classification."""

from __future__ import annotations

from datetime import timedelta

from test_engine import morning_rig, utc

from agent.engine import lifecycle
from agent.engine.lifecycle import Phase, SlotRun
from agent.engine.types import EngineConfig, EscalationStep, Outcome, Silence
from protocol.messages import AlertPattern, ButtonId, ButtonPressed, Dispense, Retain, SetAlert

DUE = utc(2026, 3, 2, 7, 0)
CONFIG = EngineConfig(
    grace=timedelta(minutes=60),
    reminder_repeat=timedelta(minutes=10),
    escalation=(
        EscalationStep(timedelta(minutes=30), AlertPattern.URGENT, notify=True),
        EscalationStep(timedelta(minutes=45), AlertPattern.URGENT, notify=False),
    ),
)


def presented_run() -> SlotRun:
    run = SlotRun("2026-03-02T08:00", DUE, "2026-03-02T08:00:00+01:00")
    run = lifecycle.begin(run, 7, 0, "R1")
    return lifecycle.presented(run, 100.0, DUE)


def test_outcome_classification() -> None:
    assert lifecycle.unsent_outcome("foreign_roll") == (Outcome.REFUSED, "foreign_roll")
    assert lifecycle.unsent_outcome("clock_untrusted") == (Outcome.REFUSED, "clock_untrusted")
    assert lifecycle.unsent_outcome("no_roll") == (Outcome.MISSED, "not_dispensed:no_roll")


def test_a_slot_gets_one_dispense_id_only() -> None:
    run = lifecycle.begin(SlotRun("s", DUE, ""), 1, 0, "R1")
    assert run.phase is Phase.DISPENSING
    try:
        lifecycle.begin(run, 2, 0, "R1")
    except ValueError:
        pass
    else:
        raise AssertionError("a second dispense id was accepted")


def test_timers_reminders_escalation_and_missed_on_monotonic_time() -> None:
    run = presented_run()
    assert lifecycle.next_timer(run, CONFIG) == 100.0 + 600
    nothing = lifecycle.on_time(run, CONFIG, 100.0 + 599)
    assert (nothing.remind, nothing.escalated, nothing.missed) == (False, (), None)
    first = lifecycle.on_time(run, CONFIG, 100.0 + 600)
    assert first.remind
    assert lifecycle.on_time(first.run, CONFIG, 100.0 + 600).remind is False  # idempotent
    at_30 = lifecycle.on_time(first.run, CONFIG, 100.0 + 1800)
    assert [s.after for s in at_30.escalated] == [timedelta(minutes=30)]
    assert at_30.run.pattern is AlertPattern.URGENT
    missed = lifecycle.on_time(at_30.run, CONFIG, 100.0 + 3600)
    assert missed.missed == "not_taken"


def test_reminders_and_escalation_reach_the_dispenser_at_the_configured_offsets() -> None:
    rig = morning_rig(config=CONFIG)
    rig.install()
    rig.run_until(DUE)
    start = len(rig.commands(SetAlert))
    rig.run_until(DUE + timedelta(minutes=59))
    sent = rig.patterns_sent()[start:]
    # 10, 20 reminder; 30 escalate (URGENT); 40; 45 escalate; 50 reminders (URGENT)
    assert sent == [
        AlertPattern.REMINDER,
        AlertPattern.REMINDER,
        AlertPattern.URGENT,
        AlertPattern.URGENT,
        AlertPattern.URGENT,
        AlertPattern.URGENT,
    ]
    notices = rig.events("dose_not_taken")
    assert [e.fields["minutes_since_presented"] for e in notices] == [30]
    assert notices[0].vkp_code == "3.24"


def test_missed_at_grace_with_retain_into_the_bin() -> None:
    rig = morning_rig(config=CONFIG)
    rig.install()
    rig.run_until(DUE + CONFIG.grace - timedelta(seconds=1))
    assert rig.outcomes() == []
    rig.run_until(DUE + CONFIG.grace)
    outcome = rig.outcome_of("2026-03-02T08:00")
    assert (outcome.outcome, outcome.reason) == (Outcome.MISSED, "not_taken")
    assert rig.commands(Retain) == [Retain(0, rig.begins()[0].dispense_id)]
    assert rig.dispenser.tray is None
    assert len(rig.events("dose_retained")) == 1
    event = rig.events("slot_outcome")[0]
    assert event.fields["presented_at"] == "2026-03-02T07:00:00Z"  # DUE, in UTC with Z
    assert event.fields["taken_at"] is None


def test_missed_without_retain_bin_sends_no_retain() -> None:
    rig = morning_rig(features=0)
    rig.install()
    rig.run_until(DUE + timedelta(hours=2))
    assert rig.outcome_of("2026-03-02T08:00").outcome is Outcome.MISSED
    assert rig.commands(Retain) == []


def test_dose_taken_after_missed_is_reported_but_outcome_stays() -> None:
    rig = morning_rig(features=0)
    rig.install()
    rig.run_until(DUE + timedelta(hours=2))
    rig.take()
    assert len(rig.events("dose_taken_late")) == 1
    rig.assert_one_outcome_per_slot()


def test_take_button_inside_early_window_dispenses_now() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE - timedelta(minutes=40))
    rig.msg(ButtonPressed(ButtonId.TAKE))
    assert [b.slot_id for b in rig.begins()] == ["2026-03-02T08:00"]
    rig.take()
    rig.run_until(DUE + timedelta(hours=3))
    assert len(rig.commands(Dispense)) == 1  # not again at due time
    assert rig.outcome_of("2026-03-02T08:00").outcome is Outcome.TAKEN


def test_take_button_outside_early_window_does_nothing_but_report() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE - timedelta(minutes=61))
    rig.msg(ButtonPressed(ButtonId.TAKE))
    rig.msg(ButtonPressed(ButtonId.TAKE))
    assert rig.begins() == []
    assert len(rig.events("button_pressed")) == 1  # rate limited


def test_silence_turns_sound_off_without_clearing_and_resumes() -> None:
    rig = morning_rig(config=CONFIG)
    rig.install()
    rig.run_until(DUE + timedelta(minutes=2))
    rig.feed(Silence(timedelta(minutes=15)))
    assert rig.sounding() is AlertPattern.OFF
    rig.run_until(DUE + timedelta(minutes=16))
    assert rig.sounding() is AlertPattern.OFF
    rig.run_until(DUE + timedelta(minutes=17))
    assert rig.sounding() is AlertPattern.REMINDER
    assert rig.outcomes() == []


def test_take_pressed_again_while_the_early_slot_is_held_gives_one_run_and_one_outcome() -> None:
    rig = morning_rig()
    rig.dispenser.loaded = False
    rig.install(roll=False)  # nothing to dispense from: the early slot is held
    rig.run_until(DUE - timedelta(minutes=40))
    rig.msg(ButtonPressed(ButtonId.TAKE))
    held = rig.events("dose_held")
    assert [(e.fields["slot_id"], e.fields["reason"]) for e in held] == [
        ("2026-03-02T08:00", "no_roll")
    ]
    rig.run_until(DUE - timedelta(minutes=20))
    rig.msg(ButtonPressed(ButtonId.TAKE))  # again, still inside the early window
    open_slots = rig.engine.status().open_slots
    assert [s.slot_id for s in open_slots] == ["2026-03-02T08:00"]
    rig.run_until(DUE + timedelta(hours=2))
    outcome = rig.outcome_of("2026-03-02T08:00")  # exactly one
    assert (outcome.outcome, outcome.reason) == (Outcome.MISSED, "not_dispensed:no_roll")
    rig.assert_one_outcome_per_slot()


def test_every_timer_decision_is_taken_at_the_exact_instant_next_timer_announced() -> None:
    # (start + 1800) - start == 1799.999999999998 for this start: compared as an elapsed time the
    # escalation due at the announced deadline was not taken, and the deadline never moved
    # (a livelock the year simulation found with doses 30 min apart)
    start = 16358.994501773292
    run = lifecycle.presented(lifecycle.begin(SlotRun("s", DUE, ""), 7, 0, "R1"), start, DUE)
    seen = 0
    for _ in range(20):
        deadline = lifecycle.next_timer(run, CONFIG)
        assert deadline is not None
        result = lifecycle.on_time(run, CONFIG, deadline)
        if result.missed is not None:
            break
        assert result.remind, f"nothing decided at the announced deadline {deadline!r}"
        assert lifecycle.next_timer(result.run, CONFIG) != deadline
        run, seen = result.run, seen + 1
    assert result.missed == lifecycle.NOT_TAKEN
    assert seen == 6  # reminders at 10, 20, 30 (with an escalation), 40, 50 min; escalation at 45
