"""Every message of protocol v1, and the table that maps type ids to classes.

A message is a frozen dataclass whose fields are annotated with their wire codec
(`Annotated[int, U16]`). Encoding walks the fields in declaration order, so the dataclass *is* the
layout: SPEC.md lists the same fields in the same order, and a test checks the two agree.

Type ids 0x01-0x3F travel agent -> dispenser, 0x40-0x7F dispenser -> agent.
Times on the wire are whole seconds since the Unix epoch, UTC; 0 means "unknown".
"""

from __future__ import annotations

import enum
import typing
from dataclasses import dataclass, fields
from typing import Annotated, ClassVar, TypeAlias

from protocol.errors import EncodeError, MessageDecodeError
from protocol.fields import BOOL, STR, U8, U16, U32, U64, Enum8, FieldCodec


class Direction(enum.Enum):
    TO_DISPENSER = "to_dispenser"
    TO_AGENT = "to_agent"


class ResultCode(enum.IntEnum):
    """Outcome of a command, carried by `CommandResult`."""

    OK = 0
    BUSY = 1
    REJECTED = 2
    NO_ROLL = 3
    EMPTY = 4
    JAMMED = 5
    BAD_ARGUMENT = 6
    UNSUPPORTED = 7
    LOCKED = 8
    TRAY_OCCUPIED = 9
    WRONG_SACHET = 10  # the sachet at the reader is not the index the agent named
    ALREADY_DONE = 11  # this dispense_id was executed before: not executed again
    NOTHING_PRESENTED = 12
    BIN_FULL = 13


class AlertPattern(enum.IntEnum):
    OFF = 0
    REMINDER = 1  # low priority: chime and light at dose time
    URGENT = 2  # medium priority: dose about to be missed
    FAULT = 3  # technical alarm: dispensing stopped
    # A due dose is held and cannot be given (no roll, jam, bin full, untrusted clock): a light
    # distinct from the others and a soft periodic chime. Only for Feature.HELD_PATTERN.
    HELD = 4


class FaultCode(enum.IntEnum):
    JAM = 1
    SENSOR = 2
    CUTTER = 3
    READER = 4  # sachet could not be read
    BIN_FULL = 5  # locked bin for retained doses is full
    TAMPER = 6  # forced opening attempt


class ButtonId(enum.IntEnum):
    TAKE = 1  # the big button: "take now" / confirm
    HELP = 2


class Feature(enum.IntFlag):
    """Capability bits in `Capabilities.features`."""

    RETAIN_BIN = 0x0001
    LOCK = 0x0002
    TRAY_SENSOR = 0x0004
    BATTERY = 0x0008
    SACHET_READER = 0x0010
    HELD_PATTERN = 0x0020  # understands AlertPattern.HELD
    AGENT_WATCHDOG = 0x0040  # understands KeepAlive: alarms on its own when the agent falls silent
    BIN_LEVEL = 0x0080  # reports the bin's capacity and fill (`BinLevel`)


FACTORY_RESET_CONFIRM = 0x52534554  # ASCII "RSET": a stray frame cannot wipe a unit by accident
# KeepAlive.timeout_s: 0 disarms the agent watchdog, else it must lie in this range (SPEC 4.7).
KEEPALIVE_MIN_S = 30
KEEPALIVE_MAX_S = 3600

U8T: TypeAlias = Annotated[int, U8]
U16T: TypeAlias = Annotated[int, U16]
U32T: TypeAlias = Annotated[int, U32]
U64T: TypeAlias = Annotated[int, U64]
BoolT: TypeAlias = Annotated[bool, BOOL]
StrT: TypeAlias = Annotated[str, STR]


# --- agent -> dispenser --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """Opens a session; the dispenser answers with `Capabilities` carrying the same req_id."""

    TYPE_ID: ClassVar[int] = 0x01
    DIRECTION: ClassVar[Direction] = Direction.TO_DISPENSER
    req_id: U16T
    protocol_version: U8T
    agent_version: StrT


