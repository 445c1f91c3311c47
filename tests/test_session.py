"""DispenserSession over a real pty against a small fake dispenser built on the real link layer.

The fake dispenser owns the pty master (what the dispenser's UART would be), the session opens the
slave through a symlink in tmp_path (what /dev/serial/by-id/... is), so "unplug" and "replug" are
closing the master and putting a new pty behind the same symlink.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drivers.retry import RetryPolicy
from drivers.serial_port import SerialTransport
from drivers.session import (
    DispenserSession,
    LinkLost,
    LinkSendFailed,
    NotConnected,
    RequestTimeout,
    SessionDown,
    SessionReport,
    SessionUp,
)
from drivers.transport import Transport
from protocol import PROTOCOL_VERSION
from protocol.framing import Frame, FrameDecoder, FrameKind
from protocol.link import Delivered, LinkConfig, LinkEndpoint, LinkEvent, Received
from protocol.messages import (
    AlertPattern,
    ButtonId,
    ButtonPressed,
    Capabilities,
    CommandResult,
    Direction,
    Dispense,
    DosePresented,
    GetStatus,
    Hello,
    LidChanged,
    Message,
    ResultCode,
    SetAlert,
    Status,
)

FAST_BACKOFF = RetryPolicy(initial_delay_s=0.01, max_delay_s=0.05, attempt_timeout_s=1.0)
# The agent gives a frame up after about 2 s without an ACK: long enough for a loaded machine's
# fake dispenser thread to answer (0.2 s was not, under a CPU burner), short of the request timeout.
AGENT_LINK = LinkConfig(ack_timeout_s=0.1, max_retransmits=20)
# The dispenser keeps retransmitting long enough to outlive an agent reconnect.
DISPENSER_LINK = LinkConfig(ack_timeout_s=0.05, max_retransmits=40)
CAPS = Capabilities(0, PROTOCOL_VERSION, "FakeDispenser", "SN-0001", "1.2.3", True, True, 0, 0x1F)


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 60.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await coro_fn()

    asyncio.run(bounded())


class Changes:
    """Wakes waiters whenever the peer or the session records something: no polling sleeps."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def until(self, predicate: Callable[[], bool], within_s: float = 5.0) -> None:
        async with asyncio.timeout(within_s):
            while not predicate():
                self._event.clear()
                await self._event.wait()


Answer = Callable[[Message], Message | None]


def standard_answer(message: Message) -> Message | None:
    if isinstance(message, Hello):
        return dataclasses.replace(CAPS, req_id=message.req_id)
    if isinstance(message, GetStatus):
        return Status(
            message.req_id, "R1", 10, 4, False, False, False, True, 100, AlertPattern.OFF, 0
        )
    if isinstance(message, Dispense | SetAlert):
        return CommandResult(message.req_id, ResultCode.OK, "")
    return None


@dataclass
class FakeDispenser:
    """The dispenser end: a LinkEndpoint(TO_AGENT) on the pty master, driven by the test's loop."""

    link_path: Path
    changes: Changes
    answer: Answer = standard_answer
    session_id: int = 0x2222
    deaf: bool = False  # drop every byte from the agent (its ACKs and commands)
    received: list[Message] = field(default_factory=list)
    acks_in: list[Frame] = field(default_factory=list)
    data_out: list[Frame] = field(default_factory=list)
    delivered: set[int] = field(default_factory=set)
    endpoint: LinkEndpoint = field(init=False)
    master: int = -1
    _slave: int = -1
    _timer: asyncio.TimerHandle | None = None
    _in_decoder: FrameDecoder = field(default_factory=FrameDecoder)
    _out_decoder: FrameDecoder = field(default_factory=FrameDecoder)

    def plug(self) -> None:
        self.master, self._slave = os.openpty()  # the test keeps a slave fd: no EIO between opens
        os.set_blocking(self.master, False)
        with contextlib.suppress(FileNotFoundError):
            self.link_path.unlink()
        self.link_path.symlink_to(os.ttyname(self._slave))
        self.endpoint = LinkEndpoint(Direction.TO_AGENT, self.session_id, DISPENSER_LINK)
        asyncio.get_running_loop().add_reader(self.master, self._on_readable)

    def unplug(self) -> None:
        if self.master < 0:
            return
        asyncio.get_running_loop().remove_reader(self.master)
        if self._timer is not None:
            self._timer.cancel()
        os.close(self.master)
        os.close(self._slave)
        self.master = -1
        self.link_path.unlink()

    def send(self, message: Message) -> int:
        token, events = self.endpoint.send(message, time.monotonic())
        self._after(events)
        return token

    def write_raw(self, data: bytes) -> None:
        os.write(self.master, data)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except BlockingIOError:
            return
        self.acks_in += [f for f in self._in_decoder.feed(data) if f.kind is FrameKind.ACK]
        if self.deaf:
            return
        self._after(self.endpoint.receive_bytes(data, time.monotonic()))

    def _on_deadline(self) -> None:
        self._timer = None
        self._after(self.endpoint.poll(time.monotonic()))

    def _after(self, events: list[LinkEvent]) -> None:
        for event in events:
            if isinstance(event, Received):
                self.received.append(event.message)
                reply = self.answer(event.message)
                if reply is not None:
                    self.endpoint.send(reply, time.monotonic())
            elif isinstance(event, Delivered):
                self.delivered.add(event.token)
        out = self.endpoint.take_outgoing()
        if out:
            self.data_out += [f for f in self._out_decoder.feed(out) if f.kind is FrameKind.DATA]
            os.write(self.master, out)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.endpoint.next_deadline()
        if deadline is not None:
            delay = max(0.0, deadline - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_deadline)
        self.changes.notify()


