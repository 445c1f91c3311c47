"""The dispenser mirror: what the engine knows the dispenser has (link, capabilities, last status,
tray, lock, alert pattern, faults, when its agent watchdog is next fed), and which commands bring it
to what the engine wants (the level-triggered part of the engine, see docs/engine.md).

After every input the engine describes both sides and sends only the difference `plan_sync`
returns. So a Tick that changes nothing sends nothing, and a command lost with the link is simply
planned again once the link is back. Pure: no I/O, no clock, and the order of the planned commands
is fixed (status first, then lock, alert pattern, retains).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agent.engine.lifecycle import Phase, SlotRun
from protocol.messages import (
    AlertPattern,
    Capabilities,
    FaultCode,
    Feature,
    GetStatus,
    Message,
    Retain,
    SetAlert,
    SetLock,
)

# SPEC 4.7.7: KeepAlive at least every timeout / 3, so one lost KeepAlive leaves two more before
# the dispenser's silence alarm.
KEEPALIVES_PER_TIMEOUT = 3

# Which local pattern wins when several are wanted (docs/engine.md, "Local sound and light"): a
# technical alarm, then a dose in the tray (escalated first: the patient can act on it now), then a
# held dose (a carer must act). Not AlertPattern's numeric order: HELD (4) was added last.
PATTERN_RANK: dict[AlertPattern, int] = {
    AlertPattern.OFF: 0,
    AlertPattern.HELD: 1,
    AlertPattern.REMINDER: 2,
    AlertPattern.URGENT: 3,
    AlertPattern.FAULT: 4,
}

# Faults that stop dispensing until they clear (the order is the order reasons are reported in).
BLOCKING_FAULTS = (
    FaultCode.JAM,
    FaultCode.SENSOR,
    FaultCode.CUTTER,
    FaultCode.READER,
    FaultCode.TAMPER,
)
# Blocking faults under which the dispenser refuses every Dispense it has not executed: JAMMED
# for a jam or cutter fault, REJECTED while the reader cannot read the sachet (SPEC 4.3, 4.9).
# A sensor or tamper fault refuses nothing: a Dispense would cut through it.
REFUSING_FAULTS = frozenset({FaultCode.JAM, FaultCode.CUTTER, FaultCode.READER})


@dataclass(frozen=True, slots=True)
class StuckDose:
    """A dose whose slot has ended, still in the tray, that the engine cannot take back into
    the bin (reason: `bin_full`, taken back once the dispenser reports room; `retain_refused`,
    refused too often, a person removes it; `no_retain_bin`). No other dose fits in the tray."""

    dispense_id: int
    slot_id: str | None
    reason: str


@dataclass(slots=True)
class DispenserMirror:
    """What the engine knows of the dispenser. Not durable, except `locked_by_agent`: the rest is
    learned again (LinkUp, Status) after a restart."""

    link_down_since: float | None  # monotonic instant the link went down (None while up)
    locked_by_agent: bool  # we locked the cassette (foreign roll): we may unlock it
    link_up: bool = False
    capabilities: Capabilities | None = None
    status_known: bool = False  # a Status since the last LinkUp: lock, pattern, tray are known
    tray_occupied: bool | None = None
    lock_actual: bool | None = None
    pattern_sent: AlertPattern | None = None  # None: unknown, send again
    silenced_until: float | None = None  # monotonic: local sound/light off until then
    faults: list[FaultCode] = field(default_factory=list)
    stuck: StuckDose | None = None  # physical: kept across link drops (a Status clears it)
    # the bin (SPEC 4.8, feature BIN_LEVEL): as last reported, and cuts into it seen since
    bin_capacity: int | None = None
    bin_count: int | None = None
    bin_unreported: int = 0  # DoseRetained seen after the last BinLevel
    # monotonic instant the next KeepAlive is due; None: none to send on this link (no link, no
    # AGENT_WATCHDOG, or not configured)
    keepalive_due: float | None = None
    keepalive_refused: bool = False  # a KeepAlive was refused on this link (reported once)

    def has(self, feature: Feature) -> bool:
        return has_feature(self.capabilities, feature)

    def bin_room(self, in_flight: int) -> int | None:
        """Free places in the bin, counting the cuts seen since its last report and those on
        their way (`in_flight`); None when the dispenser has not told (or cannot tell) its level.
        A count above the capacity (a firmware miscount) reads as a full bin."""
        if self.bin_capacity is None or self.bin_count is None:
            return None
        return max(0, self.bin_capacity - self.bin_count - self.bin_unreported - in_flight)

    def blocking_fault(self) -> FaultCode | None:
        for fault in BLOCKING_FAULTS:
            if fault in self.faults:
                return fault
        return None

    def cuts_nothing_new(self) -> bool:
        """Every blocking fault active makes the dispenser refuse a Dispense it never executed
        (and at least one is active): a repeated Dispense id is answered ALREADY_DONE or refused,
        never cut (SPEC 4.4: the executed id is checked before the faults)."""
        blocking = {f for f in self.faults if f in BLOCKING_FAULTS}
        return bool(blocking) and blocking <= REFUSING_FAULTS


@dataclass(frozen=True, slots=True)
class KnownDispenser:
    """What the engine knows the dispenser has (from Status replies and command results)."""

    status_known: bool  # a Status since the last LinkUp: lock, pattern and tray are known
    lock_actual: bool | None
    locked_by_agent: bool  # we locked the cassette, so we may unlock it
    pattern_sent: AlertPattern | None  # None: unknown, send again
    capabilities: Capabilities | None  # None: no LinkUp yet
    bin_full: bool
    in_flight: tuple[str, ...]  # kinds of the commands awaiting an outcome
    # free places in the bin beside the cuts on their way (SPEC 4.8); None: not reported
    bin_room: int | None = None


@dataclass(frozen=True, slots=True)
class WantedDispenser:
    """What the engine wants the dispenser to have."""

    locked: bool  # cassette locked: a roll of another patient, or the unit is locked down
    pattern: AlertPattern
    retains: tuple[int, ...]  # dispense ids whose dose should go back into the bin


@dataclass(frozen=True, slots=True)
class PlannedCommand:
    kind: str
    command: Message
    dispense_id: int | None = None


@dataclass(frozen=True, slots=True)
class SyncPlan:
    commands: tuple[PlannedCommand, ...]
    retains_left: tuple[int, ...]  # still to send later (bin full, or capabilities unknown)


def has_feature(capabilities: Capabilities | None, feature: Feature) -> bool:
    # `int()`: a plain int test (Flag's own `&` costs microseconds, `.value` a descriptor call,
    # several times on every engine step)
    return capabilities is not None and bool(capabilities.features & int(feature))


def desired_pattern(
    silenced: bool,
    fault: bool,
    runs: Iterable[SlotRun],
    holding_all: bool,
    held_supported: bool,
) -> AlertPattern:
    """The local sound/light: the highest ranked (PATTERN_RANK) of FAULT (`fault`: a foreign roll,
    or the unit locked down after an unreadable state), the pattern of a presented dose, and HELD
    for a due dose that is held (`holding_all`: every dose is, e.g. the clock is untrusted); OFF
    while silenced. A dispenser without HELD_PATTERN gets FAULT for HELD (SPEC 4.5), ranked where
    HELD is."""
    if silenced:
        return AlertPattern.OFF
    pattern = AlertPattern.FAULT if fault else AlertPattern.OFF
    rank = PATTERN_RANK[pattern]
    if holding_all and PATTERN_RANK[AlertPattern.HELD] > rank:
        pattern, rank = AlertPattern.HELD, PATTERN_RANK[AlertPattern.HELD]
    for run in runs:
        if run.phase is Phase.PRESENTED:
            wanted = run.pattern
        elif run.held_reason is not None and not run.in_tray:
            wanted = AlertPattern.HELD  # due, not given, and the engine knows why
        else:
            continue
        if PATTERN_RANK[wanted] > rank:
            pattern, rank = wanted, PATTERN_RANK[wanted]
    if pattern is AlertPattern.HELD and not held_supported:
        return AlertPattern.FAULT
    return pattern


def in_sync(
    status_known: bool,
    lock_actual: bool | None,
    locked_by_agent: bool,
    pattern_sent: AlertPattern | None,
    locked: bool,
    pattern: AlertPattern,
    retains: Sequence[int],
) -> bool:
    """True when `plan_sync` has nothing to send and nothing left to send later, whatever the
    capabilities, commands in flight and bin: the status is known, the lock is as wanted (or
    ours to leave), the pattern was sent, no dose is owed to the bin. The engine asks this on
    every step before it builds the full picture (tests/test_dispenser_mirror.py checks the two
    agree)."""
    if not status_known or retains or pattern != pattern_sent:
        return False
    if locked:
        return lock_actual is True
    return not locked_by_agent or lock_actual is False


def plan_sync(known: KnownDispenser, wanted: WantedDispenser) -> SyncPlan:
    """The commands that bring the dispenser from `known` to `wanted`, none already in flight."""
    if not known.status_known:
        # lock and pattern are unknown until a Status: ask first, decide nothing else
        if "get_status" in known.in_flight:
            return SyncPlan((), wanted.retains)
        return SyncPlan((PlannedCommand("get_status", GetStatus(req_id=0)),), wanted.retains)
    commands: list[PlannedCommand] = []
    if "set_lock" not in known.in_flight and has_feature(known.capabilities, Feature.LOCK):
        if wanted.locked and known.lock_actual is not True:
            commands.append(PlannedCommand("set_lock", SetLock(req_id=0, locked=True)))
        elif not wanted.locked and known.locked_by_agent and known.lock_actual is not False:
            commands.append(PlannedCommand("set_lock", SetLock(req_id=0, locked=False)))
    if "set_alert" not in known.in_flight and wanted.pattern != known.pattern_sent:
        commands.append(PlannedCommand("set_alert", SetAlert(req_id=0, pattern=wanted.pattern)))
    retains_left = wanted.retains
    if wanted.retains and has_feature(known.capabilities, Feature.RETAIN_BIN):
        if not known.bin_full:
            # no more than the bin holds, as far as it told: the rest waits for its next report
            room = len(wanted.retains) if known.bin_room is None else max(0, known.bin_room)
            commands += [
                PlannedCommand("retain", Retain(req_id=0, dispense_id=d), dispense_id=d)
                for d in wanted.retains[:room]
            ]
            retains_left = wanted.retains[room:]
    elif known.capabilities is not None and not has_feature(known.capabilities, Feature.RETAIN_BIN):
        retains_left = ()  # this dispenser cannot take doses back: nothing to wait for
    return SyncPlan(tuple(commands), retains_left)
