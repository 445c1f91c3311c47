"""Restarts (hazard #11) and ALREADY_DONE (hazard #8), on the virtual clock.

After a restart the open slots are reconciled with the dispenser: a presented dose whose tray is
empty was lifted out while the agent was away (`taken_unconfirmed`, never a missed alarm); a
dose begun but never seen presented is asked for again with the same dispense id, and the
dispenser's idempotency tells whether it was cut. ALREADY_DONE for a dose the agent did not see
presented never counts as given.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from test_engine import Rig, daily, morning_rig, utc

from agent.clock import TimeTrust
from agent.engine import lifecycle
from agent.engine.engine import EngineState, OpenSlot
from agent.engine.types import (
    CommandOutcome,
    LinkDown,
    LinkUp,
    Priority,
    RecordPresented,
    SendCommand,
    Tick,
)
from agent.store.ledger import SlotRecord
from protocol.messages import (
    AlertPattern,
    ButtonId,
    ButtonPressed,
    CommandResult,
    Dispense,
    DosePresented,
    DoseTaken,
    FaultChanged,
    FaultCode,
    GetStatus,
    Message,
    ResultCode,
    Retain,
)

DUE = utc(2026, 3, 2, 7, 0)  # 08:00 in Oslo
SLOT = "2026-03-02T08:00"
NEXT_SLOT = "2026-03-03T08:00"


def restarted(rig: Rig, at: datetime) -> Rig:
    """The agent process starts again at `at`: a new engine from what the old one persisted, the
    same dispenser (which remembers what it executed), a new monotonic epoch."""
    state = EngineState.from_json(rig.engine.state.to_json())
    again = Rig(rig.schedule, start=at, state=state, config=rig.config)
    again.dispenser = rig.dispenser
    again.caps = rig.caps
    return again


def hello(rig: Rig) -> None:
    """The link comes up: LinkUp, then the roll and sachet announced again (SPEC 4.1)."""
    rig.feed(LinkUp(rig.caps))
    rig.insert_roll()


def outcome(rig: Rig) -> tuple[str, str | None]:
    recorded = rig.outcome_of(SLOT)
    return recorded.outcome.value, recorded.reason


def begun_not_sent(rig: Rig) -> SendCommand:
    """Run to the due time with the dispenser not answering: BeginDispense is committed, the
    Dispense command is what the agent was about to send when it died."""
    rig.install()
    rig.auto = False
    rig.run_until(DUE)
    [send] = [s for s in rig.outbox if isinstance(s.command, Dispense)]
    return send


def execute(rig: Rig, send: SendCommand) -> list[Message]:
    """The dispenser executes the command; what it sends afterwards reaches nobody."""
    reply, follow = rig.dispenser.handle(send.command)
    assert reply == CommandResult(0, ResultCode.OK, "")
    return follow


# --- a dose presented before the restart (the ledger says presented) ---------------------------


def test_a_dose_taken_while_the_agent_restarts_is_taken_unconfirmed_not_missed() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=2))
    assert "dose_presented" in rig.kinds()
    # The agent dies; the patient lifts the dose out 1 min later; the dispenser gives up on its
    # DoseTaken (nobody ACKs it); the unit restarts the agent.
    rig.dispenser.tray = None
    again = restarted(rig, DUE + timedelta(minutes=4))
    hello(again)
    assert outcome(again) == ("taken_unconfirmed", "tray_emptied_unseen")
    [event] = again.events("slot_outcome")
    assert event.priority is Priority.MEDIUM  # a person confirms with the patient; no alarm
    assert event.alert_id is not None  # ... and acknowledges it (latched)
    assert event.vkp_code is None  # not 3.3: the dose left the tray
    assert event.fields["presented_at"] == "2026-03-02T07:00:00Z"  # DUE, in UTC with Z
    assert event.fields["taken_at"] is None  # when exactly is not known
    again.run_for(timedelta(hours=3))
    assert again.commands(Retain) == []  # nothing to take back
    assert not [e for e in again.events("slot_outcome") if e.fields["outcome"] == "missed"]
    again.assert_one_outcome_per_slot()


def test_a_dose_still_in_the_tray_after_a_restart_gets_a_fresh_grace() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=2))
    again = restarted(rig, DUE + timedelta(minutes=4))
    hello(again)
    again.run_for(timedelta(minutes=30))
    assert again.outcomes() == []
    again.take()
    assert outcome(again) == ("taken", None)
    assert again.dispenser.dispensed == [0]


def test_a_dose_in_the_tray_long_after_its_slot_is_missed_at_once_and_retained() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=2))
    again = restarted(rig, DUE + timedelta(hours=3))
    hello(again)
    assert outcome(again) == ("missed", "not_taken")
    assert again.commands(Retain) == [Retain(0, rig.begins()[0].dispense_id)]


def test_a_tray_found_empty_long_after_its_slot_is_still_taken_unconfirmed() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=2))
    rig.dispenser.tray = None
    again = restarted(rig, DUE + timedelta(hours=3))
    hello(again)
    assert outcome(again) == ("taken_unconfirmed", "tray_emptied_unseen")


def test_without_the_dispenser_after_a_restart_the_slot_ends_missed_restart_unknown() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=2))
    again = restarted(rig, DUE + timedelta(minutes=4))
    again.run_for(again.config.grace - timedelta(seconds=1))
    assert again.outcomes() == []
    again.run_for(timedelta(seconds=1))
    assert outcome(again) == ("missed", "restart_unknown")  # in doubt: not given; HIGH
    assert again.events("slot_outcome")[0].priority is Priority.HIGH


def test_a_dose_taken_report_that_reaches_the_restarted_agent_is_taken() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=2))
    did, index = rig.dispenser.tray, rig.dispenser.tray_index
    assert did is not None
    rig.dispenser.tray = None
    again = restarted(rig, DUE + timedelta(minutes=2, seconds=1))
    again.msg(DoseTaken(did, index))  # retransmitted by the dispenser, before the handshake
    hello(again)
    assert outcome(again) == ("taken", None)


def test_a_restart_with_the_link_down_decides_at_once_not_at_the_next_input() -> None:
    """The wide world's seed 131: the agent restarted while the link was down, with a slot begun
    (its Dispense's reply lost). The new engine would say `dose_held no_link` on whatever step came
    first, but its next deadline was minutes away: what it decides after a restart is due at once
    (a Tick before the next deadline must change nothing)."""
    rig = morning_rig()
    time_out_first_dispense(rig)  # begun, outcome unknown, link down
    again = restarted(rig, DUE + timedelta(seconds=5))
    now = again.clock.now()
    deadline = again.engine.next_deadline(now)
    assert deadline is not None
    assert deadline <= now.mono
    again.feed(Tick())
    assert [e.fields["reason"] for e in again.events("dose_held")] == ["no_link"]
    assert again.engine.next_deadline(again.clock.now()) != deadline  # decided: not due again


def test_a_pi_boot_with_an_untrusted_clock_and_no_link_says_so_at_once() -> None:
    """The wide world's seeds 169 and 180: the Pi booted with its clock a guess and the dispenser
    link down; `clock_untrusted` (HIGH: no dose is given) waited for the next deadline or input,
    11 min and more. A new engine's first decisions are due at its start."""
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE - timedelta(hours=1))
    rig.feed(LinkDown("cable"))
    state = EngineState.from_json(rig.engine.state.to_json())
    booted = Rig(rig.schedule, start=DUE, state=state, config=rig.config, trust=TimeTrust.UNTRUSTED)
    now = booted.clock.now()
    deadline = booted.engine.next_deadline(now)
    assert deadline is not None
    assert deadline <= now.mono
    booted.feed(Tick())
    [untrusted] = booted.events("clock_untrusted")
    assert untrusted.priority is Priority.HIGH


