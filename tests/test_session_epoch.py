"""Replies meant for a previous agent process (hazard #11): the dispenser answers the request a
killed agent sent last, and retransmits that reply to the agent's successor. Every req_id carries
the sending process's epoch (`DispenserSession(req_epoch=...)`), so the successor recognises such a
reply, drops it quietly (counted, logged at debug) and never takes it for the answer to a request
of its own."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from pathlib import Path

import pytest
from test_session import (
    AGENT_LINK,
    FAST_BACKOFF,
    Changes,
    FakeDispenser,
    Recorder,
    run,
    standard_answer,
)

from drivers import session as dsession
from drivers.serial_port import SerialTransport
from drivers.session import DispenserSession
from protocol.messages import (
    AlertPattern,
    CommandResult,
    Dispense,
    Hello,
    Message,
    ResultCode,
    SetAlert,
)


def new_session(path: Path, recorder: Recorder, epoch: int) -> DispenserSession:
    return DispenserSession(
        lambda: SerialTransport(str(path)),
        on_message=recorder.on_message,
        on_link=recorder.on_link,
        link_config=AGENT_LINK,
        backoff=FAST_BACKOFF,
        rng=random.Random(epoch),
        req_epoch=epoch,
    )


def test_a_reply_to_the_previous_process_is_dropped_and_never_taken_for_ours(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    held: list[Message] = []

    def hold_commands(message: Message) -> Message | None:
        if isinstance(message, Hello):
            return standard_answer(message)
        held.append(message)  # answered later, by hand
        return None

    async def main() -> None:
        changes = Changes()
        link_path = tmp_path / "ttyDISPENSER"
        peer = FakeDispenser(link_path, changes, hold_commands)
        peer.plug()
        try:
            first_rec, second_rec = Recorder(changes), Recorder(changes)
            first = new_session(link_path, first_rec, epoch=4)
            task = asyncio.create_task(first.run())
            await changes.until(lambda: first.connected)
            request = asyncio.create_task(first.request(Dispense(0, 7, 3)))
            await changes.until(lambda: len(held) == 1)
            task.cancel()  # the agent process dies with its Dispense unanswered
            request.cancel()
            for t in (task, request):
                with contextlib.suppress(asyncio.CancelledError, dsession.SessionError):
                    await t
            second = new_session(link_path, second_rec, epoch=5)
            task = asyncio.create_task(second.run())
            try:
                await changes.until(lambda: second.connected)
                ours = asyncio.create_task(second.request(SetAlert(0, AlertPattern.REMINDER)))
                await changes.until(lambda: len(held) == 2)
                dispense, set_alert = held
                assert isinstance(dispense, Dispense)
                assert isinstance(set_alert, SetAlert)
                # The dispenser's reply to the dead agent reaches its successor first.
                with caplog.at_level(logging.DEBUG, logger="drivers.session"):
                    peer.send(CommandResult(dispense.req_id, ResultCode.OK, "for the old one"))
                    peer.send(CommandResult(set_alert.req_id, ResultCode.OK, "for us"))
                    reply = await ours
                assert isinstance(reply, CommandResult)
                assert reply.detail == "for us"
                assert second_rec.messages == []  # not an event for the engine
                assert second.stats.stale_replies == 1
                assert second.stats.orphan_replies == 0
                assert any("previous agent process" in r.message for r in caplog.records)
                assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
                assert dispense.req_id >> 12 == 4
                assert set_alert.req_id >> 12 == 5
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            peer.unplug()

    run(main)


def test_req_ids_of_one_process_keep_its_epoch_and_wrap_within_it() -> None:
    session = DispenserSession(
        lambda: SerialTransport("/nonexistent"),
        on_message=lambda m: None,
        on_link=lambda r: None,
        req_epoch=15,
    )
    ids = [session._allocate_req_id() for _ in range(4096)]
    assert all(i >> 12 == 15 for i in ids)
    assert len(set(ids)) == 4095  # 4095 ids per epoch, then they wrap
    assert 0 not in ids


def test_epochs_of_consecutive_starts_differ() -> None:
    epochs = [dsession.req_epoch_for(start) for start in range(1, 100)]
    assert all(1 <= e <= 15 for e in epochs)
    assert all(a != b for a, b in itertools.pairwise(epochs))
    with pytest.raises(ValueError, match="req_epoch"):
        DispenserSession(
            lambda: SerialTransport("/nonexistent"),
            on_message=lambda m: None,
            on_link=lambda r: None,
            req_epoch=16,
        )
