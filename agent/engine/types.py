"""The dose engine's vocabulary: what goes in, what comes out, and its configuration.

The engine is a pure function of (state, input, now) -> (state, actions). The daemon (the imperative
shell) turns dispenser frames, response-centre commands and timer expiries into `EngineInput`s,
and carries out the returned `Action`s in order: first every store action of one step in a
single SQLite transaction, then the dispenser commands. Nothing in `agent.engine` does I/O or
reads a clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from agent.engine.schedule import Schedule
from protocol.messages import AlertPattern, Capabilities, Message

# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EscalationStep:
    """After `after` from presentation without the dose taken: set `pattern` locally and,
    if `notify`, emit a `dose_not_taken` event (priority medium) to the response centre."""

    after: timedelta
    pattern: AlertPattern
    notify: bool


@dataclass(frozen=True, slots=True)
class EngineConfig:
    grace: timedelta = timedelta(minutes=60)  # presented -> missed, measured on the monotonic clock
    early_window: timedelta = timedelta(
        minutes=60
    )  # TAKE button this long before due: dispense now
    reminder_repeat: timedelta = timedelta(minutes=10)  # re-sound the reminder while presented
    escalation: tuple[EscalationStep, ...] = (
        EscalationStep(timedelta(minutes=30), AlertPattern.URGENT, notify=True),
    )
    sachet_time_tolerance: timedelta = timedelta(minutes=30)  # sachet intended time vs slot due
    roll_expired_margin: timedelta = timedelta(0)
    low_supply_threshold: int = 4
    no_contact_after: timedelta = timedelta(minutes=5)  # link down this long -> technical alarm
    # a slot that could not be dispensed at due time (no link, no roll ...) keeps trying until
    # due + undispensed_deadline, then ends as missed with the reason.
    undispensed_deadline: timedelta = timedelta(minutes=60)
    # chatty inputs (lid open/close, buttons): a condition is raised at most once per interval;
    # one that is still present when the interval ends is raised then.
    chatty_min_interval: timedelta = timedelta(minutes=15)
    # a dispenser command that failed (timeout, BUSY) is tried again after this long
    command_retry: timedelta = timedelta(seconds=30)
    # temporary stop: no pause lasts longer (a longer one is refused; an open-ended one that runs
    # longer raises pause_overdue); an open-ended one is reminded every `pause_reminder_every`;
    # a pause with an end is announced `pause_end_notice` before it (with what resume needs)
    pause_max: timedelta = timedelta(days=30)
    pause_reminder_every: timedelta = timedelta(days=7)
    pause_end_notice: timedelta = timedelta(hours=24)
    # travel pre-dispense: a sachet not lifted out of the tray this long after it was presented
    # is taken back and the rest of the trip is not dispensed
    travel_collect_timeout: timedelta = timedelta(minutes=10)
    # places in the bin a discard never takes: kept for a dose that must go back from the tray
    bin_reserve: int = 1
    # the dispenser's agent watchdog (SPEC 4.7): KeepAlive(timeout) to a dispenser announcing
    # AGENT_WATCHDOG, sent every timeout / KEEPALIVES_PER_TIMEOUT on a Tick. None: never armed
    # (the shell always sets it from the config; unit tests and the simulation may leave it off).
    keepalive_timeout: timedelta | None = None


@dataclass(frozen=True, slots=True)
class Binding:
    """Which patient this unit serves: a pseudonymous reference, never a name or national id."""

    patient_ref: str


PAUSE_REASONS = ("hospital", "respite", "travel", "other")


@dataclass(frozen=True, slots=True)
class PauseWindow:
    """Temporary stop (hospital, respite, travel): slots due in [start, end) are skipped.

    `take_along` (travel only, with an end): the trip's sachets are still to be dispensed one
    after another for the patient to take along; cleared once that is done or given up. The last
    three fields are the engine's durable bookkeeping, not part of the command.
    """

    pause_id: str
    start_utc: datetime
    end_utc: datetime | None  # None: until resumed by command
    reason: str = "other"  # one of PAUSE_REASONS
    take_along: bool = False
    reminders_sent: int = 0  # open-ended: pause_reminder events sent so far
    end_notice_sent: bool = False  # with an end: pause_ending sent
    travel_dispensed: int = 0  # sachets taken along so far


class EngineInputError(ValueError):
    """An input that contradicts itself or the engine's state (e.g. a pause ending before it
    starts, an unknown alert id). Only response-centre inputs raise it; dispenser input never
    does. `code` is the stable token a command refusal carries."""

    def __init__(self, message: str, code: str = "invalid_command") -> None:
        super().__init__(message)
        self.code = code


# --- inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed (the shell calls at `next_deadline`, or at any time: ticks are idempotent)."""


