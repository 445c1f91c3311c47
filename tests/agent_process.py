"""Runs the real daemon in its own process for end-to-end tests, on a scaled clock.

    python tests/agent_process.py --config CFG --start 2026-11-23T07:59:00+01:00 \
        --anchor MONO|stdin --rate 60

Everything is the production daemon (`agent.runtime.build_daemon`) except the clock, which reads
`--start` when the machine's monotonic clock reads `--anchor` and runs `--rate` times faster, so a
morning of doses takes seconds. With `--anchor stdin` the clock is held at `--start` until the test
writes the anchor on stdin (tests/e2e_support.py does once the agent has linked). Either way the
test knows the agent's time without estimating how long the agent took to start (a loaded machine
once made that estimate a minute wrong, and a slow start ate the minutes before the first dose).
Being a separate process is the point: tests kill it with SIGKILL and start it again on the
same state.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from agent.clock import Clock
from hw.rig_agent import AnchoredClock, ReleasedClock, release_from_stdin, run_agent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--start", type=datetime.fromisoformat, required=True)
    parser.add_argument(
        "--anchor", required=True, help="time.monotonic() at --start, or `stdin`: sent there later"
    )
    parser.add_argument("--rate", type=float, default=60.0)
    args = parser.parse_args()
    clock: Clock
    if args.anchor == "stdin":  # held at --start until the test sends the anchor
        held = ReleasedClock(args.start, args.rate, hold_s=0.0)
        release_from_stdin(held)
        clock = held
    else:
        clock = AnchoredClock(args.start, float(args.anchor), args.rate)
    return run_agent(args.config, clock)


if __name__ == "__main__":
    sys.exit(main())
