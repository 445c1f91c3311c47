"""The technician's commands: check-config, audit verify, reset — run as the real console script."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.store.db import Store


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write(path: Path, config: object) -> Path:
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def good_config(tmp_path: Path) -> dict[str, object]:
    return {
        "unit_id": "oslo-unit-0042",
        "state_dir": str(tmp_path / "state"),
        "dispenser": {"device": "/dev/ttyUSB0"},
        "patient_ref": "p7f3c9a2e",
        "schedule": {"rules": [{"effective_from": "2026-11-23", "times": ["08:00", "20:00"]}]},
    }


def test_check_config_accepts_a_good_file_and_says_what_it_means(tmp_path: Path) -> None:
    path = str(write(tmp_path / "c.json", good_config(tmp_path)))
    result = cli("check-config", path)
    assert result.returncode == 0, result.stderr
    assert "doses 08:00, 20:00 Europe/Oslo from 2026-11-23" in result.stdout
    assert "missed after 60 min" in result.stdout
    assert "config OK" in result.stdout
    shown = json.loads(cli("check-config", path, "--json").stdout)
    assert shown["ok"] is True
    assert shown["config"]["unit_id"] == "oslo-unit-0042"
    assert shown["config"]["engine"]["grace_minutes"] == 60


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"unit_id": "Oslo Unit"}, "unit_id"),
        ({"patient_ref": "01017012345"}, "national identity number"),
        ({"schedule": {"rules": [{"effective_from": "2026-11-23", "times": ["8:00"]}]}}, "8:00"),
        (
            {
                "schedule": {
                    "rules": [{"effective_from": "2026-11-23", "times": ["08:00", "08:10"]}]
                }
            },
            "apart",
        ),
        (
            {
                "schedule": {
                    "rules": [{"effective_from": "2026-11-23", "times": ["08:00", "09:00"]}],
                    "min_interval_minutes": 90,
                }
            },
            "min_interval: 90 min is longer than the 60 min between the 08:00 and 09:00 doses",
        ),
        ({"dispenser": {}}, "dispenser.device"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_check_config_names_the_bad_field(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    config = {**good_config(tmp_path), **change}
    result = cli("check-config", str(write(tmp_path / "c.json", config)))
    assert result.returncode == 2
    assert message in result.stderr


def test_missing_and_broken_config_files_are_clear_errors(tmp_path: Path) -> None:
    missing = cli("run", "--config", str(tmp_path / "nope.json"))
    assert missing.returncode == 2
    assert "no such config file" in missing.stderr
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    broken = cli("check-config", str(tmp_path / "bad.json"))
    assert broken.returncode == 2
    assert "not valid JSON" in broken.stderr


def _store_with_events(tmp_path: Path, delivered: bool) -> Path:
    config = good_config(tmp_path)
    state = Path(str(config["state_dir"]))
    state.mkdir()
    with Store.open(state / "agent.sqlite3") as store:
        with store.transaction():
            event = store.append_event("agent_started", {"data": {}}, "2026-11-23T07:00:00Z", "ok")
        if delivered:
            with store.transaction():
                store.mark_delivered(event.seq)
    return write(tmp_path / "c.json", config)


def test_audit_verify_reports_intact_then_tampered(tmp_path: Path) -> None:
    config = _store_with_events(tmp_path, delivered=True)
    ok = cli("audit", "verify", "--config", str(config))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "chain intact" in ok.stdout
    db = tmp_path / "state" / "agent.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit SET body = '{\"forged\":true}' WHERE seq = 1")
    tampered = cli("audit", "verify", "--db", str(db))
    assert tampered.returncode == 1
    assert "TAMPERED at seq 1" in tampered.stdout
    unopenable = cli("audit", "verify", "--db", str(tmp_path / "absent.sqlite3"))
    assert unopenable.returncode == 2


# reset --termination: tests/test_technician_reset.py (on real parts)
