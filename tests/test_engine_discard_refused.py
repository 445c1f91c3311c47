"""A Discard that did not go through must not leave the engine waiting for it (SAFETY.md H7).

A stale sachet at the reader goes to the bin by a Discard; until its DoseRetained the engine
cuts nothing else. A Discard answered BUSY (the lid open, SPEC 4.9: nothing moved), one that got
no reply, one lost with the link, or one whose movement failed (a jam, SPEC 4.2) never gets a
DoseRetained: the engine must not wait for it for good (a dose withheld for no reason, wide world
seed 13). It tries the discard again when the dispenser can take it, at most
DISCARD_BUSY_TRIES times while it keeps answering BUSY, and then holds and says why.

Dates are in March 2026, Europe/Oslo is UTC+1: local 08:00 is 07:00 UTC.
"""

from __future__ import annotations

from datetime import timedelta

from test_engine import Rig, morning_rig, utc
from test_engine_restart import hello, restarted

from agent.engine.types import CommandOutcome, LinkDown, LinkUp, Outcome, SendCommand
from protocol.messages import (
    CommandResult,
    Discard,
    DoseRetained,
    FaultChanged,
    FaultCode,
    LidChanged,
    ResultCode,
)

SLOT_1 = "2026-03-02T08:00"
SLOT_2 = "2026-03-03T08:00"
STALE_AT = utc(2026, 3, 2, 9, 0)  # the 08:00 dose missed undispensed: its sachet stays
D2_0800 = utc(2026, 3, 3, 7, 0)


def stale_sachet(rig: Rig) -> None:
    """The link is down over the 08:00 dose: its sachet is still at the reader at 10:00."""
    rig.install()
    rig.feed(LinkDown("unplugged"))
    rig.run_until(STALE_AT)
    assert rig.outcome_of(SLOT_1).outcome is Outcome.MISSED


def refused_busy(rig: Rig) -> None:
    """The lid is open when the link comes back: the Discard of the stale sachet is BUSY."""
    stale_sachet(rig)
    rig.dispenser.forced[Discard] = ResultCode.BUSY
    rig.msg(LidChanged(True))
    rig.feed(LinkUp(rig.caps))
    assert rig.commands(Discard) == [Discard(0, 1, 0)]
    assert rig.dispenser.discarded == []


def discard_unanswered(rig: Rig) -> SendCommand:
    """The link comes back; everything is answered up to the Discard, which is taken out."""
    rig.auto = False
    rig.feed(LinkUp(rig.caps))
    while rig.outbox and not isinstance(rig.outbox[0].command, Discard):
        send = rig.outbox.pop(0)
        reply, follow = rig.dispenser.handle(send.command)
        rig.feed(CommandOutcome(send.correlation, reply))
        for message in follow:
            rig.msg(message)
    assert rig.outbox, "no Discard sent"
    return rig.outbox.pop(0)


def lid_closed(rig: Rig) -> None:
    rig.dispenser.forced.pop(Discard)
    rig.msg(LidChanged(False))


def held(rig: Rig, slot_id: str) -> list[object]:
    return [e.fields["reason"] for e in rig.events("dose_held") if e.fields["slot_id"] == slot_id]


def next_dose_given(rig: Rig) -> None:
    rig.run_until(D2_0800 + timedelta(minutes=1))
    assert [b.slot_id for b in rig.begins()] == [SLOT_2]
    assert rig.dispenser.dispensed == [1]
    assert held(rig, SLOT_2) == []


def test_a_discard_refused_busy_is_sent_again_and_the_next_dose_is_given() -> None:
    rig = morning_rig()
    refused_busy(rig)
    rig.run_for(timedelta(minutes=10))
    lid_closed(rig)
    rig.run_for(timedelta(minutes=1))
    assert rig.dispenser.discarded == [0]
    assert [e.fields["reason"] for e in rig.events("sachet_discarded")] == ["settled_slot"]
    next_dose_given(rig)


def test_a_new_roll_after_a_refused_discard_gives_its_dose_at_its_time() -> None:
    """Wide world seed 13: the stale sachet's Discard is BUSY; a new roll is loaded whose first
    sachet is for the next dose. Nothing is owed to the bin: the dose is given at 08:00."""
    rig = morning_rig()
    refused_busy(rig)
    rig.run_until(utc(2026, 3, 2, 17, 0))
    rig.dispenser.roll_id = "R2"
    rig.dispenser.sachet_times = [utc(2026, 3, d, 7, 0) for d in range(3, 9)]
    rig.dispenser.next_index = 0
    rig.insert_roll()
    lid_closed(rig)
    rig.run_until(D2_0800 + timedelta(minutes=1))
    assert [b.slot_id for b in rig.begins()] == [SLOT_2]
    assert rig.dispenser.dispensed == [0]  # R2's first sachet
    assert held(rig, SLOT_2) == []


