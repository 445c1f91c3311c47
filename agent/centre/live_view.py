"""A terminal view of the units' MQTT stream, read the way the response centre must read it.

One human line per message, times in Europe/Oslo, every payload checked against the contract
(one that is not valid is marked INVALID with the reason), and a note whenever the per-unit `seq`
shows a gap, a late arrival or a duplicate. `dispenser-agent centre watch` and the demo show it.
It is a viewer for operators and newcomers, not a receiver: it never acknowledges anything and
keeps no state beyond what the notes need.

Everything shown comes from the network, so nothing in a payload may crash the view or drive the
terminal: unknown kinds, bad JSON and control characters are all printed as (escaped) text.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO
from zoneinfo import ZoneInfo

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from agent.centre.connect import BrokerOptions, FirstConnect, ToolError, make_client
from agent.contract.commands import (
    CommandInvalid,
    CommandResponse,
    describe_validation_error,
    parse_command,
)
from agent.contract.events import ContractModel, EventEnvelope
from agent.contract.state import Availability, DispenserState, Health, Heartbeat
from agent.contract.topics import TOPIC_ROOT

SUBSCRIPTION = f"{TOPIC_ROOT}/+/#"
LOCAL_ZONE = ZoneInfo("Europe/Oslo")

_NO_TIME = " " * 8  # width of HH:MM:SS, for messages that carry no time
_RAW_LIMIT = 200  # characters of an unreadable payload worth showing

_PRIORITY_LABELS = {"high": "HIGH", "medium": "MED", "low": "LOW", "info": "INFO"}
_ANSI_RESET = "\x1b[0m"
_PRIORITY_COLOURS = {
    "high": "\x1b[1;31m",  # bold red: someone must act
    "medium": "\x1b[33m",
    "low": "\x1b[36m",
    "info": "\x1b[2m",
}
_OFFLINE_COLOUR = "\x1b[1;31m"
_NOTE_COLOUR = "\x1b[1;35m"  # gaps and duplicates: what the response centre must notice

_RECONNECT_MIN_S = 1
_RECONNECT_MAX_S = 2  # come back quickly when the broker is up again
_KEEPALIVE_S = 30


# --- formatting (pure) -----------------------------------------------------------------------


def _printable(text: str) -> str:
    """Escape control characters: a payload must never move the cursor or recolour the terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def _raw(payload: bytes) -> str:
    text = _printable(payload.decode("utf-8", errors="replace"))
    return text if len(text) <= _RAW_LIMIT else text[:_RAW_LIMIT] + "…"