@dataclass
class Recorder:
    changes: Changes
    messages: list[Message] = field(default_factory=list)
    links: list[SessionReport] = field(default_factory=list)

    def on_message(self, message: Message) -> None:
        self.messages.append(message)
        self.changes.notify()

    def on_link(self, report: SessionReport) -> None:
        self.links.append(report)
        self.changes.notify()

    def ups(self) -> int:
        return sum(isinstance(r, SessionUp) for r in self.links)

    def downs(self) -> int:
        return sum(isinstance(r, SessionDown) for r in self.links)


@dataclass
class Rig:
    peer: FakeDispenser
    recorder: Recorder
    session: DispenserSession
    changes: Changes
    opens: list[str]  # one entry per transport the session asked for (each connect attempt)


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path,
    *,
    answer: Answer = standard_answer,
    request_timeout_s: float = 10.0,
    on_message: Callable[[Message], None] | None = None,
    transport_factory: Callable[[str], Transport] = SerialTransport,
    plugged: bool = True,
) -> AsyncIterator[Rig]:
    changes = Changes()
    link_path = tmp_path / "ttyDISPENSER"
    peer = FakeDispenser(link_path, changes, answer)
    recorder = Recorder(changes)
    opens: list[str] = []

    def new_transport() -> Transport:
        opens.append(str(link_path))
        changes.notify()
        return transport_factory(str(link_path))

    session = DispenserSession(
        new_transport,
        on_message=on_message or recorder.on_message,
        on_link=recorder.on_link,
        link_config=AGENT_LINK,
        request_timeout_s=request_timeout_s,
        backoff=FAST_BACKOFF,
        rng=random.Random(7),
    )
    if plugged:
        peer.plug()
    task = asyncio.create_task(session.run(), name="session-under-test")
    try:
        yield Rig(peer, recorder, session, changes, opens)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        peer.unplug()


# --- handshake and requests -------------------------------------------------------------------


def test_handshake_reports_link_up_with_the_dispenser_capabilities(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path) as r:
            await r.changes.until(lambda: r.recorder.ups() == 1)
            hello = r.peer.received[0]
            assert isinstance(hello, Hello)
            assert hello.protocol_version == PROTOCOL_VERSION
            assert hello.req_id != 0
            caps = dataclasses.replace(CAPS, req_id=hello.req_id)
            assert r.recorder.links == [SessionUp(caps)]
            assert r.session.connected
            assert r.session.capabilities == caps

    run(main)


def test_request_before_link_up_is_not_connected(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path, plugged=False) as r:
            with pytest.raises(NotConnected):
                await r.session.request(GetStatus(0))
            await r.changes.until(lambda: len(r.opens) >= 3)
            assert r.session.stats.connect_failures >= 2
            assert r.recorder.links == [SessionDown(r.recorder.links[0].reason)]  # type: ignore[union-attr]

    run(main)


