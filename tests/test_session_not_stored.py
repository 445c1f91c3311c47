"""`NotStored` from on_message: the frame stays unacknowledged (retransmits too) and the link stays
up, so the agent can still command the dispenser. Same rig as tests/test_session.py: the session
on a real pty against a fake dispenser built on the real link layer."""

from __future__ import annotations

from pathlib import Path

from test_session import Changes, rig, run

from drivers.session import NotStored
from protocol.messages import (
    AlertPattern,
    ButtonId,
    ButtonPressed,
    CommandResult,
    LidChanged,
    Message,
    ResultCode,
    SetAlert,
)


def test_not_stored_leaves_the_frame_unacked_and_keeps_the_link_up(tmp_path: Path) -> None:
    handled: list[Message] = []
    changes_box: list[Changes] = []

    def store_refuses_buttons(message: Message) -> None:
        handled.append(message)
        changes_box[0].notify()
        if isinstance(message, ButtonPressed):
            raise NotStored("store refused the commit")

    async def main() -> None:
        async with rig(tmp_path, on_message=store_refuses_buttons, request_timeout_s=10.0) as r:
            changes_box.append(r.changes)
            await r.changes.until(lambda: r.session.connected)
            await r.changes.until(lambda: len(r.peer.acks_in) == 1)  # the ACK of Capabilities
            refused_token = r.peer.send(ButtonPressed(ButtonId.HELP))
            [refused] = [f for f in r.peer.data_out if f.code == ButtonPressed.TYPE_ID]

            # The agent still commands the dispenser. Its reply waits behind the unacknowledged
            # event (stop-and-wait), so it arrives only once the dispenser gave up on the event.
            reply = await r.session.request(SetAlert(0, AlertPattern.FAULT))
            assert isinstance(reply, CommandResult)
            assert reply.result is ResultCode.OK
            assert r.peer.endpoint.stats.failures == 1
            assert r.peer.endpoint.stats.retransmits >= 1
            assert refused_token not in r.peer.delivered
            acked = {(ack.session, ack.seq) for ack in r.peer.acks_in}
            assert (refused.session, refused.seq) not in acked
            assert handled == [ButtonPressed(ButtonId.HELP)]  # retransmits are not offered again

            stats = r.session.stats
            assert stats.not_stored == 1
            assert stats.acks_withheld >= 1
            assert stats.handler_errors == 0
            assert r.recorder.downs() == 0
            assert r.recorder.ups() == 1

            # The next event is taken and acknowledged as usual.
            lid_token = r.peer.send(LidChanged(True))
            await r.changes.until(lambda: lid_token in r.peer.delivered)
            assert handled[-1] == LidChanged(True)
            assert r.session.connected

    run(main)
