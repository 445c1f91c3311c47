"""The daemon's configuration file (JSON), validated with pydantic at the boundary.

A technician writes it at installation: the unit id, the dispenser's serial device, the broker, and
optionally the patient binding and first schedule (both can later come from the response centre).
Errors name the field and say what is expected; nothing starts on a config that does not validate.
"""

from __future__ import annotations

import json
import os
import re
import stat
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.clock import DEFAULT_ZONE, load_zone
from agent.contract.signing import KeyFormatError, public_key_bytes
from agent.engine.schedule import (
    MIN_INTERVAL_FLOOR,
    MIN_INTERVAL_MAX,
    Schedule,
    ScheduleError,
    ScheduleRule,
    parse_time,
)
from agent.engine.types import EngineConfig, EscalationStep
from drivers.retry import CONNECT_ATTEMPT_TIMEOUT_S
from protocol.gatt import SERVICE_UUID
from protocol.messages import KEEPALIVE_MAX_S, KEEPALIVE_MIN_S, AlertPattern

UNIT_ID = re.compile(r"[a-z0-9-]{3,64}")
BLE_ADDRESS = re.compile(r"([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}")
UUID_128 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


# The pseudonymous patient reference printed on the multidose rolls (README, "For technicians"):
# 4-64 characters of letters a-z (either case), digits and '-', starting with a letter, with at
# least one digit (a name has none, nor does it fit without its space).
PSEUDONYM = re.compile(r"[A-Za-z][A-Za-z0-9-]{3,63}")
_FNR_WEIGHTS_1 = (3, 7, 6, 1, 8, 9, 4, 5, 2)
_FNR_WEIGHTS_2 = (5, 4, 3, 2, 7, 6, 5, 4, 3, 2)


def is_national_id(digits: str) -> bool:
    """11 digits that pass the fødselsnummer / D-number checks: a date (day + 40 for a D-number)
    and both mod-11 check digits."""
    if len(digits) != 11 or not digits.isdigit():
        return False
    day, month = int(digits[0:2]), int(digits[2:4])
    if day > 40:
        day -= 40  # D-number
    if month > 40:
        month -= 40  # H-number (assigned by health services)
    if not (1 <= day <= 31 and 1 <= month <= 12):
        return False
    numbers = [int(c) for c in digits]
    for weights, check_at in ((_FNR_WEIGHTS_1, 9), (_FNR_WEIGHTS_2, 10)):
        check = (11 - sum(w * n for w, n in zip(weights, numbers, strict=False)) % 11) % 11
        if check == 10 or check != numbers[check_at]:
            return False
    return True


def check_pseudonym(value: str) -> None:
    """Refuse a patient reference that is, or hides, a national id, or looks like a name."""
    digits = "".join(c for c in value if c.isdigit())
    # any spacing: "010199 12345", "010199-12345", "p-01019912345"
    if any(is_national_id(digits[i : i + 11]) for i in range(len(digits) - 10)):
        raise ValueError(
            "contains a national identity number (fødselsnummer or D-number); use the "
            "pseudonymous reference printed on the rolls"
        )
    if len(digits) >= 9 and not any(c.isalpha() for c in value):
        raise ValueError(
            "looks like a national identity number; use the pseudonymous reference printed on "
            "the rolls"
        )
    if not PSEUDONYM.fullmatch(value) or not digits:
        raise ValueError(
            "must be the pseudonymous reference printed on the rolls (4-64 characters of a-z, "
            "A-Z, 0-9 and '-', starting with a letter, with at least one digit), never a name"
        )


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which field and why."""


class _Strict(BaseModel):
    # strict: "8883" is not a port and "yes" not a boolean (JSON dates and paths are strings)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SerialLink(_Strict):
    transport: Literal["serial"] = "serial"
    device: str = Field(
        description="serial device path, e.g. /dev/ttyUSB0 or /dev/serial/by-id/..."
    )
    baudrate: int = Field(default=115200, ge=1200, le=4_000_000)

    @property
    def where(self) -> str:
        """Where the dispenser is, for a technician's messages."""
        return self.device

    @property
    def trouble_hint(self) -> str:
        return "cable, power, or the device path in the config"

    def describe(self) -> str:
        return f"serial {self.device} at {self.baudrate}"


