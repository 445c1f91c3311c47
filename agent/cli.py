"""`dispenser-agent` command line: one entry point for technicians, developers and rigs.

dispenser-agent run --config FILE        the daemon (what systemd starts)
dispenser-agent demo                      simulated dispenser + agent + local broker + live view
dispenser-agent check-config FILE         validate a config file, print what it means
dispenser-agent audit verify --config FILE | --db FILE
dispenser-agent reset --config FILE       end of service: wipe every trace of the patient
dispenser-agent sim ...                   the dispenser simulator (same as python -m hw.sim)
dispenser-agent simulate ...              seeded year-long simulation of the dose engine
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from agent.config import AgentConfig, ConfigError, load_config

log = logging.getLogger("dispenser-agent")


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Sub-tools with their own argument parsers take the rest of the command line as is.
    if args_list[:1] == ["sim"]:
        from hw.sim import main as sim_main

        return sim_main(args_list[1:])
    if args_list[:1] == ["simulate"]:
        from agent.simulation.cli import main as simulate_main

        return simulate_main(args_list[1:])

    parser = argparse.ArgumentParser(prog="dispenser-agent", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, required=True)

    demo = sub.add_parser("demo", help="a scripted day on a simulated dispenser, live")
    demo.add_argument("--speed", type=float, default=60.0, help="simulated seconds per second")
    demo.add_argument("--no-color", action="store_true")

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("config", type=Path)

    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the audit hash chain")
    where = verify.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path)
    where.add_argument("--db", type=Path)

    reset = sub.add_parser("reset", help="end of service: wipe all patient data from the unit")
    reset.add_argument("--config", type=Path, required=True)
    reset.add_argument(
        "--force", action="store_true", help="wipe even if events were not yet delivered"
    )

    sub.add_parser("sim", help="dispenser simulator (see: dispenser-agent sim --help)")
    sub.add_parser("simulate", help="year-long engine simulation (dispenser-agent simulate --help)")

    args = parser.parse_args(args_list)
    quiet = args.command == "demo"  # the live view is the demo's output
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        match args.command:
            case "run":
                return _run(load_config(args.config))
            case "demo":
                from agent.demo.run import run_demo

                return run_demo(speed=args.speed, color=not args.no_color and sys.stdout.isatty())
            case "check-config":
                config = load_config(args.config)
                print(config.model_dump_json(indent=2))
                return 0
            case "audit":
                from agent.store.verify import audit_verify_main

                db = args.db if args.db else load_config(args.config).db_path
                return audit_verify_main(db)
            case "reset":
                return _reset(load_config(args.config), force=args.force)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 2


def _run(config: AgentConfig) -> int:
    from agent.runtime import build_daemon

    async def serve() -> int:
        daemon = build_daemon(config)
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await daemon.run()
        except asyncio.CancelledError:
            log.info("stopped by signal")
            return 0
        finally:
            daemon.store.close()

    return asyncio.run(serve())


def _reset(config: AgentConfig, *, force: bool) -> int:
    from agent.store.db import Store
    from agent.store.errors import BacklogNotEmptyError

    with Store.open(config.db_path) as store:
        try:
            store.wipe_for_new_patient(force=force)  # its own transaction, then VACUUM
        except BacklogNotEmptyError as exc:
            print(f"error: {exc} (deliver them first, or --force)", file=sys.stderr)
            return 1
    print(f"{config.db_path}: all patient data removed; the unit is ready for a new patient")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
