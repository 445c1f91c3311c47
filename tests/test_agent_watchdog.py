"""The dispenser-side agent watchdog (SPEC 4.7) and the HELD pattern (SPEC 4.5), in the firmware
model with an injected monotonic time, and once over a real pty with a clock the test moves."""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from hw.dispenser import DEFAULT_FEATURES, DispenserIdentity, DispenserModel, make_roll
from hw.wire import SimulatorRunner
from protocol.framing import Frame, FrameKind
from protocol.link import LinkConfig, LinkEndpoint, Received
from protocol.messages import (
    FACTORY_RESET_CONFIRM,
    KEEPALIVE_MAX_S,
    KEEPALIVE_MIN_S,
    AlertPattern,
    Capabilities,
    CommandResult,
    Direction,
    FactoryReset,
    Feature,
    GetStatus,
    Hello,
    KeepAlive,
    Message,
    ResultCode,
    SetAlert,
    Status,
    encode_message,
)

T0 = 1_795_000_000
TIMEOUT = 10.0  # bound on every wait over the pty (generous: both CPU cores may be busy)


def result(replies: Sequence[Message]) -> ResultCode:
    first = replies[0]
    assert isinstance(first, CommandResult)
    return first.result


class Firmware:
    """The model as the runner drives it: each frame from the agent is noted, then handled."""

    def __init__(self, features: int = DEFAULT_FEATURES) -> None:
        self.model = DispenserModel(DispenserIdentity(features=features), lambda: T0)
        self._req = 0

    def frame(self, now: float, message: Message) -> list[Message]:
        self.model.note_agent_frame(now)
        return self.model.handle(message)

    def req(self) -> int:
        self._req += 1
        return self._req

    def keep_alive(self, now: float, timeout_s: int) -> ResultCode:
        return result(self.frame(now, KeepAlive(self.req(), timeout_s)))

    def set_alert(self, now: float, pattern: AlertPattern) -> ResultCode:
        return result(self.frame(now, SetAlert(self.req(), pattern)))

    def status(self, now: float) -> Status:
        (status,) = self.frame(now, GetStatus(self.req()))
        assert isinstance(status, Status)
        return status

    def silent_at(self, now: float) -> bool:
        return self.model.check_agent_silence(now)


@pytest.fixture
def fw() -> Firmware:
    return Firmware()


# --- model: the silence alarm --------------------------------------------------------------------


def test_default_simulator_announces_both_new_features() -> None:
    caps = Firmware().model.handle(Hello(1, 1, "agent"))[0]
    assert isinstance(caps, Capabilities)
    assert caps.features & Feature.HELD_PATTERN
    assert caps.features & Feature.AGENT_WATCHDOG


def test_silent_for_the_timeout_shows_fault_and_sounds(fw: Firmware) -> None:
    assert fw.set_alert(0.0, AlertPattern.HELD) is ResultCode.OK
    assert fw.keep_alive(10.0, 30) is ResultCode.OK
    assert fw.model.agent_silence_deadline() == 40.0

    assert not fw.silent_at(39.0)
    assert fw.model.shown is AlertPattern.HELD
    assert fw.silent_at(40.0)

    snap = fw.model.snapshot()
    assert snap.silence_alarm
    assert snap.silence_alarm_s == 40.0
    assert snap.shown is AlertPattern.FAULT
    assert snap.alert is AlertPattern.HELD, "what the agent set is kept, to restore"
    assert fw.model.agent_silence_deadline() is None, "already on: nothing more to wake for"


def test_the_deadline_is_exactly_timeout_s_after_the_last_frame(fw: Firmware) -> None:
    fw.keep_alive(100.0, KEEPALIVE_MIN_S)
    deadline = 100.0 + KEEPALIVE_MIN_S
    assert not fw.silent_at(deadline - 1e-6)
    assert not fw.model.silence_alarm
    assert fw.silent_at(deadline)
    assert fw.model.silence_alarm_s == deadline


def test_any_frame_before_the_deadline_keeps_it_quiet(fw: Firmware) -> None:
    fw.keep_alive(0.0, 30)
    fw.status(29.0)  # not a KeepAlive: still heard
    assert not fw.silent_at(30.0)
    assert not fw.silent_at(58.5)
    fw.model.note_agent_frame(58.5)  # a retransmitted duplicate, as the runner notes it
    assert not fw.silent_at(88.0)
    assert fw.silent_at(88.5)


