"""Scripted scenarios for the simulator: "at t=5 s the patient takes the dose".

The format is one step per line (`#` starts a comment; values may be quoted shell-style):

    <t> <action> [args]                  a timed step, t in seconds from the start (or 5m, 2h, 1d)
    on <event> <action> [args] [after=T] a reaction, every time the dispenser emits <event>

`<event>` is a dispenser -> agent message in snake_case (`dose_presented`, `sachet_read`, ...).
Actions: see `ACTIONS` and hw/README.md. Errors name the line: `line 3: unknown action 'tak'`.

`ScenarioPlayer` plays a parsed scenario against a runner. Time comes from an injectable clock and
an injectable `wait_until(deadline, wake)`: the default waits on a threading.Event with a timeout
(woken early by reactions and by `stop()`), `ScenarioClock` jumps straight to the deadline so a test
plays a day in milliseconds.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import re
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Protocol, TypeAlias

from hw.dispenser import DispenserModel, SimRoll, make_roll
from hw.wire import WireFaults
from protocol.messages import ALL_MESSAGES, ButtonId, Direction, FaultCode, Message

log = logging.getLogger(__name__)

# --- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InsertRoll:
    roll: SimRoll


@dataclass(frozen=True, slots=True)
class RemoveRoll:
    pass


@dataclass(frozen=True, slots=True)
class TakeDose:
    pass


@dataclass(frozen=True, slots=True)
class PressButton:
    button: ButtonId = ButtonId.TAKE


@dataclass(frozen=True, slots=True)
class SetLid:
    open: bool


@dataclass(frozen=True, slots=True)
class SetPower:
    mains: bool
    battery_pct: int | None = None


@dataclass(frozen=True, slots=True)
class SetFault:
    fault: FaultCode
    active: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class EmptyBin:
    pass


@dataclass(frozen=True, slots=True)
class Reboot:
    pass


@dataclass(frozen=True, slots=True)
class Unplug:
    pass


@dataclass(frozen=True, slots=True)
class Replug:
    pass


@dataclass(frozen=True, slots=True)
class SetWireFaults:
    changes: tuple[tuple[str, int | float | bytes], ...]


@dataclass(frozen=True, slots=True)
class SetLink:
    """The link is lost / restored, whatever carries it: a pty is unplugged, a BLE dispenser goes
    out of range, a UART goes silent (`ScenarioTarget.set_link`)."""

    up: bool


Action: TypeAlias = (
    InsertRoll
    | RemoveRoll
    | TakeDose
    | PressButton
    | SetLid
    | SetPower
    | SetFault
    | EmptyBin
    | Reboot
    | Unplug
    | Replug
    | SetWireFaults
    | SetLink
)


@dataclass(frozen=True, slots=True)
class Step:
    at_s: float
    action: Action
    line: int


@dataclass(frozen=True, slots=True)
class Trigger:
    event: str  # snake_case message name, a key of EVENTS
    action: Action
    after_s: float
    line: int


DEFAULT_SLOT_S = 240.0  # 4 minutes: room for the agent to connect before the first dose


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the response centre must see (`expect` lines; hw/README.md, "Expectations").

    `subject` is an event kind on the events topic (`slot_outcome`, `wrong_roll`, ...) or `link`
    (the retained `state/dispenser` link state, then `fields` is `(("link", "up"),)`). Matching
    events arrive in the window [after_s, within_s] of scenario time. Without `count`, one
    matching event passes; with `count`, exactly that many distinct events (by seq) by `within_s`
    (default: the scenario's end)."""

    subject: str
    fields: tuple[tuple[str, str], ...]
    after_s: float
    within_s: float | None
    count: int | None
    line: int
    text: str  # the line as written, for reports


