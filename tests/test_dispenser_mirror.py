"""The dispenser mirror's pure parts: which commands bring the dispenser to what the engine wants
(`plan_sync`), the room left in the bin and which faults stop dispensing.

Expected values come from docs/engine.md (level-triggered commands: status first, then lock, alert
pattern, retains, never one already in flight; "The bin"; "Technical conditions": blocking faults)
and protocol/SPEC.md (4.5 patterns, 4.8 the bin, the Feature bits), written out here by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from itertools import pairwise, product
from typing import Any, cast

import pytest
from test_engine import OTHER, Rig, morning_rig

from agent.engine.dispenser_mirror import (
    PATTERN_RANK,
    DispenserMirror,
    KnownDispenser,
    PlannedCommand,
    WantedDispenser,
    has_feature,
    in_sync,
    plan_sync,
)
from agent.engine.types import LinkUp, SendCommand, Tick
from protocol.messages import (
    AlertPattern,
    Capabilities,
    FaultCode,
    Feature,
    GetStatus,
    Retain,
    SetAlert,
    SetLock,
)

# SPEC Feature bits, by hand: RETAIN_BIN 0x0001, LOCK 0x0002
RETAIN_BIN, LOCK = 0x0001, 0x0002


def caps(features: int) -> Capabilities:
    return Capabilities(0, 1, "SIM", "SN1", "1.0", True, True, 0, features)


KNOWN = KnownDispenser(
    status_known=True,
    lock_actual=False,
    locked_by_agent=False,
    pattern_sent=AlertPattern.OFF,
    capabilities=caps(RETAIN_BIN | LOCK),
    bin_full=False,
    in_flight=(),
)
WANTED = WantedDispenser(locked=False, pattern=AlertPattern.OFF, retains=())


def kinds(plan_commands: tuple[PlannedCommand, ...]) -> list[str]:
    return [c.kind for c in plan_commands]


# --- status first ----------------------------------------------------------------------------


def test_in_sync_nothing_is_sent() -> None:
    plan = plan_sync(KNOWN, WANTED)
    assert plan.commands == ()
    assert plan.retains_left == ()


# what in_sync reads, in its order (product() of more than six iterables loses the types)
MirrorReading = tuple[
    bool,
    bool | None,
    bool,
    AlertPattern | None,
    int | None,
    bool,
    tuple[str, ...],
    int | None,
    bool,
    AlertPattern,
    tuple[int, ...],
]


def test_in_sync_is_asked_first_and_never_skips_a_command_plan_sync_would_send() -> None:
    """The engine skips plan_sync when in_sync says so: over every combination of what it reads,
    whenever in_sync is True plan_sync plans nothing and leaves nothing for later; and it is
    True for the plain in-sync picture (or the shortcut would never be taken)."""
    patterns: list[AlertPattern | None] = [None, *AlertPattern]
    agreed = 0
    for (
        status_known,
        lock_actual,
        locked_by_agent,
        pattern_sent,
        features,
        bin_full,
        in_flight,
        bin_room,
        locked,
        pattern,
        retains,
    ) in cast(
        "Iterator[MirrorReading]",
        product(
            (False, True),
            (None, True, False),
            (False, True),
            patterns,
            (None, 0, RETAIN_BIN, LOCK, RETAIN_BIN | LOCK),
            (False, True),
            ((), ("set_lock",), ("set_alert",), ("get_status",)),
            (None, 0, 2),
            (False, True),
            list(AlertPattern),
            ((), (7,)),
        ),
    ):
        known = KnownDispenser(
            status_known,
            lock_actual,
            locked_by_agent,
            pattern_sent,
            None if features is None else caps(features),
            bin_full,
            in_flight,
            bin_room,
        )
        wanted = WantedDispenser(locked, pattern, retains)
        if in_sync(
            status_known, lock_actual, locked_by_agent, pattern_sent, locked, pattern, retains
        ):
            plan = plan_sync(known, wanted)
            assert (plan.commands, plan.retains_left) == ((), ()), (known, wanted)
            agreed += 1
    assert agreed > 0
    assert in_sync(True, False, False, AlertPattern.OFF, False, AlertPattern.OFF, ())
    # each difference that needs a command is not in sync
    assert not in_sync(False, False, False, AlertPattern.OFF, False, AlertPattern.OFF, ())
    assert not in_sync(True, False, False, AlertPattern.OFF, True, AlertPattern.OFF, ())
    assert not in_sync(True, True, True, AlertPattern.OFF, False, AlertPattern.OFF, ())
    assert not in_sync(True, False, False, None, False, AlertPattern.OFF, ())
    assert not in_sync(True, False, False, AlertPattern.OFF, False, AlertPattern.URGENT, ())
    assert not in_sync(True, False, False, AlertPattern.OFF, False, AlertPattern.OFF, (7,))


def test_without_a_status_only_a_status_is_asked_and_the_retains_wait() -> None:
    known = replace(KNOWN, status_known=False, lock_actual=None, pattern_sent=None)
    wanted = WantedDispenser(locked=True, pattern=AlertPattern.REMINDER, retains=(7,))
    plan = plan_sync(known, wanted)
    assert plan.commands == (PlannedCommand("get_status", GetStatus(req_id=0)),)
    assert plan.retains_left == (7,)


def test_a_status_in_flight_is_not_asked_again() -> None:
    known = replace(KNOWN, status_known=False, in_flight=("get_status",))
    wanted = replace(WANTED, retains=(7,))
    plan = plan_sync(known, wanted)
    assert plan.commands == ()
    assert plan.retains_left == (7,)


def test_link_up_asks_for_one_status_until_it_is_answered() -> None:
    """The engine side of the same rule: Ticks while the GetStatus is unanswered add none."""
    rig = morning_rig()
    rig.auto = False  # the dispenser does not answer yet
    rig.install(roll=False)
    rig.feed(Tick())
    rig.clock.advance(5.0)
    rig.feed(Tick())
    assert rig.commands(GetStatus) == [GetStatus(0)]
    assert rig.commands(SetAlert) == []
    assert rig.commands(SetLock) == []


# --- lock --------------------------------------------------------------------------------------


@pytest.mark.parametrize("lock_actual", [False, None])
def test_a_foreign_roll_locks_the_cassette_unless_it_is_locked(lock_actual: bool | None) -> None:
    plan = plan_sync(replace(KNOWN, lock_actual=lock_actual), replace(WANTED, locked=True))
    assert plan.commands == (PlannedCommand("set_lock", SetLock(req_id=0, locked=True)),)
    assert plan_sync(replace(KNOWN, lock_actual=True), replace(WANTED, locked=True)).commands == ()


@pytest.mark.parametrize("lock_actual", [True, None])
def test_the_agent_unlocks_only_a_lock_it_set(lock_actual: bool | None) -> None:
    ours = replace(KNOWN, lock_actual=lock_actual, locked_by_agent=True)
    assert plan_sync(ours, WANTED).commands == (
        PlannedCommand("set_lock", SetLock(req_id=0, locked=False)),
    )
    # locked by someone else (a technician): not the agent's to lift
    theirs = replace(KNOWN, lock_actual=lock_actual, locked_by_agent=False)
    assert plan_sync(theirs, WANTED).commands == ()
    # already open
    opened = replace(KNOWN, lock_actual=False, locked_by_agent=True)
    assert plan_sync(opened, WANTED).commands == ()


def test_no_lock_command_while_one_is_in_flight_or_without_the_lock_feature() -> None:
    wanted = replace(WANTED, locked=True)
    in_flight = replace(KNOWN, in_flight=("set_lock",))
    assert plan_sync(in_flight, wanted).commands == ()
    no_lock = replace(KNOWN, capabilities=caps(RETAIN_BIN))
    assert plan_sync(no_lock, wanted).commands == ()
    unlock = replace(KNOWN, lock_actual=True, locked_by_agent=True, in_flight=("set_lock",))
    assert plan_sync(unlock, WANTED).commands == ()


# --- alert pattern ---------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [AlertPattern.OFF, None])
def test_the_pattern_is_sent_when_it_differs_or_is_unknown(sent: AlertPattern | None) -> None:
    wanted = replace(WANTED, pattern=AlertPattern.HELD)
    plan = plan_sync(replace(KNOWN, pattern_sent=sent), wanted)
    assert plan.commands == (
        PlannedCommand("set_alert", SetAlert(req_id=0, pattern=AlertPattern.HELD)),
    )
    in_flight = replace(KNOWN, pattern_sent=sent, in_flight=("set_alert",))
    assert plan_sync(in_flight, wanted).commands == ()


def test_an_unknown_pattern_is_sent_even_when_the_wanted_one_is_off() -> None:
    plan = plan_sync(replace(KNOWN, pattern_sent=None), WANTED)
    assert plan.commands == (
        PlannedCommand("set_alert", SetAlert(req_id=0, pattern=AlertPattern.OFF)),
    )


# --- retains ---------------------------------------------------------------------------------


def test_retains_go_out_in_order_when_the_bin_takes_them() -> None:
    plan = plan_sync(KNOWN, replace(WANTED, retains=(4, 9)))
    assert plan.commands == (
        PlannedCommand("retain", Retain(req_id=0, dispense_id=4), dispense_id=4),
        PlannedCommand("retain", Retain(req_id=0, dispense_id=9), dispense_id=9),
    )
    assert plan.retains_left == ()


def test_retains_wait_while_the_bin_is_full() -> None:
    plan = plan_sync(replace(KNOWN, bin_full=True), replace(WANTED, retains=(4,)))
    assert plan.commands == ()
    assert plan.retains_left == (4,)


def test_a_dispenser_without_a_bin_owes_no_retains() -> None:
    plan = plan_sync(replace(KNOWN, capabilities=caps(LOCK)), replace(WANTED, retains=(4,)))
    assert plan.commands == ()
    assert plan.retains_left == ()


def test_retains_wait_while_the_capabilities_are_unknown() -> None:
    plan = plan_sync(replace(KNOWN, capabilities=None), replace(WANTED, retains=(4,)))
    assert plan.commands == ()
    assert plan.retains_left == (4,)


def test_the_order_is_lock_then_pattern_then_retains() -> None:
    known = replace(KNOWN, lock_actual=None, pattern_sent=None)
    wanted = WantedDispenser(locked=True, pattern=AlertPattern.FAULT, retains=(3,))
    assert kinds(plan_sync(known, wanted).commands) == ["set_lock", "set_alert", "retain"]


# --- the bin, faults, features -----------------------------------------------------------------


def mirror(**fields: Any) -> DispenserMirror:  # any of its fields; replace() checks the names
    return replace(DispenserMirror(link_down_since=None, locked_by_agent=False), **fields)


def test_bin_room_counts_the_report_the_cuts_seen_since_and_those_on_their_way() -> None:
    assert mirror().bin_room(0) is None
    assert mirror(bin_capacity=30).bin_room(0) is None
    assert mirror(bin_count=3).bin_room(0) is None
    assert mirror(bin_capacity=30, bin_count=3).bin_room(0) == 27
    assert mirror(bin_capacity=30, bin_count=3, bin_unreported=2).bin_room(4) == 21
    assert mirror(bin_capacity=30, bin_count=29, bin_unreported=1).bin_room(0) == 0
    # a firmware miscount above the capacity reads as a full bin, never as negative room
    assert mirror(bin_capacity=30, bin_count=31).bin_room(0) == 0
    assert mirror(bin_capacity=30, bin_count=30).bin_room(2) == 0


def test_blocking_faults_in_their_reporting_order_and_bin_full_does_not_block() -> None:
    assert mirror().blocking_fault() is None
    assert mirror(faults=[FaultCode.BIN_FULL]).blocking_fault() is None
    for fault in (
        FaultCode.JAM,
        FaultCode.SENSOR,
        FaultCode.CUTTER,
        FaultCode.READER,
        FaultCode.TAMPER,
    ):
        assert mirror(faults=[FaultCode.BIN_FULL, fault]).blocking_fault() is fault
    both = [FaultCode.TAMPER, FaultCode.BIN_FULL, FaultCode.READER, FaultCode.JAM]
    assert mirror(faults=both).blocking_fault() is FaultCode.JAM
    assert mirror(faults=[FaultCode.TAMPER, FaultCode.CUTTER]).blocking_fault() is (
        FaultCode.CUTTER
    )


def test_features_are_bits_of_the_capabilities() -> None:
    assert not has_feature(None, Feature.LOCK)
    assert has_feature(caps(LOCK), Feature.LOCK)
    assert not has_feature(caps(RETAIN_BIN), Feature.LOCK)
    assert mirror(capabilities=caps(RETAIN_BIN | LOCK)).has(Feature.RETAIN_BIN)
    assert not mirror().has(Feature.RETAIN_BIN)


def test_a_lock_set_before_a_restart_is_lifted_when_the_foreign_roll_goes() -> None:
    """The lock the agent set survives in its state (`locked_by_agent`); once the foreign roll is
    gone the agent lifts it even though this process never sent the SetLock(True)."""
    rig: Rig = morning_rig()
    rig.dispenser.roll_patient = OTHER
    rig.install()
    assert rig.commands(SetLock) == [SetLock(0, True)]
    state = rig.engine.state
    assert state.locked_by_agent
    again = morning_rig(state=state)
    again.dispenser.locked = True
    again.feed(LinkUp(again.caps))
    assert again.commands(SetLock) == []  # still foreign as far as it knows: stays locked
    again.remove_roll()
    assert again.commands(SetLock) == [SetLock(0, False)]
    assert not again.dispenser.locked


def test_the_ranking_is_fault_urgent_reminder_held_off() -> None:
    """docs/engine.md, "Local sound and light": each pattern strictly above the next."""
    order = [
        AlertPattern.FAULT,
        AlertPattern.URGENT,
        AlertPattern.REMINDER,
        AlertPattern.HELD,
        AlertPattern.OFF,
    ]
    ranks = [PATTERN_RANK[p] for p in order]
    assert all(a > b for a, b in pairwise(ranks)), ranks


def test_an_engine_that_never_saw_a_link_up_has_no_link() -> None:
    """From the start until the first LinkUp the dispenser is unreachable: nothing is sent, a due
    dose is held `no_link`, and `no_contact` is raised after `no_contact_after` (5 min)."""
    rig = morning_rig()
    rig.install(roll=False, link=False)
    rig.run_for(timedelta(minutes=5) - timedelta(seconds=1))
    assert rig.events("no_contact") == []
    rig.run_for(timedelta(seconds=1))
    assert len(rig.events("no_contact")) == 1
    rig.run_until(rig.clock.now().utc.replace(hour=7, minute=1))  # 08:01 Oslo: the dose is due
    assert [e.fields["reason"] for e in rig.events("dose_held")] == ["no_link"]
    assert [a for a in rig.actions if isinstance(a, SendCommand)] == []
