"""SPEC v1.1 §2.7 in the simulator: events the agent never acknowledged are kept for the next
Hello, at most 32, dose outcomes last to go; replies and NAKed events are not kept."""

from __future__ import annotations

import time

from hw.dispenser import DispenserIdentity, DispenserModel
from hw.wire import SimulatorRunner
from protocol.link import Failed
from protocol.messages import (
    ButtonId,
    ButtonPressed,
    CommandResult,
    DoseTaken,
    Message,
    ResultCode,
)


def test_kept_events_are_bounded_and_dose_outcomes_go_last() -> None:
    runner = SimulatorRunner.on_pty(DispenserModel(DispenserIdentity(), lambda: int(time.time())))
    try:
        taken = [DoseTaken(n, n) for n in range(1, 4)]
        buttons = [ButtonPressed(ButtonId.TAKE) for _ in range(40)]
        sent: list[Message] = [taken[0], *buttons[:20], taken[1], *buttons[20:], taken[2]]
        for message in sent:
            runner._keep(Failed(0, message, "timeout"))
        runner._keep(Failed(0, CommandResult(5, ResultCode.OK, ""), "timeout"))  # a reply
        runner._keep(Failed(0, DoseTaken(9, 9), "UNKNOWN_TYPE"))  # NAKed: final
        kept = runner._kept
        assert len(kept) == 32
        assert [m for m in kept if isinstance(m, DoseTaken)] == taken
        assert sum(isinstance(m, ButtonPressed) for m in kept) == 29
    finally:
        runner.stop()