@dataclass(frozen=True, slots=True)
class Scenario:
    steps: tuple[Step, ...]  # in playing order (by time; file order for equal times)
    triggers: tuple[Trigger, ...]
    expectations: tuple[Expectation, ...] = ()
    slot_s: float = DEFAULT_SLOT_S  # the first scheduled dose, this long after t=0 (`slot` line)
    end_s: float | None = None  # `end` line: how long the scenario lasts at least
    grace_s: float | None = None  # `grace` line: the agent's grace window (its config's default)

    @property
    def length_s(self) -> float:
        """When every expectation can be judged: the `end` line, else the last deadline/step."""
        times = [s.at_s for s in self.steps] + [
            e.within_s if e.within_s is not None else e.after_s for e in self.expectations
        ]
        return self.end_s if self.end_s is not None else max(times, default=0.0)


class ScenarioError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


EVENTS: dict[str, type[Message]] = {
    _snake(cls.__name__): cls for cls in ALL_MESSAGES if cls.DIRECTION is Direction.TO_AGENT
}

# --- parsing -----------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ON = {"on": True, "true": True, "yes": True, "1": True}
_OFF = {"off": False, "false": False, "no": False, "0": False}


class _Args:
    """Positional and key=value arguments of one action; complains about leftovers."""

    def __init__(self, action: str, tokens: list[str], slot_utc_s: int | None = None) -> None:
        self.action = action
        self.slot_utc_s = slot_utc_s
        self.positional = [t for t in tokens if "=" not in t]
        self.keywords: dict[str, str] = {}
        for token in tokens:
            if "=" in token:
                key, _, value = token.partition("=")
                if key in self.keywords:
                    raise ValueError(f"{action}: {key} given twice")
                self.keywords[key] = value

    def key(self, name: str, default: str | None = None) -> str:
        if name in self.keywords:
            return self.keywords.pop(name)
        if default is None:
            raise ValueError(f"{self.action}: missing {name}=")
        return default

    def optional(self, name: str) -> str | None:
        return self.keywords.pop(name, None)

    def pos(self, index: int, what: str, default: str | None = None) -> str:
        if index < len(self.positional):
            return self.positional[index]
        if default is None:
            raise ValueError(f"{self.action}: missing {what}")
        return default

    def done(self, positional_used: int) -> None:
        if len(self.positional) > positional_used:
            extra = " ".join(self.positional[positional_used:])
            raise ValueError(f"{self.action}: unexpected {extra!r}")
        if self.keywords:
            raise ValueError(f"{self.action}: unknown argument {', '.join(sorted(self.keywords))}")


def parse_duration(text: str) -> float:
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"bad duration {text!r} (e.g. 5, 2.5s, 30m, 12h, 1d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def parse_utc_s(text: str) -> int:
    """ISO 8601 with an offset (2026-11-23T08:00+01:00) or a date (midnight UTC) -> epoch s."""
    if len(text) == 10:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"bad date {text!r}") from None
        return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"bad time {text!r} (ISO 8601, e.g. 2026-11-23T08:00+01:00)") from None
    if when.tzinfo is None:
        raise ValueError(f"time {text!r} needs a UTC offset (e.g. +01:00 or Z)")
    return int(when.timestamp())


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what} must be a whole number, got {text!r}") from None


def _switch(text: str, what: str) -> bool:
    lowered = text.lower()
    if lowered in _ON:
        return True
    if lowered in _OFF:
        return False
    raise ValueError(f"{what} must be on or off, got {text!r}")


def _enum_name(enum_type: type[FaultCode] | type[ButtonId], text: str, what: str) -> int:
    try:
        return int(enum_type[text.upper()])
    except KeyError:
        names = ", ".join(m.name for m in enum_type)
        raise ValueError(f"unknown {what} {text!r} (one of {names})") from None


