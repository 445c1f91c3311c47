"""The agent's serial driver against the dispenser simulator over a real pty.

Handshake, every message type in both directions, a retransmit after an injected drop, no double
execution of a duplicated DISPENSE, and recovery when the pty is closed and reopened (USB unplug).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from drivers.retry import RetryPolicy
from drivers.serial_port import SerialTransport
from drivers.session import DispenserSession, Reply, SessionDown, SessionUp
from hw.dispenser import DispenserIdentity, DispenserModel, make_roll
from hw.wire import SimulatorRunner
from protocol.messages import (
    FACTORY_RESET_CONFIRM,
    AlertPattern,
    ButtonId,
    ButtonPressed,
    Capabilities,
    Command,
    CommandResult,
    Discard,
    Dispense,
    DosePresented,
    DoseRetained,
    DoseTaken,
    FactoryReset,
    FaultChanged,
    FaultCode,
    GetStatus,
    GetTime,
    LidChanged,
    LowSupply,
    Message,
    PowerChanged,
    ResultCode,
    Retain,
    RollInserted,
    RollRemoved,
    SachetRead,
    SetAlert,
    SetLock,
    SetTime,
    Status,
    TimeReport,
)
from protocol.vectors import SAMPLES

T0 = 1_795_000_000
WAIT_S = 10.0
FAST = RetryPolicy(initial_delay_s=0.01, max_delay_s=0.1, attempt_timeout_s=2.0)


@dataclass
class Received:
    """Dispenser events reaching the agent, in order, awaitable from the test's loop."""

    messages: list[Message] = field(default_factory=list)
    links: list[SessionUp | SessionDown] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_message(self, message: Message) -> None:
        self.messages.append(message)
        self.changed.set()

    def on_link(self, report: SessionUp | SessionDown) -> None:
        self.links.append(report)
        self.changed.set()

    async def until(self, predicate: Callable[[Received], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()

    def of(self, kind: type[Message]) -> list[Message]:
        return [m for m in self.messages if isinstance(m, kind)]


@asynccontextmanager
async def rig(tmp_path: Path) -> AsyncIterator[tuple[SimulatorRunner, DispenserSession, Received]]:
    model = DispenserModel(DispenserIdentity(low_supply_threshold=2), rtc_utc_s=lambda: T0)
    runner = SimulatorRunner.on_pty(model, link_path=tmp_path / "tty")
    runner.start()
    got = Received()
    session = DispenserSession(
        lambda: SerialTransport(str(tmp_path / "tty")),
        on_message=got.on_message,
        on_link=got.on_link,
        backoff=FAST,
    )
    task = asyncio.create_task(session.run())
    try:
        await got.until(lambda r: any(isinstance(x, SessionUp) for x in r.links))
        yield runner, session, got
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.to_thread(runner.stop)


def run(scenario: Callable[[], object]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(60):
            await scenario()  # type: ignore[misc]

    asyncio.run(bounded())


def test_handshake_reports_the_simulators_capabilities(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as (_runner, session, got):
            [up] = [x for x in got.links if isinstance(x, SessionUp)]
            assert isinstance(up.capabilities, Capabilities)
            assert (up.capabilities.model, up.capabilities.serial_number) == ("SIM-100", "SIM0001")
            assert session.capabilities == up.capabilities

    run(scenario)


def test_every_message_type_both_ways(tmp_path: Path) -> None:
    """All ten commands reach the simulator and get their reply; all fifteen dispenser
    messages reach the agent (replies through request(), events through on_message)."""

    async def scenario() -> None:
        async with rig(tmp_path) as (runner, session, got):
            roll = make_roll("R1", "p-1", T0, 3600, count=4, expiry_utc_s=T0 + 86400)
            runner.call(lambda m: m.insert_roll(roll))
            await got.until(lambda r: bool(r.of(SachetRead)))
            replies: dict[str, Reply] = {}
            commands: list[Command] = [
                Dispense(0, 1, 0),
                Retain(0, 1),
                Discard(0, 2, 1),
                SetAlert(0, AlertPattern.REMINDER),
                SetLock(0, False),
                GetStatus(0),
                GetTime(0),
                SetTime(0, T0 + 60),
                FactoryReset(0, FACTORY_RESET_CONFIRM),
            ]
            for command in commands:
                replies[type(command).__name__] = await session.request(command)
            assert isinstance(replies["GetStatus"], Status)
            assert isinstance(replies["GetTime"], TimeReport)
            for name in ("Dispense", "Retain", "Discard", "SetAlert", "SetLock", "SetTime"):
                assert replies[name] == CommandResult(replies[name].req_id, ResultCode.OK, ""), name
            runner.call(lambda m: m.press_button(ButtonId.HELP))
            runner.call(lambda m: m.set_lid(True))
            runner.call(lambda m: m.set_power(False, 80))
            runner.call(lambda m: m.set_fault(FaultCode.JAM, True, "stuck"))
            runner.call(lambda m: m.remove_roll())
            await got.until(lambda r: bool(r.of(RollRemoved)))
            kinds = {type(m) for m in got.messages}
            expected = {
                RollInserted,
                SachetRead,
                DosePresented,
                DoseRetained,
                ButtonPressed,
                LidChanged,
                PowerChanged,
                FaultChanged,
                RollRemoved,
                LowSupply,
            }
            assert expected <= kinds, expected - kinds
            # DoseTaken: a fresh dispense and the patient lifts it out
            runner.call(lambda m: m.set_fault(FaultCode.JAM, False, ""))
            runner.call(lambda m: m.set_lid(False))
            runner.call(lambda m: m.insert_roll(roll))
            await got.until(lambda r: len(r.of(RollInserted)) == 2)
            assert (await session.request(Dispense(0, 3, 0))).result is ResultCode.OK  # type: ignore[union-attr]
            runner.call(lambda m: m.take_dose())
            await got.until(lambda r: bool(r.of(DoseTaken)))
            # Capabilities, CommandResult, Status, TimeReport arrived as replies; the rest as events
            all_types = {type(m) for m in SAMPLES if m.DIRECTION.value == "to_agent"}
            seen = kinds | {DoseTaken, Capabilities, CommandResult, Status, TimeReport}
            assert all_types <= seen, all_types - seen

    run(scenario)


def test_dropped_command_is_retransmitted_and_executed_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as (runner, session, _got):
            runner.call(lambda m: m.insert_roll(make_roll("R1", "p-1", T0, count=3)))
            runner.set_faults(drop_incoming_frames=1)  # the sim "does not hear" the first try
            reply = await session.request(Dispense(0, 7, 0))
            assert reply == CommandResult(reply.req_id, ResultCode.OK, "")
            assert runner.snapshot().dispensed == ((7, 0),)
            assert runner.stats().dropped_in == 1
            assert session.stats.link is not None
            assert session.stats.link.retransmits >= 1

    run(scenario)


def test_duplicated_dispense_dispenses_once(tmp_path: Path) -> None:
    """The same DISPENSE twice (a retry after a lost reply): ALREADY_DONE, one physical cut."""

    async def scenario() -> None:
        async with rig(tmp_path) as (runner, session, _got):
            runner.call(lambda m: m.insert_roll(make_roll("R1", "p-1", T0, count=3)))
            first = await session.request(Dispense(0, 9, 0))
            again = await session.request(Dispense(0, 9, 0))
            assert first.result is ResultCode.OK  # type: ignore[union-attr]
            assert again.result is ResultCode.ALREADY_DONE  # type: ignore[union-attr]
            assert runner.snapshot().dispensed == ((9, 0),)

    run(scenario)


def test_recovers_when_the_pty_is_closed_and_reopened(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as (runner, session, got):
            runner.unplug()
            await got.until(lambda r: any(isinstance(x, SessionDown) for x in r.links))
            assert not session.connected
            runner.replug()
            await got.until(lambda r: sum(isinstance(x, SessionUp) for x in r.links) == 2)
            reply = await session.request(GetStatus(0))
            assert isinstance(reply, Status)

    run(scenario)


def test_garbage_on_the_wire_is_counted_and_survived(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as (runner, session, got):
            runner.set_faults(garbage_before_next=bytes(range(1, 200)) * 2, corrupt_next_frames=1)
            runner.call(lambda m: m.press_button(ButtonId.TAKE))
            await got.until(lambda r: bool(r.of(ButtonPressed)))
            assert session.stats.frames_rejected >= 1
            assert isinstance(await session.request(GetStatus(0)), Status)

    run(scenario)
