"""One injected source of time for the whole agent.

Monotonic time (``Now.mono``) is for deadlines and grace windows: it never steps, but it is
meaningless across reboots, so it is never persisted. Wall time (``Now.utc``, aware UTC) is for
schedules. A Raspberry Pi has no RTC, so wall time carries a *trust* state: until NTP has
synchronised (or the dispenser's battery-backed RTC has set it) the agent does not dispense.
See docs/time-policy.md.
"""

from __future__ import annotations

import enum
import math
import time as _time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, runtime_checkable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_ZONE = "Europe/Oslo"
SYSTEMD_TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")


class TimeTrust(enum.StrEnum):
    """How far the wall clock can be believed."""

    SYNCHRONISED = "synchronised"  # NTP (systemd-timesyncd) says synced
    DISPENSER_RTC = "dispenser_rtc"  # set from the dispenser's battery-backed RTC, not yet NTP
    UNTRUSTED = "untrusted"  # boot with neither: fake-hwclock-ish guess


@dataclass(frozen=True, slots=True)
class Now:
    """One reading of both clocks, taken together."""

    mono: float  # seconds, monotonic, meaningless across reboots (never persist)
    utc: datetime  # aware, tz=UTC
    trust: TimeTrust

    def __post_init__(self) -> None:
        offset = self.utc.utcoffset()
        if offset is None or offset != timedelta(0):
            raise ValueError(f"Now.utc must be an aware UTC datetime, got {self.utc!r}")


def utc_text(moment: datetime) -> str:
    """The one wire form of an instant: RFC 3339 in UTC with `Z` (2026-11-23T07:00:00Z), as the
    contract's models serialise theirs. `moment` must be aware."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime has no instant: {moment!r}")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def utc_text_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else utc_text(moment)


class Clock(Protocol):
    """Anything that can read the time; the agent never calls time/datetime directly."""

    def now(self) -> Now: ...


@runtime_checkable
class ReferenceClock(Clock, Protocol):
    """A clock that can take wall time from a trusted reference (the dispenser's battery-backed
    RTC) while it has no better source. Only the real clock does: a virtual or scaled clock's
    time is the test's or the demo's, not to be corrected."""

    def adopt_reference(self, reference_utc: datetime, trust: TimeTrust) -> timedelta: ...


@runtime_checkable
class FastClock(Clock, Protocol):
    """A clock whose time runs `rate` times faster than real time (the demo, the e2e rig): the
    daemon divides its real sleeps by `rate`, so the clock is the one place that knows it."""

    @property
    def rate(self) -> float: ...


def time_rate(clock: Clock) -> float:
    """Seconds of `clock` per real second: 1 unless the clock runs faster (a FastClock)."""
    return clock.rate if isinstance(clock, FastClock) else 1.0


class VirtualClock:
    """Clock for tests and the simulation: nothing moves unless told."""

    def __init__(
        self,
        start_utc: datetime,
        trust: TimeTrust = TimeTrust.SYNCHRONISED,
        start_mono: float = 1000.0,
    ) -> None:
        if start_utc.utcoffset() is None:
            raise ValueError(f"start_utc must be timezone-aware, got naive {start_utc!r}")
        if not math.isfinite(start_mono):
            raise ValueError(f"start_mono must be finite, got {start_mono!r}")
        self._utc = start_utc.astimezone(UTC)
        self._mono = float(start_mono)
        self._trust = trust
        # the reading until the clock is moved (Now is immutable): the simulation reads the
        # clock several times per instant, and building one costs its validation each time
        self._reading: Now | None = None

    def now(self) -> Now:
        reading = self._reading
        if reading is None:
            reading = self._reading = Now(mono=self._mono, utc=self._utc, trust=self._trust)
        return reading

    def advance(self, seconds: float) -> None:
        """Let time pass: monotonic and wall time both move forward by ``seconds``."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"advance() needs a finite number of seconds >= 0, got {seconds!r}")
        self._mono += seconds
        self._utc += timedelta(seconds=seconds)
        self._reading = None

    def jump_wall(self, delta: timedelta) -> None:
        """Step the wall clock (NTP correction, manual change); monotonic time does not move."""
        self._utc += delta
        self._reading = None

    def set_trust(self, trust: TimeTrust) -> None:
        self._trust = trust
        self._reading = None


