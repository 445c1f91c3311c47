"""The technician's sub-commands of `dispenser-agent` (registered by agent/cli.py).

Each prints a plain PASS/FAIL report (or `--json`) and exits with a code from
agent/technician/report.py: 0 done, 1 failed or refused, 2 usage or config error, 3 refused
because the agent runs, 4 done with a step that failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.config import ConfigError, load_config
from agent.technician.report import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Report

COMMANDS = ("reset", "audit-export")


def add_reset(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reset = sub.add_parser(
        "reset", help="end of service: unbind the unit and remove every trace of the patient"
    )
    reset.add_argument("--config", type=Path, required=True)
    reset.add_argument(
        "--termination",
        action="store_true",
        help="required: this ends the service for the patient (see README, For technicians)",
    )
    reset.add_argument("--by", required=True, help="your technician id (never a name)")
    reset.add_argument(
        "--export-to",
        type=Path,
        required=True,
        help="folder for the audit export the municipality files (not on the unit's state)",
    )
    reset.add_argument("--stop-daemon", action="store_true", help="stop the running agent first")
    reset.add_argument(
        "--force",
        action="store_true",
        help="wipe even if events could not be delivered (the audit export holds them)",
    )
    reset.add_argument("--signed-reset", type=Path, help="a reset command signed by the centre")
    reset.add_argument("--presence-timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    reset.add_argument("--json", action="store_true", help="the report and receipt as JSON")


def add_audit_export(audit_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = audit_sub.add_parser(
        "export", help="write the audit log with a SHA-256 manifest (signed if the unit has a key)"
    )
    export.add_argument("--config", type=Path, required=True)
    export.add_argument("--to", type=Path, required=True, help="the folder to write into")
    export.add_argument("--key", type=Path, help="private key (PEM) to sign the manifest")
    export.add_argument("--json", action="store_true")


def run_check_config(args: argparse.Namespace) -> int:
    from agent.technician.check_config import check_config

    report = check_config(args.config)  # ConfigError: printed by the caller, exit 2
    report.print(sys.stdout, as_json=args.json)
    return EXIT_OK if report.ok else EXIT_FAILED


def run_reset(args: argparse.Namespace) -> int:
    from agent.technician.presence import LongPress, Presence, SignedReset
    from agent.technician.reset import terminate

    if not args.termination:
        print(
            "error: a reset ends the service for the patient: say so with --termination",
            file=sys.stderr,
        )
        return EXIT_USAGE
    config = load_config(args.config)
    presence: Presence = SignedReset(str(args.signed_reset)) if args.signed_reset else LongPress()
    if not args.json:
        print(f"To confirm you are at the unit: {presence.describe()}.", flush=True)
    report, code = terminate(
        config,
        args.config,
        export_to=args.export_to,
        presence=presence,
        by=args.by,
        stop_daemon=args.stop_daemon,
        force=args.force,
        presence_timeout_s=args.presence_timeout,
    )
    _print_reset(report, args.json)
    return code


def _print_reset(report: Report, as_json: bool) -> None:
    import json

    report.print(sys.stdout, as_json=as_json)
    if not as_json:
        print("reset receipt:")
        print(json.dumps(report.extra.get("receipt"), indent=2))


def run_audit_export(args: argparse.Namespace) -> int:
    from agent.store.db import Store
    from agent.technician.audit_export import DEFAULT_UNIT_KEY, export_audit

    config = load_config(args.config)
    report = Report("audit export")
    try:
        with Store.open(config.db_path, create=False) as store:
            exported = export_audit(store, config.unit_id, args.to, args.key or DEFAULT_UNIT_KEY)
    except Exception as exc:
        report.add("export", False, f"cannot export: {exc}")
        report.print(sys.stdout, as_json=args.json)
        return 1
    report.add("export", exported.chain_ok, f"{exported.records} records to {exported.log}")
    report.add("manifest", True, f"{exported.manifest} (sha256 {exported.sha256})")
    report.add("signature", exported.signature is not None, exported.signature_note)
    report.print(sys.stdout, as_json=args.json)
    return 0 if exported.chain_ok else 1


__all__ = [
    "ConfigError",
    "add_audit_export",
    "add_reset",
    "run_audit_export",
    "run_check_config",
    "run_reset",
]
