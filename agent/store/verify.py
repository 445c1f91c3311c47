"""`dispenser-agent audit verify`: check the audit chain of a store file and say so in one line."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.store.audit import AuditReport
from agent.store.db import Store
from agent.store.errors import StoreError

EXIT_OK = 0
EXIT_TAMPERED = 1
EXIT_CANNOT_OPEN = 2


def verify_audit(store: Store) -> AuditReport:
    return store.verify_audit()


def audit_verify_main(db_path: Path) -> int:
    """Print a one-line verdict; return 0 (chain ok), 1 (tampered or truncated), 2 (cannot open)."""
    try:
        with Store.open(db_path, create=False) as store:
            report = verify_audit(store)
    except (StoreError, sqlite3.Error) as exc:
        print(f"audit verify: cannot open {db_path}: {exc}")
        return EXIT_CANNOT_OPEN
    if report.ok:
        pruned = (
            f", records up to seq {report.pruned_through} pruned behind a checkpoint"
            if report.pruned_through is not None
            else ""
        )
        print(
            f"audit verify: OK, {report.records_checked} records, chain intact{pruned} ({db_path})"
        )
        return EXIT_OK
    print(
        f"audit verify: TAMPERED at seq {report.first_bad_seq}: {report.reason} "
        f"({report.records_checked} records verified before it) ({db_path})"
    )
    return EXIT_TAMPERED
