"""The injected clock: virtual time, the real clock's trust flag, wall-jump detection, zones."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.clock import (
    DEFAULT_ZONE,
    Clock,
    Now,
    ReferenceClock,
    ScaledClock,
    SystemClock,
    TimeTrust,
    UnknownTimeZone,
    VirtualClock,
    detect_wall_jump,
    load_zone,
    time_rate,
)
from hw.rig_agent import AnchoredClock, ReleasedClock

START = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)


def test_virtual_clock_starts_where_told() -> None:
    clock = VirtualClock(START, trust=TimeTrust.DISPENSER_RTC, start_mono=5.0)
    assert clock.now() == Now(mono=5.0, utc=START, trust=TimeTrust.DISPENSER_RTC)


def test_virtual_clock_does_not_move_by_itself() -> None:
    clock = VirtualClock(START)
    assert clock.now() == clock.now()


def test_virtual_clock_reading_follows_every_move_after_it_was_read() -> None:
    """The clock keeps its reading between moves: each move is seen by the next reading."""
    clock = VirtualClock(START, start_mono=10.0)
    assert clock.now() == Now(10.0, START, TimeTrust.SYNCHRONISED)
    clock.advance(1.5)
    assert clock.now() == Now(11.5, START + timedelta(seconds=1.5), TimeTrust.SYNCHRONISED)
    clock.jump_wall(timedelta(hours=-1))
    assert clock.now() == Now(
        11.5, START + timedelta(seconds=1.5, hours=-1), TimeTrust.SYNCHRONISED
    )
    clock.set_trust(TimeTrust.UNTRUSTED)
    assert clock.now().trust is TimeTrust.UNTRUSTED
    assert clock.now().mono == 11.5


def test_virtual_clock_normalises_start_to_utc() -> None:
    oslo_summer = timezone(timedelta(hours=2))
    clock = VirtualClock(datetime(2026, 6, 1, 10, 0, tzinfo=oslo_summer))
    now = clock.now()
    assert now.utc == datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
    assert now.utc.tzinfo is UTC


def test_virtual_clock_rejects_naive_start() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        VirtualClock(datetime(2026, 1, 1))


def test_advance_moves_mono_and_wall_together() -> None:
    clock = VirtualClock(START, start_mono=1000.0)
    clock.advance(90.5)
    now = clock.now()
    assert now.mono == 1090.5
    assert now.utc == START + timedelta(seconds=90.5)


def test_advance_zero_is_allowed_and_changes_nothing() -> None:
    clock = VirtualClock(START)
    before = clock.now()
    clock.advance(0)
    assert clock.now() == before


@pytest.mark.parametrize("seconds", [-0.001, -3600.0, math.nan, math.inf])
def test_advance_rejects_negative_or_non_finite(seconds: float) -> None:
    clock = VirtualClock(START)
    before = clock.now()
    with pytest.raises(ValueError, match="advance"):
        clock.advance(seconds)
    assert clock.now() == before


@pytest.mark.parametrize("delta", [timedelta(hours=1), timedelta(hours=-1), timedelta(days=-400)])
def test_jump_wall_moves_only_wall_time(delta: timedelta) -> None:
    clock = VirtualClock(START, start_mono=1000.0)
    clock.jump_wall(delta)
    now = clock.now()
    assert now.mono == 1000.0
    assert now.utc == START + delta


def test_set_trust_changes_trust_only() -> None:
    clock = VirtualClock(START, trust=TimeTrust.UNTRUSTED)
    clock.set_trust(TimeTrust.SYNCHRONISED)
    assert clock.now() == Now(mono=1000.0, utc=START, trust=TimeTrust.SYNCHRONISED)


def test_virtual_and_system_clocks_satisfy_the_protocol(tmp_path: Path) -> None:
    clocks: list[Clock] = [VirtualClock(START), SystemClock(synced_flag=tmp_path / "flag")]
    assert all(isinstance(clock.now(), Now) for clock in clocks)


@pytest.mark.parametrize(
    "utc",
    [datetime(2026, 1, 1), datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=1)))],
)
def test_now_rejects_naive_or_non_utc_wall_time(utc: datetime) -> None:
    with pytest.raises(ValueError, match="aware UTC"):
        Now(mono=0.0, utc=utc, trust=TimeTrust.SYNCHRONISED)


def test_trust_values_are_stable_strings() -> None:
    # These strings end up in events sent to the response centre.
    assert [t.value for t in TimeTrust] == ["synchronised", "dispenser_rtc", "untrusted"]


# --- detect_wall_jump -------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [timedelta(hours=1), timedelta(hours=-1)])
def test_detect_wall_jump_finds_one_hour_step(delta: timedelta) -> None:
    clock = VirtualClock(START)
    before = clock.now()
    clock.advance(30)
    clock.jump_wall(delta)
    clock.advance(30)
    assert detect_wall_jump(before, clock.now()) == delta


def test_detect_wall_jump_ignores_half_second_drift() -> None:
    clock = VirtualClock(START)
    before = clock.now()
    clock.advance(3600)
    clock.jump_wall(timedelta(seconds=0.5))
    assert detect_wall_jump(before, clock.now()) is None
    clock.jump_wall(timedelta(seconds=-1.0))  # now -0.5 s in total
    assert detect_wall_jump(before, clock.now()) is None


def test_detect_wall_jump_none_when_clocks_move_together() -> None:
    clock = VirtualClock(START)
    before = clock.now()
    clock.advance(86_400)
    assert detect_wall_jump(before, clock.now()) is None


def test_detect_wall_jump_respects_tolerance() -> None:
    clock = VirtualClock(START)
    before = clock.now()
    clock.jump_wall(timedelta(seconds=3))
    assert detect_wall_jump(before, clock.now()) == timedelta(seconds=3)
    assert detect_wall_jump(before, clock.now(), tolerance_s=3.0) is None
    assert detect_wall_jump(before, clock.now(), tolerance_s=0.0) == timedelta(seconds=3)


def test_detect_wall_jump_rejects_out_of_order_readings() -> None:
    clock = VirtualClock(START)
    before = clock.now()
    clock.advance(10)
    with pytest.raises(ValueError, match="out of order"):
        detect_wall_jump(clock.now(), before)


@pytest.mark.parametrize("tolerance", [-1.0, math.nan])
def test_detect_wall_jump_rejects_bad_tolerance(tolerance: float) -> None:
    now = VirtualClock(START).now()
    with pytest.raises(ValueError, match="tolerance_s"):
        detect_wall_jump(now, now, tolerance_s=tolerance)


# --- SystemClock --------------------------------------------------------------------------------


def test_system_clock_trust_follows_flag_file(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    clock = SystemClock(synced_flag=flag)
    assert clock.now().trust is TimeTrust.UNTRUSTED

    clock.set_trust(TimeTrust.DISPENSER_RTC)
    assert clock.now().trust is TimeTrust.DISPENSER_RTC

    flag.touch()
    assert clock.now().trust is TimeTrust.SYNCHRONISED

    flag.unlink()
    assert clock.now().trust is TimeTrust.DISPENSER_RTC


def test_system_clock_flag_wins_over_set_trust(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    flag.touch()
    clock = SystemClock(synced_flag=flag)
    clock.set_trust(TimeTrust.UNTRUSTED)
    assert clock.now().trust is TimeTrust.SYNCHRONISED


def test_system_clock_reads_real_time(tmp_path: Path) -> None:
    clock = SystemClock(synced_flag=tmp_path / "absent")
    before = datetime.now(UTC)
    now = clock.now()
    after = datetime.now(UTC)
    assert now.utc.tzinfo is UTC
    assert before <= now.utc <= after


def test_system_clock_mono_is_monotonic(tmp_path: Path) -> None:
    clock = SystemClock(synced_flag=tmp_path / "absent")
    readings = [clock.now().mono for _ in range(1000)]
    assert readings == sorted(readings)
    assert readings[-1] >= readings[0]


# --- zones ----------------------------------------------------------------------------------------


def test_load_default_zone() -> None:
    zone = load_zone(DEFAULT_ZONE)
    assert zone.key == "Europe/Oslo"
    assert datetime(2026, 7, 1, tzinfo=zone).utcoffset() == timedelta(hours=2)
    assert datetime(2026, 1, 1, tzinfo=zone).utcoffset() == timedelta(hours=1)


@pytest.mark.parametrize(
    "name", ["", "Nope/Nowhere", "europe/oslo", "Europe", "/etc/passwd", "../etc/x", "localtime"]
)
def test_load_zone_rejects_bad_names_clearly(name: str) -> None:
    with pytest.raises(UnknownTimeZone, match="unknown time zone") as info:
        load_zone(name)
    assert isinstance(info.value, ValueError)
    assert repr(name) in str(info.value)


def test_system_clock_adopts_the_dispenser_rtc_until_ntp_syncs(tmp_path: Path) -> None:
    from agent.clock import SystemClock

    flag = tmp_path / "synchronized"
    clock = SystemClock(synced_flag=flag)
    assert clock.now().trust is TimeTrust.UNTRUSTED
    rtc_time = datetime.now(UTC) + timedelta(hours=3)  # the Pi's boot guess is 3 h behind
    correction = clock.adopt_reference(rtc_time, TimeTrust.DISPENSER_RTC)
    assert abs(correction - timedelta(hours=3)) < timedelta(seconds=1)
    reading = clock.now()
    assert reading.trust is TimeTrust.DISPENSER_RTC
    assert abs(reading.utc - rtc_time) < timedelta(seconds=1)
    flag.touch()  # NTP synchronised: the system time wins again, without the correction
    synced = clock.now()
    assert synced.trust is TimeTrust.SYNCHRONISED
    assert abs(synced.utc - datetime.now(UTC)) < timedelta(seconds=1)
    with pytest.raises(ValueError, match="timezone-aware"):
        clock.adopt_reference(datetime(2026, 1, 1), TimeTrust.DISPENSER_RTC)


def test_scaled_clock_runs_faster_in_both_readings() -> None:
    import time

    from agent.clock import ScaledClock

    start = datetime(2026, 11, 23, 6, 58, tzinfo=UTC)
    clock = ScaledClock(start, rate=600.0)
    first = clock.now()
    deadline = time.monotonic() + 5
    while clock.now().mono - first.mono < 60 and time.monotonic() < deadline:
        pass  # busy-wait a few real milliseconds: 60 scaled seconds is 0.1 real second
    second = clock.now()
    scaled = second.mono - first.mono
    assert scaled >= 60
    assert abs((second.utc - first.utc).total_seconds() - scaled) < 0.01
    assert first.utc >= start
    assert first.trust is TimeTrust.SYNCHRONISED
    with pytest.raises(ValueError, match="rate"):
        ScaledClock(start, rate=0)


def test_only_the_real_clock_takes_time_from_a_reference(tmp_path: Path) -> None:
    """The daemon asks the clock's interface, not its class, whether the dispenser's RTC may be
    adopted: the real clock can; a test's or the demo's clock keeps its own time."""
    assert isinstance(SystemClock(synced_flag=tmp_path / "synced"), ReferenceClock)
    start = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
    assert not isinstance(VirtualClock(start), ReferenceClock)
    assert not isinstance(ScaledClock(start, rate=60.0), ReferenceClock)


def test_a_clock_says_how_fast_it_runs(tmp_path: Path) -> None:
    """Only the clock knows its speed (the daemon divides its real sleeps by it)."""
    start = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
    assert time_rate(ScaledClock(start, rate=60.0)) == 60.0
    assert time_rate(AnchoredClock(start, 0.0, 30.0)) == 30.0  # the e2e rig's
    assert time_rate(ReleasedClock(start, 45.0, 600.0)) == 45.0
    assert time_rate(VirtualClock(start)) == 1.0  # moved by hand: its sleeps are real ones
    assert time_rate(SystemClock(synced_flag=tmp_path / "synced")) == 1.0
