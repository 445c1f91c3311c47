"""The production daemon on a clock the rig runner shares (`python -m hw.rig_agent`).

    python -m hw.rig_agent --config CFG --t0 2026-11-23T07:56:00+01:00 --anchor MONO --rate 60
    python -m hw.rig_agent --config CFG --t0 2026-11-23T07:56:00+01:00 --anchor stdin --rate 60

Everything is `agent.runtime.build_daemon` except the clock: it reads `t0` when the system-wide
monotonic clock (CLOCK_MONOTONIC, the same in every process of the machine) reads the anchor, and
runs `--rate` times faster than real time. The runner, in another process, then knows the agent's
time to the millisecond without asking it: scenario time 0 is the anchor in both.

With `--anchor MONO` the anchor is fixed before the agent starts (real time, a second board or
real firmware that starts at a wall-clock t0). With `--anchor stdin` the runner sends it as a line
once the agent is up and linked, so a slow start (a loaded machine, a slow board) never eats the
scenario's margins: until then the clock creeps towards t0 at real speed from `rate` x `--boot`
seconds before it, and never reaches it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.clock import Clock, Now, TimeTrust
from agent.config import load_config
from agent.runtime import build_daemon


def _checked_t0(t0_utc: datetime, rate: float) -> datetime:
    """t0 in UTC, once it and the rate are known to be usable."""
    if t0_utc.utcoffset() is None:
        raise ValueError(f"t0 must be timezone-aware, got {t0_utc!r}")
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"rate must be a positive number, got {rate!r}")
    return t0_utc.astimezone(UTC)


def _scenario_now(t0: datetime, elapsed: float) -> Now:
    """The reading `elapsed` scenario seconds after t0; mono only has to move forward at the
    scaled rate, offset so it stays positive."""
    return Now(
        mono=1e6 + elapsed, utc=t0 + timedelta(seconds=elapsed), trust=TimeTrust.SYNCHRONISED
    )


class AnchoredClock:
    """`t0_utc` at monotonic `anchor`, `rate` times real time (before and after the anchor)."""

    def __init__(self, t0_utc: datetime, anchor_mono: float, rate: float) -> None:
        self._t0 = _checked_t0(t0_utc, rate)
        self.rate = rate
        self._anchor = anchor_mono

    def now(self) -> Now:
        elapsed = (time.monotonic() - self._anchor) * self.rate
        return _scenario_now(self._t0, elapsed)


class ReleasedClock:
    """`t0_utc` at a monotonic anchor learnt later (`release`), `rate` times real time after it.

    Before the anchor is known the clock is held: it starts `hold_s` (scenario seconds) before t0
    and moves at real speed, never past `hold_s / 2` before t0. Once released it reads the later
    of the held time and the anchored one, so it never goes back, and reads t0 at the anchor
    whenever the anchor comes before the held time catches up (it cannot: it stops short of t0)."""

    def __init__(
        self,
        t0_utc: datetime,
        rate: float,
        hold_s: float,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self._t0 = _checked_t0(t0_utc, rate)
        self.rate = rate
        self._hold_s = hold_s
        self._mono = mono
        self._started = mono()
        self._anchor: float | None = None

    def release(self, anchor_mono: float) -> None:
        if self._anchor is None:
            self._anchor = anchor_mono

    def scenario_s(self) -> float:
        """Seconds since t0 (negative before it)."""
        mono = self._mono()
        held = -self._hold_s + min(mono - self._started, self._hold_s / 2)
        if self._anchor is None:
            return held
        return max(held, (mono - self._anchor) * self.rate)

    def now(self) -> Now:
        elapsed = self.scenario_s()
        return _scenario_now(self._t0, elapsed)


def release_from_stdin(clock: ReleasedClock) -> None:
    """The runner writes the anchor (time.monotonic() at t0) as one line on stdin."""

    def read() -> None:
        line = sys.stdin.readline()
        if line.strip():
            clock.release(float(line))

    threading.Thread(target=read, name="rig-anchor", daemon=True).start()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m hw.rig_agent")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--t0", type=datetime.fromisoformat, required=True)
    parser.add_argument(
        "--anchor", required=True, help="time.monotonic() at t0, or `stdin`: sent there later"
    )
    parser.add_argument("--rate", type=float, default=1.0)
    parser.add_argument(
        "--boot", type=float, default=4.0, help="with --anchor stdin: real seconds held before t0"
    )
    args = parser.parse_args()
    clock: Clock
    if args.anchor == "stdin":
        released = ReleasedClock(args.t0, args.rate, args.boot * args.rate)
        release_from_stdin(released)
        clock = released
    else:
        clock = AnchoredClock(args.t0, float(args.anchor), args.rate)
    return run_agent(args.config, clock)


def run_agent(config: Path, clock: Clock) -> int:
    """The production daemon on `clock` until SIGTERM (exit 0) or a state fault; says AGENT
    READY once built. Log lines carry the milliseconds since the process started."""
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)7d %(name)s %(levelname)s %(message)s"
    )

    async def serve() -> int:
        daemon = build_daemon(load_config(config), clock=clock)
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        print("AGENT READY", flush=True)
        try:
            return await daemon.run()
        except asyncio.CancelledError:
            return 0
        finally:
            daemon.store.close()

    return asyncio.run(serve())


if __name__ == "__main__":
    sys.exit(main())
