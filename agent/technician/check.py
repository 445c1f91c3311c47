"""`dispenser-agent check`: the install check, each item PASS or FAIL with the reason in words.

config (as check-config) · dispenser link and handshake on the configured serial port · roll ·
time trusted · broker reachable with the unit's identity · store healthy (integrity, audit
chain) · disk space · hardware watchdog · technician button.

With the agent running, the dispenser and the clock are asked of the agent (its local control
socket: the serial port is the agent's), and the broker is probed under a client id of its own,
so the agent's session is not taken over. With the agent stopped, the check opens the serial
port and does the handshake itself.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from urllib.parse import quote

from agent.clock import Clock, SystemClock, TimeTrust
from agent.config import AgentConfig, ConfigError
from agent.local_control import LocalCommandError, local_request, send_local_command, socket_path
from agent.store import audit, schema
from agent.technician import links
from agent.technician.check_config import check_config
from agent.technician.lock import is_held
from agent.technician.report import Report
from agent.technician.snapshot import SnapshotError, read_store

WATCHDOG_DEVICE = Path("/dev/watchdog")
MIN_FREE_BYTES = 200 * 1024 * 1024  # a year of events and the audit log, with room to spare
BROKER_CHECK_ATTEMPTS = 3


def install_check(
    config: AgentConfig,
    config_path: Path,
    *,
    timeout_s: float = 10.0,
    watchdog: Path = WATCHDOG_DEVICE,
    min_free_bytes: int = MIN_FREE_BYTES,
    pin_factory: object = None,
    clock: Clock | None = None,
) -> Report:
    report = Report("check")
    try:
        checked = check_config(config_path)
        bad = [f"{i.name}: {i.detail}" for i in checked.items if not i.ok]
        report.add("config", not bad, "; ".join(bad) or f"{config_path} valid and consistent")
    except ConfigError as exc:
        report.add("config", False, str(exc))
    running = is_held(config.state_dir)
    agent_view = _ask_agent(config) if running else None
    if running and agent_view is None:
        report.add("agent", False, "the agent holds the unit but does not answer on its socket")
    # dispenser link and handshake
    trust: TimeTrust | None = None
    if agent_view is not None:
        link = agent_view.get("dispenser_link")
        report.add(
            "dispenser",
            link == "up",
            f"the running agent's link to {config.dispenser.where} is {link}"
            + ("" if link == "up" else f": {config.dispenser.trouble_hint}"),
        )
        health = agent_view.get("health")
        if isinstance(health, dict):
            trust = _trust(health.get("clock_trust"))
    elif running:
        # never open the dispenser's port beside a running agent: two readers break its link
        report.add(
            "dispenser",
            False,
            "not checked: the agent holds the unit but did not answer (starting up?); try again",
        )
    else:
        probe = links.probe_dispenser(config, timeout_s)
        report.add("dispenser", probe.ok, probe.detail)
    _roll(config, report)
    trust = trust if trust is not None else (clock or SystemClock()).now().trust
    report.add(
        "time",
        trust is not TimeTrust.UNTRUSTED,
        {
            TimeTrust.SYNCHRONISED: "synchronised (NTP)",
            TimeTrust.DISPENSER_RTC: "from the dispenser's clock until NTP syncs",
        }.get(trust, "NOT trusted: no NTP sync yet and no dispenser clock (network? RTC?)"),
    )
    # A refusal that will not change (a wrong certificate, a bad password) is told after a few
    # attempts instead of being retried until the timeout while the technician waits.
    broker = links.probe_broker(
        config, timeout_s, client_suffix="-check", attempts=BROKER_CHECK_ATTEMPTS
    )
    report.add("broker", broker.ok, broker.detail)
    report.add(*_store_health(config))
    free = shutil.disk_usage(config.state_dir if config.state_dir.exists() else "/").free
    report.add(
        "disk",
        free >= min_free_bytes,
        f"{free // (1024 * 1024)} MiB free for {config.state_dir}"
        + ("" if free >= min_free_bytes else f" (needs {min_free_bytes // (1024 * 1024)} MiB)"),
    )
    report.add(
        "watchdog",
        watchdog.exists(),
        f"{watchdog} present (systemd arms it)"
        if watchdog.exists()
        else f"{watchdog} missing: enable the hardware watchdog (dtparam=watchdog=on)",
    )
    report.add(*_button(config.gpio.technician_button, pin_factory))
    report.summary = (
        "unit ready" if report.ok else "NOT ready: fix each FAIL line, then check again"
    )
    return report


def _ask_agent(config: AgentConfig) -> dict[str, object] | None:
    try:
        reply = send_local_command(
            socket_path(config.state_dir), local_request("request_status", "install-check"), 15.0
        )
    except LocalCommandError:
        return None
    result = reply.get("result")
    return result if reply.get("status") == "ok" and isinstance(result, dict) else None


def _trust(value: object) -> TimeTrust | None:
    try:
        return TimeTrust(str(value))
    except ValueError:
        return None


def _roll(config: AgentConfig, report: Report) -> None:
    try:
        view = read_store(config.db_path)
    except SnapshotError as exc:
        report.add("roll", False, f"unknown: {exc}")
        return
    roll = view.state.roll
    if roll is None:
        report.add("roll", False, "no roll loaded: insert the patient's roll")
    elif roll.unverified:
        report.add("roll", False, f"{roll.roll_id}: label not read yet (reinsert it)")
    else:
        report.add("roll", True, f"{roll.roll_id} loaded, {roll.remaining} sachets left")


def _store_health(config: AgentConfig) -> tuple[str, bool, str]:
    db = config.db_path
    if not db.is_file():
        return "store", False, f"no store at {db}: the agent has not run yet"
    try:
        conn = sqlite3.connect(f"file:{quote(str(db.absolute()))}?mode=ro", uri=True, timeout=5)
        try:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
            version = schema.schema_version(conn)
            chain = audit.verify_chain(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return "store", False, f"{db} unreadable: {exc}"
    if problems != ["ok"]:
        return "store", False, f"{db} damaged: {'; '.join(map(str, problems[:3]))}"
    if not chain.ok:
        return "store", False, f"audit chain broken at seq {chain.first_bad_seq}: {chain.reason}"
    mode = db.stat().st_mode & 0o777
    if mode & 0o077:
        return "store", False, f"{db} is mode {mode:04o}: others can read patient data"
    return "store", True, f"{db} intact (schema {version}, {chain.records_checked} audit records)"


def _button(pin: int | None, pin_factory: object) -> tuple[str, bool, str]:
    if pin is None:
        return "technician button", False, "no technician button in the config (gpio)"
    try:
        from gpiozero import Button
        from gpiozero.exc import GPIOZeroError
    except ImportError as exc:  # pragma: no cover - a dependency
        return "technician button", False, f"no GPIO library: {exc}"
    try:
        button = Button(pin, pull_up=True, pin_factory=pin_factory)
    except (GPIOZeroError, OSError, RuntimeError) as exc:
        return "technician button", False, f"GPIO {pin} unusable: {exc}"
    try:
        pressed = button.is_pressed
    finally:
        button.close()
    if pressed:
        return "technician button", False, f"GPIO {pin} reads pressed: stuck?"
    return "technician button", True, f"GPIO {pin} wired, released"


__all__ = ["install_check"]
