"""`dispenser-agent pause` / `resume` on site: the response centre's pause and resume commands,
handed to the running daemon over its local control socket (agent/local_control.py), so they
take the same path (validation, at most once, expiry, audit, one engine step) with source
`on_site`. The agent must run: the pause is the engine's to apply, never written behind its back.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from agent.config import AgentConfig
from agent.local_control import LocalCommandError, send_local_command, socket_path
from agent.technician.report import EXIT_FAILED, EXIT_OK, Report


def send(config: AgentConfig, command: str, request: bytes) -> tuple[Report, int]:
    report = Report(command)
    try:
        reply = send_local_command(socket_path(config.state_dir), request)
    except LocalCommandError as exc:
        report.add("agent", False, f"{exc} (sudo systemctl start dispenser-agent, then again)")
        return report, EXIT_FAILED
    status = reply.get("status")
    error = reply.get("error")
    if status != "ok":
        message = error.get("message") if isinstance(error, dict) else json.dumps(error)
        code = error.get("code") if isinstance(error, dict) else None
        report.add(command, False, f"refused ({status}, {code}): {message}")
        return report, EXIT_FAILED
    report.add(command, True, "done: the response centre gets the event when the unit is online")
    report.extra["response"] = reply
    return report, EXIT_OK


def default_pause_id() -> str:
    return "on-site-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
