"""`dispenser-agent reset --termination`: the end of service, on site.

In order, each step in the receipt (JSON) with whether it was done:
 1. refuse while the agent runs (it holds `<state_dir>/agent.lock`), unless `--stop-daemon`;
 2. the technician's presence (a long press of the technician button);
 3. stop the agent if asked, and hold the lock so it cannot start again meanwhile;
 4. `unit_unbound` goes into the outbox (the response centre learns the unit is unbound);
 5. the audit log is exported (hash manifest, signed if the unit has a key) outside the unit's
    state folder, for the municipality to file;
 6. the outbox is delivered; if events stay undelivered the reset stops here (nothing wiped)
    unless `--force` (the export holds them);
 7. FactoryReset to the dispenser (failure is reported, the wipe still goes on);
 8. every trace of the patient leaves the unit: binding, schedule, ledger, outbox, commands,
    audit and engine state in the store (secure_delete, VACUUM, WAL truncated), and
    `patient_ref` and `schedule` in the config file; the unit's identity (unit id, broker,
    certificates) and its counters (dispense-id high-water mark, event seq) stay.
The receipt names no patient and no dose time. The agent never logs a patient reference, so
no log needs scrubbing (the receipt says so).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from agent.clock import SystemClock
from agent.config import AgentConfig
from agent.engine.catalogue import make_event
from agent.store.db import Store
from agent.technician import links
from agent.technician.audit_export import DEFAULT_UNIT_KEY, export_audit
from agent.technician.lock import StateLock, StateLocked, holder_pid, is_held, stop_holder
from agent.technician.presence import WAIT_FOR_PRESS_S, Presence
from agent.technician.report import (
    EXIT_AGENT_RUNNING,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    Report,
)

STOP_HINT = "stop it first (sudo systemctl stop dispenser-agent) or pass --stop-daemon"


def strip_patient_from_config(path: Path) -> list[str]:
    """Rewrite the config without `patient_ref` and `schedule`; returns the fields removed."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    removed = [key for key in ("patient_ref", "schedule") if key in raw]
    rewrite_config(path, **dict.fromkeys(removed))
    return removed


