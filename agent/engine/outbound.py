"""Outbound dispenser commands: what is in flight (by correlation), when a failed command may be
tried again, which presented doses must go back into the bin, and the dispense-id counter.

A component of the dose engine: plain state with small operations, no I/O, no clock. The engine
decides *what* to send; this keeps track of what was sent and what is still owed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.engine.types import Action, SendCommand
from protocol.messages import Message

U32_MAX = 0xFFFF_FFFF
RECENT_DISPENSES = 16  # settled dispense ids remembered for late DoseTaken/DosePresented
# A Retain refused BIN_FULL is sent again only after the dispenser reports room, and at most this
# many times in all for one dose: a dispenser that says "room" and refuses again is not believed
# for ever (the dose stays reported stuck in the tray, for a person to remove).
RETAIN_BIN_FULL_TRIES = 3
# A Discard answered BUSY (the lid open, a movement under way; nothing moved) is sent again after
# the command retry, at most this many times for one sachet; the dispenser reporting its lid
# closed allows as many again. Then the slot it blocks is held (`discard_refused`), never waited
# for in silence.
DISCARD_BUSY_TRIES = 3


@dataclass(frozen=True, slots=True)
class PendingCommand:
    """A command sent to the dispenser whose outcome has not come back yet."""

    kind: str  # dispense | discard | retain | set_alert | set_lock | get_status | keep_alive
    command: Message
    slot_id: str | None = None
    dispense_id: int | None = None


@dataclass(slots=True)
class Outbound:
    starts: int  # engine starts: keeps correlations unique across restarts
    # u32, never reused: the engine's position in the unit's one dispense-id counter, which the
    # shell keeps in its store across restarts and resets (agent/daemon.py)
    next_dispense_id: int
    pending: dict[str, PendingCommand] = field(default_factory=dict)
    correlations: int = 0
    retry_at: float | None = None  # monotonic: no new command before then (a command failed)
    retain_queue: list[int] = field(default_factory=list)  # dispense ids owed to the bin
    retaining: dict[int, str] = field(default_factory=dict)  # Retain in flight: id -> slot id
    retain_refusals: dict[int, int] = field(default_factory=dict)  # id -> BIN_FULL answers
    recent: dict[int, str] = field(default_factory=dict)  # dispense id -> slot id, settled
    # dispense id -> the alert its slot's outcome raised (missed ...), for the events that
    # refer to it later (dose_taken_late); the same lifetime as `recent`
    recent_alerts: dict[int, str] = field(default_factory=dict)
    # dispense id -> the sachet index it was given: a late report naming another is a phantom;
    # the same lifetime as `recent`
    recent_sachets: dict[int, int] = field(default_factory=dict)
    # those of `recent` whose dose may still lie in the tray (settled neither taken nor taken
    # back, the tray not seen empty since): stored (EngineState.left_in_tray), so that their
    # removal after a restart is still a late intake, never a phantom
    in_tray: set[int] = field(default_factory=set)
    # those of `recent` whose DoseTaken was handled (taken, packed for a trip, taken late): the
    # same report again is a repeat, never a second intake
    taken: set[int] = field(default_factory=set)
    # those of `recent` whose DosePresented was handled (before its slot settled, or late):
    # the same report again is a repeat, no news of a dose in the tray
    presented: set[int] = field(default_factory=set)
    # dispense id -> (slot id, sachet index) of the doses taken back into the bin and the
    # sachets discarded (slot id None) whose DoseRetained was handled, oldest first, at most
    # RECENT_DISPENSES: the same report again is a repeat, never a second place in the bin
    retained: dict[int, tuple[str | None, int]] = field(default_factory=dict)

    def send(
        self,
        actions: list[Action],
        kind: str,
        command: Message,
        slot_id: str | None = None,
        dispense_id: int | None = None,
    ) -> None:
        self.correlations += 1
        correlation = f"{kind}:{self.starts}:{self.correlations}"
        self.pending[correlation] = PendingCommand(kind, command, slot_id, dispense_id)
        actions.append(SendCommand(command, correlation))

    def owe_retain(self, dispense_id: int) -> None:
        if dispense_id not in self.retain_queue:
            self.retain_queue.append(dispense_id)

    def taken_doses(self) -> list[tuple[int, str, int]]:
        """(dispense id, slot id, sachet index) of each settled dose whose DoseTaken was handled,
        oldest first: what a restart must still know to take its report again as a repeat."""
        return [
            (d, slot_id, self.recent_sachets[d])
            for d, slot_id in self.recent.items()
            if d in self.taken and d in self.recent_sachets
        ]

    def retains_owed(self) -> bool:
        """A dose must go back from the tray into the bin (queued or on its way)."""
        return bool(self.retain_queue or self.retaining)

    def ids_exhausted(self) -> bool:
        """Every u32 dispense id is used (4e9 doses: not in a lifetime; a damaged counter can
        get here): nothing more may be cut, the engine holds instead (DISPENSE_IDS_EXHAUSTED)."""
        return self.next_dispense_id > U32_MAX

    def take_dispense_id(self) -> int:
        dispense_id = self.next_dispense_id
        if dispense_id > U32_MAX:  # the engine asks ids_exhausted() first
            raise RuntimeError("dispense ids exhausted (u32)")
        self.next_dispense_id += 1
        return dispense_id

    def in_flight(self) -> tuple[str, ...]:
        """Kinds of the commands awaiting an outcome, in the order they were sent."""
        return tuple([p.kind for p in self.pending.values()])

    def remember_settled(
        self,
        dispense_id: int,
        slot_id: str,
        sachet_index: int | None,
        alert_id: str | None = None,
        in_tray: bool = False,
        taken: bool = False,
        presented: bool = False,
    ) -> None:
        self.recent[dispense_id] = slot_id
        if taken:
            self.taken.add(dispense_id)
        if presented:
            self.presented.add(dispense_id)
        if sachet_index is not None:
            self.recent_sachets[dispense_id] = sachet_index
        if alert_id is not None:
            self.recent_alerts[dispense_id] = alert_id
        if in_tray:
            self.in_tray.add(dispense_id)
        while len(self.recent) > RECENT_DISPENSES:
            oldest = next(iter(self.recent))
            del self.recent[oldest]
            self.recent_alerts.pop(oldest, None)
            self.recent_sachets.pop(oldest, None)
            self.in_tray.discard(oldest)
            self.taken.discard(oldest)
            self.presented.discard(oldest)

    def remember_retained(self, dispense_id: int, slot_id: str | None, sachet_index: int) -> None:
        self.retained[dispense_id] = (slot_id, sachet_index)
        while len(self.retained) > RECENT_DISPENSES:
            del self.retained[next(iter(self.retained))]

    def retained_doses(self) -> list[tuple[int, str | None, int]]:
        """(dispense id, slot id, sachet index) of each DoseRetained handled, oldest first."""
        return [(d, slot_id, index) for d, (slot_id, index) in self.retained.items()]

    def left_in_tray(self) -> list[tuple[int, str, int, str | None, bool]]:
        """(dispense id, slot id, sachet index, alert id, its DosePresented handled) of each
        settled dose that may still lie in the tray, oldest first: what a restart must still
        know of them."""
        return [
            (d, slot_id, self.recent_sachets[d], self.recent_alerts.get(d), d in self.presented)
            for d, slot_id in self.recent.items()
            if d in self.in_tray and d in self.recent_sachets
        ]
