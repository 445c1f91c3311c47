"""`dispenser-agent status`: what the unit is doing now, from its store (read-only, so it works
while the daemon runs): binding, roll, next dose, pause, active alerts, outbox backlog, last
events, and whether the agent runs. Exit 0: nothing needs a person; 1: something does (each
FAIL line says what)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from agent.clock import SystemClock
from agent.config import AgentConfig
from agent.engine.engine import DoseEngine
from agent.technician.lock import holder_pid, is_held
from agent.technician.report import Report
from agent.technician.snapshot import read_store


def unit_status(config: AgentConfig) -> Report:
    """Raises SnapshotError if the store cannot be read."""
    view = read_store(config.db_path)
    now = SystemClock().now()
    engine = DoseEngine(config.engine.to_engine_config(), view.state, now)
    status = engine.status()
    zone = ZoneInfo(view.state.schedule.zone if view.state.schedule else "Europe/Oslo")
    report = Report("status")
    running = is_held(config.state_dir)
    report.add(
        "agent",
        running,
        f"running (pid {holder_pid(config.state_dir)})"
        if running
        else "NOT running: sudo systemctl start dispenser-agent (journalctl -u dispenser-agent "
        "says why it stopped)",
    )
    binding = view.state.binding
    if view.binding_mismatch:
        report.add(
            "binding",
            False,
            "UNBOUND: the config named another patient than the bound one; nothing is "
            "dispensed. Run `dispenser-agent check-config`, then `rebind` or `reset --termination`",
        )
    elif view.unreadable is not None:
        report.add("binding", False, f"stored state unreadable ({view.unreadable}): locked")
    else:
        report.add(
            "binding",
            binding is not None,
            f"bound to {binding.patient_ref}" if binding else "not bound: `dispenser-agent bind`",
        )
    if status.roll_id is None:
        report.add("roll", False, "no roll loaded")
    else:
        state = status.roll_state or "unknown"
        report.add(
            "roll",
            state == "loaded",
            f"{status.roll_id}: {state}, {status.sachets_remaining} sachets left",
        )
    if status.next_slot is None:
        report.add("next dose", True, "none scheduled")
    else:
        due = status.next_slot.due_utc.astimezone(zone)
        report.add(
            "next dose", True, f"{due:%Y-%m-%d %H:%M} {zone.key} ({status.next_slot.slot_id})"
        )
    held = [s for s in status.open_slots if s.held_reason]
    for slot in held:
        report.add("held dose", False, f"{slot.slot_id} held: {slot.held_reason}")
    report.add("pause", True, f"paused ({status.pause_id})" if status.pause_id else "not paused")
    alerts = [f"{a.kind} ({a.alert_id})" for a in status.latched_alerts if a.active]
    report.add(
        "alerts",
        not alerts and not status.conditions,
        ", ".join([*alerts, *status.conditions]) or "none active",
    )
    if view.broker_link is None:
        report.add("broker", True, "not known yet: the agent has not tried to connect")
    else:
        fine, text = view.broker_link.describe(config.mqtt.host, config.mqtt.port, running)
        report.add("broker", fine, text)
    backlog = view.backlog
    report.add(
        "outbox",
        True,
        f"{backlog.count} events not yet delivered"
        + (f" (oldest from {backlog.oldest_occurred_utc})" if backlog.count else ""),
    )
    last = [f"#{e.seq} {e.kind} {e.occurred_utc}" for e in view.last_events]
    report.add("last events", True, "; ".join(last) or "none")
    report.extra["engine"] = status.to_json()
    report.extra["read_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    report.summary = "all well" if report.ok else "needs attention: see FAIL lines"
    return report
