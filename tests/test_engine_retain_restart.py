"""A Retain owed across a restart (SAFETY.md H15): a missed dose that must go back into the bin,
its Retain waiting (the link down, the bin full) or in flight when the agent restarts, is still
owed by the restarted agent: the Retains waiting are not stored, they are rebuilt from what is
(the doses left in the tray, `EngineState.left_in_tray`, and the first Status finding the tray
occupied). It goes out once the dispenser can take it, and the dose does not stay in the tray in
front of the next one. And a Retain whose reply was lost but which went through (its
DoseRetained came) is owed no more.

Dates are in March 2026, Europe/Oslo is UTC+1: local 08:00 is 07:00 UTC.
"""

from __future__ import annotations

from datetime import timedelta

from test_engine import morning_rig, utc
from test_engine_interval import restart

from agent.engine.types import CommandOutcome, LinkDown, Outcome
from protocol.messages import DoseRetained, FaultChanged, FaultCode, ResultCode, Retain

DUE = utc(2026, 3, 2, 7, 0)
SLOT_1 = "2026-03-02T08:00"
SLOT_2 = "2026-03-03T08:00"


def test_a_retain_waiting_for_the_link_is_sent_after_a_restart() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=5))
    dispense_id = rig.dispenser.tray
    assert dispense_id is not None
    rig.feed(LinkDown("unplugged"))
    rig.run_until(DUE + timedelta(minutes=90))  # grace over, link down: missed, Retain owed
    assert rig.outcome_of(SLOT_1).outcome is Outcome.MISSED
    assert rig.commands(Retain) == []
    restart(rig)
    assert rig.commands(Retain) == [Retain(0, dispense_id)]
    assert rig.dispenser.tray is None
    assert [e.fields["dispense_id"] for e in rig.events("dose_retained")] == [dispense_id]
    rig.run_until(utc(2026, 3, 3, 7, 1))
    assert [b.slot_id for b in rig.begins()] == [SLOT_1, SLOT_2]


def test_a_retain_refused_for_a_full_bin_goes_out_after_a_restart_once_there_is_room() -> None:
    rig = morning_rig()
    rig.dispenser.forced[Retain] = ResultCode.BIN_FULL
    rig.install()
    rig.run_until(DUE + timedelta(minutes=61))
    dispense_id = rig.dispenser.tray
    assert dispense_id is not None
    assert rig.commands(Retain) == [Retain(0, dispense_id)]
    restart(rig)
    rig.dispenser.forced.pop(Retain)
    rig.msg(FaultChanged(FaultCode.BIN_FULL, False, "bin emptied"))
    assert rig.commands(Retain)[-1] == Retain(0, dispense_id)
    assert rig.dispenser.tray is None
    assert [e.fields["dispense_id"] for e in rig.events("dose_retained")] == [dispense_id]


def test_a_retain_in_flight_when_the_agent_died_is_sent_again_after_the_restart() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=59))
    dispense_id = rig.dispenser.tray
    assert dispense_id is not None
    rig.auto = False
    rig.run_until(DUE + timedelta(minutes=61))
    assert rig.commands(Retain) == [Retain(0, dispense_id)]  # sent; the agent dies before its reply
    rig.outbox.clear()
    rig.auto = True
    restart(rig)
    assert rig.commands(Retain) == [Retain(0, dispense_id)] * 2
    assert rig.dispenser.tray is None
    assert [e.fields["dispense_id"] for e in rig.events("dose_retained")] == [dispense_id]


def test_a_retain_whose_reply_was_lost_but_that_went_through_is_not_sent_again() -> None:
    """No reply to the Retain (owed again, after the command retry), then its DoseRetained: the
    dose is in the bin, nothing more is owed (not a second Retain answered NOTHING_PRESENTED,
    told to the centre as a dose not in the tray)."""
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=59))
    dispense_id, index = rig.dispenser.tray, rig.dispenser.tray_index
    assert dispense_id is not None
    rig.auto = False
    rig.run_until(DUE + timedelta(minutes=61))
    [send] = [s for s in rig.outbox if isinstance(s.command, Retain)]
    assert send.command == Retain(0, dispense_id)
    rig.outbox.remove(send)
    rig.auto = True
    rig.pump()  # the rest is answered (the alert pattern)
    rig.auto = False
    rig.dispenser.tray = None  # executed; the reply is lost
    rig.feed(CommandOutcome(send.correlation, None, "reply_timeout"))
    rig.msg(DoseRetained(dispense_id, index))
    rig.auto = True
    rig.run_for(timedelta(minutes=10))
    assert rig.commands(Retain) == [Retain(0, dispense_id)]
    assert rig.events("dose_not_in_tray") == []
    assert [e.fields["dispense_id"] for e in rig.events("dose_retained")] == [dispense_id]