# --- a dose begun but not seen presented (ledger: begun, no presentation) ----------------------


def test_a_presentation_that_reaches_the_restarted_agent_is_recorded_before_its_ack() -> None:
    rig = morning_rig()
    send = begun_not_sent(rig)
    presented = execute(rig, send)[0]  # the agent died before it stored this DosePresented
    assert isinstance(presented, DosePresented)
    again = restarted(rig, DUE + timedelta(seconds=1))
    acts = again.msg(presented)  # its retransmit reaches the new agent, which ACKs it after this
    assert RecordPresented(SLOT) in acts  # stored, not waved through as a repeat
    assert [e.fields["slot_id"] for e in again.events("dose_presented")] == [SLOT]
    hello(again)
    again.take()
    assert outcome(again) == ("taken", None)
    assert again.dispenser.dispensed == [0]
    assert again.begins() == []


def test_a_dispense_that_never_reached_the_dispenser_is_sent_again_with_its_id() -> None:
    rig = morning_rig()
    send = begun_not_sent(rig)  # the agent died between the commit and the write
    assert isinstance(send.command, Dispense)
    again = restarted(rig, DUE + timedelta(minutes=1))
    hello(again)
    assert again.commands(Dispense) == [send.command]  # the same dispense id: at most once
    assert again.begins() == []
    assert again.dispenser.dispensed == [0]
    again.take()
    assert outcome(again) == ("taken", None)


