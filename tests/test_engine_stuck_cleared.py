"""A dose reported stuck in the tray of a dispenser without a retain bin, and the pause
(SAFETY.md H3, H12; judge R12): the `dose_stuck_in_tray` condition is one condition, so a dose
reported stuck that is no longer in the tray hides the next dose left there. The engine must
never raise it for a dose the dispenser has shown gone, and must clear it when the dose leaves.

Year seed 94 of the bin-less model: a travel sachet cut while the link dropped (its reply and
the packer's DoseTaken lost) was answered ALREADY_DONE and a Status showed the tray empty; when
the sachet's collect time ran out the engine still reported it stuck, and a carer sent for it
found nothing to lift out. Four days later the next dose was left in the tray unreported.

After a restart the stored state names the doses left in the tray (`left_in_tray`), but what
was stuck or owed to the bin lived in memory only: the next dose's hold said the bare
`tray_occupied`, and on a dispenser with a bin a dose owed to a full bin never went back.

Dates are in March 2026, Europe/Oslo is UTC+1: local 08:00 is 07:00 UTC.
"""

from __future__ import annotations

from datetime import timedelta

from test_engine import ALL_FEATURES, Rig, daily, utc
from test_engine_interval import restart

from agent.engine.types import (
    CommandOutcome,
    EngineEvent,
    LinkDown,
    LinkUp,
    Outcome,
    PauseWindow,
    StartPause,
)
from protocol.messages import Dispense, FaultChanged, FaultCode, Feature, ResultCode, Retain

NO_BIN = ALL_FEATURES & ~int(Feature.RETAIN_BIN) & ~int(Feature.BIN_LEVEL)
DAY_1, DAY_2 = "2026-03-02T08:00", "2026-03-03T08:00"
GRACE_OVER = timedelta(minutes=61)  # grace 60 min: missed, left in the bin-less tray


def binless_rig() -> Rig:
    """08:00 daily on a dispenser without a retain bin; a week of sachets."""
    rig = Rig(
        daily("08:00"),
        sachet_times=[utc(2026, 3, day, 7, 0) for day in range(2, 10)],
        features=NO_BIN,
    )
    rig.install()
    return rig


def stuck_ids(rig: Rig) -> list[object]:
    return [e.fields["dispense_id"] for e in rig.events("dose_stuck_in_tray")]


def cleared_ids(rig: Rig) -> list[object]:
    return [e.fields["dispense_id"] for e in rig.events("dose_stuck_in_tray_cleared")]


def held(rig: Rig) -> list[EngineEvent]:
    return rig.events("dose_held")


def missed_on(rig: Rig, day: int) -> int:
    """The dose of `day` March is presented and not taken: it stays in the tray."""
    rig.run_until(utc(2026, 3, day, 7, 0) + GRACE_OVER)
    assert rig.outcome_of(f"2026-03-0{day}T08:00").outcome is Outcome.MISSED
    in_tray = rig.dispenser.tray
    assert in_tray is not None
    return in_tray


def test_a_travel_sachet_seen_gone_by_a_status_is_never_reported_stuck() -> None:
    """Seed 94: the trip's sachet is cut while the link drops; the packer lifts it out unheard.
    After the link is back the Dispense asked again is ALREADY_DONE and the Status shows the
    tray empty. When the sachet's collect time runs out it is not in the tray: said so
    (dose_not_in_tray), never dose_stuck_in_tray. The next dose left in the tray is reported."""
    rig = binless_rig()
    rig.run_until(utc(2026, 3, 2, 7, 5))
    rig.take()  # 2 March taken at home
    trip = PauseWindow(
        "trip", utc(2026, 3, 2, 12, 0), utc(2026, 3, 4, 5, 0), reason="travel", take_along=True
    )
    rig.feed(StartPause(trip))
    rig.auto = False  # the world answers by hand: the Dispense's reply is lost
    rig.run_until(trip.start_utc)
    [send] = [s for s in rig.outbox if isinstance(s.command, Dispense)]
    rig.outbox.clear()
    rig.dispenser.handle(send.command)  # cut and presented: reply and DosePresented lost
    travel_id = rig.dispenser.tray
    assert travel_id is not None
    rig.feed(CommandOutcome(send.correlation, None, "link_down"))
    rig.feed(LinkDown("reply lost"))
    rig.dispenser.tray = None  # packed for the trip; its DoseTaken is lost with the link
    rig.run_for(timedelta(minutes=2))
    rig.feed(LinkUp(rig.caps))
    rig.insert_roll()  # announced after Capabilities, before the reply to GetStatus
    rig.auto = True
    rig.pump()  # Status (tray empty); the Dispense asked again: ALREADY_DONE; Status
    assert travel_id in rig.dispenser.executed
    rig.run_until(trip.start_utc + timedelta(hours=1))  # its collect time (10 min) ran out
    assert rig.outcome_of(DAY_2).outcome is Outcome.SKIPPED_PAUSED
    assert stuck_ids(rig) == []
    assert rig.events("dose_left_in_tray") == []
    assert [e.fields["dispense_id"] for e in rig.events("dose_not_in_tray")] == [travel_id]
    assert travel_id not in [d.dispense_id for d in rig.engine.state.left_in_tray]
    left = missed_on(rig, 4)
    assert stuck_ids(rig) == [left]


