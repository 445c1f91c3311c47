"""Runs the real daemon in its own process for end-to-end tests, on a scaled clock.

    python tests/agent_process.py --config CFG --start 2026-11-23T07:59:00+01:00 --rate 60

Everything is the production daemon (`agent.runtime.build_daemon`) except the clock, which starts
at `--start` and runs `--rate` times faster, so a morning of doses takes seconds. Being a separate
process is the point: tests kill it with SIGKILL and start it again on the same state.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from datetime import datetime
from pathlib import Path

from agent.clock import ScaledClock
from agent.config import load_config
from agent.runtime import build_daemon


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--start", type=datetime.fromisoformat, required=True)
    parser.add_argument("--rate", type=float, default=60.0)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)7d %(name)s %(levelname)s %(message)s"
    )
    clock = ScaledClock(args.start, rate=args.rate)

    async def serve() -> int:
        daemon = build_daemon(load_config(args.config), clock=clock, time_rate=args.rate)
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