def test_a_dose_cut_unseen_and_gone_from_the_tray_is_not_counted_as_given() -> None:
    rig = morning_rig()
    send = begun_not_sent(rig)
    execute(rig, send)  # cut and presented; the agent never saw it
    rig.dispenser.tray = None  # lifted out while the agent was away
    again = restarted(rig, DUE + timedelta(minutes=1))
    hello(again)
    assert again.commands(Dispense) == [send.command]  # asked again: ALREADY_DONE
    assert again.dispenser.dispensed == [0]  # never a second sachet
    assert outcome(again) == ("missed", "dispense_unconfirmed")
    assert again.events("slot_outcome")[0].priority is Priority.HIGH


def test_a_dose_cut_unseen_and_still_in_the_tray_is_presented_and_can_be_taken() -> None:
    rig = morning_rig()
    send = begun_not_sent(rig)
    execute(rig, send)
    again = restarted(rig, DUE + timedelta(minutes=1))
    hello(again)
    assert RecordPresented(SLOT) in again.actions
    again.take()
    assert outcome(again) == ("taken", None)
    assert again.dispenser.dispensed == [0]


# --- ALREADY_DONE without a restart ------------------------------------------------------------


def test_already_done_for_an_id_this_unit_never_sent_is_a_conflict_not_a_dose() -> None:
    rig = morning_rig()
    rig.dispenser.executed = list(range(1, 6))  # ids this unit never sent (its store was replaced)
    rig.install()
    rig.run_until(DUE + timedelta(minutes=1))
    assert rig.dispenser.dispensed == []
    assert outcome(rig) == ("missed", "dispense_id_conflict")
    assert rig.events("slot_outcome")[0].priority is Priority.HIGH
    [conflict] = rig.events("dispense_id_conflict")
    assert conflict.priority is Priority.HIGH
    assert conflict.fields["dispense_id"] == rig.begins()[0].dispense_id
    assert "taken" not in [e.fields["outcome"] for e in rig.events("slot_outcome")]


def test_the_id_conflict_clears_once_the_dispenser_accepts_a_fresh_id() -> None:
    rig = morning_rig(features=0)  # no retain bin: no discards in between
    rig.dispenser.executed = [1]
    rig.install()
    rig.run_until(DUE + timedelta(minutes=1))
    assert outcome(rig) == ("missed", "dispense_id_conflict")
    rig.dispenser.next_index = 1  # the nurse advanced the roll past the unused sachet
    rig.insert_roll()
    rig.run_until(utc(2026, 3, 3, 7, 1))
    assert rig.dispenser.dispensed == [1]
    assert len(rig.events("dispense_id_conflict")) == 1
    assert len(rig.events("dispense_id_conflict_cleared")) == 1


