"""A sachet at the reader that no slot can be given is reported HIGH when it reaches the reader,
not hours later when the dose behind it is refused: the response centre sends a nurse to take it
off while the patient's next doses can still be saved (SAFETY.md H2; the simulation's judge,
R8.sachet_unusable, found the untimed sachet reported only at the refused dose's deadline).

Engine tests on the virtual clock with the scripted dispenser of test_engine.py.
"""

from __future__ import annotations

from test_engine import OTHER, PATIENT, Rig, daily, utc

from agent.engine.types import Outcome
from protocol.messages import SachetRead

SCHEDULE = daily("08:00", "20:00")  # 07:00 and 19:00 UTC in March


def untimed_rig() -> Rig:
    rig = Rig(SCHEDULE, sachet_times=[utc(2026, 3, 2, 7), utc(2026, 3, 2, 19)])
    rig.install(roll=False)
    rig.msg(rig.dispenser.roll_message())
    return rig


def test_a_sachet_printed_without_its_time_is_reported_high_when_it_reaches_the_reader() -> None:
    rig = untimed_rig()
    rig.msg(SachetRead("R1", 0, 0, PATIENT))  # the print carries no intended time
    [report] = rig.events("sachet_rejected")
    assert report.priority.value == "high"
    assert (report.fields["roll_id"], report.fields["index"]) == ("R1", 0)
    assert report.fields["reason"] == "sachet_time_unknown"
    # read again (a reconnect announces it again): one report per sachet
    rig.msg(SachetRead("R1", 0, 0, PATIENT))
    assert len(rig.events("sachet_rejected")) == 1
    # and it is never given: the 08:00 dose behind it is refused with the reason
    rig.run_until(utc(2026, 3, 2, 8, 30))
    assert rig.dispenser.dispensed == []
    outcome = rig.outcome_of("2026-03-02T08:00")
    assert (outcome.outcome, outcome.reason) == (Outcome.REFUSED, "sachet_time_unknown")


def test_a_timed_sachet_of_the_patient_is_not_rejected() -> None:
    rig = untimed_rig()
    rig.msg(SachetRead("R1", 0, int(utc(2026, 3, 2, 7).timestamp()), PATIENT))
    assert rig.events("sachet_rejected") == []


def test_a_sachet_naming_another_patient_is_reported_as_before() -> None:
    rig = untimed_rig()
    rig.msg(SachetRead("R1", 0, int(utc(2026, 3, 2, 7).timestamp()), OTHER))
    [report] = rig.events("sachet_rejected")
    assert report.fields["reason"] == "sachet_foreign"
