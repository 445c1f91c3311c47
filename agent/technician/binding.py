"""`dispenser-agent bind` / `rebind`: which patient this unit serves, decided on site.

The agent must be stopped (its lock): the binding is taken by the daemon at its next start
(`Daemon._binding_at_start`), which emits `binding_changed` to the response centre. The
patient comes from the roll the unit last saw inserted (its label) or is given; either way the
technician confirms it. A given patient whose roll is not the loaded one is refused: a roll of
another patient is never bound by accident. Recorded in the audit log (who, from what) and in
the config file (`patient_ref`), so config and unit agree.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from agent.config import AgentConfig
from agent.daemon import TECHNICIAN_BINDING_KEY
from agent.engine.roll_check import same_patient
from agent.store.db import Store
from agent.technician.lock import StateLock, StateLocked
from agent.technician.report import EXIT_AGENT_RUNNING, EXIT_FAILED, EXIT_OK, Report
from agent.technician.reset import STOP_HINT, rewrite_config
from agent.technician.snapshot import SnapshotError, read_store

Confirm = Callable[[str], bool]


def bind(
    config: AgentConfig,
    config_path: Path,
    *,
    rebind: bool,
    by: str,
    patient_ref: str | None,
    confirm: Confirm,
) -> tuple[Report, int]:
    command = "rebind" if rebind else "bind"
    report = Report(command)
    try:
        lock = StateLock.acquire(config.state_dir)
    except StateLocked as exc:
        report.add(
            "agent stopped", False, f"{exc}: {STOP_HINT.replace('--stop-daemon', 'run again')}"
        )
        return report, EXIT_AGENT_RUNNING
    try:
        return _bind_locked(config, config_path, report, rebind, by, patient_ref, confirm)
    finally:
        lock.release()


def _bind_locked(
    config: AgentConfig,
    config_path: Path,
    report: Report,
    rebind: bool,
    by: str,
    patient_ref: str | None,
    confirm: Confirm,
) -> tuple[Report, int]:
    try:
        view = read_store(config.db_path)
        state = view.state
        bound = state.binding.patient_ref if state.binding else None
        roll = state.roll
        mismatch = view.binding_mismatch
    except SnapshotError:
        bound, roll, mismatch = None, None, False  # a unit never started: bind from scratch
    if not rebind and (bound is not None or mismatch):
        report.add(
            "unit unbound",
            False,
            "the unit is bound already: use `rebind` (a correction) "
            "or `reset --termination` (another patient)",
        )
        return report, EXIT_FAILED
    if rebind and bound is None and not mismatch:
        report.add("unit bound", False, "the unit is not bound: use `bind`")
        return report, EXIT_FAILED
    if patient_ref is None:
        if roll is None or roll.unverified:
            report.add(
                "roll",
                False,
                "no roll label read yet: insert the patient's first roll "
                "with the agent running, stop it, then bind again (or give --patient)",
            )
            return report, EXIT_FAILED
        patient_ref, source = roll.patient_ref, f"the label of roll {roll.roll_id}"
    else:
        source = "given by the technician"
        if (
            roll is not None
            and not roll.unverified
            and not same_patient(patient_ref, roll.patient_ref)
        ):
            report.add(
                "roll",
                False,
                f"the loaded roll {roll.roll_id} is for another patient: "
                "remove it, or check the reference (bind from the roll with no --patient)",
            )
            return report, EXIT_FAILED
    if bound is not None and same_patient(bound, patient_ref) and not mismatch:
        report.add("binding", True, f"already bound to {patient_ref}: nothing to do")
        return report, EXIT_OK
    was = (
        f" (was {bound})"
        if bound
        else " (the unit had stopped on a config mismatch)"
        if mismatch
        else ""
    )
    question = f"Bind unit {config.unit_id} to patient {patient_ref}, from {source}{was}?"
    if not confirm(question):
        report.add("confirmed", False, "not confirmed: nothing changed")
        return report, EXIT_FAILED
    report.add("confirmed", True, f"confirmed by {by}")
    at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    with Store.open(config.db_path) as store, store.transaction():
        store.set_kv(
            TECHNICIAN_BINDING_KEY,
            json.dumps({"patient_ref": patient_ref, "by": by, "at": at, "source": source}),
        )
        store.audit_append(
            "technician.rebind" if rebind else "technician.bind",
            {"patient_ref": patient_ref, "by": by, "source": source, "previous": bound},
            at,
            "untrusted",
        )
    rewrite_config(config_path, patient_ref=patient_ref)
    report.add(
        "binding",
        True,
        f"bound to {patient_ref} from the next start (sudo systemctl start dispenser-agent); the "
        "response centre gets binding_changed",
    )
    report.add("config", True, f"patient_ref set in {config_path}")
    return report, EXIT_OK
