"""The technician's sub-commands of `dispenser-agent` (registered by agent/cli.py).

Each prints a plain PASS/FAIL report (or `--json`) and exits with a code from
agent/technician/report.py: 0 done, 1 failed or refused, 2 usage or config error, 3 refused
because the agent runs, 4 done with a step that failed.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from agent.config import ConfigError, load_config
from agent.technician.report import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Report


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


def add_check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = sub.add_parser("check", help="install check: every part of the unit, PASS or FAIL")
    check.add_argument("--config", type=Path, required=True)
    check.add_argument("--timeout", type=float, default=10.0, help="seconds per link probed")
    check.add_argument("--json", action="store_true")


def run_check(args: argparse.Namespace) -> int:
    from agent.technician.check import install_check

    config = load_config(args.config)
    report = install_check(config, args.config, timeout_s=args.timeout)
    report.print(sys.stdout, as_json=args.json)
    return EXIT_OK if report.ok else EXIT_FAILED


def add_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser("status", help="what the unit is doing now (from its store)")
    status.add_argument("--config", type=Path, required=True)
    status.add_argument("--json", action="store_true")


def run_status(args: argparse.Namespace) -> int:
    from agent.technician.snapshot import SnapshotError
    from agent.technician.status import unit_status

    config = load_config(args.config)
    try:
        report = unit_status(config)
    except SnapshotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report.print(sys.stdout, as_json=args.json)
    return EXIT_OK if report.ok else EXIT_FAILED


def add_binding_and_pause(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, text in (
        ("bind", "bind the unit to its patient (from the first roll, or --patient)"),
        ("rebind", "correct the binding (a typo, or the mismatch that stopped the unit)"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", type=Path, required=True)
        cmd.add_argument("--by", required=True, help="your technician id (never a name)")
        cmd.add_argument("--patient", help="the pseudonymous patient reference (else: the roll's)")
        cmd.add_argument("--yes", action="store_true", help="confirmed (no question asked)")
        cmd.add_argument("--json", action="store_true")
    pause = sub.add_parser("pause", help="on site: a temporary stop (same rules as the centre's)")
    pause.add_argument("--config", type=Path, required=True)
    pause.add_argument("--by", required=True, help="your technician id (never a name)")
    pause.add_argument("--start", type=datetime.fromisoformat, help="ISO time; default now")
    pause.add_argument("--end", type=datetime.fromisoformat, help="ISO time; default: open-ended")
    pause.add_argument(
        "--reason", choices=("hospital", "respite", "travel", "other"), default="other"
    )
    pause.add_argument("--pause-id", help="default: on-site-<time>")
    pause.add_argument("--json", action="store_true")
    resume = sub.add_parser("resume", help="on site: end the pause (same rules as the centre's)")
    resume.add_argument("--config", type=Path, required=True)
    resume.add_argument("--by", required=True, help="your technician id (never a name)")
    resume.add_argument("--pause-id", help="default: whichever pause is active")
    resume.add_argument("--json", action="store_true")


def run_bind(args: argparse.Namespace) -> int:
    from agent.technician.binding import bind

    config = load_config(args.config)

    def confirm(question: str) -> bool:
        if args.yes:
            return True
        if not sys.stdin.isatty():
            print(
                f"{question} Not confirmed: answer on a terminal, or pass --yes.", file=sys.stderr
            )
            return False
        return input(f"{question} [y/N] ").strip().lower() in {"y", "yes"}

    report, code = bind(
        config,
        args.config,
        rebind=args.command == "rebind",
        by=args.by,
        patient_ref=args.patient,
        confirm=confirm,
    )
    report.print(sys.stdout, as_json=args.json)
    return code


def run_pause(args: argparse.Namespace) -> int:
    from agent.local_control import local_request
    from agent.technician.onsite import default_pause_id, send

    config = load_config(args.config)
    if args.command == "pause":
        start = args.start or datetime.now(UTC)
        fields: dict[str, object] = {
            "pause_id": args.pause_id or default_pause_id(),
            "start": start.isoformat(),
            "end": None if args.end is None else args.end.isoformat(),
            "reason": args.reason,
        }
    else:
        fields = {"pause_id": args.pause_id}
    report, code = send(config, args.command, local_request(args.command, args.by, **fields))
    report.print(sys.stdout, as_json=args.json)
    return code


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
    presence: Presence = (
        SignedReset(str(args.signed_reset), config)
        if args.signed_reset
        else LongPress(config.gpio.technician_button, config.gpio.technician_hold_s)
    )
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
    from agent.store.errors import StoreError
    from agent.technician.audit_export import DEFAULT_UNIT_KEY, export_audit

    config = load_config(args.config)
    report = Report("audit export")
    try:
        with Store.open(config.db_path, create=False) as store:
            exported = export_audit(store, config.unit_id, args.to, args.key or DEFAULT_UNIT_KEY)
    except (StoreError, sqlite3.Error, OSError, ValueError, subprocess.SubprocessError) as exc:
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
    "add_binding_and_pause",
    "add_check",
    "add_reset",
    "add_status",
    "run_audit_export",
    "run_bind",
    "run_check",
    "run_check_config",
    "run_pause",
    "run_reset",
    "run_status",
]
