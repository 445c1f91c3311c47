"""agent/runtime.py builds the daemon: its edges are made there and handed in (agent/edges.py),
and the speed of a fast clock is read from the clock, the one place it lives."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from agent.clock import ScaledClock, VirtualClock
from agent.config import parse_config
from agent.daemon import Daemon
from agent.runtime import build_daemon

START = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)


def config_at(tmp_path: Path) -> dict[str, object]:
    return {
        "unit_id": "unit-a-0001",
        "state_dir": str(tmp_path),
        "dispenser": {"device": "/dev/null"},
    }


def built(tmp_path: Path, clock: VirtualClock | ScaledClock) -> Daemon:
    daemon = build_daemon(parse_config(config_at(tmp_path)), clock)
    daemon.store.close()
    return daemon


def test_the_daemon_sleeps_at_the_speed_of_its_clock(tmp_path: Path) -> None:
    """A clock 60 times faster than real time: the daemon's real sleeps are 60 times shorter,
    without being told the rate a second time."""
    assert built(tmp_path / "fast", ScaledClock(START, rate=60.0)).time_rate == 60.0
    assert built(tmp_path / "virtual", VirtualClock(START)).time_rate == 1.0
