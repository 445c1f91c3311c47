"""`dispenser-agent check-config FILE`: is this config usable, and what does it mean, in words.

Besides validation (agent/config.py), it compares the file with what the unit already holds (the
store, read-only) and refuses what the daemon would not obey silently: a schedule edited without
a version step, a patient_ref other than the bound one; and it checks the password file (readable
by the agent, not by everyone).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.config import AgentConfig, load_config, private_file_problem, service_uid
from agent.daemon import schedule_edited
from agent.technician.report import Report
from agent.technician.snapshot import SnapshotError, read_store


def describe_schedule(config: AgentConfig) -> str:
    schedule = config.schedule
    if schedule is None:
        return "no schedule in the config (it comes from the response centre)"
    parts = []
    for rule in schedule.rules:
        text = f"doses {', '.join(rule.times)} {schedule.zone} from {rule.effective_from}"
        for day, times in rule.weekday_times.items():
            text += f"; {day} {', '.join(times) or 'none'}"
        parts.append(text)
    interval = schedule.min_interval_minutes
    gap = f"; at least {interval} min between intakes" if interval else ""
    return f"version {schedule.version}: " + " | ".join(parts) + gap


def describe_broker(config: AgentConfig) -> str:
    mqtt = config.mqtt
    scheme = "over TLS" if mqtt.tls else "WITHOUT TLS"
    who = f"user {mqtt.username}" if mqtt.username else "no user name"
    return (
        f"broker {mqtt.host}:{mqtt.port} {scheme} as client dispenser-agent-{config.unit_id} "
        f"({who}; MQTT {mqtt.protocol})"
    )


def check_password_file(path: Path, owner_uid: int | None = None) -> tuple[bool, str]:
    try:
        info = path.stat()
        mode = stat.S_IMODE(info.st_mode)
    except FileNotFoundError:
        return False, f"password file {path} does not exist"
    except OSError as exc:
        return False, f"password file {path} cannot be inspected: {exc}"
    if mode & 0o004:
        return False, (
            f"password file {path} is readable by everyone (mode {mode:04o}): "
            f"chmod 600 {path} (owned by the agent's user)"
        )
    if owner_uid is not None and info.st_uid != owner_uid:
        return False, (
            f"password file {path} is owned by uid {info.st_uid}, not by the agent's user "
            f"(uid {owner_uid}, the owner of its state folder): chown it to that user"
        )
    if not os.access(path, os.R_OK):
        return False, f"password file {path} is not readable by this user (the agent's user?)"
    try:
        if not path.read_text(encoding="utf-8").strip():
            return False, f"password file {path} is empty"
    except (OSError, UnicodeDecodeError) as exc:
        return False, f"password file {path} cannot be read: {exc}"
    return True, f"password file {path} readable by the agent only (mode {mode:04o})"


def check_tls_files(config: AgentConfig) -> list[tuple[str, bool, str]]:
    """The TLS identity's files: certificates readable by the agent, the key private to it."""
    mqtt = config.mqtt
    results: list[tuple[str, bool, str]] = []
    for name, path in (("mqtt.ca_file", mqtt.ca_file), ("mqtt.client_cert", mqtt.client_cert)):
        if path is None:
            continue
        try:
            path.read_bytes()
        except OSError as exc:
            results.append((name, False, f"{path} cannot be read: {exc.strerror}"))
        else:
            results.append((name, True, f"{path} readable"))
    if mqtt.client_key is not None:
        problem = private_file_problem(mqtt.client_key, service_uid(config.state_dir))
        results.append(
            ("mqtt.client_key", problem is None, problem or f"{mqtt.client_key} private")
        )
    return results


def check_config(path: Path) -> Report:
    """Raises ConfigError if the file is not a valid config (the CLI prints it, exit 2)."""
    config = load_config(path)
    report = Report("check-config")
    report.add("valid", True, f"{path}: unit {config.unit_id}, state in {config.state_dir}")
    report.add("schedule", True, describe_schedule(config))
    engine = config.engine
    report.add(
        "dose window",
        True,
        f"a dose may be taken from {engine.early_window_minutes:g} min before its time; missed "
        f"after {engine.grace_minutes:g} min; a reminder every {engine.reminder_repeat_minutes:g}"
        " min",
    )
    report.add("dispenser", True, config.dispenser.describe())
    report.add(
        "broker",
        True,  # plaintext to a remote broker is refused at load unless allow_plaintext
        describe_broker(config)
        + (": allow_plaintext is set, turn tls on" if config.mqtt.plaintext_remote else ""),
    )
    for name, ok, why in check_tls_files(config):
        report.add(name, ok, why)
    if config.mqtt.password_file is not None:
        ok, why = check_password_file(config.mqtt.password_file, service_uid(config.state_dir))
        report.add("password file", ok, why)
    _against_the_unit(config, report)
    report.extra["config"] = config.model_dump(mode="json")
    report.summary = (
        "config OK" if report.ok else "config NOT usable as is: fix each FAIL line above"
    )
    return report


def _against_the_unit(config: AgentConfig, report: Report) -> None:
    try:
        view = read_store(config.db_path)
    except SnapshotError as exc:
        report.add("unit", True, f"nothing installed yet ({exc}): the config seeds the unit")
        return
    state = view.state
    bound = state.binding.patient_ref if state.binding is not None else None
    ref = config.patient_ref
    if view.binding_mismatch and ref is not None and bound is None:
        report.add(
            "patient",
            False,
            f"the unit stopped dispensing: its config named another patient than the bound "
            f"one; now {ref}. Fix: `dispenser-agent rebind --config FILE` on site (a typo "
            "fixed), or `dispenser-agent reset --termination` (another patient)",
        )
    elif bound is not None and ref is not None and ref != bound:
        report.add(
            "patient",
            False,
            f"the config names patient {ref} but the unit is bound to {bound}: the unit would "
            "unbind and stop dispensing. Fix: a typo in the binding -> `dispenser-agent rebind "
            "--config FILE`; another patient -> `dispenser-agent reset --termination` first",
        )
    elif bound is not None:
        report.add("patient", True, f"bound to {bound}, as the config says")
    else:
        report.add(
            "patient",
            True,
            "the unit is not bound yet: the config's patient is bound at start"
            if ref
            else "no patient in the config or on the unit",
        )
    if config.schedule is None:
        return
    in_effect = state.schedule_version
    if config.schedule.version < in_effect:
        report.add(
            "schedule version",
            True,
            f"the unit runs version {in_effect} (from the response centre); the config's "
            f"version {config.schedule.version} is older and is not used",
        )
    elif config.schedule.version == in_effect and schedule_edited(config, state.schedule):
        report.add(
            "schedule version",
            False,
            f"the schedule differs from version {in_effect} in effect but its version was not "
            f'raised: the unit would ignore the edit. Fix: set "version": {in_effect + 1}',
        )
    elif config.schedule.version > in_effect:
        report.add(
            "schedule version",
            True,
            f"version {config.schedule.version} replaces {in_effect or 'none'} at the next start",
        )
    else:
        report.add("schedule version", True, f"version {in_effect} is in effect")