def rewrite_config(path: Path, **changes: object) -> None:
    """Set (or, with None, remove) top-level fields of the config file: atomically (a temporary
    file renamed over it), with the file's mode kept."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    before = path.stat()
    mode = before.st_mode & 0o777
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(raw, out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        if os.geteuid() == 0:  # sudo: keep root:dispenser 0640, or the agent cannot read it
            os.chown(tmp, before.st_uid, before.st_gid)
        os.replace(tmp, path)
    except BaseException:  # whatever stopped it (even ^C): no half-written file is left; re-raised
        Path(tmp).unlink(missing_ok=True)
        raise


def terminate(
    config: AgentConfig,
    config_path: Path,
    *,
    export_to: Path,
    presence: Presence,
    by: str,
    stop_daemon: bool = False,
    force: bool = False,
    presence_timeout_s: float = WAIT_FOR_PRESS_S,
    deliver_timeout_s: float = 30.0,
    dispenser_timeout_s: float = 10.0,
    unit_key: Path | None = DEFAULT_UNIT_KEY,
    stop: Callable[[Path], bool] = stop_holder,
) -> tuple[Report, int]:
    report = Report("reset --termination")
    receipt: dict[str, object] = {
        "schema": "dispenser-reset-receipt/1",
        "unit_id": config.unit_id,
        "by": by,
        "started_at": _now(),
    }
    report.extra["receipt"] = receipt
    state = config.state_dir
    export_to = export_to.absolute()
    if export_to == state.absolute() or state.absolute() in export_to.parents:
        report.add("export", False, f"{export_to} is inside the state folder: choose another place")
        return _refused(report, receipt), EXIT_FAILED
    if is_held(state) and not stop_daemon:
        pid = holder_pid(state)
        report.add("agent stopped", False, f"the agent is running (pid {pid}): {STOP_HINT}")
        return _refused(report, receipt), EXIT_AGENT_RUNNING
    present, why = presence.confirm(presence_timeout_s)
    report.add("technician present", present, why)
    if not present:
        return _refused(report, receipt), EXIT_FAILED
    if is_held(state):
        stopped = stop(state)
        report.add("agent stopped", stopped, "stopped" if stopped else "would not stop")
        if not stopped:
            return _refused(report, receipt), EXIT_AGENT_RUNNING
    try:
        lock = StateLock.acquire(state)
    except StateLocked as exc:
        report.add("agent stopped", False, f"{exc}: {STOP_HINT}")
        return _refused(report, receipt), EXIT_AGENT_RUNNING
    try:
        return _terminate_locked(
            config,
            config_path,
            report,
            receipt,
            export_to=export_to,
            by=by,
            force=force,
            deliver_timeout_s=deliver_timeout_s,
            dispenser_timeout_s=dispenser_timeout_s,
            unit_key=unit_key,
        )
    finally:
        lock.release()


def _terminate_locked(
    config: AgentConfig,
    config_path: Path,
    report: Report,
    receipt: dict[str, object],
    *,
    export_to: Path,
    by: str,
    force: bool,
    deliver_timeout_s: float,
    dispenser_timeout_s: float,
    unit_key: Path | None,
) -> tuple[Report, int]:
    with Store.open(config.db_path) as store:
        if not any(e.kind == "unit_unbound" for e in store.pending_events(0, 100_000)):
            event = make_event("unit_unbound", {"reason": "end_of_service", "by": by})
            payload: dict[str, object] = {
                "priority": event.priority.value,
                "vkp_code": event.vkp_code,
                "alert_id": None,
                "boot": 0,
                "data": event.fields,
            }
            now = SystemClock().now()
            with store.transaction():
                store.append_event("unit_unbound", payload, _now(), now.trust.value)
        exported = export_audit(store, config.unit_id, export_to, unit_key)
        report.add(
            "audit export",
            exported.chain_ok,
            f"{exported.records} records to {exported.log} (sha256 {exported.sha256[:16]}…); "
            + ("chain intact" if exported.chain_ok else "CHAIN BROKEN: file it as is")
            + f"; {exported.signature_note}",
        )
        receipt["audit_export"] = {
            "file": str(exported.log),
            "manifest": str(exported.manifest),
            "sha256": exported.sha256,
            "records": exported.records,
            "chain_ok": exported.chain_ok,
            "signature": None if exported.signature is None else str(exported.signature),
        }
        delivered = links.deliver_outbox(config, store, deliver_timeout_s)
        left = store.backlog().count
        receipt["undelivered_events"] = left
        report.add("outbox delivered", delivered.ok, delivered.detail)
        if left and not force:
            report.summary = (
                f"REFUSED: {left} events not delivered (unit_unbound among them); nothing was "
                "wiped. Get the unit online and run the reset again, or pass --force (the audit "
                "export holds them)"
            )
            receipt["result"] = "refused"
            return report, EXIT_FAILED
        dispenser = links.factory_reset_dispenser(config, dispenser_timeout_s)
        report.add("dispenser factory reset", dispenser.ok, dispenser.detail)
        receipt["dispenser_factory_reset"] = dispenser.ok
        record = store.wipe_for_new_patient(force=force)
        kept = store.first_unused_dispense_id()
        receipt["dispense_id_high_water"] = kept
        receipt["event_seq_high_water"] = store.last_event_seq()
        receipt["reset_audit_seq"] = record.seq
    report.add(
        "store wiped",
        True,
        "binding, schedule, ledger, outbox, commands, audit and engine state removed; VACUUM "
        f"done, WAL truncated; dispense ids continue from {kept}",
    )
    removed = strip_patient_from_config(config_path)
    report.add(
        "config cleaned",
        True,
        f"removed {', '.join(removed) or 'nothing (already clean)'} from {config_path}; unit "
        "id, broker and certificates kept",
    )
    report.add("logs", True, "the agent logs no patient reference: nothing to scrub")
    receipt["finished_at"] = _now()
    receipt["result"] = "done" if report.ok else "done_with_warnings"
    report.summary = (
        "the unit is unbound and holds no patient data; it is ready for the next patient"
        if report.ok
        else "the unit holds no patient data, but a step failed (FAIL above): see the receipt"
    )
    return report, EXIT_OK if report.ok else EXIT_PARTIAL


def _refused(report: Report, receipt: dict[str, object]) -> Report:
    receipt["result"] = "refused"
    report.summary = "REFUSED: nothing was changed on the unit"
    return report


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