def time_out_first_dispense(rig: Rig) -> SendCommand:
    """The first Dispense is executed but its reply is lost (a timeout: outcome unknown)."""
    rig.install()
    rig.auto = False
    rig.run_until(DUE)
    [send] = [s for s in rig.outbox if isinstance(s.command, Dispense)]
    rig.outbox.clear()
    rig.dispenser.handle(send.command)  # executed; the reply and DosePresented are lost
    rig.feed(CommandOutcome(send.correlation, None, failure="reply_timeout"))
    rig.feed(LinkDown("blip"))
    rig.auto = True
    return send


def test_already_done_after_a_lost_reply_with_the_dose_in_the_tray_presents_it() -> None:
    rig = morning_rig()
    send = time_out_first_dispense(rig)
    hello(rig)
    rig.run_for(rig.config.command_retry)
    assert rig.commands(Dispense) == [send.command, send.command]
    assert rig.commands(GetStatus)  # asked whether the dose is in the tray: it is
    assert RecordPresented(SLOT) in rig.actions
    rig.take()
    assert outcome(rig) == ("taken", None)
    assert rig.dispenser.dispensed == [0]


def test_already_done_after_a_lost_reply_with_an_empty_tray_is_not_given() -> None:
    rig = morning_rig()
    send = time_out_first_dispense(rig)
    rig.dispenser.tray = None
    hello(rig)
    rig.run_for(rig.config.command_retry)
    assert rig.commands(Dispense) == [send.command, send.command]
    assert outcome(rig) == ("missed", "dispense_unconfirmed")
    assert rig.dispenser.dispensed == [0]


def test_a_dose_cut_unseen_and_gone_counts_as_an_intake_for_the_minimum_interval() -> None:
    """Seed 147 of the 200-seed run (doses 30 min apart, judge R2): the 08:00 Dispense's reply
    was lost, the patient lifted the dose out while the link was down, the agent learnt
    ALREADY_DONE with an empty tray (missed, dispense_unconfirmed) and a TAKE a minute later
    presented the 08:30 dose at once: two doses 5 min apart. In doubt, an intake (H3)."""
    times = [DUE, DUE + timedelta(minutes=30)]
    rig = Rig(daily("08:00", "08:30"), sachet_times=times)  # minimum interval 15 min
    time_out_first_dispense(rig)
    rig.dispenser.tray = None  # lifted out while the link is down: its DoseTaken is lost
    rig.run_for(timedelta(minutes=4))
    hello(rig)
    rig.run_for(rig.config.command_retry)
    assert outcome(rig) == ("missed", "dispense_unconfirmed")
    seen_empty = rig.clock.now().utc
    rig.run_for(timedelta(minutes=1))
    rig.msg(ButtonPressed(ButtonId.TAKE))
    assert rig.dispenser.dispensed == [0]  # not the 08:30 dose minutes after a possible intake
    rig.run_until(seen_empty + timedelta(minutes=14, seconds=59))
    assert rig.dispenser.dispensed == [0]
    rig.run_until(DUE + timedelta(minutes=30))
    assert rig.dispenser.dispensed == [0, 1]


def test_a_lost_reply_that_cut_the_rolls_last_sachet_is_asked_after_all_the_same() -> None:
    """The simulation's fault mix found it (a link drop just after a Dispense, R12): the lost
    Dispense cut the roll's last sachet, so after the link is back the roll is empty and the
    engine held the slot `roll_empty` with the dose in the tray, unannounced and with no
    reminder, until its deadline. Asking with the same dispense id is safe on an empty roll
    (nothing is left to cut) and says whether it was cut: the Status then finds it in the tray."""
    rig = Rig(daily("08:00"), sachet_times=[DUE])  # one sachet: the 08:00 dose
    send = time_out_first_dispense(rig)
    hello(rig)  # the roll is announced empty: next_index 1 of 1
    rig.run_for(rig.config.command_retry)
    assert rig.commands(Dispense) == [send.command, send.command]
    assert RecordPresented(SLOT) in rig.actions
    assert isinstance(send.command, Dispense)
    assert [e.fields["dispense_id"] for e in rig.events("dose_presented")] == [
        send.command.dispense_id
    ]
    rig.take()
    assert outcome(rig) == ("taken", None)