@dataclass(frozen=True, slots=True)
class Dispense:
    """Cut the sachet at the reader and present it in the tray.

    Executed at most once per dispense_id, even across retransmits and dispenser reboots.
    """

    TYPE_ID: ClassVar[int] = 0x02
    DIRECTION: ClassVar[Direction] = Direction.TO_DISPENSER
    req_id: U16T
    dispense_id: U32T
    sachet_index: U16T


@dataclass(frozen=True, slots=True)
class Discard:
    """Cut the sachet at the reader straight into the locked bin (a paused or refused slot)."""

    TYPE_ID: ClassVar[int] = 0x03
    DIRECTION: ClassVar[Direction] = Direction.TO_DISPENSER
    req_id: U16T
    dispense_id: U32T
    sachet_index: U16T


@dataclass(frozen=True, slots=True)
class Retain:
    """Move the dose presented for dispense_id from the tray into the locked bin."""

    TYPE_ID: ClassVar[int] = 0x04
    DIRECTION: ClassVar[Direction] = Direction.TO_DISPENSER
    req_id: U16T
    dispense_id: U32T


@dataclass(frozen=True, slots=True)
class SetAlert:
    TYPE_ID: ClassVar[int] = 0x05
    DIRECTION: ClassVar[Direction] = Direction.TO_DISPENSER
    req_id: U16T
    pattern: Annotated[AlertPattern, Enum8(AlertPattern)]


@dataclass(frozen=True, slots=True)
class SetLock:
    TYPE_ID: ClassVar[int] = 0x06
    DIRECTION: ClassVar[Direction] = Direction.TO_DISPENSER
    req_id: U16T
    locked: BoolT


@dataclass(frozen=True, slots=True)
class GetStatus:
    TYPE_ID: ClassVar[int] = 0x07
    DIRECTION: ClassVar[Direction] = Direction.TO_DISPENSER
    req_id: U16T


@dataclass(frozen=True, slots=True)
class GetTime:
    TYPE_ID: ClassVar[int] = 0x08
    DIRECTION: ClassVar[Direction] = Direction.TO_DISPENSER
    req_id: U16T


@dataclass(frozen=True, slots=True)
class SetTime:
    TYPE_ID: ClassVar[int] = 0x09
    DIRECTION: ClassVar[Direction] = Direction.TO_DISPENSER
    req_id: U16T
    utc_s: U64T


@dataclass(frozen=True, slots=True)
class FactoryReset:
    """Forget executed dispense ids, unlock, clear alerts.

    `confirm` must be FACTORY_RESET_CONFIRM.
    """

    TYPE_ID: ClassVar[int] = 0x0A
    DIRECTION: ClassVar[Direction] = Direction.TO_DISPENSER
    req_id: U16T
    confirm: U32T


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """Arm (or re-arm) the dispenser's agent watchdog: if no frame from the agent arrives for
    `timeout_s` seconds, the dispenser raises the FAULT pattern on its own. 0 disarms.

    Only for Feature.AGENT_WATCHDOG; `timeout_s` is 0 or KEEPALIVE_MIN_S..KEEPALIVE_MAX_S.
    """

    TYPE_ID: ClassVar[int] = 0x0B
    DIRECTION: ClassVar[Direction] = Direction.TO_DISPENSER
    req_id: U16T
    timeout_s: U16T


# --- dispenser -> agent --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capabilities:
    TYPE_ID: ClassVar[int] = 0x40
    DIRECTION: ClassVar[Direction] = Direction.TO_AGENT
    req_id: U16T
    protocol_version: U8T
    model: StrT
    serial_number: StrT
    firmware_version: StrT
    has_rtc: BoolT
    rtc_valid: BoolT
    rtc_utc_s: U64T
    features: U16T


@dataclass(frozen=True, slots=True)
class CommandResult:
    TYPE_ID: ClassVar[int] = 0x41
    DIRECTION: ClassVar[Direction] = Direction.TO_AGENT
    req_id: U16T
    result: Annotated[ResultCode, Enum8(ResultCode)]
    detail: StrT


@dataclass(frozen=True, slots=True)
class RollInserted:
    """Read from the roll's leader label when a roll is loaded."""

    TYPE_ID: ClassVar[int] = 0x42
    DIRECTION: ClassVar[Direction] = Direction.TO_AGENT
    roll_id: StrT
    patient_ref: StrT
    sachet_count: U16T
    next_index: U16T  # the sachet now at the reader (a roll may be re-inserted part used)
    first_dose_utc_s: U64T
    last_dose_utc_s: U64T
    expiry_utc_s: U64T


