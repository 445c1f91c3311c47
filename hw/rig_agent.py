"""The production daemon on a clock the rig runner shares (`python -m hw.rig_agent`).

    python -m hw.rig_agent --config CFG --t0 2026-11-23T07:56:00+01:00 --anchor MONO --rate 60

Everything is `agent.runtime.build_daemon` except the clock: it reads `t0` when the system-wide
monotonic clock (CLOCK_MONOTONIC, the same in every process of the machine) reads `--anchor`, and
runs `--rate` times faster than real time. The runner, in another process, then knows the agent's
time to the millisecond without asking it: scenario time 0 is the anchor in both. The anchor may
lie a little in the future, so the agent boots and connects before t=0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.clock import Clock, Now, TimeTrust
from agent.config import load_config
from agent.runtime import build_daemon


class AnchoredClock:
    """`t0_utc` at monotonic `anchor`, `rate` times real time (before and after the anchor)."""

    def __init__(self, t0_utc: datetime, anchor_mono: float, rate: float) -> None:
        if t0_utc.utcoffset() is None:
            raise ValueError(f"t0 must be timezone-aware, got {t0_utc!r}")
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        self.rate = rate
        self._t0 = t0_utc.astimezone(UTC)
        self._anchor = anchor_mono

    def now(self) -> Now:
        elapsed = (time.monotonic() - self._anchor) * self.rate
        # mono only has to move forward at the scaled rate; offset it so it stays positive.
        return Now(
            mono=1e6 + elapsed,
            utc=self._t0 + timedelta(seconds=elapsed),
            trust=TimeTrust.SYNCHRONISED,
        )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m hw.rig_agent")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--t0", type=datetime.fromisoformat, required=True)
    parser.add_argument("--anchor", type=float, required=True, help="time.monotonic() at t0")
    parser.add_argument("--rate", type=float, default=1.0)
    args = parser.parse_args()
    return run_agent(args.config, AnchoredClock(args.t0, args.anchor, args.rate), args.rate)


def run_agent(config: Path, clock: Clock, rate: float) -> int:
    """The production daemon on `clock` until SIGTERM (exit 0) or a state fault; says AGENT
    READY once built. Log lines carry the milliseconds since the process started."""
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)7d %(name)s %(levelname)s %(message)s"
    )

    async def serve() -> int:
        daemon = build_daemon(load_config(config), clock=clock, time_rate=rate)
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
