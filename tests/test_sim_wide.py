"""The wide world (agent.simulation.mix, `--world wide`): the fault mix with its rare events made
common. Kept apart from tests/test_simulation.py, which the mutation command runs for every engine
mutant: the years below are engine gaps the wide world found, fixed and kept as regressions."""

from __future__ import annotations

from agent.simulation.faults import FaultRates
from agent.simulation.harness import Simulation
from agent.simulation.judge import parse_rules
from agent.simulation.mix import config_for


def test_the_wide_world_is_the_mix_with_its_rare_events_made_common() -> None:
    mix, wide = config_for(6, 30), config_for(6, 30, "wide")
    assert mix.faults == FaultRates()  # the mix keeps faults.py's rates
    assert (wide.times, wide.pauses_per_year, wide.plan_changes_per_year) == (
        mix.times,
        mix.pauses_per_year,
        mix.plan_changes_per_year,
    )
    assert wide.faults == FaultRates(
        jam=6.0,
        power_loss=6.0,
        dispenser_reboot=18.0,
        link_down=24.0,
        wall_jump=12.0,
        pi_reboot=18.0,
        agent_restart=36.0,
    )
    assert (wide.mishaps.roll_defect, wide.mishaps.phantoms) == (0.3, 48.0)
    assert (wide.mishaps.erased_rtc, wide.mishaps.reply_lost) == (0.1, 0.03)
    assert config_for(6, 30, "wide", faults=FaultRates.none()).faults == FaultRates.none()


def test_wide_world_a_dose_cut_unheard_under_a_reader_fault_is_reported_in_time() -> None:
    # seed 33: at 2027-10-08 18:00Z the link drops right after the dispenser took the Dispense;
    # it comes back with READER in the Status's faults; the patient took the dose meanwhile. The
    # Dispense is asked again with its id under the fault (ALREADY_DONE), so R12 holds
    config = config_for(33, 365, "wide", judge_enforce=parse_rules("R12"))
    Simulation(config).run()


def test_wide_world_a_slot_behind_the_tray_is_not_held_for_a_roll_since_replaced() -> None:
    # seed 23: the link is down while a nurse replaces an empty roll whose period has passed;
    # at its return the agent holds 08:00 and 08:30 for the old roll (the one it knew), then
    # hears of the new one and presents 08:00. 08:30 waits behind the tray: its hold must say so,
    # not keep claiming the old roll's period passed until the tray empties
    Simulation(config_for(23, 365, "wide", judge_enforce=parse_rules("R15"))).run()


def test_wide_world_a_roll_period_held_by_a_clock_an_hour_ahead_is_judged_on_that_clock() -> None:
    # seed 131: the synchronised wall clock steps an hour ahead at true 17:37; the roll's last
    # dose is 18:00Z (slot 20:00 local), 37 min past by the agent's clock: held for
    # roll_period_passed, true on the only clock the agent has
    Simulation(config_for(131, 365, "wide", judge_enforce=parse_rules("R15"))).run()


def test_wide_world_a_restart_ends_the_centres_silence() -> None:
    # seed 273: the centre silences the unit while the 20:00 dose lies in the tray; the agent
    # restarts 30 min after the presentation and calls the patient URGENT again (a silence is
    # kept in memory only: a restart calls the patient to the dose, the safe side)
    Simulation(config_for(273, 365, "wide", judge_enforce=parse_rules("R14"))).run()


def test_wide_world_a_discard_refused_busy_does_not_stop_every_later_dose() -> None:
    # seed 13: on 2027-04-18 ~18:03Z a Discard of a stale sachet is answered BUSY (lid open). The
    # engine dropped the pending command but kept the sachet in `RollDesk.discarding`, so
    # `_dispenser_busy()` stayed true: on 2027-04-19 the 08:00 dose, its sachet at the reader of a
    # new roll and nothing in the world against it, was not given (R16 at 06:02Z). Fixed: a
    # Discard that did not go through is no longer waited for (tests/test_engine_discard_refused.py)
    config = config_for(13, 365, "wide", judge_enforce=parse_rules("R16"))
    Simulation(config).run()


def test_wide_world_a_rebooted_pi_tells_dose_not_taken_at_its_time_on_a_trusted_clock() -> None:
    # seed 192: the 21:00 (local) dose is presented at 20:00Z; the Pi reboots ten minutes later
    # and re-times the escalation from the stored presentation time (wall clock, trusted):
    # dose_not_taken at 20:30Z. The synchronised clock the presentation was stamped with ran
    # 11 us behind true time, so the step came 10 us before 30 min of true time; the judge now
    # allows a trusted clock's accuracy (a second), not a microsecond
    Simulation(config_for(192, 365, "wide", judge_enforce=parse_rules("R12"))).run()