class BleLink(_Strict):
    """The dispenser over Bluetooth Low Energy (SPEC, "GATT profile"): a fixed address, or the
    first dispenser advertising the service (and `name`, if given)."""

    transport: Literal["ble"]
    address: str | None = Field(default=None, description="fixed address, e.g. C0:FF:EE:00:00:01")
    name: str | None = Field(default=None, min_length=1, max_length=29)  # fits one advertisement
    service_uuid: str = SERVICE_UUID
    adapter: str | None = Field(default=None, pattern=r"^hci[0-9]{1,2}$")
    scan_timeout_s: float = Field(default=4.0, gt=0, le=30)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=30)

    @property
    def where(self) -> str:
        return f"ble:{self.address or self.name or 'service ' + self.service_uuid}"

    @property
    def trouble_hint(self) -> str:
        return "range, power, Bluetooth on the Pi, or the address or name in the config"

    def describe(self) -> str:
        if self.address is not None:
            return f"BLE {self.address}"
        named = f" named {self.name}" if self.name is not None else ""
        return f"BLE, the first dispenser{named} advertising service {self.service_uuid}"

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not BLE_ADDRESS.fullmatch(value):
            raise ValueError("must be six hex pairs separated by ':', e.g. C0:FF:EE:00:00:01")
        return value.upper() if value is not None else None

    @field_validator("service_uuid")
    @classmethod
    def _uuid(cls, value: str) -> str:
        if not UUID_128.fullmatch(value.lower()):
            raise ValueError("must be a 128-bit UUID, e.g. " + SERVICE_UUID)
        return value.lower()

    @model_validator(mode="after")
    def _fits_one_attempt(self) -> BleLink:
        # One connect attempt (scan + connect + handshake) is bounded by the reconnect loop's
        # attempt timeout (drivers/retry.py); a longer scan would be cut off every time.
        if self.scan_timeout_s + self.connect_timeout_s >= CONNECT_ATTEMPT_TIMEOUT_S:
            raise ValueError(
                f"scan_timeout_s + connect_timeout_s must stay under the "
                f"{CONNECT_ATTEMPT_TIMEOUT_S:g} s a connect attempt may take"
            )
        return self


def _link_kind(value: object) -> str:
    """`transport` picks the link; a config without one is serial (as before BLE existed)."""
    kind = value.get("transport") if isinstance(value, dict) else getattr(value, "transport", None)
    return kind if isinstance(kind, str) else "serial"


DispenserLink = Annotated[
    Annotated[SerialLink, Tag("serial")] | Annotated[BleLink, Tag("ble")],
    Discriminator(
        _link_kind,
        custom_error_type="link_kind",
        custom_error_message="transport must be 'serial' or 'ble'",
    ),
]
LINK_KINDS = ("serial", "ble")


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# The largest MQTT packet the unit accepts (MQTT 5 Maximum Packet Size, announced on CONNECT): a
# command is at most 64 KiB of JSON, plus topic and properties. The broker drops a larger message
# for this client instead of sending it, so it is never read whole (docs/broker/).
MAX_PACKET_BYTES = 128 * 1024