def back_with(rig: Rig, fault: FaultCode) -> None:
    """The link comes back with `fault` active: the roll announced again, and its sachet too
    unless the reader is what failed (then FaultChanged READER stands for it, SPEC 4.3)."""
    rig.dispenser.faults = {fault}
    rig.feed(LinkUp(rig.caps))
    rig.msg(rig.dispenser.roll_message())
    sachet = rig.dispenser.sachet()
    if fault is not FaultCode.READER and sachet is not None:
        rig.msg(sachet)


@pytest.mark.parametrize("lifted", [True, False])
@pytest.mark.parametrize("fault", [FaultCode.READER, FaultCode.JAM])
def test_a_lost_reply_is_asked_after_all_under_a_fault(fault: FaultCode, lifted: bool) -> None:
    """The wide world's seeds 33 (READER) and 51 (JAM) found it (R12): the link dropped right
    after the dispenser took the Dispense and came back with a fault in the Status. The fault held
    the slot before the probe, so the dose cut unseen was told only at the slot's deadline. A
    Dispense with the same id is no new dispense: the dispenser answers ALREADY_DONE before
    looking at its faults, and under a jam or with the reader failed it cuts nothing (JAMMED,
    REJECTED, SPEC 4.9)."""
    rig = morning_rig()
    send = time_out_first_dispense(rig)  # cut, the dose in the tray; reply lost, link down
    if lifted:
        rig.dispenser.tray = None  # the patient lifts it out: its DoseTaken is lost
    rig.run_for(timedelta(minutes=5))
    back_with(rig, fault)
    rig.run_until(DUE + timedelta(minutes=15))  # R12: a movement of medicine told in 15 min
    assert rig.commands(Dispense) == [send.command, send.command]
    if lifted:
        assert outcome(rig) == ("missed", "dispense_unconfirmed")
    else:
        assert RecordPresented(SLOT) in rig.actions
        rig.take()
        assert outcome(rig) == ("taken", None)
    assert rig.dispenser.dispensed == [0]


@pytest.mark.parametrize("fault", [FaultCode.READER, FaultCode.JAM, FaultCode.CUTTER])
def test_a_probe_under_a_fault_that_refuses_dispensing_cuts_nothing(fault: FaultCode) -> None:
    """The same probe when the lost Dispense never reached the dispenser: under a fault that
    makes the dispenser refuse every new Dispense (JAMMED, REJECTED) nothing is cut; the slot is
    held for the fault, and given once it clears and the sachet is checked again."""
    rig = morning_rig()
    rig.install()
    rig.auto = False
    rig.run_until(DUE)
    [send] = [s for s in rig.outbox if isinstance(s.command, Dispense)]
    rig.outbox.clear()  # lost on the way: never executed
    rig.feed(CommandOutcome(send.correlation, None, failure="reply_timeout"))
    rig.feed(LinkDown("blip"))
    rig.auto = True
    back_with(rig, fault)
    rig.run_for(rig.config.command_retry * 2)
    assert rig.commands(Dispense) == [send.command, send.command]  # asked: refused, not cut
    assert rig.dispenser.dispensed == []
    held = [e.fields["reason"] for e in rig.events("dose_held")]
    assert held[-1] == f"fault_{fault.name.lower()}"  # held for the fault that refused it
    rig.run_for(timedelta(minutes=5))
    assert rig.commands(Dispense) == [send.command, send.command]  # no new dispense under it
    rig.dispenser.faults = set()
    rig.msg(FaultChanged(fault, False, ""))
    if fault is FaultCode.READER:
        sachet = rig.dispenser.sachet()
        assert sachet is not None
        rig.msg(sachet)
    rig.run_for(rig.config.command_retry)
    assert rig.dispenser.dispensed == [0]
    rig.take()
    assert outcome(rig) == ("taken", None)


