"""Scenario files: parsing (with line-numbered errors) and playback order, timed and triggered."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_sim_wire import AgentSide

from hw.dispenser import DispenserIdentity, DispenserModel
from hw.scenario import (
    InsertRoll,
    PressButton,
    Reboot,
    Replug,
    ScenarioClock,
    ScenarioError,
    ScenarioPlayer,
    SetFault,
    SetLid,
    SetPower,
    SetWireFaults,
    TakeDose,
    Unplug,
    parse_scenario,
)
from hw.wire import SimulatorRunner
from protocol.messages import (
    ButtonId,
    ButtonPressed,
    Dispense,
    DosePresented,
    DoseTaken,
    FaultCode,
    LidChanged,
    Message,
)

ROLL_LINE = (
    "0    insert_roll roll_id=R1 patient_ref=p-abc count=28"
    " first=2026-11-23T08:00+01:00 every=12h expiry=2027-01-01"
)
EXAMPLE = f"""
# t in seconds from scenario start
{ROLL_LINE}
5    take_dose
7    press_button TAKE
8    lid open
9    power mains=off battery=80
10   fault JAM on detail="cutter stalled"
12   reboot
13   unplug
15   replug
16   wire drop_next_frames=2 ack_delay_s=500ms
on dose_presented take_dose after=3
"""


def utc(year: int, month: int, day: int, hour: int, minute: int) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp())


def test_parse_example() -> None:
    scenario = parse_scenario(EXAMPLE)
    assert [s.at_s for s in scenario.steps] == [0, 5, 7, 8, 9, 10, 12, 13, 15, 16]
    roll_step = scenario.steps[0].action
    assert isinstance(roll_step, InsertRoll)
    roll = roll_step.roll
    assert (roll.roll_id, roll.patient_ref, len(roll.sachets)) == ("R1", "p-abc", 28)
    assert roll.first_dose_utc_s == utc(2026, 11, 23, 7, 0)
    assert roll.sachets[1].intended_utc_s == utc(2026, 11, 23, 19, 0)
    assert roll.expiry_utc_s == utc(2027, 1, 1, 0, 0)
    assert [s.action for s in scenario.steps[1:]] == [
        TakeDose(),
        PressButton(ButtonId.TAKE),
        SetLid(True),
        SetPower(False, 80),
        SetFault(FaultCode.JAM, True, "cutter stalled"),
        Reboot(),
        Unplug(),
        Replug(),
        SetWireFaults((("ack_delay_s", 0.5), ("drop_next_frames", 2))),
    ]
    assert scenario.steps[1].line == 4
    (trigger,) = scenario.triggers
    assert (trigger.event, trigger.action, trigger.after_s, trigger.line) == (
        "dose_presented",
        TakeDose(),
        3.0,
        13,
    )


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("5 tak_dose", 1, "unknown action 'tak_dose'"),
        ("\n\nsoon take_dose", 3, "bad duration 'soon'"),
        ("1 fault JAMM on", 1, "unknown fault 'JAMM'"),
        ("1 fault JAM maybe", 1, "must be on or off"),
        ("1 lid ajar", 1, "expected open or closed"),
        ("1 power battery=50", 1, "missing mains="),
        ("1 power mains=on battery=150", 1, "battery must be 0..100"),
        ("# ok\n2 insert_roll roll_id=R patient_ref=p first=2026-11-23T08:00", 2, "UTC offset"),
        ("1 insert_roll roll_id=R patient_ref=p first=2026-11-23T08:00Z colour=red", 1, "colour"),
        ("1 take_dose now", 1, "unexpected 'now'"),
        ("1 wire drop_next_frame=2", 1, "unknown fault 'drop_next_frame'"),
        ("1 wire garbage_before_next=zz", 1, "must be hex"),
        ("on dose_given take_dose", 1, "unknown event 'dose_given'"),
        ("on dose_presented", 1, "expected: on <event>"),
        ('1 fault JAM on detail="open quote', 1, "quotation"),
        ("1", 1, "expected an action"),
    ],
)
def test_bad_lines_name_the_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text)
    assert info.value.line == line
    assert str(info.value).startswith(f"line {line}: ")
    assert fragment in str(info.value)


class FakeTarget:
    """Records actions; `call` runs them on a real model and tells listeners what it emitted."""

    def __init__(self) -> None:
        self.model = DispenserModel(DispenserIdentity(), lambda: 0)
        self.log: list[str] = []
        self.listeners: list[Callable[[Message], None]] = []
        self.listening = threading.Event()

    def call(self, fn: Callable[[DispenserModel], list[Message]]) -> None:
        for message in fn(self.model):
            self.log.append(type(message).__name__)
            self.emit(message)

    def emit(self, message: Message) -> None:
        for listener in list(self.listeners):
            listener(message)

    def reboot(self) -> None:
        self.log.append("reboot")

    def unplug(self) -> None:
        self.log.append("unplug")

    def replug(self) -> None:
        self.log.append("replug")

    def set_faults(self, **changes: int | float | bytes) -> None:
        self.log.append(f"wire {sorted(changes.items())}")

    def set_link(self, up: bool) -> None:
        self.log.append(f"link {'up' if up else 'down'}")

    def add_listener(self, listener: Callable[[Message], None]) -> Callable[[], None]:
        self.listeners.append(listener)
        self.listening.set()
        return lambda: self.listeners.remove(listener)


def test_timed_steps_play_in_time_order_on_a_virtual_clock() -> None:
    scenario = parse_scenario(
        "20 reboot\n5 press_button HELP\n5 lid open\n0 unplug\n3600 replug\n"
        "100 wire drop_next_frames=1\n"
    )
    clock = ScenarioClock(1000.0)
    target = FakeTarget()
    player = ScenarioPlayer(target, scenario, clock, clock.wait_until)
    player.play()
    assert target.log == [
        "unplug",
        "ButtonPressed",
        "LidChanged",
        "reboot",
        "wire [('drop_next_frames', 1)]",
        "replug",
    ]
    assert [p.at_s for p in player.played] == [0, 5, 5, 20, 100, 3600]
    assert [p.line for p in player.played] == [4, 2, 3, 1, 6, 5]
    assert clock() == 4600.0


def test_duration_stops_playback_early() -> None:
    scenario = parse_scenario("1 reboot\n10 unplug\n")
    clock = ScenarioClock()
    target = FakeTarget()
    ScenarioPlayer(target, scenario, clock, clock.wait_until).play(duration_s=5)
    assert target.log == ["reboot"]


def test_trigger_reacts_after_delay() -> None:
    scenario = parse_scenario("on dose_presented take_dose after=3\n")
    clock = ScenarioClock()
    target = FakeTarget()
    player = ScenarioPlayer(target, scenario, clock, clock.wait_until)
    player.start()
    try:
        assert target.listening.wait(5), "the player listens once it plays"
        target.emit(DosePresented(1, 0))
        (played,) = player.wait_played(1)
        assert played.action == TakeDose()
        assert played.cause == "dose_presented"
        assert played.at_s == pytest.approx(3.0)
        target.emit(ButtonPressed(ButtonId.TAKE))  # not a trigger: nothing happens
        target.emit(LidChanged(True))
        target.emit(DosePresented(2, 1))
        assert len(player.wait_played(2)) == 2
    finally:
        player.stop()
    assert not target.listeners, "stop() unregisters the trigger listener"


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[SimulatorRunner]:
    model = DispenserModel(DispenserIdentity(), lambda: 1_795_000_000)
    sim = SimulatorRunner.on_pty(model, tmp_path / "dispenser")
    sim.start()
    yield sim
    sim.stop()


def test_scenario_drives_a_real_runner(runner: SimulatorRunner) -> None:
    """The e2e shape: a roll goes in, the agent dispenses, the 'patient' takes the dose."""
    scenario = parse_scenario(
        "0 insert_roll roll_id=R7 patient_ref=p first=2026-11-23T08:00Z count=4\n"
        "on dose_presented take_dose after=50ms\n"
    )
    agent = AgentSide(runner.device_path)
    player = ScenarioPlayer(runner, scenario)
    player.start()
    try:
        runner.wait_for(lambda m: m.roll is not None)
        agent.send(Dispense(1, 42, 0))
        agent.pump_until(lambda: bool(agent.of_type(DoseTaken)))
        assert agent.of_type(DoseTaken) == [DoseTaken(42, 0)]
        assert [p.cause for p in player.wait_played(2)] == ["step", "dose_presented"]
        assert runner.snapshot().tray is None
    finally:
        player.stop()
        agent.close()