class MqttBroker(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password_file: Path | None = Field(
        default=None,
        description="must exist, be owned by the user the agent runs as, and be readable by "
        "that user only (chmod 600)",
    )
    tls: bool = False
    # The unit's TLS identity (flash.sh writes these): the CA the broker's certificate is checked
    # against (None: the system's CAs) and the unit's client certificate and key (CN = unit id).
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    # Plaintext to a broker that is not on this machine exposes commands and health data: refused
    # unless this is set, and then warned about at every start.
    allow_plaintext: bool = False
    max_packet_bytes: int = Field(default=MAX_PACKET_BYTES, ge=4096, le=16 * 1024 * 1024)
    keepalive_s: int = Field(default=30, ge=5, le=600)
    protocol: Literal["5", "3.1.1"] = Field(
        default="5", description="MQTT 5, falling back to 3.1.1 if the broker refuses it"
    )
    heartbeat_s: int = Field(default=300, ge=10, le=3600)
    health_s: int = Field(default=900, ge=60, le=86_400)
    response_topic_prefix: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description=(
            "an MQTT 5 response topic a command names is used only when it lies under this "
            "prefix (or is the unit's own response topic); otherwise the answer goes to "
            "dispenser/v1/{unit_id}/commands/response"
        ),
    )

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")

    @property
    def plaintext_remote(self) -> bool:
        """Plaintext to a broker on another machine (only with allow_plaintext)."""
        return not self.tls and not self.loopback

    @model_validator(mode="after")
    def _tls_identity(self) -> MqttBroker:
        if self.plaintext_remote and not self.allow_plaintext:
            raise ValueError(
                f"tls is off for the remote broker {self.host}: turn tls on (with ca_file, "
                "client_cert, client_key), or set allow_plaintext: true to accept plaintext"
            )
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together: set both or neither")
        if not self.tls and (self.ca_file or self.client_cert):
            raise ValueError("ca_file, client_cert and client_key need tls: true")
        return self


def service_uid(state_dir: Path) -> int:
    """The user the agent runs as: the owner of its state folder once installed, else us."""
    try:
        return state_dir.stat().st_uid
    except OSError:
        return os.geteuid()


def private_file_problem(path: Path, owner_uid: int) -> str | None:
    """Why a secret file is not fit (missing, not a file, another owner, readable by others),
    or None. Group access is left to the installer (the service's group)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"{path} cannot be inspected: {exc.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file"
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o007:
        return f"{path} is readable by everyone (mode {mode:04o}): chmod 600 {path}"
    if info.st_uid != owner_uid:
        return (
            f"{path} is owned by uid {info.st_uid}, not by the agent's user (uid {owner_uid}): "
            f"chown it to that user"
        )
    return None


class ScheduleRuleConfig(_Strict):
    effective_from: date
    times: list[str]
    weekday_times: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("weekday_times")
    @classmethod
    def _known_weekdays(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = sorted(set(value) - set(WEEKDAYS))
        if unknown:
            raise ValueError(f"unknown weekday {unknown}: use {', '.join(WEEKDAYS)}")
        return value


class ScheduleConfig(_Strict):
    version: int = Field(default=1, ge=1)
    zone: str = DEFAULT_ZONE
    rules: list[ScheduleRuleConfig] = Field(min_length=1)
    # None: half the smallest spacing between doses, at most 12 h (agent/engine/schedule.py)
    min_interval_minutes: int | None = Field(
        default=None,
        ge=MIN_INTERVAL_FLOOR // timedelta(minutes=1),
        le=MIN_INTERVAL_MAX // timedelta(minutes=1),
    )

    def build(self) -> Schedule:
        """The engine's schedule; ScheduleError (a ValueError) with a clear message if invalid."""
        rules = [
            ScheduleRule(
                effective_from=rule.effective_from,
                times=tuple(parse_time(t) for t in rule.times),
                weekday_times={
                    WEEKDAYS.index(day): tuple(parse_time(t) for t in times)
                    for day, times in rule.weekday_times.items()
                },
            )
            for rule in self.rules
        ]
        interval = self.min_interval_minutes
        return Schedule.build(
            self.zone, rules, None if interval is None else timedelta(minutes=interval)
        )


class EscalationConfig(_Strict):
    after_minutes: float = Field(gt=0)
    pattern: Literal["REMINDER", "URGENT", "FAULT"]
    notify: bool