@dataclass(frozen=True, slots=True)
class RollRemoved:
    TYPE_ID: ClassVar[int] = 0x43
    DIRECTION: ClassVar[Direction] = Direction.TO_AGENT
    roll_id: StrT


@dataclass(frozen=True, slots=True)
class SachetRead:
    """The sachet now at the reader, sent after a roll is loaded and after every cut."""

    TYPE_ID: ClassVar[int] = 0x44
    DIRECTION: ClassVar[Direction] = Direction.TO_AGENT
    roll_id: StrT
    index: U16T
    intended_utc_s: U64T
    patient_ref: StrT


@dataclass(frozen=True, slots=True)
class DosePresented:
    TYPE_ID: ClassVar[int] = 0x45
    DIRECTION: ClassVar[Direction] = Direction.TO_AGENT
    dispense_id: U32T
    sachet_index: U16T


@dataclass(frozen=True, slots=True)
class DoseTaken:
    """The tray sensor saw the presented dose removed."""

    TYPE_ID: ClassVar[int] = 0x46
    DIRECTION: ClassVar[Direction] = Direction.TO_AGENT
    dispense_id: U32T
    sachet_index: U16T


@dataclass(frozen=True, slots=True)
class DoseRetained:
    """A dose went into the locked bin (after `Retain` or `Discard`)."""

    TYPE_ID: ClassVar[int] = 0x47
    DIRECTION: ClassVar[Direction] = Direction.TO_AGENT
    dispense_id: U32T
    sachet_index: U16T


@dataclass(frozen=True, slots=True)
class ButtonPressed:
    TYPE_ID: ClassVar[int] = 0x48
    DIRECTION: ClassVar[Direction] = Direction.TO_AGENT
    button: Annotated[ButtonId, Enum8(ButtonId)]


@dataclass(frozen=True, slots=True)
class LidChanged:
    TYPE_ID: ClassVar[int] = 0x49
    DIRECTION: ClassVar[Direction] = Direction.TO_AGENT
    open: BoolT


@dataclass(frozen=True, slots=True)
class PowerChanged:
    TYPE_ID: ClassVar[int] = 0x4A
    DIRECTION: ClassVar[Direction] = Direction.TO_AGENT
    mains: BoolT
    battery_pct: U8T


@dataclass(frozen=True, slots=True)
class FaultChanged:
    TYPE_ID: ClassVar[int] = 0x4B
    DIRECTION: ClassVar[Direction] = Direction.TO_AGENT
    fault: Annotated[FaultCode, Enum8(FaultCode)]
    active: BoolT
    detail: StrT


@dataclass(frozen=True, slots=True)
class LowSupply:
    TYPE_ID: ClassVar[int] = 0x4C
    DIRECTION: ClassVar[Direction] = Direction.TO_AGENT
    roll_id: StrT
    remaining: U16T


@dataclass(frozen=True, slots=True)
class Status:
    TYPE_ID: ClassVar[int] = 0x4D
    DIRECTION: ClassVar[Direction] = Direction.TO_AGENT
    req_id: U16T
    roll_id: StrT  # "" when no roll is loaded
    remaining: U16T
    next_index: U16T
    tray_occupied: BoolT
    lid_open: BoolT
    locked: BoolT
    mains: BoolT
    battery_pct: U8T
    alert: Annotated[AlertPattern, Enum8(AlertPattern)]
    active_faults: U16T  # bit (1 << FaultCode) per active fault


@dataclass(frozen=True, slots=True)
class TimeReport:
    TYPE_ID: ClassVar[int] = 0x4E
    DIRECTION: ClassVar[Direction] = Direction.TO_AGENT
    req_id: U16T
    rtc_valid: BoolT
    utc_s: U64T


@dataclass(frozen=True, slots=True)
class BinLevel:
    """How many doses the locked bin holds and how many are in it (feature BIN_LEVEL): sent after
    the handshake and whenever `count` changes (a cut into the bin, a nurse emptying it)."""

    TYPE_ID: ClassVar[int] = 0x4F
    DIRECTION: ClassVar[Direction] = Direction.TO_AGENT
    capacity: U16T
    count: U16T


