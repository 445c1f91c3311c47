"""Phantom dose events (hazard #9): a DosePresented, DoseTaken or DoseRetained that matches no
dose the agent commanded (unknown dispense id, or a sachet index other than the one dispensed)
never changes what the engine believes is in the tray; it is reported (rate limited)."""

from __future__ import annotations

from datetime import timedelta

from test_engine import morning_rig, utc

from agent.engine.types import CommandOutcome, LinkDown, LinkUp, Outcome, Priority
from protocol.messages import Discard, DosePresented, DoseRetained, DoseTaken, ResultCode, Retain

DUE = utc(2026, 3, 2, 7, 0)
SLOT = "2026-03-02T08:00"
UNKNOWN_ID = 4242


def test_a_presentation_with_an_unknown_id_does_not_block_the_real_dose() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE - timedelta(minutes=20))
    rig.msg(DosePresented(UNKNOWN_ID, 0))
    rig.run_until(DUE + timedelta(minutes=1))
    assert rig.dispenser.dispensed == [0]  # the 08:00 dose is given
    [phantom] = rig.events("phantom_dispenser_event")
    assert phantom.priority is Priority.MEDIUM
    assert phantom.fields["message"] == "DosePresented"
    assert phantom.fields["dispense_id"] == UNKNOWN_ID
    assert phantom.fields["reason"] == "unknown_dispense_id"
    rig.take()
    assert rig.outcome_of(SLOT).outcome.value == "taken"


def test_a_presentation_with_the_wrong_sachet_index_is_not_recorded() -> None:
    rig = morning_rig()
    rig.install()
    rig.auto = False
    rig.run_until(DUE)
    [begin] = rig.begins()
    rig.msg(DosePresented(begin.dispense_id, begin.sachet_index + 3))
    assert "dose_presented" not in rig.kinds()
    [phantom] = rig.events("phantom_dispenser_event")
    assert phantom.fields["reason"] == "sachet_index_mismatch"
    assert phantom.fields["expected_sachet_index"] == begin.sachet_index
    rig.auto = True
    rig.pump()  # the real presentation follows
    assert [e.fields["sachet_index"] for e in rig.events("dose_presented")] == [0]


def test_a_taken_report_with_the_wrong_sachet_index_does_not_end_the_slot() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=5))
    did = rig.dispenser.tray
    assert did is not None
    rig.msg(DoseTaken(did, 7))
    assert rig.outcomes() == []
    assert rig.events("phantom_dispenser_event")[0].fields["reason"] == "sachet_index_mismatch"
    rig.run_for(timedelta(minutes=5))
    rig.take()  # the real one
    assert rig.outcome_of(SLOT).outcome.value == "taken"


def test_a_taken_report_with_an_unknown_id_changes_nothing() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=5))
    rig.msg(DoseTaken(UNKNOWN_ID, 0))
    assert rig.outcomes() == []
    assert "unexpected_dispenser_event" not in rig.kinds()
    assert rig.events("phantom_dispenser_event")[0].fields["message"] == "DoseTaken"
    rig.take()
    assert rig.outcome_of(SLOT).outcome.value == "taken"


def test_a_retained_report_with_an_unknown_id_is_no_dose_retained() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=5))
    rig.msg(DoseRetained(UNKNOWN_ID, 0))
    assert "dose_retained" not in rig.kinds()
    assert rig.events("phantom_dispenser_event")[0].fields["message"] == "DoseRetained"
    rig.take()
    assert rig.outcome_of(SLOT).outcome.value == "taken"


def test_phantom_reports_are_rate_limited() -> None:
    rig = morning_rig()
    rig.install()
    for n in range(20):
        rig.msg(DosePresented(UNKNOWN_ID + n, 0))
        rig.run_for(timedelta(seconds=10))
    assert len(rig.events("phantom_dispenser_event")) == 1
    rig.run_for(rig.config.chatty_min_interval)
    rig.msg(DoseTaken(UNKNOWN_ID, 0))
    assert len(rig.events("phantom_dispenser_event")) == 2


def test_a_late_presentation_of_a_settled_slot_is_known_and_goes_into_the_bin() -> None:
    rig = morning_rig()
    rig.install()
    rig.auto = False
    rig.run_until(DUE)
    [begin] = rig.begins()
    rig.outbox.clear()  # the Dispense's outcome never comes
    rig.run_until(DUE + timedelta(hours=2))  # the slot ends missed
    rig.auto = True
    rig.msg(DosePresented(begin.dispense_id, begin.sachet_index))
    assert "phantom_dispenser_event" not in rig.kinds()
    assert rig.events("unexpected_dispenser_event")[0].fields["slot_id"] == SLOT


def test_a_retained_report_with_another_sachet_index_leaves_the_stuck_dose_stuck() -> None:
    """The missed 08:00 dose is stuck in the tray (its Retain refused: bin full). A DoseRetained
    naming its dispense id with another sachet index is a phantom: the dose is still there."""
    rig = morning_rig()
    rig.dispenser.forced[Retain] = ResultCode.BIN_FULL
    rig.install()
    rig.run_until(DUE + timedelta(minutes=61))
    assert rig.outcome_of(SLOT).outcome is Outcome.MISSED
    dispense_id, index = rig.dispenser.tray, rig.dispenser.tray_index
    assert dispense_id is not None
    rig.msg(DoseRetained(dispense_id, index + 2))
    assert rig.events("dose_retained") == []
    assert rig.events("dose_stuck_in_tray_cleared") == []
    [phantom] = rig.events("phantom_dispenser_event")
    assert phantom.fields == {
        "message": "DoseRetained",
        "dispense_id": dispense_id,
        "sachet_index": index + 2,
        "reason": "sachet_index_mismatch",
        "expected_sachet_index": index,
    }
    rig.run_until(utc(2026, 3, 3, 7, 5))
    assert len(rig.begins()) == 1  # nothing is cut over the dose still in the tray
    held = [e.fields["reason"] for e in rig.events("dose_held")]
    assert held == ["dose_stuck_in_tray"]


def test_a_discard_confirmed_with_another_sachet_index_is_a_phantom() -> None:
    """A leftover sachet is discarded; a DoseRetained naming the Discard's id with another index
    does not confirm it (no sachet_discarded, the roll does not move on); the real one does."""
    rig = morning_rig()
    rig.install()
    rig.feed(LinkDown("unplugged"))
    rig.run_until(utc(2026, 3, 2, 9, 0))  # 08:00 missed undispensed: its sachet stays
    rig.auto = False
    rig.feed(LinkUp(rig.caps))
    while not rig.commands(Discard):
        send = rig.outbox.pop(0)
        reply, follow = rig.dispenser.handle(send.command)
        rig.feed(CommandOutcome(send.correlation, reply))
        for message in follow:
            rig.msg(message)
    [discard] = rig.commands(Discard)
    assert isinstance(discard, Discard)
    assert discard.sachet_index == 0
    rig.msg(DoseRetained(discard.dispense_id, 4))
    assert rig.events("sachet_discarded") == []
    [phantom] = rig.events("phantom_dispenser_event")
    assert (phantom.fields["reason"], phantom.fields["expected_sachet_index"]) == (
        "sachet_index_mismatch",
        0,
    )
    rig.auto = True
    rig.pump()  # the dispenser cuts sachet 0 and says so
    assert rig.dispenser.discarded == [0]
    assert [e.fields["sachet_index"] for e in rig.events("sachet_discarded")] == [0]