def test_a_frame_after_the_alarm_restores_the_agents_pattern(fw: Firmware) -> None:
    fw.set_alert(0.0, AlertPattern.HELD)
    fw.keep_alive(0.0, 30)
    assert fw.silent_at(31.0)

    status = fw.status(500.0)
    assert status.alert is AlertPattern.HELD, "the alarm ends before the command is handled"
    snap = fw.model.snapshot()
    assert (snap.silence_alarm, snap.silence_alarm_s, snap.shown) == (
        False,
        None,
        AlertPattern.HELD,
    )
    assert fw.model.agent_silence_deadline() == 530.0, "the timer starts again"


def test_a_set_alert_that_ends_the_alarm_sets_its_own_pattern(fw: Firmware) -> None:
    fw.keep_alive(0.0, 30)
    assert fw.silent_at(30.0)
    assert fw.set_alert(45.0, AlertPattern.URGENT) is ResultCode.OK
    assert fw.model.shown is AlertPattern.URGENT
    assert fw.status(46.0).alert is AlertPattern.URGENT


def test_status_reports_the_pattern_shown(fw: Firmware) -> None:
    """Status is the reply to a frame, so it cannot see the alarm; the snapshot can."""
    fw.set_alert(0.0, AlertPattern.REMINDER)
    fw.keep_alive(0.0, 30)
    fw.silent_at(30.0)
    (status,) = fw.model.handle(GetStatus(99))  # handled without a note: a direct caller
    assert isinstance(status, Status)
    assert status.alert is AlertPattern.FAULT


def test_hello_disarms_until_the_next_keep_alive(fw: Firmware) -> None:
    fw.keep_alive(0.0, 30)
    assert fw.silent_at(30.0)
    fw.frame(40.0, Hello(fw.req(), 1, "a new agent process"))
    assert not fw.model.silence_alarm
    assert fw.model.watchdog_s == 0
    assert not fw.silent_at(10_000.0)

    assert fw.keep_alive(10_000.0, 60) is ResultCode.OK
    assert fw.silent_at(10_060.0)


def test_keep_alive_zero_and_factory_reset_disarm(fw: Firmware) -> None:
    fw.keep_alive(0.0, 30)
    assert fw.keep_alive(10.0, 0) is ResultCode.OK
    assert fw.model.agent_silence_deadline() is None
    assert not fw.silent_at(1_000.0)

    fw.keep_alive(1_000.0, 30)
    assert result(fw.frame(1_001.0, FactoryReset(fw.req(), FACTORY_RESET_CONFIRM))) is (
        ResultCode.OK
    )
    assert fw.model.watchdog_s == 0
    assert not fw.silent_at(5_000.0)


@pytest.mark.parametrize("timeout_s", [1, KEEPALIVE_MIN_S - 1, KEEPALIVE_MAX_S + 1, 0xFFFF])
def test_timeout_outside_the_range_is_refused_and_changes_nothing(
    fw: Firmware, timeout_s: int
) -> None:
    assert fw.keep_alive(0.0, timeout_s) is ResultCode.BAD_ARGUMENT
    assert fw.model.watchdog_s == 0, "a refused KeepAlive does not arm"
    assert not fw.silent_at(100_000.0)

    fw.keep_alive(0.0, 60)
    assert fw.keep_alive(10.0, timeout_s) is ResultCode.BAD_ARGUMENT
    assert fw.model.watchdog_s == 60, "nor does it change an armed timeout"
    assert fw.model.agent_silence_deadline() == 70.0, "but the frame was heard"


@pytest.mark.parametrize("timeout_s", [KEEPALIVE_MIN_S, KEEPALIVE_MAX_S])
def test_the_range_ends_are_accepted(fw: Firmware, timeout_s: int) -> None:
    assert fw.keep_alive(0.0, timeout_s) is ResultCode.OK
    assert fw.model.agent_silence_deadline() == float(timeout_s)


def test_keep_alive_re_arms_with_the_new_timeout(fw: Firmware) -> None:
    fw.keep_alive(0.0, 600)
    fw.keep_alive(5.0, 30)
    assert fw.model.agent_silence_deadline() == 35.0


def test_a_disarmed_dispenser_never_alarms(fw: Firmware) -> None:
    fw.status(0.0)
    assert not fw.silent_at(1e9)
    assert fw.model.agent_silence_deadline() is None


