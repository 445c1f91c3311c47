"""A dispenser fault told to the centre before an agent restart and gone by the first Status
after it is reported cleared (year simulation seed 91: the bin full when the Pi rebooted, emptied
by the nurse while it was down, `fault_bin_full` never cleared)."""

from __future__ import annotations

from datetime import timedelta

from test_engine import Rig, morning_rig, utc

from agent.engine.engine import EngineState
from agent.engine.types import LinkDown, LinkUp
from protocol.messages import FaultCode


def test_a_fault_raised_before_a_restart_and_gone_after_it_is_cleared() -> None:
    rig = morning_rig()
    rig.install()
    rig.dispenser.faults.add(FaultCode.BIN_FULL)
    rig.feed(LinkDown("timeout"))
    rig.feed(LinkUp(rig.caps))  # its Status names the full bin
    assert rig.kinds().count("fault_bin_full") == 1
    state = EngineState.from_json(rig.engine.state.to_json())
    # the agent restarts; meanwhile the nurse emptied the bin
    rig2 = Rig(rig.schedule, start=utc(2026, 3, 2, 5, 30), state=state)
    rig2.dispenser = rig.dispenser
    rig2.dispenser.faults.clear()
    rig2.feed(LinkUp(rig2.caps))
    rig2.run_for(timedelta(minutes=1))
    assert rig2.kinds().count("fault_bin_full_cleared") == 1


def test_a_fault_present_before_and_after_a_restart_is_not_raised_again() -> None:
    rig = morning_rig()
    rig.install()
    rig.dispenser.faults.add(FaultCode.BIN_FULL)
    rig.feed(LinkDown("timeout"))
    rig.feed(LinkUp(rig.caps))
    state = EngineState.from_json(rig.engine.state.to_json())
    rig2 = Rig(rig.schedule, start=utc(2026, 3, 2, 5, 30), state=state)
    rig2.dispenser = rig.dispenser
    rig2.feed(LinkUp(rig2.caps))
    rig2.run_for(timedelta(minutes=1))
    assert "fault_bin_full" not in rig2.kinds()
    assert "fault_bin_full_cleared" not in rig2.kinds()
    rig2.dispenser.faults.clear()
    rig2.feed(LinkDown("timeout"))
    rig2.feed(LinkUp(rig2.caps))
    assert rig2.kinds().count("fault_bin_full_cleared") == 1
