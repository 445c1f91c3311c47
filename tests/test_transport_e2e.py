"""The same end-to-end scenarios over both transports: serial (a pty) and BLE (bleak's BlueZ
backend against the simulator's BLE front on a private D-Bus bus).

Everything above the transport is the production agent process; only the config's `dispenser`
section differs. Scenarios: a dose taken, a dose missed, a wrong roll, and the link dropped in the
middle of a dose and recovered, where the dose outcome must be reported exactly once.
Taken, missed and wrong roll over serial are tests/test_e2e.py's; the drop runs over both here.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ble_support import next_address, private_bus
from broker import MosquittoBroker
from e2e_support import (
    OTHER_PATIENT,
    PATIENT,
    AgentOptions,
    AgentProcess,
    EventStream,
    epoch,
    oslo,
    write_config,
)

from hw.ble import BleDispenser, PrivateBus
from hw.dispenser import DispenserIdentity, DispenserModel, make_roll
from hw.wire import SimulatorRunner
from protocol.messages import DosePresented, Message

__all__ = ["private_bus"]

pytestmark = pytest.mark.e2e
UNIT = "e2e-link-1"
TRANSPORTS = ("serial", "ble")
# The serial runs of these scenarios are tests/test_e2e.py's (same steps, same assertions): run
# here over BLE only, to keep the suite short.
BLE_ONLY = pytest.mark.parametrize("rig", ["ble"], indirect=True)
# The clock stands at 07:59:30 until the test has the roll in and announced (Rig.release): the
# 08:00 dose is due half a simulated minute later, whatever the machine's load.
HELD_AT_0759 = pytest.mark.agent(start_at=oslo(7, 59, 30), held=True)


@dataclass
class Rig:
    transport: str
    runner: SimulatorRunner
    stream: EventStream
    agent: AgentProcess
    drop: Callable[[], None]  # the link is lost (cable pulled / radio out of range)
    restore: Callable[[], None]
    front: BleDispenser | None = None

    def wait(self, predicate: Callable[[EventStream], bool], timeout: float = 20.0) -> None:
        try:
            self.stream.wait_for(predicate, timeout)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n--- agent log ---\n{self.agent.log_text()[-4000:]}"
            ) from None

    def link_is(self, state: str) -> None:
        self.wait(lambda s: s.retained.get("state/dispenser", {}).get("link") == state)

    def insert_roll(self, patient_ref: str = PATIENT, roll_id: str = "R-1") -> None:
        roll = make_roll(roll_id, patient_ref, epoch(oslo(8, 0)), 12 * 3600, 28)
        self.runner.call(lambda model: model.insert_roll(roll))

    def release(self) -> None:
        """The roll is announced (checked and accepted): the held clock runs."""
        self.wait(lambda s: bool(s.of_kind("roll_inserted")))
        self.agent.release()

    def on_presented(self, react: Callable[[], None]) -> None:
        def listener(message: Message) -> None:
            if isinstance(message, DosePresented):
                react()

        self.runner.add_listener(listener)


@pytest.fixture(params=TRANSPORTS)
def rig(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Rig]:
    transport: str = request.param
    options = AgentOptions.of(request, oslo(7, 56))
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
    config = write_config(
        tmp_path,
        unit_id=UNIT,
        broker_port=mosquitto.port,
        device=tmp_path / "tty",
        extra_engine=options.engine,
    )
    front: BleDispenser | None = None
    if transport == "serial":
        runner = SimulatorRunner.on_pty(model, link_path=tmp_path / "tty")
        drop, restore = runner.unplug, runner.replug
    else:
        bus: PrivateBus = request.getfixturevalue("private_bus")
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)  # the agent inherits it
        front = BleDispenser(model, bus.address, address=next_address())
        runner = front.runner
        raw = json.loads(config.read_text(encoding="utf-8"))
        raw["dispenser"] = {
            "transport": "ble",
            "address": front.address,
            "scan_timeout_s": 2,
            "connect_timeout_s": 3,
        }
        config.write_text(json.dumps(raw), encoding="utf-8")
        ble = front
        drop, restore = (lambda: ble.set_in_range(False)), (lambda: ble.set_in_range(True))
    if front is not None:
        front.start()
    else:
        runner.start()
    stream = EventStream(mosquitto.port, UNIT)
    stream.start()
    agent = AgentProcess(
        config, options.start_at, tmp_path / "agent.log", release_on_link=not options.held
    )
    agent.start()
    try:
        yield Rig(transport, runner, stream, agent, drop, restore, front)
    finally:
        agent.stop()
        stream.stop()
        if front is not None:
            front.stop()
        else:
            runner.stop()


@BLE_ONLY
@HELD_AT_0759
def test_dose_taken(rig: Rig) -> None:
    rig.link_is("up")
    rig.on_presented(lambda: rig.runner.call(lambda model: model.take_dose()))
    rig.insert_roll()
    rig.release()
    rig.wait(lambda s: bool(s.outcomes()))
    [outcome] = rig.stream.outcomes()
    assert (outcome["slot_id"], outcome["outcome"]) == ("2026-11-23T08:00", "taken")
    assert len(rig.runner.snapshot().dispensed) == 1


# As in tests/test_e2e.py: the clock stands at 07:59:30 until the roll is in, grace is a minute.
@BLE_ONLY
@pytest.mark.agent(start_at=oslo(7, 59, 30), engine={"grace_minutes": 1}, held=True)
def test_dose_missed(rig: Rig) -> None:
    rig.link_is("up")
    rig.insert_roll()
    rig.release()
    rig.wait(lambda s: bool(s.outcomes()))
    [outcome] = rig.stream.outcomes()
    assert (outcome["slot_id"], outcome["outcome"]) == ("2026-11-23T08:00", "missed")
    rig.runner.wait_for(lambda model: len(model.bin) == 1)


# As in tests/test_e2e.py: the clock stands at 07:59:30 until the roll is refused and locked;
# the undispensed deadline is a minute.
@BLE_ONLY
@pytest.mark.agent(start_at=oslo(7, 59, 30), engine={"undispensed_deadline_minutes": 1}, held=True)
def test_wrong_roll_is_refused_and_never_dispensed(rig: Rig) -> None:
    rig.link_is("up")
    rig.insert_roll(patient_ref=OTHER_PATIENT, roll_id="R-foreign")
    rig.wait(lambda s: bool(s.of_kind("wrong_roll")))
    rig.runner.wait_for(lambda model: model.locked)
    rig.agent.release()
    rig.wait(lambda s: bool(s.outcomes()), timeout=90)
    # the roll was refused before the dose's time (the clock stood until then): so is the dose
    [outcome] = rig.stream.outcomes()
    assert (outcome["outcome"], outcome["reason"]) == ("refused", "foreign_roll"), outcome
    assert rig.runner.snapshot().dispensed == ()


@HELD_AT_0759
def test_link_drop_mid_dose_neither_loses_nor_duplicates_the_outcome(rig: Rig) -> None:
    """The link goes the moment the dose is presented (the DosePresented frame in flight) and
    comes back; the patient takes the dose. One dispense, one outcome: taken."""
    rig.link_is("up")
    presented = threading.Event()

    def lose_the_link() -> None:
        if not presented.is_set():
            presented.set()
            rig.drop()

    rig.on_presented(lose_the_link)
    rig.insert_roll()
    rig.release()
    assert presented.wait(30), "no dose presented"
    rig.link_is("down")
    rig.restore()
    rig.link_is("up")
    rig.runner.call(lambda model: model.take_dose())
    rig.wait(lambda s: bool(s.outcomes()), timeout=90)
    [outcome] = rig.stream.outcomes()
    assert (outcome["slot_id"], outcome["outcome"]) == ("2026-11-23T08:00", "taken")
    assert len(rig.runner.snapshot().dispensed) == 1


@BLE_ONLY
@HELD_AT_0759
def test_a_dose_taken_during_a_long_ble_outage_is_reported_taken_once(rig: Rig) -> None:
    """Over BLE the firmware runs on while out of range: the patient takes the dose during an
    outage longer than the link's whole retransmit budget (5 x 250 ms). The DoseTaken waits in the
    firmware for the next connection (SPEC, GATT profile) instead of being given up."""
    rig.link_is("up")
    presented = threading.Event()

    def lose_the_link() -> None:
        if not presented.is_set():
            presented.set()
            rig.drop()

    rig.on_presented(lose_the_link)
    rig.insert_roll()
    rig.release()
    assert presented.wait(30), "no dose presented"
    rig.link_is("down")
    rig.runner.call(lambda model: model.take_dose())
    assert rig.front is not None
    # Two full scans that found nothing: the outage outlasts the retransmit budget.
    rig.front.wait_for_stats(lambda s: s.scans >= 3, timeout=90)
    rig.restore()
    rig.link_is("up")
    rig.wait(lambda s: bool(s.outcomes()), timeout=90)
    [outcome] = rig.stream.outcomes()
    assert (outcome["slot_id"], outcome["outcome"]) == ("2026-11-23T08:00", "taken")
    assert len(rig.runner.snapshot().dispensed) == 1
    assert rig.runner.stats().failures == 0  # the firmware gave nothing up


@pytest.mark.parametrize("rig", ["serial"], indirect=True)
@HELD_AT_0759
@pytest.mark.xfail(
    strict=True,
    reason=(
        "gap: the cable is pulled as the dose is presented and the patient takes it before it is "
        "plugged back; the simulated firmware is off while unplugged and reboots on replug, so "
        "neither the Dispense reply, DosePresented nor DoseTaken ever arrives. The agent reports "
        "'missed' with deviation 'dose_not_presented' (reason dispense_unconfirmed) for a dose "
        "that was presented and taken. Needs SPEC v1.1's rule for events the firmware gave up on "
        "(kept across a reboot) or an outcome that says 'unknown' instead of 'not presented'."
    ),
)
def test_a_dose_taken_while_the_serial_cable_is_out_is_not_reported_missed(rig: Rig) -> None:
    rig.link_is("up")
    presented = threading.Event()

    def lose_the_link() -> None:
        if not presented.is_set():
            presented.set()
            rig.drop()

    rig.on_presented(lose_the_link)
    rig.insert_roll()
    rig.release()
    assert presented.wait(30), "no dose presented"
    rig.link_is("down")
    rig.runner.call(lambda model: model.take_dose())
    rig.restore()
    rig.link_is("up")
    rig.wait(lambda s: bool(s.outcomes()), timeout=90)
    [outcome] = rig.stream.outcomes()
    assert outcome["outcome"] != "missed"
