"""A DoseRetained repeated (SAFETY.md H13, H15): the dispenser sends the same report again (a
retransmission after a lost ACK, also to a restarted agent that stored the first and died before
its ACK, SPEC 2.6) for a dose already taken back into the bin or a sachet already discarded. It
changes nothing: no second `dose_retained` or `sachet_discarded`, no second place taken in the bin
(a bin believed full leaves the next missed dose in the tray and blocks every dose after it), no
phantom report; the repeat is recorded (an event, so its ACK follows a commit).

Dates are in March 2026, Europe/Oslo is UTC+1: local 08:00 is 07:00 UTC.
"""

from __future__ import annotations

from datetime import timedelta

from test_engine import ALL_FEATURES, Rig, daily, utc
from test_engine_interval import restart

from agent.engine.outbound import Outbound
from agent.engine.types import Emit, LinkDown, LinkUp, Outcome
from protocol.messages import BinLevel, Discard, DoseRetained, Feature, Retain

D1_0800 = utc(2026, 3, 2, 7, 0)
D1_1200 = utc(2026, 3, 2, 11, 0)
D2_0800 = utc(2026, 3, 3, 7, 0)
SLOT_0800 = "2026-03-02T08:00"
SLOT_1200 = "2026-03-02T12:00"
WITH_LEVEL = ALL_FEATURES | int(Feature.BIN_LEVEL)


def retained_rig() -> tuple[Rig, int, int]:
    """08:00 and 12:00, a bin with two places: the 08:00 dose is missed and taken back into the
    bin (one place left). Returns the rig and that dose's dispense id and sachet index."""
    rig = Rig(daily("08:00", "12:00"), sachet_times=[D1_0800, D1_1200], features=WITH_LEVEL)
    rig.install()
    rig.msg(BinLevel(2, 0))
    rig.run_until(D1_0800 + timedelta(minutes=2))
    dispense_id, index = rig.dispenser.tray, rig.dispenser.tray_index
    assert dispense_id is not None
    rig.run_until(D1_0800 + timedelta(minutes=61))
    assert rig.outcome_of(SLOT_0800).outcome is Outcome.MISSED
    assert [e.fields["dispense_id"] for e in rig.events("dose_retained")] == [dispense_id]
    return rig, dispense_id, index


def assert_the_next_missed_dose_goes_back_too(rig: Rig) -> None:
    """The bin still has its one place: the 12:00 dose, missed, goes back into it."""
    rig.run_until(D1_1200 + timedelta(minutes=61))
    assert rig.outcome_of(SLOT_1200).outcome is Outcome.MISSED
    assert len(rig.commands(Retain)) == 2
    assert rig.events("dose_stuck_in_tray") == []
    assert rig.dispenser.tray is None


def test_a_repeated_retained_report_changes_nothing_and_is_recorded() -> None:
    rig, dispense_id, index = retained_rig()
    actions = rig.msg(DoseRetained(dispense_id, index))
    assert len(rig.events("dose_retained")) == 1
    assert rig.events("phantom_dispenser_event") == []
    [repeat] = rig.events("dose_event_repeated")
    assert repeat.fields == {
        "message": "DoseRetained",
        "dispense_id": dispense_id,
        "sachet_index": index,
        "slot_id": SLOT_0800,
    }
    assert any(isinstance(a, Emit) for a in actions)  # recorded: the ACK waits for its commit
    assert_the_next_missed_dose_goes_back_too(rig)


def test_a_retained_report_repeated_to_the_restarted_agent_is_a_repeat_not_a_phantom() -> None:
    rig, dispense_id, index = retained_rig()
    restart(rig)
    rig.msg(BinLevel(2, 1))  # the new link's report counts the dose in the bin
    rig.msg(DoseRetained(dispense_id, index))
    assert rig.events("phantom_dispenser_event") == []
    assert len(rig.events("dose_retained")) == 1
    assert [e.fields["slot_id"] for e in rig.events("dose_event_repeated")] == [SLOT_0800]
    assert_the_next_missed_dose_goes_back_too(rig)


def test_a_repeat_naming_another_sachet_is_still_a_phantom() -> None:
    rig, dispense_id, index = retained_rig()
    rig.msg(DoseRetained(dispense_id, index + 1))
    [phantom] = rig.events("phantom_dispenser_event")
    assert (phantom.fields["reason"], phantom.fields["expected_sachet_index"]) == (
        "sachet_index_mismatch",
        index,
    )
    assert rig.events("dose_event_repeated") == []
    assert len(rig.events("dose_retained")) == 1


def discarded_rig() -> tuple[Rig, int]:
    """08:00 daily; the link is down at 08:00, the slot ends undispensed and its sachet is cut
    into the bin when the link returns. Returns the rig and the Discard's dispense id."""
    rig = Rig(daily("08:00"), sachet_times=[D1_0800, D2_0800])
    rig.install()
    rig.feed(LinkDown("unplugged"))
    rig.run_until(D1_0800 + timedelta(minutes=61))
    rig.feed(LinkUp(rig.caps))
    assert rig.dispenser.discarded == [0]
    [discard] = rig.commands(Discard)
    assert isinstance(discard, Discard)
    assert len(rig.events("sachet_discarded")) == 1
    return rig, discard.dispense_id


def assert_the_next_dose_comes(rig: Rig) -> None:
    rig.run_until(D2_0800 + timedelta(minutes=1))
    assert rig.dispenser.dispensed == [1]


def test_a_repeated_discard_report_changes_nothing_and_is_recorded() -> None:
    rig, dispense_id = discarded_rig()
    actions = rig.msg(DoseRetained(dispense_id, 0))
    assert len(rig.events("sachet_discarded")) == 1
    assert rig.events("phantom_dispenser_event") == []
    assert rig.events("dose_retained") == []
    [repeat] = rig.events("dose_event_repeated")
    assert repeat.fields == {
        "message": "DoseRetained",
        "dispense_id": dispense_id,
        "sachet_index": 0,
        "slot_id": None,  # a sachet cut into the bin belongs to no slot
    }
    assert any(isinstance(a, Emit) for a in actions)
    rig.msg(DoseRetained(dispense_id, 1))  # the sachet now at the reader: not this Discard's
    [phantom] = rig.events("phantom_dispenser_event")
    assert phantom.fields["reason"] == "sachet_index_mismatch"
    assert_the_next_dose_comes(rig)


def test_a_discard_report_repeated_to_the_restarted_agent_is_a_repeat_not_a_phantom() -> None:
    rig, dispense_id = discarded_rig()
    restart(rig)
    rig.msg(DoseRetained(dispense_id, 0))
    assert rig.events("phantom_dispenser_event") == []
    assert len(rig.events("sachet_discarded")) == 1
    assert [e.fields["dispense_id"] for e in rig.events("dose_event_repeated")] == [dispense_id]
    assert_the_next_dose_comes(rig)


def test_the_reports_kept_are_the_most_recent_ones() -> None:
    outbound = Outbound(starts=1, next_dispense_id=1)
    for dispense_id in range(1, 21):
        outbound.remember_retained(dispense_id, None, dispense_id)
    kept = [d for d, _, _ in outbound.retained_doses()]
    assert kept == list(range(5, 21))  # the 16 newest
