"""A DoseTaken repeated (SAFETY.md H3, H13): the dispenser sends the same report again (a
retransmission after a lost ACK, or a phantom repeat) for a dose whose removal the engine already
has. It is no second intake: the minimum-interval clock and the adherence counts stay where the
first report put them; the repeat is recorded (an event, so its ACK follows a commit).

Dates are in March 2026, Europe/Oslo is UTC+1: local 08:00 is 07:00 UTC.
"""

from __future__ import annotations

from datetime import timedelta

from test_engine import ALL_FEATURES, Rig, daily, utc
from test_engine_interval import restart

from agent.engine.types import Emit, Outcome
from protocol.messages import DoseTaken, Feature

D1_0800 = utc(2026, 3, 2, 7, 0)
D1_0900 = utc(2026, 3, 2, 8, 0)
D1_1200 = utc(2026, 3, 2, 11, 0)
SLOT_0800 = "2026-03-02T08:00"
SLOT_0900 = "2026-03-02T09:00"
NO_BIN = ALL_FEATURES & ~int(Feature.RETAIN_BIN) & ~int(Feature.BIN_LEVEL)


def test_a_repeated_taken_report_is_no_second_intake() -> None:
    """08:00 and 09:00 (minimum interval 30 min). Taken at 08:02; the same report again at
    08:45 would, as an intake, hold the 09:00 dose until 09:15."""
    rig = Rig(daily("08:00", "09:00"), sachet_times=[D1_0800, D1_0900])
    rig.install()
    rig.run_until(D1_0800 + timedelta(minutes=2))
    dispense_id, index = rig.dispenser.tray, rig.dispenser.tray_index
    assert dispense_id is not None
    rig.take()
    assert rig.outcome_of(SLOT_0800).outcome is Outcome.TAKEN
    rig.run_until(D1_0800 + timedelta(minutes=45))
    actions = rig.msg(DoseTaken(dispense_id, index))
    assert rig.engine.state.last_intake_utc == D1_0800 + timedelta(minutes=2)
    assert rig.events("dose_taken_late") == []
    assert rig.events("phantom_dispenser_event") == []
    [repeat] = rig.events("dose_event_repeated")
    assert repeat.fields == {
        "message": "DoseTaken",
        "dispense_id": dispense_id,
        "sachet_index": index,
        "slot_id": SLOT_0800,
    }
    assert any(isinstance(a, Emit) for a in actions)  # recorded: the ACK waits for its commit
    rig.run_until(D1_0900 + timedelta(minutes=1))
    assert [b.slot_id for b in rig.begins()] == [SLOT_0800, SLOT_0900]  # on time
    assert len(rig.events("slot_outcome")) == 1
    rig.assert_one_outcome_per_slot()


def test_a_repeated_late_intake_is_told_once_and_does_not_move_the_interval() -> None:
    """A missed 08:00 dose left in a bin-less tray, lifted out at 10:30 (the 12:00 dose may come
    from 12:30, minimum interval 2 h); its report again at 11:00 changes nothing."""
    rig = Rig(daily("08:00", "12:00"), sachet_times=[D1_0800, D1_1200], features=NO_BIN)
    rig.install()
    rig.run_until(D1_0800 + timedelta(minutes=61))
    assert rig.outcome_of(SLOT_0800).outcome is Outcome.MISSED
    dispense_id, index = rig.dispenser.tray, rig.dispenser.tray_index
    assert dispense_id is not None
    rig.run_until(utc(2026, 3, 2, 9, 30))
    rig.take()
    rig.run_until(utc(2026, 3, 2, 10, 0))
    rig.msg(DoseTaken(dispense_id, index))
    late = rig.events("dose_taken_late")
    assert [e.fields["next_dose_not_before_utc"] for e in late] == ["2026-03-02T11:30:00Z"]
    assert rig.engine.state.last_intake_utc == utc(2026, 3, 2, 9, 30)
    assert [e.fields["dispense_id"] for e in rig.events("dose_event_repeated")] == [dispense_id]
    rig.run_until(utc(2026, 3, 2, 11, 31))
    assert [b.slot_id for b in rig.begins()] == [SLOT_0800, "2026-03-02T12:00"]


def test_a_taken_report_repeated_to_the_restarted_agent_is_a_repeat_not_a_phantom() -> None:
    """The agent stored the intake and died before its ACK went out: the dispenser sends the
    DoseTaken again to the restarted agent (SPEC 2.6, 2.7). Known as that dose's: recorded as a
    repeat, no medium phantom report, no second intake."""
    rig = Rig(daily("08:00", "09:00"), sachet_times=[D1_0800, D1_0900])
    rig.install()
    rig.run_until(D1_0800 + timedelta(minutes=2))
    dispense_id, index = rig.dispenser.tray, rig.dispenser.tray_index
    assert dispense_id is not None
    rig.take()
    rig.run_until(D1_0800 + timedelta(minutes=40))
    restart(rig)
    rig.msg(DoseTaken(dispense_id, index))
    assert rig.events("phantom_dispenser_event") == []
    assert rig.events("dose_taken_late") == []
    assert [e.fields["slot_id"] for e in rig.events("dose_event_repeated")] == [SLOT_0800]
    assert rig.engine.state.last_intake_utc == D1_0800 + timedelta(minutes=2)
    rig.msg(DoseTaken(dispense_id, index + 1))  # another sachet for it: still a phantom
    [phantom] = rig.events("phantom_dispenser_event")
    assert phantom.fields["reason"] == "sachet_index_mismatch"
    rig.run_until(D1_0900 + timedelta(minutes=1))
    assert [b.slot_id for b in rig.begins()] == [SLOT_0800, SLOT_0900]