@pytest.mark.parametrize("fault", [FaultCode.SENSOR, FaultCode.TAMPER])
def test_no_probe_under_a_fault_the_dispenser_would_cut_through(fault: FaultCode) -> None:
    """A sensor or tamper fault does not make the dispenser refuse a Dispense (SPEC 4.9): a
    probe of an id it never cut would cut a sachet while the unit is faulted. In doubt, no
    Dispense at all; the slot ends dispense_unconfirmed at its deadline."""
    rig = morning_rig()
    send = time_out_first_dispense(rig)
    rig.dispenser.tray = None
    rig.run_for(timedelta(minutes=5))
    back_with(rig, fault)
    rig.run_until(DUE + timedelta(hours=3))
    assert rig.commands(Dispense) == [send.command]
    assert outcome(rig) == ("missed", "dispense_unconfirmed")
    assert rig.dispenser.dispensed == [0]


def test_a_dose_taken_while_the_probe_of_a_lost_reply_lost_its_reply_too_is_told_soon() -> None:
    """The probe after a lost reply lost its reply too, and the patient lifted the dose out
    meanwhile: the next Status's empty tray counts as an intake. Its minimum interval held the
    probe of the very slot it came from, and the slot ended missed only at its deadline, an hour
    later. The Status puts the reader past the slot's sachet, so the probe cannot cut one: it is
    sent, answered ALREADY_DONE, and the slot is told at once."""
    rig = morning_rig()
    time_out_first_dispense(rig)  # cut, the dose in the tray; reply lost, link down
    rig.auto = False
    hello(rig)
    while rig.outbox:  # the Status finds the dose in the tray; the probe's reply is lost too
        out = rig.outbox.pop(0)
        reply, follow = rig.dispenser.handle(out.command)
        if isinstance(out.command, Dispense):
            rig.feed(CommandOutcome(out.correlation, None, failure="reply_timeout"))
            rig.feed(LinkDown("blip"))
            break
        rig.feed(CommandOutcome(out.correlation, reply))
        for message in follow:
            rig.msg(message)
    rig.outbox.clear()
    rig.dispenser.tray = None  # lifted out while the link is down: no DoseTaken reaches it
    rig.auto = True
    hello(rig)
    rig.run_for(timedelta(minutes=15))
    assert outcome(rig)[0] in ("taken_unconfirmed", "missed")


def test_a_probe_that_could_cut_is_held_by_the_minimum_interval() -> None:
    """As above, but the first Dispense never reached the dispenser (the reader is still at the
    slot's sachet) and the dose in the tray was another one, unknown to the agent. Its unseen
    removal counts as an intake; asking again now could cut the slot's sachet and make a dose
    available within the minimum interval of that intake: held, not sent (SAFETY.md H3)."""
    rig = morning_rig()
    rig.install()
    rig.auto = False
    rig.run_until(DUE)
    [send] = [s for s in rig.outbox if isinstance(s.command, Dispense)]
    rig.outbox.clear()
    rig.feed(CommandOutcome(send.correlation, None, failure="reply_timeout"))  # never arrived
    rig.feed(LinkDown("blip"))
    rig.dispenser.tray, rig.dispenser.tray_index = 4242, 9  # a dose the agent does not know
    hello(rig)
    while rig.outbox:  # the Status finds a dose in the tray; whatever is asked, unanswered
        out = rig.outbox.pop(0)
        if isinstance(out.command, Dispense):
            rig.feed(CommandOutcome(out.correlation, None, failure="reply_timeout"))
            rig.feed(LinkDown("blip"))
            break
        reply, follow = rig.dispenser.handle(out.command)
        rig.feed(CommandOutcome(out.correlation, reply))
        for message in follow:
            rig.msg(message)
    rig.outbox.clear()
    rig.dispenser.tray = None  # lifted out while the link is down
    rig.auto = True
    hello(rig)
    rig.run_for(timedelta(minutes=15))
    assert rig.dispenser.next_index == 0  # the reader is where it was: nothing cut
    assert rig.dispenser.dispensed == []
    assert lifecycle.MIN_INTERVAL in [
        e.fields["reason"] for e in rig.events("dose_held") if e.fields["slot_id"] == SLOT
    ]