def _local_time(value: object) -> str | None:
    """HH:MM:SS in Europe/Oslo for an ISO 8601 instant with an offset; None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        return None
    if instant.tzinfo is None:
        return None  # a naive time is ambiguous; better no time than a wrong one
    return instant.astimezone(LOCAL_ZONE).strftime("%H:%M:%S")


def _text(value: object) -> str:
    if isinstance(value, str):
        return _printable(value)
    return _printable(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _pairs(data: Mapping[str, object], skip: tuple[str, ...] = ()) -> str:
    return " ".join(f"{_printable(k)}={_text(v)}" for k, v in data.items() if k not in skip)


def _split_topic(topic: str) -> tuple[str, str] | None:
    """(unit_id, suffix) of a topic in our tree, None for any other topic."""
    root = f"{TOPIC_ROOT}/"
    if not topic.startswith(root):
        return None
    unit_id, sep, suffix = topic[len(root) :].partition("/")
    if not unit_id or not sep or not suffix:
        return None
    return unit_id, suffix


def _colour(text: str, code: str | None, color: bool) -> str:
    return f"{code}{text}{_ANSI_RESET}" if color and code else text


def _describe_event_data(kind: str, data: Mapping[str, object]) -> str:
    """The kind-specific part of an event line; unknown kinds show their data as key=value."""
    if kind == "slot_outcome" and "slot_id" in data:
        outcome = _text(data.get("outcome", "?"))
        reason = data.get("reason")
        text = f"slot {_text(data['slot_id'])} {outcome}"
        if reason:
            text += f" ({_text(reason)})"
        rest = _pairs(data, skip=("slot_id", "outcome", "reason"))
        return f"{text} {rest}" if rest else text
    if "slot_id" in data:
        rest = _pairs(data, skip=("slot_id",))
        text = f"slot {_text(data['slot_id'])}"
        return f"{text} {rest}" if rest else text
    return _pairs(data)


def format_event(unit_id: str, event: Mapping[str, object], *, color: bool = False) -> str:
    """One line for an event envelope (already parsed from JSON)."""
    when = _local_time(event.get("occurred_at"))
    time_trust = event.get("time_trust")
    shown_time = when or _NO_TIME
    if when and time_trust not in (None, "synchronised"):
        shown_time += "?"  # the unit's clock may be wrong: say so right at the time
    seq = event.get("seq")
    priority = event.get("priority")
    known = isinstance(priority, str) and priority in _PRIORITY_LABELS
    label = (
        _PRIORITY_LABELS[str(priority)] if known else ("-" if priority is None else _text(priority))
    )
    code = _PRIORITY_COLOURS[str(priority)] if known else None
    vkp = event.get("vkp_code")
    kind = event.get("kind")
    kind_text = _text(kind) if isinstance(kind, str) else "?"
    data = event.get("data")
    details = (
        _describe_event_data(kind_text, data)
        if isinstance(data, dict)
        else (_text(data) if data is not None else "")
    )
    columns = [
        shown_time,
        _printable(unit_id),
        f"#{seq}" if isinstance(seq, int) and not isinstance(seq, bool) else "#?",
        _colour(f"{label:<4}", code, color),
        _text(vkp) if vkp else "-",
        kind_text,
    ]
    line = "  ".join(columns)
    if details:
        line += f"  {details}"
    extras = []
    if event.get("alert_id"):
        extras.append(f"alert {_text(event['alert_id'])}")
    if event.get("replayed") is True:
        extras.append("replayed")
    if time_trust not in (None, "synchronised"):
        extras.append(f"time {_text(time_trust)}")
    if extras:
        line += "  [" + ", ".join(extras) + "]"
    return line


def _describe_availability(state: Mapping[str, object], color: bool) -> str:
    status = _text(state.get("state", "?"))
    if status == "offline":
        status = _colour("OFFLINE", _OFFLINE_COLOUR, color)
    details = []
    if "session" in state:
        details.append(f"session {_text(state['session'])}")
    if state.get("reason"):
        details.append(_text(state["reason"]))
    return f"availability {status}" + (f" ({', '.join(details)})" if details else "")


def _describe_health(state: Mapping[str, object]) -> str:
    parts = [f"backlog {_text(state.get('backlog_events', '?'))}"]
    if state.get("oldest_unsent_seq") is not None:
        parts.append(f"oldest unsent #{_text(state['oldest_unsent_seq'])}")
    for key, label in (("clock_trust", "clock"), ("dispenser_link", "dispenser")):
        if key in state:
            parts.append(f"{label} {_text(state[key])}")
    disk = state.get("disk_free_bytes")
    if isinstance(disk, int) and not isinstance(disk, bool):
        parts.append(f"disk {disk / 1e9:.1f} GB free")
    alerts = state.get("active_alerts")
    if isinstance(alerts, list) and alerts:
        parts.append(f"alerts {', '.join(_text(a) for a in alerts)}")
    return "health " + ", ".join(parts)


def _describe_dispenser(state: Mapping[str, object]) -> str:
    parts = [f"link {_text(state.get('link', '?'))}"]
    if "roll_loaded" in state:
        parts.append("roll loaded" if state["roll_loaded"] is True else "no roll")
    if state.get("sachets_remaining") is not None:
        parts.append(f"{_text(state['sachets_remaining'])} sachets left")
    labels = (("model", "model"), ("serial_number", "serial"), ("firmware_version", "fw"))
    parts.extend(f"{label} {_text(state[key])}" for key, label in labels if state.get(key))
    return "dispenser " + ", ".join(parts)


def _describe_command(label: str, message: Mapping[str, object]) -> str:
    """Command requests and responses: the model is not fixed yet, so show the telling fields."""
    first = ("command_id", "id", "command", "name", "status", "result", "outcome", "reason")
    shown = [_text(message[key]) for key in first if key in message and message[key] is not None]
    rest = _pairs(message, skip=(*first, "at"))  # "at" is already the line's time
    return " ".join([label, *shown] + ([rest] if rest else []))


def _describe_state(suffix: str, state: Mapping[str, object], color: bool) -> str | None:
    if suffix == "state/availability":
        return _describe_availability(state, color)
    if suffix == "state/health":
        return _describe_health(state)
    if suffix == "state/dispenser":
        return _describe_dispenser(state)
    if suffix == "commands/response":
        return _describe_command("command response", state)
    if suffix == "commands/request":
        return _describe_command("command request", state)
    return None


def format_message(topic: str, payload: bytes, *, color: bool = False) -> str | None:
    """One human line for one MQTT message, or None for a message not worth a line (heartbeat).

    Never raises for any topic or payload: what cannot be read is shown raw (escaped).
    """
    place = _split_topic(topic)
    if place is None:
        return f"{_NO_TIME}  {_printable(topic)}  {_raw(payload)}"
    unit_id, suffix = place
    if suffix == "heartbeat":
        return None  # liveness only: availability already says whether the unit is there
    prefix = f"{_NO_TIME}  {_printable(unit_id)}  "
    if not payload:
        return f"{prefix}{_printable(suffix)}  (empty: retained state cleared)"
    try:
        message = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return f"{prefix}{_printable(suffix)}  unreadable payload: {_raw(payload)}"
    if not isinstance(message, dict):
        return f"{prefix}{_printable(suffix)}  {_raw(payload)}"
    if suffix == "events":
        return format_event(unit_id, message, color=color)
    described = _describe_state(suffix, message, color)
    if described is None:
        return f"{prefix}{_printable(suffix)}  {_raw(payload)}"
    when = _local_time(message.get("at"))
    return f"{when or _NO_TIME}  {_printable(unit_id)}  {described}"


# --- sequence checking -----------------------------------------------------------------------


def _span(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first}-{last}"


@dataclass
class _UnitSequence:
    first: int  # the first seq this view saw: nothing before it can be called missing
    highest: int
    event_ids: dict[int, str | None] = field(default_factory=dict)
    missing: set[int] = field(default_factory=set)


class SequenceTracker:
    """Per-unit gap and duplicate detection by `seq`, as the response centre must do it.

    The first event seen for a unit is the baseline (the view may start mid-stream). A jump above
    the highest seq is reported as a gap at once; a missing seq that arrives later (the agent
    sends its backlog after fresh events) is reported as late. A seq seen before is a duplicate:
    expected when the copy says `replayed`, suspicious when it does not, and a conflict when the
    event_id differs.
    """

    def __init__(self) -> None:
        self._units: dict[str, _UnitSequence] = {}

    def observe(self, unit_id: str, seq: int, event_id: str | None, replayed: bool) -> list[str]:
        """Record one event; return the notes it causes (usually none)."""
        unit = self._units.get(unit_id)
        if unit is None:
            self._units[unit_id] = _UnitSequence(first=seq, highest=seq, event_ids={seq: event_id})
            return []
        if seq in unit.event_ids:
            return [self._duplicate_note(unit_id, seq, unit.event_ids[seq], event_id, replayed)]
        unit.event_ids[seq] = event_id
        if seq > unit.highest:
            skipped_from = unit.highest + 1
            unit.highest = seq
            if seq > skipped_from:
                unit.missing.update(range(skipped_from, seq))
                return [f"gap: {unit_id} {_span(skipped_from, seq - 1)} missing"]
            return []
        if seq in unit.missing:
            unit.missing.discard(seq)
            still = f"still missing: {len(unit.missing)}" if unit.missing else "no gap left"
            return [f"late: {unit_id} seq {seq} arrived ({still})"]
        return []  # before the first seq this view saw: neither a gap nor a duplicate

    @staticmethod
    def _duplicate_note(
        unit_id: str, seq: int, known_id: str | None, event_id: str | None, replayed: bool
    ) -> str:
        if known_id is not None and event_id is not None and known_id != event_id:
            return f"CONFLICT: {unit_id} seq {seq} seen with two event ids ({known_id}, {event_id})"
        how = "replayed" if replayed else "NOT marked replayed"
        return f"duplicate {unit_id} seq {seq} ({how})"

    def missing(self, unit_id: str) -> list[int]:
        """Seqs of `unit_id` still missing, ascending."""
        unit = self._units.get(unit_id)
        return sorted(unit.missing) if unit is not None else []


def _sequence_facts(topic: str, payload: bytes) -> tuple[str, int, str | None, bool] | None:
    """(unit_id, seq, event_id, replayed) of an event message, None for anything else."""
    place = _split_topic(topic)
    if place is None or place[1] != "events":
        return None
    try:
        event = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(event, dict):
        return None
    seq = event.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None
    event_id = event.get("event_id")
    return (
        place[0],
        seq,
        event_id if isinstance(event_id, str) else None,
        event.get("replayed") is True,
    )


# --- checking against the contract ------------------------------------------------------------

_MODELS: dict[str, type[ContractModel]] = {
    "events": EventEnvelope,
    "state/availability": Availability,
    "state/health": Health,
    "state/dispenser": DispenserState,
    "heartbeat": Heartbeat,
    "commands/response": CommandResponse,
}
_PROBLEM_LIMIT = 160  # characters of a validation message worth a line


def contract_problem(topic: str, payload: bytes) -> str | None:
    """Why `payload` is not what contract v1 says for `topic`, or None when it is (or when the
    topic is none the contract knows, or the payload is empty: a retained message cleared)."""
    place = _split_topic(topic)
    if place is None or not payload:
        return None
    suffix = place[1]
    if suffix == "commands/request":
        try:
            parse_command(payload)
        except CommandInvalid as problem:
            return _printable(problem.message)[:_PROBLEM_LIMIT]
        return None
    model = _MODELS.get(suffix)
    if model is None:
        return None
    try:
        json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return "not UTF-8 JSON"
    try:
        model.model_validate_json(payload)
    except ValidationError as error:
        text = _printable(describe_validation_error(error))
        return text if len(text) <= _PROBLEM_LIMIT else text[:_PROBLEM_LIMIT] + "…"
    return None


# --- the view --------------------------------------------------------------------------------


def subscriptions(units: Sequence[str]) -> list[str]:
    """Every unit (a wildcard on the unit level), or the named units' topics."""
    return [f"{TOPIC_ROOT}/{u}/#" for u in units] if units else [SUBSCRIPTION]