def _insert_roll(a: _Args) -> Action:
    count = _int(a.key("count", "28"), "count")
    expiry_text = a.optional("expiry")
    unreadable_text = a.optional("unreadable")
    unreadable = (
        [_int(x, "unreadable") for x in unreadable_text.split(",")] if unreadable_text else []
    )
    roll = make_roll(
        roll_id=a.key("roll_id"),
        patient_ref=a.key("patient_ref"),
        first_dose_utc_s=_first(a),
        interval_s=int(parse_duration(a.key("every", "12h"))),
        count=count,
        expiry_utc_s=parse_utc_s(expiry_text) if expiry_text else None,
        next_index=_int(a.key("next", "0"), "next"),
        unreadable=unreadable,
    )
    a.done(0)
    return InsertRoll(roll)


def _first(a: _Args) -> int:
    """`first=ISO`, or `first=slot`: the first scheduled dose of the run (see `slot` lines)."""
    text = a.key("first")
    if text != "slot":
        return parse_utc_s(text)
    if a.slot_utc_s is None:
        raise ValueError("insert_roll: first=slot needs the run's slot time (hw.rig, or --slot)")
    return a.slot_utc_s


def _link(a: _Args) -> Action:
    state = a.pos(0, "up or down").lower()
    if state not in ("up", "down"):
        raise ValueError(f"link: expected up or down, got {state!r}")
    a.done(1)
    return SetLink(state == "up")


def _press_button(a: _Args) -> Action:
    button = ButtonId(_enum_name(ButtonId, a.pos(0, "button", "TAKE"), "button"))
    a.done(1)
    return PressButton(button)


def _lid(a: _Args) -> Action:
    state = a.pos(0, "open or closed").lower()
    if state not in ("open", "closed"):
        raise ValueError(f"lid: expected open or closed, got {state!r}")
    a.done(1)
    return SetLid(state == "open")


def _power(a: _Args) -> Action:
    mains = _switch(a.key("mains"), "mains")
    battery = a.optional("battery")
    pct = _int(battery, "battery") if battery is not None else None
    if pct is not None and not 0 <= pct <= 100:
        raise ValueError(f"battery must be 0..100, got {pct}")
    a.done(0)
    return SetPower(mains, pct)


def _fault(a: _Args) -> Action:
    fault = FaultCode(_enum_name(FaultCode, a.pos(0, "fault name"), "fault"))
    active = _switch(a.pos(1, "on or off"), "fault state")
    detail = a.key("detail", "")
    a.done(2)
    return SetFault(fault, active, detail)


def _wire(a: _Args) -> Action:
    names = {f.name: f for f in dataclasses.fields(WireFaults)}
    changes: list[tuple[str, int | float | bytes]] = []
    for key, text in sorted(a.keywords.items()):
        if key not in names:
            raise ValueError(f"wire: unknown fault {key!r} (one of {', '.join(names)})")
        if key == "garbage_before_next":
            try:
                changes.append((key, bytes.fromhex(text)))
            except ValueError:
                raise ValueError(f"wire: garbage_before_next must be hex, got {text!r}") from None
        elif key == "ack_delay_s":
            changes.append((key, parse_duration(text)))
        else:
            changes.append((key, _int(text, key)))
    a.keywords.clear()
    if not changes:
        raise ValueError("wire: nothing to change (e.g. wire drop_next_frames=2)")
    a.done(0)
    return SetWireFaults(tuple(changes))


def _bare(action: Action) -> Callable[[_Args], Action]:
    def parse(a: _Args) -> Action:
        a.done(0)
        return action

    return parse


ACTIONS: dict[str, Callable[[_Args], Action]] = {
    "insert_roll": _insert_roll,
    "remove_roll": _bare(RemoveRoll()),
    "take_dose": _bare(TakeDose()),
    "press_button": _press_button,
    "lid": _lid,
    "power": _power,
    "fault": _fault,
    "empty_bin": _bare(EmptyBin()),
    "reboot": _bare(Reboot()),
    "unplug": _bare(Unplug()),
    "replug": _bare(Replug()),
    "wire": _wire,
    "link": _link,
}


def _parse_action(tokens: list[str], slot_utc_s: int | None = None) -> Action:
    name, rest = tokens[0], tokens[1:]
    parser = ACTIONS.get(name)
    if parser is None:
        raise ValueError(f"unknown action {name!r} (one of {', '.join(ACTIONS)})")
    return parser(_Args(name, rest, slot_utc_s))