class SystemClock:
    """The real clock: ``time.monotonic()`` and ``datetime.now(UTC)``.

    Trust is SYNCHRONISED while systemd-timesyncd's flag file exists (it lives in /run, so it is
    gone after every reboot until the next sync); otherwise it is whatever was last given to
    ``set_trust()`` (e.g. DISPENSER_RTC after copying the dispenser's RTC), starting UNTRUSTED.
    """

    def __init__(self, synced_flag: Path = SYSTEMD_TIMESYNC_FLAG) -> None:
        self._synced_flag = synced_flag
        self._fallback_trust = TimeTrust.UNTRUSTED
        self._offset = timedelta(0)  # reference time minus system time, until NTP syncs

    def now(self) -> Now:
        mono = _time.monotonic()
        utc = datetime.now(UTC)
        if self._synced_flag.exists():
            return Now(mono=mono, utc=utc, trust=TimeTrust.SYNCHRONISED)
        return Now(mono=mono, utc=utc + self._offset, trust=self._fallback_trust)

    def set_trust(self, trust: TimeTrust) -> None:
        self._fallback_trust = trust

    def adopt_reference(self, reference_utc: datetime, trust: TimeTrust) -> timedelta:
        """Take wall time from a trusted reference (the dispenser's battery-backed RTC) until NTP
        synchronises; returns the correction applied to the system's guess. The system clock
        itself is not set (that needs privileges the agent does not have)."""
        if reference_utc.utcoffset() is None:
            raise ValueError(f"reference_utc must be timezone-aware, got {reference_utc!r}")
        self._offset = reference_utc - datetime.now(UTC)
        self._fallback_trust = trust
        return self._offset


class ScaledClock:
    """A clock that runs `rate` times faster than real time, from a chosen start (the demo).

    Both readings scale, so deadlines computed in its monotonic time are `rate` times shorter in
    real seconds; the daemon divides its sleeps by `rate`.
    """

    def __init__(
        self, start_utc: datetime, rate: float, trust: TimeTrust = TimeTrust.SYNCHRONISED
    ) -> None:
        if start_utc.utcoffset() is None:
            raise ValueError(f"start_utc must be timezone-aware, got naive {start_utc!r}")
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        self.rate = rate
        self._start_utc = start_utc.astimezone(UTC)
        self._start_real = _time.monotonic()
        self._trust = trust

    def now(self) -> Now:
        elapsed = (_time.monotonic() - self._start_real) * self.rate
        return Now(
            mono=self._start_real + elapsed,
            utc=self._start_utc + timedelta(seconds=elapsed),
            trust=self._trust,
        )


def detect_wall_jump(previous: Now, current: Now, tolerance_s: float = 2.0) -> timedelta | None:
    """Return how far wall time stepped relative to monotonic time between two readings, or None if
    within tolerance.

    Positive means the wall clock jumped forward. Both readings must come from the same boot and be
    in order (monotonic time never goes back), otherwise ValueError.
    """
    if not math.isfinite(tolerance_s) or tolerance_s < 0:
        raise ValueError(f"tolerance_s must be a finite number >= 0, got {tolerance_s!r}")
    mono_elapsed = current.mono - previous.mono
    if mono_elapsed < 0:
        raise ValueError(
            "current reading is older than previous (monotonic time went back "
            f"{-mono_elapsed:.3f} s): readings are out of order or from different boots"
        )
    wall_elapsed = current.utc - previous.utc
    if abs(wall_elapsed.total_seconds() - mono_elapsed) < tolerance_s - 0.001:
        return None  # the engine asks on every step: plain floats, far from the bound
    step = wall_elapsed - timedelta(seconds=mono_elapsed)
    if abs(step.total_seconds()) <= tolerance_s:
        return None
    return step


class UnknownTimeZone(ValueError):  # noqa: N818 - name fixed by the agent's API
    """The name is not an IANA time zone this system knows."""


def load_zone(name: str) -> ZoneInfo:
    """Load an IANA zone such as "Europe/Oslo", with one clear error type for any bad name."""
    # "localtime" resolves to whatever the host is configured for: a schedule must not depend on it.
    if not isinstance(name, str) or not name or name == "localtime":
        raise UnknownTimeZone(
            f"unknown time zone {name!r}: expected an IANA name like 'Europe/Oslo'"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise UnknownTimeZone(
            f"unknown time zone {name!r}: expected an IANA name like 'Europe/Oslo'"
        ) from exc