class LiveView:
    """Subscribes to the units' topics and prints one line per message to `out`.

    Each payload is checked against the contract: one that is not valid is shown as well as it
    can be, marked INVALID with the reason. The view's own status lines ("-- ...") go to
    `notices` (default: `out`). paho runs the network loop on its own thread; `lines`
    (everything printed) is appended there under a lock, so read it with `snapshot()` or
    `wait_for()`.
    """

    def __init__(
        self,
        broker: BrokerOptions,
        out: TextIO,
        color: bool,
        *,
        units: Sequence[str] = (),
        notices: TextIO | None = None,
    ) -> None:
        self._broker = broker
        self._out = out
        self._notices = notices if notices is not None else out
        self._color = color
        self._topics = subscriptions(units)
        self.lines: list[str] = []
        self.shown = 0  # lines about messages (not notes, not status lines)
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self._suback = threading.Event()  # any answer to the subscription, yes or no
        self.refused: str | None = None  # why the broker refused the subscription
        self._stopping = False
        self._was_connected = False
        self._said_unreachable = False  # say "cannot reach" once, not on every retry
        self._tracker = SequenceTracker()
        self._first = FirstConnect(broker)
        # 3.1.1 works with every broker, including the demo's amqtt (which has no MQTT 5).
        self._client = make_client(broker, "live-view")
        self._client.reconnect_delay_set(_RECONNECT_MIN_S, _RECONNECT_MAX_S)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_log = self._first.log

    # public ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (paho retries until it reaches the broker)."""
        self._client.connect_async(self._broker.host, self._broker.port, keepalive=_KEEPALIVE_S)
        self._client.loop_start()

    def open(self, timeout: float) -> None:
        """Connect now; `ToolError` (one line) if the broker cannot be reached or refuses within
        `timeout` seconds. Once connected, paho reconnects by itself."""
        self._first.open(self._client, timeout)

    def stop(self) -> None:
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()

    def snapshot(self) -> list[str]:
        with self._changed:
            return list(self.lines)

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float | None) -> bool:
        """Wait until `predicate(lines)` holds; False after `timeout` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.lines), timeout)

    def wait_shown(self, count: int, timeout: float | None) -> bool:
        """Wait until `count` messages were shown; False after `timeout` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: self.shown >= count, timeout)

    def wait_subscribed(self, timeout: float) -> bool:
        """True once the broker confirmed the subscription (messages from now on are seen)."""
        return self._subscribed.wait(timeout)

    def subscribe_or_fail(self, timeout: float) -> None:
        """After `open`: `ToolError` unless the broker confirms the subscription in time."""
        if not self._suback.wait(timeout):
            raise ToolError(f"the broker at {self._broker.address} did not answer the subscription")
        if self.refused is not None:
            raise ToolError(self.refused)

    # paho callbacks (paho's thread): an exception escaping here would kill the network loop ----

    def _emit(self, line: str, *, message: bool = False) -> None:
        with self._changed:  # one lock: `lines` and the output stay in the same order
            self.lines.append(line)
            if message:
                self.shown += 1
            self._changed.notify_all()
            out = self._notices if line.startswith("-- ") else self._out
            try:
                out.write(line + "\n")
                out.flush()
            except (OSError, ValueError):
                pass  # a closed terminal or pipe must not stop the view (lines still records it)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._emit(f"-- broker {self._broker.address} refused the view: {reason}")
            self._first.refused(reason)
            return
        self._said_unreachable = False
        self._was_connected = True
        self._emit(f"-- connected to {self._broker.address}, watching {', '.join(self._topics)}")
        client.subscribe([(topic, 1) for topic in self._topics])
        self._first.connected()

    def _on_connect_fail(self, client: paho.Client, userdata: object) -> None:
        if not self._said_unreachable:
            self._said_unreachable = True
            self._emit(f"-- cannot reach the broker at {self._broker.address} yet; retrying")

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if any(r.is_failure for r in reasons):
            refused = [t for t, r in zip(self._topics, reasons, strict=False) if r.is_failure]
            self.refused = f"the broker refused the subscription to {', '.join(refused)}"
            self._emit(f"-- {self.refused}")
        else:
            self._emit("-- subscribed: messages from now on are shown")
            self._subscribed.set()
        self._suback.set()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._subscribed.clear()
        self._first.lost()
        if not self._was_connected:
            return  # a first connect that failed: `open` or the retry notice says so, once
        if self._stopping:
            self._emit("-- view stopped")
        else:
            self._emit(f"-- disconnected from the broker ({reason}); reconnecting")

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        try:
            # paho decodes the topic on access and raises for bytes that are not UTF-8.
            topic = message.topic
        except UnicodeDecodeError:
            topic = "<topic not UTF-8>"
        try:
            self._show(topic, bytes(message.payload), retained=bool(message.retain))
        except Exception as exc:  # see the section comment above
            self._emit(f"-- view error on {_printable(topic)}: {exc!r}")

    def _show(self, topic: str, payload: bytes, *, retained: bool) -> None:
        line = format_message(topic, payload, color=self._color)
        problem = contract_problem(topic, payload)
        if line is None and problem is not None:  # a heartbeat is shown only when it is wrong
            place = _split_topic(topic)
            line = f"{_NO_TIME}  {_printable(place[0] if place else topic)}  heartbeat"
        if line is not None:
            if retained:
                line += "  (retained)"
            if problem is not None:
                line += "  " + _colour(f"INVALID: {problem}", _NOTE_COLOUR, self._color)
            self._emit(line, message=True)
        # An invalid event's seq is not believed: it would only make false gaps.
        facts = _sequence_facts(topic, payload) if problem is None else None
        if facts is not None:
            for note in self._tracker.observe(*facts):
                self._emit(f"{_NO_TIME}  " + _colour(f"!! {note}", _NOTE_COLOUR, self._color))
