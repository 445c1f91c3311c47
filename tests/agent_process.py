"""Runs the real daemon in its own process for end-to-end tests, on a scaled clock.

    python tests/agent_process.py --config CFG --start 2026-11-23T07:59:00+01:00 \
        --anchor MONO --rate 60

Everything is the production daemon (`agent.runtime.build_daemon`) except the clock, which reads
`--start` when the machine's monotonic clock reads `--anchor` (the test's own reading as it
launched the process) and runs `--rate` times faster, so a morning of doses takes seconds. The test
knows the agent's time without estimating how long the agent took to start (a loaded machine once
made that estimate a minute wrong). Being a separate process is the point: tests kill it with
SIGKILL and start it again on the same state.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from hw.rig_agent import AnchoredClock, run_agent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--start", type=datetime.fromisoformat, required=True)
    parser.add_argument("--anchor", type=float, required=True, help="time.monotonic() at --start")
    parser.add_argument("--rate", type=float, default=60.0)
    args = parser.parse_args()
    return run_agent(args.config, AnchoredClock(args.start, args.anchor, args.rate), args.rate)


if __name__ == "__main__":
    sys.exit(main())