def test_a_probe_refused_for_another_sachet_keeps_the_sachet_at_the_reader() -> None:
    rig = morning_rig()
    begun_not_sent(rig)  # never executed
    rig.dispenser.next_index = 1  # meanwhile sachet 0 left the reader (a nurse pulled it)
    again = restarted(rig, DUE + timedelta(minutes=1))
    hello(again)  # the reader holds tomorrow's sachet: WRONG_SACHET, nothing moves
    assert again.dispenser.dispensed == []
    again.run_until(utc(2026, 3, 3, 7, 1))
    assert outcome(again)[0] in ("missed", "refused")
    assert again.dispenser.dispensed == [1]  # tomorrow's sachet, still known, given tomorrow


# --- the same without a restart: the link drops while the dose is taken -------------------------


def test_a_dose_taken_while_the_link_is_down_is_taken_unconfirmed_not_missed() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=2))
    rig.feed(LinkDown("cable"))
    rig.dispenser.tray = None  # taken; the dispenser gives up on its DoseTaken
    rig.run_for(timedelta(minutes=3))
    hello(rig)
    assert outcome(rig) == ("taken_unconfirmed", "tray_emptied_unseen")
    rig.run_for(timedelta(hours=2))
    assert rig.commands(Retain) == []
    rig.assert_one_outcome_per_slot()


def test_a_dose_still_in_the_tray_after_a_link_drop_keeps_its_grace() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=2))
    rig.feed(LinkDown("cable"))
    rig.run_for(timedelta(minutes=3))
    hello(rig)
    rig.run_until(DUE + rig.config.grace - timedelta(seconds=1))
    assert rig.outcomes() == []
    rig.run_until(DUE + rig.config.grace)
    assert outcome(rig) == ("missed", "not_taken")  # grace from the presentation, not the link


def test_grace_over_while_the_link_is_down_is_missed_tray_unknown_and_then_told() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=2))
    rig.feed(LinkDown("cable"))
    rig.dispenser.tray = None  # taken; the DoseTaken is lost
    rig.run_until(DUE + rig.config.grace)
    assert outcome(rig) == ("missed", "tray_unknown")  # cannot see the tray: in doubt, HIGH
    hello(rig)  # the link is back: the Retain finds the tray empty
    [told] = rig.events("dose_not_in_tray")
    assert told.fields == {"slot_id": SLOT, "dispense_id": rig.begins()[0].dispense_id}
    rig.assert_one_outcome_per_slot()


def test_the_sachet_last_sent_for_an_open_slot_survives_a_restart() -> None:
    """A retry may send another sachet than the begin recorded (the reader moved on); its dose
    events name that one, so a restart keeps it, or they would look like phantoms."""
    saved = EngineState(open_slots=(OpenSlot(SLOT, 7, 3, DUE),))
    ledger = SlotRecord(SLOT, 7, 2, DUE.isoformat(), DUE.isoformat(), None, None, None, None)
    [slot] = saved.with_open_slots([ledger]).open_slots
    assert (slot.dispense_id, slot.sachet_index) == (7, 3)
    [slot] = EngineState().with_open_slots([ledger]).open_slots
    assert slot.sachet_index == 2


# --- after a store fault: the daemon's fail-safe locked the dispenser and set FAULT -----------


def test_the_fail_safe_lock_of_an_earlier_process_is_lifted_and_doses_are_given_again() -> None:
    """The store failed, the daemon locked the dispenser and set FAULT, then exited (SAFETY.md
    H8); the restarted agent took that lock for one it did not set and held every later dose
    'locked' for good (simulation, strict xfail before). Only the agent locks (SPEC 4.5)."""
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE - timedelta(hours=1))
    rig.dispenser.locked, rig.dispenser.alert = True, AlertPattern.FAULT  # the fail-safe
    again = restarted(rig, DUE - timedelta(minutes=59))
    hello(again)
    assert [e.kind for e in again.events("failsafe_lock_lifted")] == ["failsafe_lock_lifted"]
    assert not again.dispenser.locked
    assert again.dispenser.alert is not AlertPattern.FAULT
    again.run_until(DUE)
    again.take()
    assert outcome(again) == ("taken", None)


