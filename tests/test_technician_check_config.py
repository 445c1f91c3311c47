"""`check-config` against what the unit holds: a typo in patient_ref, a schedule edited without
a version step, a password file others can read or the agent cannot — each refused, naming the
fix; a good file is explained in words."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from e2e_support import PATIENT, REPO
from test_binding_at_start import TYPO, start


def check(path: Path, *extra: str) -> tuple[int, dict[str, object], str]:
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "check-config", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    plain = subprocess.run(
        [sys.executable, "-m", "agent.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert plain.returncode == result.returncode
    return result.returncode, json.loads(result.stdout), plain.stdout


def failing(report: dict[str, object]) -> dict[str, str]:
    items = report["items"]
    assert isinstance(items, list)
    return {i["name"]: i["detail"] for i in items if not i["ok"]}


def installed(tmp_path: Path) -> Path:
    start(tmp_path)[0].store.close()  # the unit ran once: bound to PATIENT, schedule v1
    return tmp_path / "config.json"


def edit(path: Path, **changes: object) -> None:
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_the_installed_config_passes_and_is_explained(tmp_path: Path) -> None:
    code, report, plain = check(installed(tmp_path), "--json")
    assert code == 0, report
    assert "PASS  patient" in plain
    assert f"bound to {PATIENT}, as the config says" in plain
    assert "doses 08:00, 20:00 Europe/Oslo from 2026-11-01" in plain
    assert "missed after 5 min" in plain
    assert "broker 127.0.0.1:1 WITHOUT TLS as client dispenser-agent-u-1" in plain


def test_a_typo_in_patient_ref_is_refused_naming_the_fix(tmp_path: Path) -> None:
    path = installed(tmp_path)
    edit(path, patient_ref=TYPO)
    code, report, plain = check(path, "--json")
    assert code == 1
    why = failing(report)["patient"]
    assert f"names patient {TYPO} but the unit is bound to {PATIENT}" in why
    assert "dispenser-agent rebind" in why
    assert "reset --termination" in why
    assert "FAIL  patient" in plain


def test_a_schedule_edit_without_a_version_step_is_refused(tmp_path: Path) -> None:
    path = installed(tmp_path)
    raw = json.loads(path.read_text())
    raw["schedule"]["rules"][0]["times"] = ["09:00", "21:00"]
    path.write_text(json.dumps(raw))
    code, report, _ = check(path, "--json")
    assert code == 1
    assert 'set "version": 2' in failing(report)["schedule version"]
    raw["schedule"]["version"] = 2
    path.write_text(json.dumps(raw))
    code, report, _ = check(path, "--json")
    assert code == 0, report


def test_password_files_others_can_read_or_the_agent_cannot_are_refused(tmp_path: Path) -> None:
    path = installed(tmp_path)
    secret = tmp_path / "mqtt.pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    edit(path, mqtt={"host": "127.0.0.1", "port": 1, "password_file": str(secret)})
    code, report, _ = check(path, "--json")
    assert code == 1
    assert "readable by everyone (mode 0644)" in failing(report)["password file"]
    secret.chmod(0o600)
    assert check(path, "--json")[0] == 0
    secret.unlink()
    code, report, _ = check(path, "--json")
    assert code == 1
    assert "does not exist" in failing(report)["password file"]
