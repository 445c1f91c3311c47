"""Runs the real daemon in its own process for end-to-end tests, on a scaled clock.

    python tests/agent_process.py --config CFG --start 2026-11-23T07:59:00+01:00 --rate 60

Everything is the production daemon (`agent.runtime.build_daemon`) except the clock, which starts
at `--start` and runs `--rate` times faster, so a morning of doses takes seconds. Being a separate
process is the point: tests kill it with SIGKILL and start it again on the same state.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from agent.clock import ScaledClock
from hw.rig_agent import run_agent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--start", type=datetime.fromisoformat, required=True)
    parser.add_argument("--rate", type=float, default=60.0)
    args = parser.parse_args()
    return run_agent(args.config, ScaledClock(args.start, rate=args.rate), args.rate)


if __name__ == "__main__":
    sys.exit(main())
