"""The dose engine on a virtual clock, wired to the firmware model (`hw.dispenser`) in process.

Unlike `test_engine.Rig` (a small scripted dispenser), the model has a real bin with a capacity,
refuses a cut into a full bin, keeps the tray, and announces what the firmware announces; so a
test sees what the dispenser physically did (`model.dispensed`, `model.discarded`, `model.bin`).
Used by the pause tests (tests/test_pause_safety.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

from agent.clock import TimeTrust, VirtualClock
from agent.engine.engine import DoseEngine, EngineState
from agent.engine.schedule import Schedule, ScheduleRule, parse_time
from agent.engine.types import (
    Action,
    Binding,
    CommandOutcome,
    Emit,
    EngineConfig,
    EngineEvent,
    EngineInput,
    FromDispenser,
    LinkUp,
    RecordOutcome,
    SendCommand,
    SetBinding,
    SetSchedule,
    Tick,
)
from hw.dispenser import DEFAULT_FEATURES, DispenserIdentity, DispenserModel, SimRoll, SimSachet
from protocol import PROTOCOL_VERSION
from protocol.messages import (
    Capabilities,
    CommandResult,
    Hello,
    Message,
    Status,
    TimeReport,
)

PATIENT = "patient-7f3a"
OSLO = ZoneInfo("Europe/Oslo")


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


def dose_instants(times: Sequence[str], first_day: date, days: int) -> list[datetime]:
    """The UTC instants of local dose `times` (Europe/Oslo) on `days` days from `first_day`,
    computed with zoneinfo here (not by the schedule code under test)."""
    out: list[datetime] = []
    for n in range(days):
        day = first_day + timedelta(days=n)
        for text in sorted(times):
            hours, minutes = (int(part) for part in text.split(":"))
            out.append(datetime.combine(day, time(hours, minutes), tzinfo=OSLO).astimezone(UTC))
    return out


def make_roll(
    roll_id: str,
    instants: Iterable[datetime],
    *,
    patient: str = PATIENT,
    expiry: datetime | None = None,
    next_index: int = 0,
) -> SimRoll:
    sachets = tuple(SimSachet(i, int(at.timestamp()), patient) for i, at in enumerate(instants))
    last = datetime.fromtimestamp(sachets[-1].intended_utc_s, UTC) if sachets else utc(2030, 1, 1)
    expires = expiry if expiry is not None else last + timedelta(days=30)
    return SimRoll(roll_id, patient, sachets, int(expires.timestamp()), next_index)


class ModelRig:
    """Engine + virtual clock + firmware model; every action is kept with the instant it came."""

    def __init__(
        self,
        times: Sequence[str],
        start: datetime,
        *,
        config: EngineConfig | None = None,
        features: int = DEFAULT_FEATURES,
        bin_capacity: int = 30,
    ) -> None:
        self.times = tuple(times)
        self.clock = VirtualClock(start, trust=TimeTrust.SYNCHRONISED)
        self.config = config or EngineConfig()
        self.model = DispenserModel(
            DispenserIdentity(features=features, bin_capacity=bin_capacity),
            lambda: int(self.clock.now().utc.timestamp()),
        )
        rule = ScheduleRule(date(2026, 1, 1), tuple(parse_time(t) for t in self.times))
        self.schedule = Schedule.build("Europe/Oslo", [rule])
        self.engine = DoseEngine(self.config, EngineState.initial(), self.clock.now())
        self.log: list[tuple[datetime, Action]] = []
        self._req_id = 0

    # -- feeding ------------------------------------------------------------------------------

    def feed(self, *inputs: EngineInput) -> list[Action]:
        """Step the engine on `inputs` and on everything their commands cause, in order."""
        queue: deque[EngineInput] = deque(inputs)
        produced: list[Action] = []
        while queue:
            now = self.clock.now()
            actions = self.engine.step(queue.popleft(), now)
            produced += actions
            self.log += [(now.utc, a) for a in actions]
            for action in actions:
                if isinstance(action, SendCommand):
                    queue.extend(self._execute(action))
        return produced

    def _execute(self, send: SendCommand) -> list[EngineInput]:
        self._req_id = (self._req_id + 1) & 0xFFFF
        stamped = cast(Message, replace(cast(Any, send.command), req_id=self._req_id))
        out: list[EngineInput] = []
        for message in self.model.handle(stamped):
            if isinstance(message, CommandResult | Status | Capabilities | TimeReport):
                out.append(CommandOutcome(send.correlation, message))
            else:
                out.append(FromDispenser(message))
        return out

    def physical(self, messages: Iterable[Message]) -> list[Action]:
        return self.feed(*(FromDispenser(m) for m in messages))

    def link_up(self) -> None:
        self._req_id += 1
        caps, *announced = self.model.handle(Hello(self._req_id, PROTOCOL_VERSION, "rig"))
        assert isinstance(caps, Capabilities)
        self.feed(LinkUp(caps), *(FromDispenser(m) for m in announced))

    def install(self, roll: SimRoll | None) -> None:
        self.feed(SetBinding(Binding(PATIENT)), SetSchedule(self.schedule, 1))
        self.link_up()
        if roll is not None:
            self.physical(self.model.insert_roll(roll))

    def restart(self) -> None:
        """The agent restarts from its persisted state (through JSON) and reconnects."""
        state = EngineState.from_json(self.engine.state.to_json())
        self.engine = DoseEngine(self.config, state, self.clock.now())
        self.link_up()

    def take(self) -> None:
        assert self.model.tray is not None, "nothing in the tray"
        self.physical(self.model.take_dose())

    # -- time ---------------------------------------------------------------------------------

    def run_until(self, target: datetime, *, take: bool = False) -> None:
        """Advance to `target` (wall), ticking at every engine deadline on the way; with `take`
        the patient lifts every dose out of the tray as soon as it is presented."""
        while True:
            while take and self.model.tray is not None:
                self.take()  # a take may bring the next dose out at once (travel)
            now = self.clock.now()
            remaining = (target - now.utc).total_seconds()
            deadline = self.engine.next_deadline(now)
            if deadline is not None and deadline - now.mono <= remaining:
                self.clock.advance(max(0.0, deadline - now.mono))
                self.feed(Tick())
                continue
            self.clock.advance(max(0.0, remaining))
            self.feed(Tick())
            while take and self.model.tray is not None:
                self.take()
            return

    # -- inspection ---------------------------------------------------------------------------

    def events(self, kind: str | None = None) -> list[EngineEvent]:
        return [
            a.event for _, a in self.log if isinstance(a, Emit) and kind in (None, a.event.kind)
        ]

    def events_at(self, kind: str) -> list[tuple[datetime, EngineEvent]]:
        return [(at, a.event) for at, a in self.log if isinstance(a, Emit) and a.event.kind == kind]

    def high(self) -> list[EngineEvent]:
        return [e for e in self.events() if e.priority.value == "high"]

    def outcomes(self) -> dict[str, RecordOutcome]:
        found: dict[str, RecordOutcome] = {}
        for _, action in self.log:
            if isinstance(action, RecordOutcome):
                assert action.slot_id not in found, f"second outcome for {action.slot_id}"
                found[action.slot_id] = action
        return found