def test_two_outstanding_requests_are_matched_by_req_id(tmp_path: Path) -> None:
    held: list[Message] = []
    peer_box: list[FakeDispenser] = []

    def answer_both_in_reverse(message: Message) -> Message | None:
        if isinstance(message, Hello):
            return standard_answer(message)
        held.append(message)
        if len(held) == 2:  # both requests are waiting: answer the second one first
            status, dispense = held[1], held[0]
            assert isinstance(dispense, Dispense)
            assert isinstance(status, GetStatus)
            peer_box[0].send(standard_answer(status))  # type: ignore[arg-type]
            return CommandResult(dispense.req_id, ResultCode.OK, "presented")
        return None

    async def main() -> None:
        async with rig(tmp_path, answer=answer_both_in_reverse) as r:
            peer_box.append(r.peer)
            await r.changes.until(lambda: r.session.connected)
            result, status = await asyncio.gather(
                r.session.request(Dispense(0, dispense_id=7, sachet_index=3)),
                r.session.request(GetStatus(0)),
            )
            assert isinstance(result, CommandResult)
            assert result.detail == "presented"
            assert isinstance(status, Status)
            dispense = held[0]
            assert isinstance(dispense, Dispense)
            assert (dispense.dispense_id, dispense.sachet_index) == (7, 3)
            assert result.req_id == dispense.req_id
            assert status.req_id == held[1].req_id != dispense.req_id  # type: ignore[union-attr]
            assert r.recorder.messages == []  # replies are not events

    run(main)


def test_already_done_is_returned_unchanged_for_the_engine_to_judge(tmp_path: Path) -> None:
    executed: set[int] = set()

    def idempotent(message: Message) -> Message | None:
        if isinstance(message, Dispense):
            code = ResultCode.ALREADY_DONE if message.dispense_id in executed else ResultCode.OK
            executed.add(message.dispense_id)
            return CommandResult(message.req_id, code, "")
        return standard_answer(message)

    async def main() -> None:
        async with rig(tmp_path, answer=idempotent) as r:
            await r.changes.until(lambda: r.session.connected)
            first = await r.session.request(Dispense(0, 42, 1))
            again = await r.session.request(Dispense(0, 42, 1))
            assert isinstance(first, CommandResult)
            assert first.result is ResultCode.OK
            assert isinstance(again, CommandResult)
            assert again.result is ResultCode.ALREADY_DONE
            assert again.req_id != first.req_id

    run(main)


def test_request_without_reply_times_out_and_the_late_reply_reaches_on_message(
    tmp_path: Path,
) -> None:
    silent: list[Message] = []

    def never_reply(message: Message) -> Message | None:
        if isinstance(message, Hello):
            return standard_answer(message)
        silent.append(message)
        return None

    async def main() -> None:
        async with rig(tmp_path, answer=never_reply, request_timeout_s=0.3) as r:
            await r.changes.until(lambda: r.session.connected)
            with pytest.raises(RequestTimeout):
                await r.session.request(SetAlert(0, AlertPattern.URGENT))
            assert r.session.stats.timeouts == 1
            late = CommandResult(silent[0].req_id, ResultCode.OK, "late")  # type: ignore[union-attr]
            r.peer.send(late)
            await r.changes.until(lambda: late in r.recorder.messages)
            assert r.session.stats.orphan_replies == 1
            assert r.session.connected  # a slow dispenser is not a dead link

    run(main)


def test_command_never_acknowledged_fails_and_the_silent_line_is_opened_again(
    tmp_path: Path,
) -> None:
    """A line that swallows frames without a hangup (a cut wire, hung firmware): the command
    fails when the link gives up (not at the request timeout), the link is reported down as
    silent, and a new Hello brings it back once the dispenser hears again."""

    async def main() -> None:
        async with rig(tmp_path) as r:
            await r.changes.until(lambda: r.session.connected)
            r.peer.deaf = True
            with pytest.raises(LinkSendFailed) as failure:
                await r.session.request(Dispense(0, 9, 2))
            assert failure.value.reason == "timeout"
            # the link gave up (LinkSendFailed), not the 10 s request timeout (RequestTimeout)
            assert r.session.stats.send_failures == 1
            await r.changes.until(lambda: r.recorder.downs() == 1)
            down = r.recorder.links[1]
            assert isinstance(down, SessionDown)
            assert "line silent" in down.reason
            r.peer.deaf = False
            await r.changes.until(lambda: r.recorder.ups() == 2)
            assert [type(x) for x in r.recorder.links] == [SessionUp, SessionDown, SessionUp]

    run(main)


