"""The simulator over a real pty: a test-side LinkEndpoint on the slave talks to the runner."""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hw.dispenser import DispenserIdentity, DispenserModel, make_roll
from hw.wire import SimulatorRunner, TraceEvent
from protocol.framing import Frame, FrameKind
from protocol.link import LinkConfig, LinkEndpoint, LinkEvent, PeerRestarted, Received
from protocol.messages import (
    Capabilities,
    CommandResult,
    Direction,
    Dispense,
    DosePresented,
    DoseTaken,
    GetStatus,
    Hello,
    Message,
    ResultCode,
    RollInserted,
    SachetRead,
    Status,
)

T0 = 1_795_000_000
TIMEOUT = 30.0  # generous: a bound on waiting for a condition, not a timing claim


class AgentSide:
    """What the agent's driver does, minimally: a LinkEndpoint on the slave end of the pty."""

    def __init__(self, path: str, session: int = 0x4242) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.link = LinkEndpoint(
            Direction.TO_DISPENSER, session, LinkConfig(ack_timeout_s=0.1, max_retransmits=20)
        )
        self.received: list[Message] = []
        self.events: list[LinkEvent] = []
        self._req = 0

    def close(self) -> None:
        os.close(self.fd)

    def req_id(self) -> int:
        self._req += 1
        return self._req

    def send(self, message: Message) -> None:
        _, events = self.link.send(message, time.monotonic())
        self.events += events
        self._flush()

    def _flush(self) -> None:
        out = self.link.take_outgoing()
        if out:
            os.write(self.fd, out)

    def write_raw(self, data: bytes) -> None:
        os.write(self.fd, data)

    def pump_until(self, done: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        """Read, ACK and retransmit until `done()` holds, or raise TimeoutError."""
        end = time.monotonic() + timeout
        while not done():
            now = time.monotonic()
            if now >= end:
                raise TimeoutError(f"not done in {timeout} s; received {self.received}")
            deadline = self.link.next_deadline()
            wait = end - now if deadline is None else min(end - now, max(0.0, deadline - now))
            readable, _, _ = select.select([self.fd], [], [], wait)
            now = time.monotonic()
            if readable:
                data = os.read(self.fd, 4096)
                if not data:
                    raise EOFError("dispenser hung up")
                self._record(self.link.receive_bytes(data, now))
            self._record(self.link.poll(now))
            self._flush()

    def _record(self, events: list[LinkEvent]) -> None:
        for event in events:
            self.events.append(event)
            if isinstance(event, Received):
                self.received.append(event.message)

    def of_type(self, cls: type[Message]) -> list[Message]:
        return [m for m in self.received if isinstance(m, cls)]

    def request(self, message: Message, reply_type: type[Message] = CommandResult) -> Message:
        before = len(self.of_type(reply_type))
        self.send(message)
        self.pump_until(lambda: len(self.of_type(reply_type)) > before)
        reply = self.of_type(reply_type)[before]
        assert getattr(reply, "req_id", None) == getattr(message, "req_id", None)
        return reply


@pytest.fixture
def model() -> DispenserModel:
    m = DispenserModel(DispenserIdentity(), lambda: T0)
    m.insert_roll(make_roll("R1", "p-abc", T0, count=10))  # loaded before the agent connects
    return m


@pytest.fixture
def traces() -> list[TraceEvent]:
    return []


@pytest.fixture
def runner(
    model: DispenserModel, tmp_path: Path, traces: list[TraceEvent]
) -> Iterator[SimulatorRunner]:
    sim = SimulatorRunner.on_pty(model, tmp_path / "dispenser", trace=traces.append)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def agent(runner: SimulatorRunner) -> Iterator[AgentSide]:
    side = AgentSide(runner.device_path)
    yield side
    side.close()


def read_after_hangup(fd: int) -> bytes | str:
    """Linux gives EOF or EIO on a pty slave whose master went away."""
    try:
        return os.read(fd, 100)
    except OSError as exc:
        if exc.errno == errno.EIO:
            return "EIO"
        raise


def dispense(agent: AgentSide, dispense_id: int, index: int) -> CommandResult:
    reply = agent.request(Dispense(agent.req_id(), dispense_id, index))
    assert isinstance(reply, CommandResult)
    return reply


def test_device_path_is_a_symlink_to_the_pty(runner: SimulatorRunner, tmp_path: Path) -> None:
    link = tmp_path / "dispenser"
    assert runner.device_path == str(link)
    assert link.is_symlink()
    assert os.readlink(link).startswith("/dev/pts/")


def test_handshake(agent: AgentSide, runner: SimulatorRunner) -> None:
    caps = agent.request(Hello(agent.req_id(), 1, "test"), Capabilities)
    assert isinstance(caps, Capabilities)
    assert (caps.model, caps.rtc_utc_s) == ("SIM-100", T0)
    assert runner.stats().commands == 1


def test_dispense_replies_then_events_in_order(
    agent: AgentSide, runner: SimulatorRunner, traces: list[TraceEvent]
) -> None:
    assert dispense(agent, 77, 0).result is ResultCode.OK
    agent.pump_until(lambda: len(agent.of_type(SachetRead)) >= 1)
    assert agent.received[-3:] == [
        CommandResult(1, ResultCode.OK, ""),
        DosePresented(77, 0),
        SachetRead("R1", 1, T0 + 43200, "p-abc"),
    ]
    runner.wait_for(lambda m: m.dispensed == [(77, 0)], timeout=TIMEOUT)
    assert any(t.direction == "out" and isinstance(t.message, DosePresented) for t in traces)
    assert any(t.direction == "in" and isinstance(t.message, Dispense) for t in traces)


def test_lost_command_is_retransmitted_and_dispenses_once(
    agent: AgentSide, runner: SimulatorRunner
) -> None:
    runner.set_faults(drop_incoming_frames=1)
    assert dispense(agent, 5, 0).result is ResultCode.OK
    assert agent.link.stats.retransmits >= 1
    assert runner.stats().dropped_in == 1
    assert runner.faults.drop_incoming_frames == 0
    assert runner.snapshot().dispensed == ((5, 0),)
    assert len(agent.of_type(CommandResult)) == 1


def test_repeated_dispense_id_is_already_done(agent: AgentSide, runner: SimulatorRunner) -> None:
    assert dispense(agent, 9, 0).result is ResultCode.OK
    again = dispense(agent, 9, 0)
    assert again.result is ResultCode.ALREADY_DONE
    assert runner.snapshot().dispensed == ((9, 0),)


def test_delayed_acks_make_agent_retransmit_without_double_dispense(
    agent: AgentSide, runner: SimulatorRunner
) -> None:
    runner.set_faults(ack_delay_s=0.3)
    assert dispense(agent, 11, 0).result is ResultCode.OK
    agent.pump_until(lambda: agent.link.idle)
    stats = runner.stats()
    assert agent.link.stats.retransmits >= 1
    assert stats.delayed_acks >= 2
    assert stats.duplicates >= 1, "the sim recognised the retransmit"
    assert runner.snapshot().dispensed == ((11, 0),)


def test_duplicated_frames_from_sim_are_suppressed_by_the_agent(
    agent: AgentSide, runner: SimulatorRunner
) -> None:
    runner.set_faults(duplicate_next_frames=1)
    reply = agent.request(GetStatus(agent.req_id()), Status)
    assert isinstance(reply, Status)
    assert reply.roll_id == "R1"
    agent.pump_until(lambda: agent.link.stats.duplicates >= 1)
    assert len(agent.of_type(Status)) == 1
    assert runner.stats().duplicated_out == 1


def test_corrupt_and_dropped_frames_from_sim_are_recovered(
    agent: AgentSide, runner: SimulatorRunner
) -> None:
    runner.set_faults(corrupt_next_frames=1, drop_next_frames=0)
    agent.request(GetStatus(agent.req_id()), Status)
    assert agent.link.stats.rejected["bad_crc"] >= 1
    runner.set_faults(drop_next_frames=2, garbage_before_next=b"\x13\x37\xff")
    agent.request(GetStatus(agent.req_id()), Status)
    stats = runner.stats()
    assert (stats.corrupted_out, stats.dropped_out, stats.garbage_bytes) == (1, 2, 3)
    assert sum(agent.link.stats.rejected.values()) >= 2
    assert len(agent.of_type(Status)) == 2


def test_garbage_and_corrupt_frames_from_agent_are_counted_and_survived(
    agent: AgentSide, runner: SimulatorRunner
) -> None:
    agent.write_raw(b"\x00\x01\x02\x03\x00")  # too short
    bad = bytearray(Frame(FrameKind.DATA, 0x4242, 200, 0x07, b"\x00\x09").encode())
    bad[-2] ^= 0x55  # damage inside the stuffed body
    agent.write_raw(bytes(bad))
    agent.write_raw(b"\x01" * 500)  # a long run without a delimiter
    runner.wait_for_stats(lambda s: sum(s.rejected.values()) >= 3, timeout=TIMEOUT)
    reply = agent.request(GetStatus(agent.req_id()), Status)
    assert isinstance(reply, Status)
    assert runner.stats().rejected.get("oversize", 0) >= 1


def test_physical_action_reaches_the_agent(agent: AgentSide, runner: SimulatorRunner) -> None:
    dispense(agent, 3, 0)
    runner.call(lambda m: m.take_dose())
    agent.pump_until(lambda: bool(agent.of_type(DoseTaken)))
    assert agent.of_type(DoseTaken) == [DoseTaken(3, 0)]
    assert runner.snapshot().tray is None


def test_listener_reaction_follows_the_message_on_the_wire(
    agent: AgentSide, runner: SimulatorRunner
) -> None:
    """A patient who takes each dose the moment it is presented (call() from a listener)."""

    def on_message(message: Message) -> None:
        if isinstance(message, DosePresented):
            runner.call(lambda m: m.take_dose())

    remove = runner.add_listener(on_message)
    dispense(agent, 31, 0)
    agent.pump_until(lambda: bool(agent.of_type(DoseTaken)))
    names = [type(m).__name__ for m in agent.received]
    assert names == ["CommandResult", "DosePresented", "SachetRead", "DoseTaken"]
    remove()
    dispense(agent, 32, 1)
    agent.pump_until(lambda: len(agent.of_type(SachetRead)) == 2)
    assert runner.snapshot().tray is not None, "the removed listener no longer takes doses"


def test_reboot_starts_a_new_session_and_keeps_idempotency(
    agent: AgentSide, runner: SimulatorRunner
) -> None:
    dispense(agent, 21, 0)
    old = runner.stats().session
    runner.reboot()
    assert runner.stats().session != old
    assert runner.stats().sessions == 2
    assert dispense(agent, 21, 0).result is ResultCode.ALREADY_DONE
    assert any(isinstance(e, PeerRestarted) for e in agent.events)
    assert runner.snapshot().dispensed == ((21, 0),)


def test_a_frame_abandoned_by_a_reboot_counts_as_a_failure(
    model: DispenserModel, tmp_path: Path
) -> None:
    """`failures` counts sim messages the agent never acknowledged, also those a reboot cuts off
    (the retired session's figures are kept only after its in-flight frames are abandoned)."""
    # an ACK timeout no loaded machine reaches: the frame is still in flight at the reboot
    sim = SimulatorRunner.on_pty(
        model, tmp_path / "dispenser", link_config=LinkConfig(ack_timeout_s=600.0)
    )
    sim.start()
    side = AgentSide(sim.device_path)
    try:
        dispense(side, 41, 0)  # a session up
        side.pump_until(lambda: bool(side.of_type(SachetRead)))  # the dispense's events taken
        sim.wait_for_stats(lambda s: s.idle, TIMEOUT)
        before = sim.stats()  # from here on the agent reads nothing
        sim.call(lambda m: m.insert_roll(make_roll("R2", "p-abc", T0, count=5)))
        sim.wait_for_stats(lambda s: s.frames_out > before.frames_out, TIMEOUT)
        sim.reboot()
        sim.wait_for_stats(lambda s: s.sessions == 2, TIMEOUT)
        # the roll swap: RollRemoved in flight, RollInserted and SachetRead queued behind it
        assert sim.stats().failures == before.failures + 3
    finally:
        side.close()
        sim.stop()


def test_unplug_hangs_up_and_replug_gives_a_new_pty_at_the_same_path(
    agent: AgentSide, runner: SimulatorRunner, tmp_path: Path
) -> None:
    agent.request(Hello(agent.req_id(), 1, "test"), Capabilities)
    old_session = runner.stats().session
    runner.unplug()
    assert not (tmp_path / "dispenser").exists()
    readable, _, _ = select.select([agent.fd], [], [], TIMEOUT)
    assert readable, "a hangup makes the port readable"
    assert read_after_hangup(agent.fd) in (b"", "EIO")
    assert not runner.stats().plugged

    runner.replug()
    assert runner.device_path == str(tmp_path / "dispenser")
    assert (tmp_path / "dispenser").is_symlink()  # re-pointed (the kernel may reuse pts N)
    fresh = AgentSide(runner.device_path, session=0x5151)
    try:
        caps = fresh.request(Hello(fresh.req_id(), 1, "test"), Capabilities)
        assert isinstance(caps, Capabilities)
        stats = runner.stats()
        assert stats.session != old_session
        assert stats.plugged
        assert runner.snapshot().boot_count == 2
    finally:
        fresh.close()


def test_stop_leaves_no_thread_or_fd(model: DispenserModel, tmp_path: Path) -> None:
    fds_before = set(os.listdir("/proc/self/fd"))
    sim = SimulatorRunner.on_pty(model, tmp_path / "d")
    sim.start()
    sim.replug()
    sim.stop()
    sim.stop()  # idempotent
    assert not [t for t in threading.enumerate() if t.name == "dispenser-sim"]
    assert set(os.listdir("/proc/self/fd")) <= fds_before
    assert not (tmp_path / "d").exists()


def test_call_before_start_runs_inline(model: DispenserModel, tmp_path: Path) -> None:
    sim = SimulatorRunner.on_pty(model, tmp_path / "d")
    try:
        sim.call(lambda m: m.set_lid(True))
        assert sim.snapshot().lid_open
    finally:
        sim.stop()


def test_cli_selftest_passes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hw.sim", "selftest"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert done.stdout.startswith("selftest: PASS")


def test_cli_pty_prints_device_and_frames_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    link = tmp_path / "cli-dispenser"
    with subprocess.Popen(
        [sys.executable, "-m", "hw.sim", "pty", "--link", str(link), "--sachets", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        try:
            assert proc.stdout.readline() == f"DEVICE {link}\n"
            side = AgentSide(str(link))
            try:
                caps = side.request(Hello(side.req_id(), 1, "cli"), Capabilities)
                assert isinstance(caps, Capabilities)
                # the loaded roll is told after the Hello: wait for it before stopping (under
                # load the SIGTERM once came first, and the log had no RollInserted to show)
                side.pump_until(lambda: bool(side.of_type(RollInserted)))
            finally:
                side.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
            out = proc.stdout.read()  # read(), not communicate(): keeps what readline() buffered
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert proc.returncode == 0
    assert "OUT DATA" in out
    assert "RollInserted" in out
    assert "IN  DATA" in out
    assert "Hello" in out
    assert not link.exists()