_FIELD = re.compile(r"^[a-z_][a-z0-9_.]*$")


def _parse_expectation(tokens: list[str], number: int, text: str) -> Expectation:
    """`expect <kind>|link <up|down> [field=value]... [after=T] [within=T] [count=N]`."""
    if len(tokens) < 2:
        raise ValueError("expected: expect <event kind>|link [field=value]... [within=T]")
    subject, rest = tokens[1], tokens[2:]
    fields: list[tuple[str, str]] = []
    after_s, within_s, count = 0.0, None, None
    if subject == "link":
        if not rest or rest[0] not in ("up", "down"):
            raise ValueError("expect link: expected up or down")
        fields.append(("link", rest[0]))
        rest = rest[1:]
    elif not _FIELD.match(subject) or "." in subject:
        raise ValueError(f"expect: bad event kind {subject!r}")
    seen: set[str] = set()
    for token in rest:
        key, eq, value = token.partition("=")
        if not eq or not key:
            raise ValueError(f"expect: expected field=value, got {token!r}")
        if key in seen:
            raise ValueError(f"expect: {key} given twice")
        seen.add(key)
        if key == "after":
            after_s = parse_duration(value)
        elif key == "within":
            within_s = parse_duration(value)
        elif key == "count":
            count = _int(value, "count")
            if count < 0:
                raise ValueError(f"count must be >= 0, got {count}")
        elif not _FIELD.match(key):
            raise ValueError(f"expect: bad field name {key!r}")
        else:
            fields.append((key, value))
    if within_s is not None and within_s < after_s:
        raise ValueError(f"expect: within={within_s:g}s is before after={after_s:g}s")
    return Expectation(subject, tuple(fields), after_s, within_s, count, number, text)


def read_slot(text: str) -> float:
    """The `slot` line, read first: `first=slot` anywhere in the file depends on it."""
    slot_s = DEFAULT_SLOT_S
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue  # reported by the main pass
        if tokens and tokens[0] == "slot":
            try:
                if len(tokens) != 2:
                    raise ValueError("expected: slot <T> (the first dose, T after the start)")
                slot_s = parse_duration(tokens[1])
            except ValueError as exc:
                raise ScenarioError(number, str(exc)) from None
    return slot_s


def parse_scenario(text: str, t0_utc_s: int | None = None) -> Scenario:
    """Parse a scenario. `t0_utc_s` is the wall time of t=0 on the agent's clock, which gives
    `first=slot` its meaning (t0 + the `slot` line's lead); without it `first=slot` is refused."""
    steps: list[Step] = []
    triggers: list[Trigger] = []
    expectations: list[Expectation] = []
    slot_s = read_slot(text)
    slot_utc_s = None if t0_utc_s is None else t0_utc_s + int(slot_s)
    end_s: float | None = None
    grace_s: float | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            raise ScenarioError(number, str(exc)) from None
        if not tokens:
            continue
        try:
            if tokens[0] == "slot":
                continue  # read by read_slot
            if tokens[0] == "expect":
                expectations.append(_parse_expectation(tokens, number, shlex.join(tokens)))
                continue
            if tokens[0] == "end":
                if len(tokens) != 2 or end_s is not None:
                    raise ValueError("expected one line: end <T>")
                end_s = parse_duration(tokens[1])
                continue
            if tokens[0] == "grace":
                if len(tokens) != 2 or grace_s is not None:
                    raise ValueError("expected one line: grace <T> (the agent's grace window)")
                grace_s = parse_duration(tokens[1])
                if not 60 <= grace_s <= 240 * 60:
                    raise ValueError("grace must be 1m..4h")
                continue
            if tokens[0] == "on":
                if len(tokens) < 3:
                    raise ValueError("expected: on <event> <action> [args] [after=T]")
                event = tokens[1]
                if event not in EVENTS:
                    raise ValueError(f"unknown event {event!r} (one of {', '.join(EVENTS)})")
                after = [t for t in tokens[2:] if t.startswith("after=")]
                rest = [t for t in tokens[2:] if not t.startswith("after=")]
                if len(after) > 1:
                    raise ValueError("after= given twice")
                after_s = parse_duration(after[0].removeprefix("after=")) if after else 0.0
                if not rest:
                    raise ValueError("expected an action after the event")
                triggers.append(Trigger(event, _parse_action(rest, slot_utc_s), after_s, number))
            else:
                at_s = parse_duration(tokens[0])
                if len(tokens) < 2:
                    raise ValueError("expected an action after the time")
                steps.append(Step(at_s, _parse_action(tokens[1:], slot_utc_s), number))
        except ValueError as exc:
            raise ScenarioError(number, str(exc)) from None
    steps.sort(key=lambda s: s.at_s)  # stable: equal times keep file order
    return Scenario(tuple(steps), tuple(triggers), tuple(expectations), slot_s, end_s, grace_s)