def test_the_armed_timeout_survives_a_reboot_and_times_from_boot(fw: Firmware) -> None:
    fw.set_alert(0.0, AlertPattern.HELD)
    fw.keep_alive(0.0, 30)
    assert fw.silent_at(30.0)
    fw.model.reboot()
    snap = fw.model.snapshot()
    assert (snap.watchdog_s, snap.silence_alarm, snap.alert) == (30, False, AlertPattern.OFF)

    assert not fw.silent_at(1_000.0)  # boot: the timer starts here
    assert fw.model.agent_silence_deadline() == 1_030.0
    assert fw.silent_at(1_030.0)
    assert fw.status(1_031.0).alert is AlertPattern.OFF, "the agent's pattern did not survive"


def test_a_caller_that_never_notes_frames_times_from_its_first_check() -> None:
    """The in-process simulation calls handle() only: a KeepAlive arms, the first check starts."""
    model = DispenserModel(DispenserIdentity(), lambda: T0)
    assert result(model.handle(KeepAlive(1, 30))) is ResultCode.OK
    assert model.agent_silence_deadline() is None
    assert not model.check_agent_silence(7.0)
    assert model.check_agent_silence(37.0)


# --- model: feature gating ---------------------------------------------------------------------


def test_without_the_features_held_and_keep_alive_are_unsupported() -> None:
    old = Firmware(features=DEFAULT_FEATURES & ~(Feature.HELD_PATTERN | Feature.AGENT_WATCHDOG))
    assert old.set_alert(0.0, AlertPattern.URGENT) is ResultCode.OK
    assert old.set_alert(1.0, AlertPattern.HELD) is ResultCode.UNSUPPORTED
    assert old.model.shown is AlertPattern.URGENT, "a refused pattern changes nothing"
    assert old.keep_alive(2.0, 30) is ResultCode.UNSUPPORTED
    assert old.model.watchdog_s == 0
    assert not old.silent_at(1e6)


def test_held_is_shown_when_announced(fw: Firmware) -> None:
    assert fw.set_alert(0.0, AlertPattern.HELD) is ResultCode.OK
    assert fw.status(1.0).alert is AlertPattern.HELD


# --- over a real pty -----------------------------------------------------------------------------


class SteppedClock:
    """Real monotonic time plus an offset the test moves forward: the runner's link timers keep
    working at real speed, and 30 s of agent silence passes at once."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return time.monotonic() + self._offset

    def advance_to(self, when: float) -> None:
        with self._lock:
            self._offset = max(self._offset, when - time.monotonic())


class Agent:
    """A minimal agent side: a LinkEndpoint on the pty slave, pumped only while it waits."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.link = LinkEndpoint(
            Direction.TO_DISPENSER, 0x4242, LinkConfig(ack_timeout_s=0.1, max_retransmits=50)
        )
        self.received: list[Message] = []
        self.last_wire = b""
        self._req = 0

    def close(self) -> None:
        os.close(self.fd)

    def _flush(self) -> None:
        out = self.link.take_outgoing()
        if out:
            os.write(self.fd, out)

    def request(self, make: Callable[[int], Message], reply_type: type[Message]) -> Message:
        self._req += 1
        message = make(self._req)
        self.link.send(message, time.monotonic())
        out = self.link.take_outgoing()
        self.last_wire = out
        os.write(self.fd, out)
        end = time.monotonic() + TIMEOUT
        while True:
            for reply in self.received:
                if isinstance(reply, reply_type) and getattr(reply, "req_id", None) == self._req:
                    self.received.remove(reply)
                    return reply
            now = time.monotonic()
            if now >= end:
                raise TimeoutError(f"no {reply_type.__name__} in {TIMEOUT} s: {self.received}")
            deadline = self.link.next_deadline()
            wait = end - now if deadline is None else min(end - now, max(0.0, deadline - now))
            readable, _, _ = select.select([self.fd], [], [], wait)
            now = time.monotonic()
            if readable:
                events = self.link.receive_bytes(os.read(self.fd, 4096), now)
                self.received += [e.message for e in events if isinstance(e, Received)]
            self.link.poll(now)
            self._flush()


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture
def runner(clock: SteppedClock, tmp_path: Path) -> Iterator[SimulatorRunner]:
    model = DispenserModel(DispenserIdentity(), lambda: T0)
    model.insert_roll(make_roll("R1", "p-abc", T0, count=4))
    sim = SimulatorRunner.on_pty(model, tmp_path / "dispenser", clock=clock)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def agent(runner: SimulatorRunner) -> Iterator[Agent]:
    side = Agent(runner.device_path)
    yield side
    side.close()