def test_a_discard_refused_busy_for_good_is_tried_three_times_then_held_and_said() -> None:
    rig = morning_rig()
    refused_busy(rig)
    rig.run_until(D2_0800 + timedelta(minutes=1))
    assert len(rig.commands(Discard)) == 3  # DISCARD_BUSY_TRIES: never a stream of them
    failed = [e.fields for e in rig.events("dispenser_command_failed")]
    assert failed == [{"command": "discard", "result": "busy", "detail": "forced"}]
    assert rig.begins() == []
    assert held(rig, SLOT_2) == ["discard_refused"]  # never a silent block
    # the lid is closed: the dispenser can take it now, the dose goes out within its window
    lid_closed(rig)
    rig.run_for(timedelta(minutes=1))
    assert rig.dispenser.discarded == [0]
    assert [b.slot_id for b in rig.begins()] == [SLOT_2]
    assert rig.dispenser.dispensed == [1]


def test_a_discard_without_a_reply_is_not_waited_for_and_is_tried_again() -> None:
    rig = morning_rig()
    stale_sachet(rig)
    send = discard_unanswered(rig)
    rig.auto = True
    rig.feed(CommandOutcome(send.correlation, None, "timeout"))
    rig.run_for(timedelta(minutes=2))
    assert rig.dispenser.discarded == [0]
    next_dose_given(rig)


def test_a_discard_done_though_its_reply_was_lost_is_counted_once() -> None:
    rig = morning_rig()
    stale_sachet(rig)
    send = discard_unanswered(rig)
    reply, follow = rig.dispenser.handle(send.command)  # executed; the reply never arrives
    assert isinstance(reply, CommandResult)
    assert reply.result is ResultCode.OK
    rig.auto = True
    rig.feed(CommandOutcome(send.correlation, None, "timeout"))
    for message in follow:
        rig.msg(message)
    rig.run_for(timedelta(minutes=2))
    assert rig.dispenser.discarded == [0]
    assert [e.fields["reason"] for e in rig.events("sachet_discarded")] == ["settled_slot"]
    assert rig.events("phantom_dispenser_event") == []
    next_dose_given(rig)


def test_a_discard_lost_with_the_link_is_tried_again_when_it_is_back() -> None:
    rig = morning_rig()
    stale_sachet(rig)
    discard_unanswered(rig)  # lost with the link
    rig.feed(LinkDown("unplugged"))
    rig.auto = True
    rig.run_for(timedelta(minutes=5))
    rig.feed(LinkUp(rig.caps))
    rig.run_for(timedelta(minutes=1))
    assert rig.dispenser.discarded == [0]
    next_dose_given(rig)


def test_a_discard_whose_movement_jammed_is_not_waited_for_after_the_jam() -> None:
    """OK, then the cut fails: FaultChanged JAM and no DoseRetained (SPEC 4.2). Once the jam
    is cleared the engine asks where the reader is and goes on."""
    rig = morning_rig()
    stale_sachet(rig)
    send = discard_unanswered(rig)
    rig.auto = True
    rig.feed(CommandOutcome(send.correlation, CommandResult(0, ResultCode.OK, "")))
    rig.dispenser.faults.add(FaultCode.JAM)
    rig.msg(FaultChanged(FaultCode.JAM, True, "cut failed"))
    rig.run_for(timedelta(minutes=30))
    rig.dispenser.faults.discard(FaultCode.JAM)
    rig.msg(FaultChanged(FaultCode.JAM, False, "cleared"))
    rig.run_for(timedelta(minutes=2))
    assert rig.dispenser.discarded == [0]
    next_dose_given(rig)


def test_a_discard_accepted_then_lost_with_a_dispenser_power_cut_is_not_waited_for() -> None:
    """OK, then the dispenser loses power before the cut: no DoseRetained will come."""
    rig = morning_rig()
    stale_sachet(rig)
    send = discard_unanswered(rig)
    rig.auto = True
    rig.feed(CommandOutcome(send.correlation, CommandResult(0, ResultCode.OK, "")))
    rig.feed(LinkDown("dispenser rebooted"))
    rig.run_for(timedelta(minutes=3))
    hello(rig)
    rig.run_for(timedelta(minutes=2))
    assert rig.dispenser.discarded == [0]
    next_dose_given(rig)


def test_a_discard_answered_jammed_raises_the_jam_and_waits_for_it_to_clear() -> None:
    rig = morning_rig()
    stale_sachet(rig)
    rig.dispenser.forced[Discard] = ResultCode.JAMMED
    rig.feed(LinkUp(rig.caps))
    assert [e.fields["detail"] for e in rig.events("fault_jam")] == ["discard refused"]
    rig.run_for(timedelta(hours=2))
    assert len(rig.commands(Discard)) == 1  # not again every command retry while jammed
    rig.dispenser.forced.pop(Discard)
    rig.msg(FaultChanged(FaultCode.JAM, False, "cleared"))
    rig.run_for(timedelta(minutes=1))
    assert rig.dispenser.discarded == [0]
    next_dose_given(rig)


def test_a_discard_refused_before_a_restart_does_not_block_after_it() -> None:
    rig = morning_rig()
    refused_busy(rig)
    again = restarted(rig, utc(2026, 3, 2, 12, 0))
    lid_closed(again)
    hello(again)
    again.run_for(timedelta(minutes=2))
    assert again.dispenser.discarded == [0]
    next_dose_given(again)


def test_retained_after_a_refusal_is_not_a_phantom() -> None:
    """Guard for the memo of unanswered discards: an id the engine never sent stays a phantom."""
    rig = morning_rig()
    refused_busy(rig)
    rig.msg(DoseRetained(999, 0))
    assert len(rig.events("phantom_dispenser_event")) == 1