def load_scenario(path: Path, t0_utc_s: int | None = None) -> Scenario:
    return parse_scenario(path.read_text(encoding="utf-8"), t0_utc_s)


# --- playing -----------------------------------------------------------------------------------


class ScenarioTarget(Protocol):
    """What a scenario acts on: `SimulatorRunner` (or a test double)."""

    def call(self, fn: Callable[[DispenserModel], list[Message]]) -> None: ...

    def reboot(self) -> None: ...

    def unplug(self) -> None: ...

    def replug(self) -> None: ...

    def set_faults(self, **changes: int | float | bytes) -> None: ...

    def add_listener(self, listener: Callable[[Message], None]) -> Callable[[], None]: ...

    def set_link(self, up: bool) -> None: ...


class LinkedTarget:
    """A runner whose link is cut another way (a BLE dispenser goes out of range)."""

    def __init__(self, runner: ScenarioTarget, set_link: Callable[[bool], None]) -> None:
        self._runner = runner
        self._set_link = set_link

    def call(self, fn: Callable[[DispenserModel], list[Message]]) -> None:
        self._runner.call(fn)

    def reboot(self) -> None:
        self._runner.reboot()

    def unplug(self) -> None:
        self._runner.unplug()

    def replug(self) -> None:
        self._runner.replug()

    def set_faults(self, **changes: int | float | bytes) -> None:
        self._runner.set_faults(**changes)

    def add_listener(self, listener: Callable[[Message], None]) -> Callable[[], None]:
        return self._runner.add_listener(listener)

    def set_link(self, up: bool) -> None:
        self._set_link(up)


WaitUntil: TypeAlias = Callable[[float | None, threading.Event], None]