def arm(agent: Agent, runner: SimulatorRunner) -> float:
    """Handshake, HELD, KeepAlive(minimum): returns the silence deadline on the runner's clock."""
    caps = agent.request(lambda r: Hello(r, 1, "test agent"), Capabilities)
    assert isinstance(caps, Capabilities)
    assert caps.features & Feature.AGENT_WATCHDOG
    assert caps.features & Feature.HELD_PATTERN
    held = agent.request(lambda r: SetAlert(r, AlertPattern.HELD), CommandResult)
    assert held == CommandResult(2, ResultCode.OK, "")
    ok = agent.request(lambda r: KeepAlive(r, KEEPALIVE_MIN_S), CommandResult)
    assert ok == CommandResult(3, ResultCode.OK, "")
    snap = runner.snapshot()
    assert snap.watchdog_s == KEEPALIVE_MIN_S
    assert snap.agent_heard_s is not None
    return snap.agent_heard_s + KEEPALIVE_MIN_S


def test_silent_agent_raises_the_alarm_over_the_pty_and_a_frame_ends_it(
    runner: SimulatorRunner, agent: Agent, clock: SteppedClock
) -> None:
    deadline = arm(agent, runner)
    # The agent falls silent. 29.5 s pass at once; the runner must then wake by itself at the
    # deadline (nothing else is due: no frame in flight, no wake-up from the test).
    clock.advance_to(deadline - 0.5)
    runner.clock_changed()
    runner.wait_for(lambda m: m.silence_alarm, timeout=TIMEOUT)
    snap = runner.snapshot()
    assert snap.shown is AlertPattern.FAULT
    assert snap.alert is AlertPattern.HELD
    assert snap.silence_alarm_s is not None
    assert snap.silence_alarm_s >= deadline

    status = agent.request(GetStatus, Status)
    assert isinstance(status, Status)
    assert status.alert is AlertPattern.HELD
    snap = runner.snapshot()
    assert (snap.silence_alarm, snap.shown) == (False, AlertPattern.HELD)
    assert snap.agent_heard_s is not None
    assert snap.agent_heard_s >= deadline


def test_a_duplicate_counts_as_heard_and_a_nakd_frame_does_not(
    runner: SimulatorRunner, agent: Agent, clock: SteppedClock
) -> None:
    deadline = arm(agent, runner)
    clock.advance_to(deadline - 10)
    assert agent.last_wire, "the KeepAlive went out at once (nothing was in flight)"
    os.write(agent.fd, agent.last_wire)  # the KeepAlive frame again: a retransmit
    runner.wait_for_stats(lambda s: s.duplicates == 1, timeout=TIMEOUT)
    heard = runner.snapshot().agent_heard_s
    assert heard is not None
    assert heard >= deadline - 10

    type_id, payload = encode_message(GetStatus(9))
    unknown = Frame(FrameKind.DATA, 0x4242, 200, 0x3E, payload).encode()
    assert type_id != 0x3E
    os.write(agent.fd, unknown)
    runner.wait_for_stats(lambda s: s.naks_sent == 1, timeout=TIMEOUT)
    snap = runner.snapshot()
    assert snap.agent_heard_s == heard
    assert not snap.silence_alarm


def test_unplugged_firmware_is_off_and_the_armed_watchdog_times_from_boot(
    runner: SimulatorRunner, agent: Agent, clock: SteppedClock
) -> None:
    deadline = arm(agent, runner)
    runner.unplug()
    clock.advance_to(deadline + 100)
    # A job runs in the sim thread and the model is read after that loop turn (same lock), so
    # the snapshot shows what the firmware did with the new time.
    runner.call(lambda m: [])
    snap = runner.snapshot()
    assert not snap.silence_alarm, "no firmware runs while unplugged"
    assert runner.stats().plugged is False

    runner.replug()  # boots: the agent is not back, the timer starts at boot
    runner.wait_for(lambda m: m.agent_heard_s is not None, timeout=TIMEOUT)
    boot = runner.snapshot().agent_heard_s
    assert boot is not None
    assert boot >= deadline + 100
    clock.advance_to(boot + KEEPALIVE_MIN_S - 0.2)
    runner.clock_changed()
    runner.wait_for(lambda m: m.silence_alarm, timeout=TIMEOUT)
    snap = runner.snapshot()
    assert snap.shown is AlertPattern.FAULT
    assert snap.alert is AlertPattern.OFF
    assert snap.silence_alarm_s is not None
    assert snap.silence_alarm_s >= boot + KEEPALIVE_MIN_S
