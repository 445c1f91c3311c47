"""SPEC v1.1 §4.2: `CommandResult OK` for a Dispense comes at acceptance and `DosePresented` up to
the movement deadline (30 s) later. A firmware doing exactly that must cause neither a
`command_failed:reply_timeout` hold nor an `unexpected_dispenser_event`: the engine waits for the
presentation of an accepted dispense however long the cut takes."""

from __future__ import annotations

from datetime import timedelta

from test_engine import Rig, morning_rig, utc

from agent.engine.types import CommandOutcome
from protocol.messages import Dispense, Message

DUE = utc(2026, 3, 2, 7, 0)
SLOT = "2026-03-02T08:00"
MOVEMENT_DEADLINE = timedelta(seconds=30)  # SPEC 2.8


def answer_holding_the_cut(rig: Rig) -> list[Message]:
    """Answer every queued command at once; the events of a Dispense (its movement) are held."""
    held: list[Message] = []
    while rig.outbox:
        send = rig.outbox.pop(0)
        reply, follow = rig.dispenser.handle(send.command)
        rig.feed(CommandOutcome(send.correlation, reply))
        if isinstance(send.command, Dispense):
            held += follow
        else:
            for message in follow:
                rig.msg(message)
    return held


def test_a_dose_presented_at_the_movement_deadline_after_the_ok_is_an_ordinary_dose() -> None:
    rig = morning_rig()
    rig.install()
    rig.auto = False
    rig.run_until(DUE)
    movement = answer_holding_the_cut(rig)
    assert movement, "the Dispense was not sent at the due time"
    step = timedelta(seconds=5)
    waited = timedelta(0)
    while waited < MOVEMENT_DEADLINE:  # the engine ticks and asks for status meanwhile
        rig.run_for(step)
        waited += step
        movement += answer_holding_the_cut(rig)
    for message in movement:
        rig.msg(message)
    rig.auto = True
    rig.pump()
    assert "unexpected_dispenser_event" not in rig.kinds()
    assert "dose_held" not in rig.kinds()
    assert [e.fields["sachet_index"] for e in rig.events("dose_presented")] == [0]
    rig.take()
    assert rig.outcome_of(SLOT).outcome.value == "taken"