Command: TypeAlias = (
    Hello
    | Dispense
    | Discard
    | Retain
    | SetAlert
    | SetLock
    | GetStatus
    | GetTime
    | SetTime
    | FactoryReset
    | KeepAlive
)
"""Every agent -> dispenser message (each carries a req_id and gets exactly one reply)."""

DispenserMessage: TypeAlias = (
    Capabilities
    | CommandResult
    | RollInserted
    | RollRemoved
    | SachetRead
    | DosePresented
    | DoseTaken
    | DoseRetained
    | ButtonPressed
    | LidChanged
    | PowerChanged
    | FaultChanged
    | LowSupply
    | Status
    | TimeReport
    | BinLevel
)

Message: TypeAlias = Command | DispenserMessage

ALL_MESSAGES: tuple[type[Message], ...] = typing.get_args(Command) + typing.get_args(
    DispenserMessage
)


@dataclass(frozen=True, slots=True)
class MessageLayout:
    cls: type[Message]
    field_names: tuple[str, ...]
    codecs: tuple[FieldCodec, ...]


def _layout(cls: type[Message]) -> MessageLayout:
    hints = typing.get_type_hints(cls, include_extras=True)
    names: list[str] = []
    codecs: list[FieldCodec] = []
    for field in fields(cls):
        meta: tuple[FieldCodec, ...] = getattr(hints[field.name], "__metadata__", ())
        if len(meta) != 1:
            raise TypeError(f"{cls.__name__}.{field.name} needs exactly one wire codec annotation")
        names.append(field.name)
        codecs.append(meta[0])
    return MessageLayout(cls, tuple(names), tuple(codecs))


def _build_table() -> dict[int, MessageLayout]:
    table: dict[int, MessageLayout] = {}
    for cls in ALL_MESSAGES:
        if cls.TYPE_ID in table:
            raise TypeError(f"duplicate type id 0x{cls.TYPE_ID:02x}: {cls.__name__}")
        expected = Direction.TO_DISPENSER if cls.TYPE_ID < 0x40 else Direction.TO_AGENT
        if cls.DIRECTION is not expected or not 0 < cls.TYPE_ID < 0x80:
            raise TypeError(f"{cls.__name__}: type id 0x{cls.TYPE_ID:02x} outside its range")
        table[cls.TYPE_ID] = _layout(cls)
    return table


MESSAGE_TABLE: dict[int, MessageLayout] = _build_table()


def encode_message(message: Message) -> tuple[int, bytes]:
    """Return (type id, payload bytes). Raises EncodeError for values that do not fit."""
    layout = MESSAGE_TABLE.get(type(message).TYPE_ID)
    if layout is None or layout.cls is not type(message):
        raise EncodeError(f"{type(message).__name__} is not a protocol v1 message")
    out = bytearray()
    for name, codec in zip(layout.field_names, layout.codecs, strict=True):
        try:
            codec.encode(getattr(message, name), out)
        except EncodeError as exc:
            raise EncodeError(f"{type(message).__name__}.{name}: {exc}") from None
    return message.TYPE_ID, bytes(out)


def decode_message(type_id: int, payload: bytes) -> Message:
    """Decode a payload. Raises MessageDecodeError (and nothing else) on any bad input."""
    layout = MESSAGE_TABLE.get(type_id)
    if layout is None:
        raise MessageDecodeError("unknown_type", f"no message with type id 0x{type_id:02x}")
    values: dict[str, object] = {}
    offset = 0
    for name, codec in zip(layout.field_names, layout.codecs, strict=True):
        try:
            values[name], offset = codec.decode(payload, offset)
        except MessageDecodeError as exc:
            raise MessageDecodeError(
                exc.reason, f"{layout.cls.__name__}.{name}: {exc.detail}"
            ) from None
    if offset != len(payload):
        raise MessageDecodeError(
            "trailing_bytes", f"{layout.cls.__name__}: {len(payload) - offset} bytes left over"
        )
    return layout.cls(**values)  # type: ignore[arg-type]