# --- unsolicited events and acknowledge-after-commit -------------------------------------------


def test_event_reaches_on_message_once_although_the_dispenser_retransmits(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path) as r:
            await r.changes.until(lambda: r.session.connected)
            r.peer.deaf = True  # the agent's ACK gets lost: the dispenser must resend
            token = r.peer.send(ButtonPressed(ButtonId.TAKE))
            await r.changes.until(lambda: r.peer.endpoint.stats.retransmits >= 2)
            r.peer.deaf = False
            await r.changes.until(lambda: token in r.peer.delivered)
            assert r.recorder.messages == [ButtonPressed(ButtonId.TAKE)]
            stats = r.session.stats
            assert stats.link is not None
            assert stats.link.duplicates >= 1

    run(main)


def test_a_frame_sent_twice_on_the_wire_is_delivered_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path) as r:
            await r.changes.until(lambda: r.session.connected)
            token = r.peer.send(LidChanged(open=True))
            r.peer.write_raw(r.peer.data_out[-1].encode())  # the same frame again, as is
            await r.changes.until(lambda: token in r.peer.delivered)
            await r.changes.until(lambda: len(r.peer.acks_in) >= 3)  # Hello's, event's, dup's
            assert r.recorder.messages == [LidChanged(open=True)]

    run(main)


@dataclass
class RecordingTransport:
    """A real SerialTransport whose writes are noted on a shared timeline."""

    inner: SerialTransport
    timeline: list[tuple[str, object]]
    description: str = field(init=False)

    def __post_init__(self) -> None:
        self.description = self.inner.description

    async def open(self) -> None:
        await self.inner.open()

    async def read(self) -> bytes:
        return await self.inner.read()

    def write(self, data: bytes) -> None:
        self.timeline.append(("write", data))
        self.inner.write(data)

    async def close(self) -> None:
        await self.inner.close()


def test_on_message_runs_before_the_ack_is_written(tmp_path: Path) -> None:
    timeline: list[tuple[str, object]] = []
    peer_box: list[FakeDispenser] = []
    acks_seen_in_handler: list[int] = []

    def committing_handler(message: Message) -> None:
        # The dispenser must not have seen an ACK for this event yet: it is not "stored" yet.
        acks_seen_in_handler.append(len(peer_box[0].acks_in))
        timeline.append(("message", message))

    async def main() -> None:
        async with rig(
            tmp_path,
            on_message=committing_handler,
            transport_factory=lambda path: RecordingTransport(SerialTransport(path), timeline),
        ) as r:
            peer_box.append(r.peer)
            await r.changes.until(lambda: r.session.connected)
            await r.changes.until(lambda: len(r.peer.acks_in) == 1)  # the ACK of Capabilities
            event = DosePresented(dispense_id=5, sachet_index=2)
            token = r.peer.send(event)
            frame = r.peer.data_out[-1]
            await r.changes.until(lambda: token in r.peer.delivered)

            def acks(data: object) -> bool:
                assert isinstance(data, bytes)
                return any(
                    f.kind is FrameKind.ACK and (f.session, f.seq) == (frame.session, frame.seq)
                    for f in FrameDecoder().feed(data)
                )

            handled = timeline.index(("message", event))
            ack_writes = [
                i for i, (kind, data) in enumerate(timeline) if kind == "write" and acks(data)
            ]
            assert ack_writes
            assert min(ack_writes) > handled
            assert acks_seen_in_handler == [1]

    run(main)


