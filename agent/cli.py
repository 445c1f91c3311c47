"""`dispenser-agent` command line: one entry point for technicians, developers and rigs.

dispenser-agent run --config FILE        the daemon (what systemd starts)
dispenser-agent demo                      simulated dispenser + agent + local broker + live view
dispenser-agent check-config FILE         validate a config file, print what it means
dispenser-agent check --config FILE       install check: dispenser, broker, time, store, disk ...
dispenser-agent status --config FILE      what the unit does now (read-only, beside the daemon)
dispenser-agent bind|rebind --config FILE --by ID [--patient REF] [--yes]
dispenser-agent pause|resume --config FILE --by ID [...]   on site, through the running agent
dispenser-agent audit verify --config FILE | --db FILE
dispenser-agent audit export --config FILE --to DIR
dispenser-agent reset --termination --config FILE --by ID --export-to DIR [--stop-daemon]
                                          end of service: unbind, remove every trace of the patient
dispenser-agent plan show --config FILE   on site: is a sachet held for a plan decision?
dispenser-agent plan discard --config FILE --by ID --roll ROLL (--sachet N | --all-unplanned)
                                          on site: decide that unplanned sachets go to the bin
dispenser-agent sim ...                   the dispenser simulator (same as python -m hw.sim)
dispenser-agent simulate ...              seeded year-long simulation of the dose engine
dispenser-agent fhir --mapping FILE       response centre: events (JSON lines) -> FHIR bundles
dispenser-agent centre keygen|sign|send|watch|units
                                          response centre: keys, signed commands, live view,
                                          unit availability
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from agent.config import AgentConfig, ConfigError, load_config
from agent.technician import cli as technician_cli

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
    if args_list[:1] == ["fhir"]:
        from agent.fhir.__main__ import main as fhir_main

        return fhir_main(args_list[1:])
    if args_list[:1] == ["centre"]:
        from agent.centre.tool import main as centre_main

        return centre_main(args_list[1:])

    parser = argparse.ArgumentParser(prog="dispenser-agent", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, required=True)

    demo = sub.add_parser("demo", help="a scripted day on a simulated dispenser, live")
    demo.add_argument("--speed", type=float, default=60.0, help="simulated seconds per second")
    demo.add_argument("--no-color", action="store_true")

    check = sub.add_parser("check-config", help="validate a config file, say what it means")
    check.add_argument("config", type=Path)
    check.add_argument("--json", action="store_true")

    technician_cli.add_status(sub)
    technician_cli.add_check(sub)
    technician_cli.add_binding_and_pause(sub)
    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the audit hash chain")
    where = verify.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path)
    where.add_argument("--db", type=Path)

    technician_cli.add_reset(sub)
    technician_cli.add_audit_export(audit_sub)

    plan = sub.add_parser(
        "plan", help="on site: decide a plan mismatch (a sachet the schedule lacks, VKP 3.22)"
    )
    plan_sub = plan.add_subparsers(dest="plan_command", required=True)
    show = plan_sub.add_parser("show", help="the sachet held for a decision, if any")
    show.add_argument("--config", type=Path, required=True)
    discard = plan_sub.add_parser(
        "discard", help="the unplanned sachet at the reader (or all on the roll) go to the bin"
    )
    discard.add_argument("--config", type=Path, required=True)
    discard.add_argument("--by", required=True, help="your technician id (never a name)")
    discard.add_argument("--roll", required=True, help="the loaded roll's id (see plan show)")
    which = discard.add_mutually_exclusive_group(required=True)
    which.add_argument("--sachet", type=int, help="the index of the sachet at the reader")
    which.add_argument(
        "--all-unplanned",
        action="store_true",
        help="every sachet of this roll packed for no dose time of the schedule",
    )

    sub.add_parser("sim", help="dispenser simulator (see: dispenser-agent sim --help)")
    sub.add_parser("simulate", help="year-long engine simulation (dispenser-agent simulate --help)")
    sub.add_parser("fhir", help="events -> FHIR R4 bundles (dispenser-agent fhir --help)")
    sub.add_parser(
        "centre", help="response centre: keys, commands, live view, availability (centre --help)"
    )

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
                return technician_cli.run_check_config(args)
            case "audit" if args.audit_command == "export":
                return technician_cli.run_audit_export(args)
            case "audit":
                from agent.store.verify import audit_verify_main

                db = args.db if args.db else load_config(args.config).db_path
                return audit_verify_main(db)
            case "status":
                return technician_cli.run_status(args)
            case "check":
                return technician_cli.run_check(args)
            case "bind" | "rebind":
                return technician_cli.run_bind(args)
            case "pause" | "resume":
                return technician_cli.run_pause(args)
            case "reset":
                return technician_cli.run_reset(args)
            case "plan":
                return _plan(args)
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


def _plan(args: argparse.Namespace) -> int:
    from agent.local_control import (
        LocalCommandError,
        local_request,
        send_local_command,
        socket_path,
    )

    config = load_config(args.config)
    if args.plan_command == "show":
        request = local_request("request_status", "on-site")
    else:
        sachet = None if args.all_unplanned else args.sachet
        request = local_request(
            "discard_unplanned", args.by, roll_id=args.roll, sachet_index=sachet
        )
    try:
        reply = send_local_command(socket_path(config.state_dir), request)
    except LocalCommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if reply.get("status") != "ok":
        error = reply.get("error")
        print(f"refused ({reply.get('status')}): {json.dumps(error)}", file=sys.stderr)
        return 1
    if args.plan_command == "show":
        result = reply.get("result")
        engine = result.get("engine") if isinstance(result, dict) else None
        held = engine.get("unplanned_sachet") if isinstance(engine, dict) else None
        if held is None:
            print("no sachet is held for a plan decision")
        else:
            print(json.dumps(held, indent=2))
        return 0
    print("decided: the unplanned sachet(s) go to the bin (see the plan_mismatch_decided event)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