@dataclass(frozen=True, slots=True)
class FromDispenser:
    """An unsolicited dispenser message (roll, sachet, dose, button, lid, power, fault, supply)."""

    message: Message


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """The result of a `SendCommand` the engine asked for.

    `reply` is the dispenser's reply message (CommandResult/Status/...), or None when the command
    could not be delivered; then `failure` says why ("timeout", "link_down", a NAK reason ...).
    """

    correlation: str
    reply: Message | None
    failure: str | None = None


@dataclass(frozen=True, slots=True)
class LinkUp:
    capabilities: Capabilities


@dataclass(frozen=True, slots=True)
class LinkDown:
    reason: str


@dataclass(frozen=True, slots=True)
class SetBinding:
    """Installation by a technician (or factory reset with None)."""

    binding: Binding | None


@dataclass(frozen=True, slots=True)
class SetSchedule:
    schedule: Schedule | None
    version: int


@dataclass(frozen=True, slots=True)
class StartPause:
    window: PauseWindow


@dataclass(frozen=True, slots=True)
class EndPause:
    pause_id: str | None  # None: whichever pause is active


@dataclass(frozen=True, slots=True)
class AcknowledgeAlert:
    """A person at the response centre acknowledged a latched alert (acknowledged != resolved)."""

    alert_id: str
    by: str


@dataclass(frozen=True, slots=True)
class Silence:
    """Silence the local sound/light for `duration` without clearing any alert."""

    duration: timedelta


# Who decided about a sachet the schedule lacks (DiscardUnplanned.source)
FROM_RESPONSE_CENTRE = "response_centre"
ON_SITE = "on_site"


@dataclass(frozen=True, slots=True)
class DiscardUnplanned:
    """A person decided that sachets packed for a time the schedule lacks (a plan mismatch,
    VKP 3.22) go to the bin: the one at the reader (`sachet_index`), or every such sachet of the
    roll (`sachet_index` None). Only this, or a schedule that has their time, releases them."""

    roll_id: str
    sachet_index: int | None
    by: str  # operator or technician id, never a name
    source: str  # FROM_RESPONSE_CENTRE or ON_SITE


@dataclass(frozen=True, slots=True)
class StateUnreadable:
    """The shell could not read the persisted state (or the ledger) and started the engine from
    what it could read (`agent.engine.state.restore`). The engine raises a latched HIGH alert and
    dispenses nothing until a person acknowledges it. `binding`: kept | none | unreadable."""

    reason: str
    binding: str


@dataclass(frozen=True, slots=True)
class PanelPress:
    """The unit's own "take now / help" button (GPIO on the Pi, not the dispenser's): the
    dispenser's TAKE when a dose is within reach, otherwise a help call (docs/engine.md)."""


EngineInput = (
    Tick
    | FromDispenser
    | CommandOutcome
    | LinkUp
    | LinkDown
    | SetBinding
    | SetSchedule
    | StartPause
    | EndPause
    | AcknowledgeAlert
    | Silence
    | DiscardUnplanned
    | StateUnreadable
    | PanelPress
)

# --- outputs ---------------------------------------------------------------------------------


class Priority(enum.StrEnum):
    """IEC 60601-1-8 style: a missed dose outranks a reminder; technical alarms rank too."""

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class Outcome(enum.StrEnum):
    """Every slot ends in exactly one of these, and that yields exactly one `slot_outcome` event."""

    TAKEN = "taken"
    # presented before an agent restart, the tray found empty after it: lifted out while the
    # agent could not see it (most likely by the patient; when is not known)
    TAKEN_UNCONFIRMED = "taken_unconfirmed"
    MISSED = "missed"
    REFUSED = "refused"
    SKIPPED_PAUSED = "skipped_paused"
    DISPENSED_FOR_TRAVEL = "dispensed_for_travel"  # pre-dispensed to take along (FHIR category 2)


@dataclass(frozen=True, slots=True)
class EngineEvent:
    """An event for the response centre (and the audit log).

    `kind` is a stable snake_case name listed in docs/response-centre-guide.md; `fields` holds
    JSON-safe values only (str, int, float, bool, None, lists/dicts of those). Never a patient
    name or id.
    """

    kind: str
    priority: Priority
    vkp_code: str | None
    fields: dict[str, object] = field(default_factory=dict)
    alert_id: str | None = None  # set when the event raises a latched alert


@dataclass(frozen=True, slots=True)
class Emit:
    event: EngineEvent


@dataclass(frozen=True, slots=True)
class SendCommand:
    """Send `command` to the dispenser (req_id is stamped by the driver; send it as 0).

    The shell feeds back a `CommandOutcome` with the same `correlation`.
    """

    command: Message
    correlation: str


@dataclass(frozen=True, slots=True)
class BeginDispense:
    """Persist before sending the Dispense: a restart never dispenses this slot again."""

    slot_id: str
    dispense_id: int
    sachet_index: int
    due_utc: datetime


@dataclass(frozen=True, slots=True)
class RecordPresented:
    slot_id: str


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    slot_id: str
    outcome: Outcome
    reason: str | None


Action = Emit | SendCommand | BeginDispense | RecordPresented | RecordOutcome