def test_a_lock_without_the_fail_safes_fault_pattern_is_not_lifted() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE - timedelta(hours=1))
    rig.dispenser.locked = True  # not the fail-safe's signature: in doubt, left as it is
    again = restarted(rig, DUE - timedelta(minutes=59))
    hello(again)
    again.run_until(DUE + timedelta(minutes=61))
    assert again.events("failsafe_lock_lifted") == []
    assert again.dispenser.locked
    assert again.dispenser.dispensed == []


# --- the escalation survives a restart (year simulation, seed 3, 2027-01-29) -----------------


def test_a_dose_called_urgently_before_a_restart_is_still_called_urgently_after() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=40))  # presented at DUE; URGENT from DUE + 30 min
    assert rig.sounding() is AlertPattern.URGENT
    assert len(rig.events("dose_not_taken")) == 1
    again = restarted(rig, DUE + timedelta(minutes=42))
    hello(again)
    again.run_for(timedelta(minutes=5))
    assert again.sounding() is AlertPattern.URGENT  # not back to REMINDER
    assert AlertPattern.REMINDER not in again.patterns_sent()
    assert again.events("dose_not_taken") == []  # the centre was told once, before


def test_an_escalation_due_after_a_restart_keeps_its_time_from_the_presentation() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=10))
    assert rig.sounding() is AlertPattern.REMINDER
    again = restarted(rig, DUE + timedelta(minutes=12))
    hello(again)
    again.run_until(DUE + timedelta(minutes=29))
    assert again.sounding() is AlertPattern.REMINDER
    again.run_until(DUE + timedelta(minutes=30, seconds=1))  # not 30 min after the restart
    assert again.sounding() is AlertPattern.URGENT
    [event] = again.events("dose_not_taken")
    assert event.fields["minutes_since_presented"] == 30


def test_an_escalation_due_while_the_agent_was_away_comes_at_once_and_is_told() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=20))
    again = restarted(rig, DUE + timedelta(minutes=35))
    hello(again)
    again.run_for(timedelta(seconds=1))
    assert again.sounding() is AlertPattern.URGENT
    assert len(again.events("dose_not_taken")) == 1  # never told before the restart


def test_the_urgent_step_survives_a_restart_whose_wall_clock_went_back() -> None:
    """The stored step is a floor: a clock that shows less time since the presentation after
    the restart does not call the patient less urgently."""
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=40))
    again = restarted(rig, DUE + timedelta(minutes=5))  # the wall clock stepped back
    hello(again)
    again.run_for(timedelta(minutes=1))
    assert again.sounding() is AlertPattern.URGENT
    assert again.events("dose_not_taken") == []


def untrusted_boot(rig: Rig, at: datetime) -> Rig:
    """The Pi boots at `at` by its own guess of the time (neither NTP nor the dispenser's RTC)."""
    state = EngineState.from_json(rig.engine.state.to_json())
    again = Rig(rig.schedule, start=at, state=state, config=rig.config, trust=TimeTrust.UNTRUSTED)
    again.dispenser = rig.dispenser
    again.caps = rig.caps
    return again


def test_after_a_boot_with_an_untrusted_clock_a_step_comes_late_never_early() -> None:
    """The wide world's seed 2: a boot clock 15 min ahead made the step (and `dose_not_taken`)
    come 15 min early. Not knowing how long the dose waited, the step counts from the boot."""
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=10))
    again = untrusted_boot(rig, DUE + timedelta(minutes=40))  # a guess 25 min ahead
    hello(again)
    again.run_for(timedelta(minutes=29))
    assert again.sounding() is AlertPattern.REMINDER
    assert again.events("dose_not_taken") == []
    again.run_for(timedelta(minutes=1, seconds=1))
    assert again.sounding() is AlertPattern.URGENT


def test_after_a_boot_with_an_untrusted_clock_an_urgent_dose_stays_urgent() -> None:
    rig = morning_rig()
    rig.install()
    rig.run_until(DUE + timedelta(minutes=40))
    again = untrusted_boot(rig, DUE + timedelta(minutes=42))
    hello(again)
    again.run_for(timedelta(minutes=5))
    assert again.sounding() is AlertPattern.URGENT
    assert again.events("dose_not_taken") == []