class EngineSettings(_Strict):
    grace_minutes: float = Field(default=60, gt=0, le=24 * 60)
    early_window_minutes: float = Field(default=60, ge=0, le=6 * 60)
    reminder_repeat_minutes: float = Field(default=10, gt=0)
    escalation: list[EscalationConfig] = Field(
        default_factory=lambda: [EscalationConfig(after_minutes=30, pattern="URGENT", notify=True)]
    )
    sachet_time_tolerance_minutes: float = Field(default=30, gt=0, le=12 * 60)
    low_supply_threshold: int = Field(default=4, ge=0)
    no_contact_after_minutes: float = Field(default=5, gt=0)
    undispensed_deadline_minutes: float = Field(default=60, gt=0)
    # temporary stop (docs/engine.md, "Pause"): the longest pause; a reminder interval while an
    # open-ended one lasts; the notice before a pause ends (with what its resume needs)
    pause_max_days: float = Field(default=30, gt=0, le=180)
    pause_reminder_days: float = Field(default=7, gt=0, le=30)
    pause_end_notice_hours: float = Field(default=24, gt=0, le=7 * 24)
    travel_collect_minutes: float = Field(default=10, gt=0, le=120)
    bin_reserve: int = Field(
        default=1, ge=1, le=10, description="bin places a discard never takes (kept for retains)"
    )
    keepalive_timeout_s: int = Field(
        default=600,
        ge=KEEPALIVE_MIN_S,
        le=KEEPALIVE_MAX_S,
        description=(
            f"agent watchdog (SPEC 4.7): a dispenser announcing AGENT_WATCHDOG sounds FAULT after "
            f"this many seconds without a frame from the agent ({KEEPALIVE_MIN_S}..."
            f"{KEEPALIVE_MAX_S}); the agent sends KeepAlive every third of it"
        ),
    )

    @model_validator(mode="after")
    def _reminded_before_overdue(self) -> EngineSettings:
        if self.pause_reminder_days >= self.pause_max_days:
            raise ValueError(
                f"pause_reminder_days ({self.pause_reminder_days:g}) must be shorter than "
                f"pause_max_days ({self.pause_max_days:g}): an open-ended pause is reminded "
                "before it becomes overdue"
            )
        return self

    def to_engine_config(self) -> EngineConfig:
        return EngineConfig(
            grace=timedelta(minutes=self.grace_minutes),
            early_window=timedelta(minutes=self.early_window_minutes),
            reminder_repeat=timedelta(minutes=self.reminder_repeat_minutes),
            escalation=tuple(
                EscalationStep(
                    timedelta(minutes=step.after_minutes), AlertPattern[step.pattern], step.notify
                )
                for step in sorted(self.escalation, key=lambda s: s.after_minutes)
            ),
            sachet_time_tolerance=timedelta(minutes=self.sachet_time_tolerance_minutes),
            low_supply_threshold=self.low_supply_threshold,
            no_contact_after=timedelta(minutes=self.no_contact_after_minutes),
            undispensed_deadline=timedelta(minutes=self.undispensed_deadline_minutes),
            pause_max=timedelta(days=self.pause_max_days),
            pause_reminder_every=timedelta(days=self.pause_reminder_days),
            pause_end_notice=timedelta(hours=self.pause_end_notice_hours),
            travel_collect_timeout=timedelta(minutes=self.travel_collect_minutes),
            bin_reserve=self.bin_reserve,
            keepalive_timeout=timedelta(seconds=self.keepalive_timeout_s),
        )


class GpioConfig(_Strict):
    """The unit's own buttons, lights and buzzer (hw/WIRING.md): BCM numbers, None = not wired.
    On a machine without GPIO the daemon warns once and runs without them."""

    enabled: bool = True
    link_led: int | None = Field(default=5, ge=0, le=27)
    alarm_led: int | None = Field(default=6, ge=0, le=27)
    held_led: int | None = Field(default=13, ge=0, le=27)
    buzzer: int | None = Field(default=18, ge=0, le=27, description="an active buzzer")
    take_button: int | None = Field(
        default=17, ge=0, le=27, description="take now / help, to ground (internal pull-up)"
    )
    technician_button: int | None = Field(
        default=27,
        ge=0,
        le=27,
        description="to ground (internal pull-up); read by the technician commands, not the "
        "daemon (a line has one owner at a time)",
    )
    technician_hold_s: float = Field(default=5.0, ge=0.1, le=30)
    tray_contact: int | None = Field(default=None, ge=0, le=27, description="to ground")
    lid_contact: int | None = Field(default=None, ge=0, le=27, description="to ground")
    bounce_ms: int = Field(default=50, ge=1, le=1000, description="button/contact debounce")

    @model_validator(mode="after")
    def _one_use_per_pin(self) -> GpioConfig:
        pins = [p for p in self.pins().values() if p is not None]
        doubled = sorted({p for p in pins if pins.count(p) > 1})
        if doubled:
            raise ValueError(f"GPIO {doubled} used for more than one thing")
        return self

    def pins(self) -> dict[str, int | None]:
        return {
            name: getattr(self, name)
            for name in (
                "link_led",
                "alarm_led",
                "held_led",
                "buzzer",
                "take_button",
                "technician_button",
                "tray_contact",
                "lid_contact",
            )
        }