class ScenarioClock:
    """A clock for tests: waiting for a deadline moves time straight to it."""

    def __init__(self, start: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._now = start

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def wait_until(self, deadline: float | None, wake: threading.Event) -> None:
        if wake.is_set():
            return
        if deadline is None:
            wake.wait()  # only a reaction or stop() can end this
            return
        with self._lock:
            self._now = max(self._now, deadline)


@dataclass(frozen=True, slots=True)
class Played:
    at_s: float  # on the player's clock, from the start
    action: Action
    line: int
    cause: str  # "step", or the event of the trigger


def apply_action(target: ScenarioTarget, action: Action) -> None:
    """Do one action to a runner."""
    match action:
        case InsertRoll(roll=roll):
            target.call(lambda m: m.insert_roll(roll))
        case RemoveRoll():
            target.call(lambda m: m.remove_roll())
        case TakeDose():
            target.call(lambda m: m.take_dose())
        case PressButton(button=button):
            target.call(lambda m: m.press_button(button))
        case SetLid(open=is_open):
            target.call(lambda m: m.set_lid(is_open))
        case SetPower(mains=mains, battery_pct=pct):
            target.call(lambda m: m.set_power(mains, pct))
        case SetFault(fault=fault, active=active, detail=detail):
            target.call(lambda m: m.set_fault(fault, active, detail))
        case EmptyBin():
            target.call(lambda m: m.empty_bin())
        case Reboot():
            target.reboot()
        case Unplug():
            target.unplug()
        case Replug():
            target.replug()
        case SetWireFaults(changes=changes):
            target.set_faults(**dict(changes))
        case SetLink(up=up):
            target.set_link(up)


class ScenarioPlayer:
    """Plays timed steps in order and runs reactions to the dispenser's events.

    `play()` blocks; `start()` plays in a thread. Without triggers, playing ends after the last
    step; with triggers it goes on (reacting) until `duration_s` has passed or `stop()`.
    """

    def __init__(
        self,
        runner: ScenarioTarget,
        scenario: Scenario,
        clock: Callable[[], float] = time.monotonic,
        wait_until: WaitUntil | None = None,
    ) -> None:
        self._runner = runner
        self._scenario = scenario
        self._clock = clock
        self._wait_until = wait_until or self._wait_real
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._queue: list[tuple[float, int, Action, int, str]] = []
        self._order = 0
        self._t0 = 0.0
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.played: list[Played] = []
        self.error: BaseException | None = None

    def _wait_real(self, deadline: float | None, wake: threading.Event) -> None:
        wake.wait(None if deadline is None else max(0.0, deadline - self._clock()))

    def _push(self, due: float, action: Action, line: int, cause: str) -> None:
        with self._cond:
            heapq.heappush(self._queue, (due, self._order, action, line, cause))
            self._order += 1
        self._wake.set()

    def _on_message(self, message: Message) -> None:
        # Called in the simulator thread: only queue, never act here.
        for trigger in self._scenario.triggers:
            if isinstance(message, EVENTS[trigger.event]):
                self._push(
                    self._clock() + trigger.after_s, trigger.action, trigger.line, trigger.event
                )

    def play(self, duration_s: float | None = None) -> None:
        self._t0 = self._clock()
        for step in self._scenario.steps:
            self._push(self._t0 + step.at_s, step.action, step.line, "step")
        end = None if duration_s is None else self._t0 + duration_s
        remove = self._runner.add_listener(self._on_message) if self._scenario.triggers else None
        try:
            while True:
                self._wake.clear()
                with self._cond:
                    if self._stopped:
                        return
                    due = self._queue[0][0] if self._queue else None
                    if due is None and end is None and not self._scenario.triggers:
                        return
                    now = self._clock()
                    ready = due is not None and due <= now and (end is None or due <= end)
                    if ready:
                        _, _, action, line, cause = heapq.heappop(self._queue)
                if end is not None and not ready and now >= end:
                    return
                if ready:
                    apply_action(self._runner, action)
                    with self._cond:
                        self.played.append(Played(now - self._t0, action, line, cause))
                        self._cond.notify_all()
                    continue
                deadlines = [d for d in (due, end) if d is not None]
                self._wait_until(min(deadlines) if deadlines else None, self._wake)
        finally:
            if remove is not None:
                remove()
            with self._cond:
                self._cond.notify_all()

    def start(self, duration_s: float | None = None) -> None:
        def run() -> None:
            try:
                self.play(duration_s)
            except BaseException as exc:  # the thread's end: kept for the test that waits on it
                log.exception("scenario failed")
                with self._cond:
                    self.error = exc
                    self._cond.notify_all()

        self._thread = threading.Thread(target=run, name="scenario", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_played(self, count: int, timeout: float = 5.0) -> list[Played]:
        """Block until at least `count` actions were played; raises TimeoutError."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: len(self.played) >= count or self.error is not None, timeout
            )
            if self.error is not None:
                raise RuntimeError("scenario failed") from self.error
            if not ok:
                raise TimeoutError(f"{len(self.played)} of {count} actions played in {timeout} s")
            return list(self.played)
