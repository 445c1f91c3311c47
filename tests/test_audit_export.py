"""`dispenser-agent audit export`: the audit log, a manifest whose SHA-256 is the file's, and a
signature with the unit's key that openssl verifies with its public key."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import REPO


def test_export_is_hashed_and_signed_with_the_unit_key(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    state = tmp_path / "state"
    state.mkdir()
    from agent.store.db import Store

    with Store.open(state / "agent.sqlite3") as store, store.transaction():
        store.append_event("agent_started", {"data": {}}, "2026-11-23T07:00:00Z", "ok")
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"unit_id": "u-exp", "state_dir": str(state), "dispenser": {"device": "x"}})
    )
    key, public = tmp_path / "unit.key", tmp_path / "unit.pub"
    subprocess.run(
        [openssl, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
        check=True,
    )
    subprocess.run(
        [openssl, "ec", "-in", str(key), "-pubout", "-out", str(public)],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "export"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "audit",
            "export",
            "--config",
            str(config),
            "--to",
            str(out),
            "--key",
            str(key),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [log] = out.glob("*.jsonl")
    [manifest] = out.glob("*.manifest.json")
    [signature] = out.glob("*.manifest.sig")
    data = log.read_bytes()
    assert json.loads(manifest.read_text())["sha256"] == hashlib.sha256(data).hexdigest()
    assert [json.loads(line)["kind"] for line in data.splitlines()] == ["store.created", "event"]
    assert (out / log.name.replace(".jsonl", ".sha256")).read_text().split() == [
        hashlib.sha256(data).hexdigest(),
        log.name,
    ]
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    verified = subprocess.run(
        [
            openssl,
            "dgst",
            "-sha256",
            "-verify",
            str(public),
            "-signature",
            str(signature),
            str(manifest),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