def test_a_dose_in_the_tray_as_a_pause_starts_and_lifted_out_while_away_is_cleared() -> None:
    """The dose of 2 March is presented and the patient leaves before taking it: the pause
    catches it in the tray (left there, reported stuck); a carer lifts it out during the pause.
    The condition clears with that dose's id, and the next dose left in the tray is reported."""
    rig = binless_rig()
    rig.run_until(utc(2026, 3, 2, 7, 20))
    first = rig.dispenser.tray
    assert first is not None
    rig.feed(StartPause(PauseWindow("hospital", utc(2026, 3, 2, 7, 30), utc(2026, 3, 2, 12, 0))))
    rig.run_until(utc(2026, 3, 2, 7, 31))
    assert rig.outcome_of(DAY_1).outcome is Outcome.SKIPPED_PAUSED
    assert stuck_ids(rig) == [first]
    assert [e.fields["dispense_id"] for e in rig.events("dose_left_in_tray")] == [first]
    rig.run_until(utc(2026, 3, 2, 10, 0))
    rig.take()  # the carer the centre sent
    assert cleared_ids(rig) == [first]
    left = missed_on(rig, 3)
    assert stuck_ids(rig) == [first, left]


def test_a_dose_left_as_a_pause_starts_and_lifted_out_unheard_is_cleared_by_the_status() -> None:
    """As above, but the carer lifts it out while the link is down (its DoseTaken lost): the
    Status after the link is back shows the tray empty, and that clears the condition."""
    rig = binless_rig()
    rig.run_until(utc(2026, 3, 2, 7, 20))
    first = rig.dispenser.tray
    rig.feed(StartPause(PauseWindow("hospital", utc(2026, 3, 2, 7, 30), utc(2026, 3, 2, 12, 0))))
    rig.run_until(utc(2026, 3, 2, 9, 0))
    assert stuck_ids(rig) == [first]
    rig.feed(LinkDown("blip"))
    rig.dispenser.tray = None
    rig.feed(LinkUp(rig.caps))
    rig.insert_roll()
    assert cleared_ids(rig) == [first]
    left = missed_on(rig, 3)
    assert stuck_ids(rig) == [first, left]


# --- after a restart: what was stuck or owed to the bin lived in memory only -----------------


def test_after_a_restart_a_dose_left_in_a_binless_tray_is_named_by_the_next_hold() -> None:
    """The stored state names the dose left in the tray (`left_in_tray`); the first Status after
    the restart finds the tray occupied: the next dose is held `dose_stuck_in_tray` naming it,
    not the bare `tray_occupied`, and the raised condition is not published a second time."""
    rig = binless_rig()
    first = missed_on(rig, 2)
    restart(rig)
    rig.run_until(utc(2026, 3, 3, 7, 5))
    assert [(e.fields["reason"], e.fields.get("stuck_dispense_id")) for e in held(rig)] == [
        ("dose_stuck_in_tray", first)
    ]
    assert held(rig)[0].fields["stuck_reason"] == "no_retain_bin"
    assert stuck_ids(rig) == [first]
    rig.take()  # the carer
    assert cleared_ids(rig) == [first]


def test_after_a_restart_a_dose_owed_to_a_full_bin_goes_back_once_the_bin_has_room() -> None:
    """On a dispenser with a bin: the missed dose's Retain is refused (bin full), the agent
    restarts, a nurse empties the bin. The dose goes back into the bin and the next dose is
    given (before the fix it stayed in the tray and every later dose was held)."""
    rig = Rig(daily("08:00"), sachet_times=[utc(2026, 3, day, 7, 0) for day in range(2, 10)])
    rig.dispenser.forced[Retain] = ResultCode.BIN_FULL
    rig.install()
    first = missed_on(rig, 2)
    assert stuck_ids(rig) == [first]
    restart(rig)
    rig.dispenser.forced.pop(Retain)
    rig.msg(FaultChanged(FaultCode.BIN_FULL, False, "bin emptied"))
    assert rig.dispenser.tray is None
    assert [e.fields["dispense_id"] for e in rig.events("dose_retained")] == [first]
    assert cleared_ids(rig) == [first]
    rig.run_until(utc(2026, 3, 3, 7, 5))
    assert rig.dispenser.tray is not None
    assert [b.slot_id for b in rig.begins()] == [DAY_1, DAY_2]
    assert held(rig) == []