class CommandLimits(_Strict):
    """Flood control for the centre's commands (agent/command_gate.py). The defaults leave room
    for any real response centre: 30 commands at once, then one a second for as long as it
    likes; a refused command is told on its own 5 times a window, the rest counted in one
    `commands_refused_in_bulk` event when the window ends."""

    burst: int = Field(default=30, ge=5, le=1000, description="commands accepted at once")
    per_s: float = Field(default=1.0, ge=0.05, le=100, description="sustained commands a second")
    individual_refusals: int = Field(
        default=5, ge=1, le=100, description="junk refusals a window answered and told one by one"
    )
    window_s: int = Field(default=60, ge=10, le=3600, description="one bulk report per window")


class AgentConfig(_Strict):
    unit_id: str = Field(description="this unit's id on the MQTT topic tree: [a-z0-9-]{3,64}")
    state_dir: Path = Path("/var/lib/dispenser-agent")
    dispenser: DispenserLink
    mqtt: MqttBroker = Field(default_factory=MqttBroker)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    gpio: GpioConfig = Field(default_factory=GpioConfig)
    command_limits: CommandLimits = Field(default_factory=CommandLimits)
    # Installation binding: a pseudonymous patient reference, never a name or national id.
    patient_ref: str | None = Field(default=None, min_length=4, max_length=64)
    schedule: ScheduleConfig | None = None
    centre_keys: list[str] = Field(
        default_factory=list,
        max_length=8,
        description=(
            "the response centre's Ed25519 public keys (base64 of 32 bytes, from "
            "`dispenser-agent centre keygen`); commands that change anything must be signed by "
            "one of them (or by a key added later through a signed rotate_centre_keys). None: "
            "every such command is refused"
        ),
    )

    @field_validator("centre_keys")
    @classmethod
    def _centre_keys(cls, value: list[str]) -> list[str]:
        for index, text in enumerate(value):
            try:
                public_key_bytes(text)
            except KeyFormatError as exc:
                raise ValueError(f"[{index}]: {exc}") from None
        return value

    @field_validator("unit_id")
    @classmethod
    def _unit_id(cls, value: str) -> str:
        if not UNIT_ID.fullmatch(value):
            raise ValueError("must be 3-64 characters of a-z, 0-9 and '-'")
        return value

    @field_validator("patient_ref")
    @classmethod
    def _pseudonymous(cls, value: str | None) -> str | None:
        if value is not None:
            check_pseudonym(value)
        return value

    @property
    def db_path(self) -> Path:
        return self.state_dir / "agent.sqlite3"

    def built_schedule(self) -> Schedule | None:
        return self.schedule.build() if self.schedule else None


def load_config(path: Path) -> AgentConfig:
    """Read and validate a config file; ConfigError names the file and every bad field."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    return parse_config(raw, source=str(path))


def _field_path(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """The error's path as the file spells it: without the link kind pydantic puts in it."""
    if len(loc) > 1 and loc[0] == "dispenser" and loc[1] in LINK_KINDS:
        return (loc[0], *loc[2:])
    return loc


def parse_config(raw: object, source: str = "config") -> AgentConfig:
    try:
        text = json.dumps(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: not JSON data: {exc}") from None
    try:
        # validated as JSON, strictly: dates and paths are strings there, nothing else coerced
        config = AgentConfig.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in _field_path(err['loc'])) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None
    try:
        load_zone(config.schedule.zone if config.schedule else DEFAULT_ZONE)
        config.built_schedule()
        config.engine.to_engine_config()
    except (ScheduleError, ValueError) as exc:
        raise ConfigError(f"{source}: schedule: {exc}") from None
    return config
