"""Hazard #6 on real parts: frame values at the limit of their type never take the daemon down.

Erased flash reads as all ones, so a dispenser can send u64 max as its RTC or as a roll's label
times. The daemon (its own process, or in-process where the clock must be the system's) talks to
the dispenser simulator over a real pty, with a private mosquitto and a subscriber standing in for
the response centre. What must hold: the daemon stays up, the link comes fully up (the engine
sees it: it asks the dispenser for its status, and no false no-contact alarm follows), a value
that is no time is refused with a reported reason, and nothing is dispensed from a roll whose
label is unreadable — also after a restart on the state it left (no crash loop).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from broker import MosquittoBroker
from e2e_support import (
    PATIENT,
    AgentProcess,
    EventStream,
    epoch,
    oslo,
    write_config,
)

from agent.clock import SystemClock, TimeTrust
from agent.config import load_config
from agent.runtime import build_daemon
from hw.dispenser import DispenserIdentity, DispenserModel, make_roll, roll_from_dose_times
from hw.wire import SimulatorRunner, TraceEvent
from protocol.messages import DosePresented, GetStatus, Message

pytestmark = pytest.mark.e2e
UNIT = "extreme-unit-1"
U64_MAX = 2**64 - 1
WAIT_S = 60.0  # generous: both CPU cores may be busy; every wait ends once its condition holds


@dataclass
class Rig:
    runner: SimulatorRunner
    stream: EventStream
    tmp: Path
    broker: MosquittoBroker
    agent: AgentProcess | None = None
    received: list[Message] = field(default_factory=list)  # agent -> dispenser, decoded
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, predicate: object, timeout: float = WAIT_S) -> None:
        try:
            self.stream.wait_for(predicate, timeout)  # type: ignore[arg-type]
        except AssertionError as exc:
            log = self.agent.log_text()[-4000:] if self.agent else ""
            raise AssertionError(f"{exc}\n--- agent log ---\n{log}") from None

    def alive(self) -> bool:
        assert self.agent is not None
        assert self.agent.process is not None
        return self.agent.process.poll() is None

    def asked_status(self) -> bool:
        with self.lock:
            return any(isinstance(m, GetStatus) for m in self.received)


@pytest.fixture
def make_rig(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[object]:
    rigs: list[Rig] = []

    def build(model: DispenserModel) -> Rig:
        received: list[Message] = []
        lock = threading.Lock()

        def record(event: TraceEvent) -> None:
            if event.direction == "in" and event.message is not None:
                with lock:
                    received.append(event.message)

        runner = SimulatorRunner.on_pty(model, link_path=tmp_path / "tty", trace=record)
        runner.start()
        stream = EventStream(mosquitto.port, UNIT)
        stream.start()
        rig = Rig(runner, stream, tmp_path, mosquitto, received=received, lock=lock)
        rigs.append(rig)
        return rig

    yield build
    for rig in rigs:
        if rig.agent is not None:
            rig.agent.stop()
        rig.stream.stop()
        rig.runner.stop()


def start_agent(rig: Rig, extra_engine: dict[str, object] | None = None) -> AgentProcess:
    """The agent, its clock standing at 07:59:30 until the test releases it (the roll is loaded
    before the agent starts: the test releases the clock once the agent has judged it)."""
    config = write_config(
        rig.tmp,
        unit_id=UNIT,
        broker_port=rig.broker.port,
        device=rig.tmp / "tty",
        extra_engine=extra_engine,
    )
    agent = AgentProcess(config, oslo(7, 59, 30), rig.tmp / "agent.log", release_on_link=False)
    agent.start()
    rig.agent = agent
    return agent


def test_dispenser_rtc_of_u64_max_is_refused_and_the_link_comes_fully_up(
    make_rig: object,
) -> None:
    """NTP-synchronised agent: the RTC is reported as no time and corrected; doses go on."""
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: U64_MAX)
    model.insert_roll(make_roll("R-1", PATIENT, epoch(oslo(8, 0)), 12 * 3600, 28))
    rig: Rig = make_rig(model)  # type: ignore[operator]

    def take(message: Message) -> None:
        if isinstance(message, DosePresented):
            rig.runner.call(lambda m: m.take_dose())

    rig.runner.add_listener(take)
    agent = start_agent(rig)
    rig.wait(lambda s: bool(s.of_kind("dispenser_clock_invalid")))
    [invalid] = rig.stream.of_kind("dispenser_clock_invalid")
    assert invalid["data"]["rtc_utc_s"] == U64_MAX
    rig.wait(lambda s: bool(s.of_kind("roll_inserted")))
    agent.release()
    # the link is up for the engine too: it asks for the status, and the 08:00 dose is given
    rig.runner.wait_for(lambda m: rig.asked_status(), timeout=WAIT_S)
    rig.wait(lambda s: any(o["outcome"] == "taken" for o in s.outcomes()))
    assert rig.stream.of_kind("no_contact") == []
    # the dispenser's clock was set from the agent's time (the scaled clock's morning)
    rig.runner.wait_for(
        lambda m: epoch(oslo(7, 55)) <= m.now_utc_s() <= epoch(oslo(12, 0)), timeout=WAIT_S
    )
    assert rig.alive()


def test_dispenser_rtc_of_u64_max_is_never_taken_as_the_time_without_ntp(
    make_rig: object,
) -> None:
    """No NTP yet: an RTC that is no time is not adopted; the unit stays untrusted, says so,
    and the link is fully up."""
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: U64_MAX)
    rig: Rig = make_rig(model)  # type: ignore[operator]
    config = load_config(
        write_config(rig.tmp, unit_id=UNIT, broker_port=rig.broker.port, device=rig.tmp / "tty")
    )
    clock = SystemClock(synced_flag=rig.tmp / "no-ntp-yet")  # the flag file never appears

    async def scenario() -> None:
        daemon = build_daemon(config, clock=clock)
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.to_thread(
                rig.wait,
                lambda s: bool(
                    s.of_kind("dispenser_clock_invalid") and s.of_kind("clock_untrusted")
                ),
            )
            await asyncio.to_thread(rig.runner.wait_for, lambda m: rig.asked_status(), WAIT_S)
            assert not task.done()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            daemon.store.close()

    asyncio.run(scenario())
    assert clock.now().trust is TimeTrust.UNTRUSTED
    assert abs(clock.now().utc.timestamp() - time.time()) < 60  # not the RTC's "time"
    assert rig.stream.of_kind("no_contact") == []


def test_roll_with_u64_max_label_times_is_refused_and_a_restart_on_its_state_stays_up(
    make_rig: object,
) -> None:
    """The crash loop of hazard #6: such a roll used to raise in roll_check, after it was stored,
    so every start crashed. Refused (HIGH roll_rejected), nothing dispensed, and the daemon
    killed and started again on the state it left stays up."""
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
    model.insert_roll(roll_from_dose_times("R-9", PATIENT, [U64_MAX] * 4, U64_MAX))
    rig: Rig = make_rig(model)  # type: ignore[operator]
    # the 08:00 slot ends a minute after its time (the undispensed deadline), not ten
    agent = start_agent(rig, extra_engine={"undispensed_deadline_minutes": 1})
    rig.wait(lambda s: bool(s.of_kind("roll_rejected")))
    [rejected] = rig.stream.of_kind("roll_rejected")
    assert rejected["priority"] == "high"
    assert rejected["data"]["reason"] == "roll_label_invalid"
    resume_at = agent.sim_now()  # the clock still stands at 07:59:30
    agent.kill()
    with rig.lock:
        rig.received.clear()
    agent.start_at = resume_at
    agent.start(held=True)  # the clock stands until the restarted agent has linked
    # by seq, as the centre counts: the first start's events may come again (acknowledged,
    # not yet marked delivered at the kill), right behind the new start's own
    rig.wait(lambda s: len({e["seq"] for e in s.of_kind("agent_started")}) == 2)
    rig.runner.wait_for(lambda m: rig.asked_status(), timeout=WAIT_S)
    agent.release()
    # the 08:00 slot ends without a dispense, with the agent up throughout
    rig.wait(lambda s: bool(s.outcomes()))
    assert rig.stream.outcomes()[0]["slot_id"] == "2026-11-23T08:00"
    assert rig.runner.snapshot().dispensed == ()
    assert rig.alive(), agent.log_text()[-4000:]