def test_failing_handler_leaves_the_event_unacked_and_gets_it_again_after_reconnect(
    tmp_path: Path,
) -> None:
    calls: list[Message] = []
    changes_box: list[Changes] = []

    def store_fails_once(message: Message) -> None:
        calls.append(message)
        changes_box[0].notify()
        if len(calls) == 1:
            raise OSError("disk I/O error")

    async def main() -> None:
        async with rig(tmp_path, on_message=store_fails_once) as r:
            changes_box.append(r.changes)
            await r.changes.until(lambda: r.session.connected)
            token = r.peer.send(ButtonPressed(ButtonId.HELP))
            await r.changes.until(lambda: token in r.peer.delivered)
            assert calls == [ButtonPressed(ButtonId.HELP)] * 2
            assert r.session.stats.handler_errors == 1
            assert r.peer.endpoint.stats.retransmits >= 1  # the first delivery was never ACKed
            await r.changes.until(lambda: r.recorder.ups() == 2)
            assert [type(x) for x in r.recorder.links] == [SessionUp, SessionDown, SessionUp]

    run(main)


def test_corrupted_bytes_are_counted_and_do_not_break_the_link(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path) as r:
            await r.changes.until(lambda: r.session.connected)
            good = Frame(FrameKind.DATA, 0x2222, 99, ButtonPressed.TYPE_ID, b"\x01").encode()
            bad_crc = bytearray(good)
            bad_crc[-3] ^= 0x40
            r.peer.write_raw(b"\x00\x13\x37\xff\xfe\x00" + bytes(bad_crc) + b"line noise\x00")
            token = r.peer.send(ButtonPressed(ButtonId.TAKE))
            await r.changes.until(lambda: token in r.peer.delivered)
            assert r.recorder.messages == [ButtonPressed(ButtonId.TAKE)]
            assert r.session.stats.frames_rejected >= 3
            assert r.session.connected

    run(main)


# --- outages ----------------------------------------------------------------------------------


def test_unplug_reports_link_down_once_and_replug_behind_the_same_path_reconnects(
    tmp_path: Path,
) -> None:
    def hold_status(message: Message) -> Message | None:
        return None if isinstance(message, GetStatus) else standard_answer(message)

    async def main() -> None:
        async with rig(tmp_path, answer=hold_status) as r:
            await r.changes.until(lambda: r.session.connected)
            waiting = asyncio.create_task(r.session.request(GetStatus(0)))
            await r.changes.until(lambda: any(isinstance(m, GetStatus) for m in r.peer.received))
            r.peer.unplug()
            with pytest.raises(LinkLost):
                await waiting
            opens_before = len(r.opens)
            await r.changes.until(lambda: len(r.opens) >= opens_before + 4)
            assert r.session.stats.connect_failures >= 3
            assert not r.session.connected
            with pytest.raises(NotConnected):
                await r.session.request(GetStatus(0))
            r.peer.plug()
            await r.changes.until(lambda: r.recorder.ups() == 2)
            assert [type(x) for x in r.recorder.links] == [SessionUp, SessionDown, SessionUp]
            assert r.session.stats.reconnects == 1
            result = await r.session.request(Dispense(0, 11, 4))
            assert isinstance(result, CommandResult)
            assert result.result is ResultCode.OK

    run(main)


def test_dispenser_that_never_answers_hello_is_retried_until_it_does(tmp_path: Path) -> None:
    mute = [True]

    def hello_when_awake(message: Message) -> Message | None:
        return None if mute[0] else standard_answer(message)

    async def main() -> None:
        async with rig(tmp_path, answer=hello_when_awake, request_timeout_s=0.1) as r:
            await r.changes.until(lambda: r.session.stats.connect_failures >= 2)
            assert [type(x) for x in r.recorder.links] == [SessionDown]
            mute[0] = False
            await r.changes.until(lambda: r.session.connected)
            assert [type(x) for x in r.recorder.links] == [SessionDown, SessionUp]

    run(main)


def test_dispenser_restart_mid_session_is_reported_and_handshaken_again(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path) as r:
            await r.changes.until(lambda: r.session.connected)
            # The dispenser reboots: a new link session, same wire.
            r.peer.endpoint = LinkEndpoint(Direction.TO_AGENT, 0x3333, DISPENSER_LINK)
            r.peer.send(LidChanged(open=False))
            await r.changes.until(lambda: r.recorder.ups() == 2)
            assert [type(x) for x in r.recorder.links] == [SessionUp, SessionDown, SessionUp]
            assert r.recorder.links[1] == SessionDown("dispenser restarted")
            assert r.recorder.messages == [LidChanged(open=False)]
            assert r.session.stats.peer_restarts == 1
            status = await r.session.request(GetStatus(0))
            assert isinstance(status, Status)

    run(main)
