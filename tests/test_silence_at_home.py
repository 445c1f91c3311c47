"""Hazard #10 on real parts: a held dose and a hung agent are both noticed at home.

The production daemon in its own process (tests/agent_process.py, scaled clock) drives the
dispenser simulator on a real pty, with a private mosquitto and a subscriber for the response
centre. The simulator announces HELD_PATTERN and AGENT_WATCHDOG; its firmware clock runs
`FIRMWARE_RATE` times real time (its link timers scaled back to real time), so the watchdog's
30 s pass in a few real seconds. Every wait is on a condition with a generous bound.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from broker import MosquittoBroker
from e2e_support import AgentProcess, EventStream, oslo, write_config

from hw.dispenser import DispenserIdentity, DispenserModel
from hw.wire import SimulatorRunner
from protocol.link import LinkConfig
from protocol.messages import KEEPALIVE_MIN_S, AlertPattern, Feature

pytestmark = pytest.mark.e2e
UNIT = "silence-unit"
FIRMWARE_RATE = 10.0  # the dispenser's monotonic clock: 10 firmware seconds per real second
WAIT_S = 60.0  # generous: both CPU cores may be busy; each wait ends once its condition holds


class FirmwareClock:
    """The simulator's monotonic time, running `rate` times faster than real time."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._start = time.monotonic()

    def __call__(self) -> float:
        return (time.monotonic() - self._start) * self.rate


@dataclass
class Rig:
    runner: SimulatorRunner
    clock: FirmwareClock
    stream: EventStream
    agent: AgentProcess

    def wait_model(self, what: str, predicate: object) -> None:
        try:
            self.runner.wait_for(predicate, timeout=WAIT_S)  # type: ignore[arg-type]
        except TimeoutError:
            raise AssertionError(
                f"{what}: not within {WAIT_S} s; dispenser {self.runner.snapshot()}\n"
                f"--- agent log ---\n{self.agent.log_text()[-4000:]}"
            ) from None

    def signal_agent(self, sig: signal.Signals) -> None:
        assert self.agent.process is not None
        os.kill(self.agent.process.pid, sig)  # the process this test started, by its PID


@pytest.fixture
def rig(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Rig]:
    clock = FirmwareClock(FIRMWARE_RATE)
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))  # no roll
    assert model.identity.features & Feature.HELD_PATTERN
    assert model.identity.features & Feature.AGENT_WATCHDOG
    runner = SimulatorRunner.on_pty(
        model,
        link_path=tmp_path / "tty",
        clock=clock,
        # the link's own timers stay in real time: an agent ACK is not FIRMWARE_RATE x faster
        link_config=LinkConfig(ack_timeout_s=LinkConfig().ack_timeout_s * FIRMWARE_RATE),
    )
    runner.start()
    # The simulator sleeps until its next deadline as if firmware seconds were real ones (its
    # clock is meant to be stepped, then `clock_changed()`): with nothing on the wire, as when
    # the agent hangs, it would notice the silence up to 30 real seconds late instead of 3. So
    # it looks at its running clock every 50 ms (half a firmware second).
    ticking = threading.Event()

    def tick() -> None:
        while not ticking.wait(0.05):
            runner.clock_changed()

    ticker = threading.Thread(target=tick, name="firmware-clock", daemon=True)
    ticker.start()
    stream = EventStream(mosquitto.port, UNIT)
    stream.start()
    config = write_config(
        tmp_path,
        unit_id=UNIT,
        broker_port=mosquitto.port,
        device=tmp_path / "tty",
        # the shortest watchdog; the held 08:00 dose stays held for the whole test
        extra_engine={
            "keepalive_timeout_s": KEEPALIVE_MIN_S,
            "undispensed_deadline_minutes": 180,
        },
    )
    agent = AgentProcess(config, oslo(7, 58), tmp_path / "agent.log")  # 60 x real time
    agent.start()
    rig = Rig(runner, clock, stream, agent)
    try:
        yield rig
    finally:
        if agent.process is not None and agent.process.poll() is None:
            rig.signal_agent(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        agent.stop()
        stream.stop()
        ticking.set()
        ticker.join(5)
        runner.stop()


def test_a_held_dose_shows_held_and_a_hung_agent_trips_the_silence_alarm(rig: Rig) -> None:
    rig.wait_model("the agent arms the watchdog", lambda m: m.watchdog_s == KEEPALIVE_MIN_S)
    armed = rig.clock()

    # 08:00 and no roll: the dose is held, shown at home and told to the centre
    rig.wait_model("HELD shown", lambda m: m.shown is AlertPattern.HELD)
    rig.stream.wait_for(lambda s: bool(s.of_kind("dose_held")), WAIT_S)
    assert rig.stream.of_kind("dose_held")[0]["data"]["reason"] == "no_roll"

    # while the agent runs, three watchdog timeouts of firmware time pass without an alarm
    # (counted from the arming: the hold at 08:00 falls inside them, not before them)
    rig.wait_model("three timeouts pass", lambda m: rig.clock() >= armed + 3 * KEEPALIVE_MIN_S)
    running = rig.runner.snapshot()
    assert running.silence_alarms == 0
    assert running.shown is AlertPattern.HELD

    # the agent hangs (SIGSTOP: process and pty alive, nothing runs): the dispenser alarms
    rig.signal_agent(signal.SIGSTOP)
    rig.wait_model("silence alarm", lambda m: m.silence_alarm)
    alarmed = rig.runner.snapshot()
    assert alarmed.shown is AlertPattern.FAULT
    assert alarmed.alert is AlertPattern.HELD, "the agent's pattern is kept, to restore"
    assert alarmed.silence_alarm_s is not None
    assert alarmed.agent_heard_s is not None
    assert alarmed.silence_alarm_s - alarmed.agent_heard_s >= KEEPALIVE_MIN_S
    assert alarmed.silence_alarms == 1

    # it comes back: its next frame ends the alarm, and the held dose shows again
    rig.signal_agent(signal.SIGCONT)
    rig.wait_model("alarm ended", lambda m: not m.silence_alarm)
    rig.wait_model("HELD again", lambda m: m.shown is AlertPattern.HELD)


def test_a_dead_agent_trips_the_silence_alarm(rig: Rig) -> None:
    rig.wait_model("the agent arms the watchdog", lambda m: m.watchdog_s == KEEPALIVE_MIN_S)
    rig.agent.kill()  # SIGKILL by PID: the Pi died as far as the dispenser can tell
    rig.wait_model("silence alarm", lambda m: m.silence_alarm)
    snap = rig.runner.snapshot()
    assert snap.shown is AlertPattern.FAULT
    assert snap.silence_alarms == 1
