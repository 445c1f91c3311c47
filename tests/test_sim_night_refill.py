"""The year simulation sees a dose due behind a dose in the tray with the roll empty (H4).

The mix's night doses (agent.simulation.mix.NIGHT_DOSES, 00:10 and 23:20) have the nurse's
refill (at the start's 00:07 local) between them: seed 11 runs out of sachets at the 23:20 dose,
which the patient leaves in the tray, and a late nurse leaves the 00:10 dose due with the roll
empty. No HIGH named it until the 23:20 dose was taken back at its slot's end (R8.roll_empty,
2027-07-17 22:20Z). Now it is held HIGH (VKP 3.7) at its due time
(tests/test_engine_empty_behind_tray.py). The mix's night doses were 00:05 and 23:15 before, to
keep that case out of the 200-seed run.
"""

from __future__ import annotations

from dataclasses import replace

from agent.simulation.harness import Simulation
from agent.simulation.judge import parse_rules
from agent.simulation.mix import NIGHT_DOSES, config_for


def test_a_night_dose_behind_a_dose_in_the_tray_with_the_roll_empty_is_reported_in_time() -> None:
    rule = "R8.roll_empty"
    config = replace(config_for(11, 365), judge_enforce=parse_rules(rule))
    assert config.times == NIGHT_DOSES  # the refill at 00:07 falls between 23:20 and 00:10
    result = Simulation(config).run()  # an enforced violation raises InvariantViolation
    assert rule not in result.judge_findings
