"""The store's files (database, -wal, -shm) are 0600 whatever the umask: they hold patient data."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.store.db import Store


@pytest.fixture(params=[0o000, 0o022, 0o002])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_store_files_are_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    db = tmp_path / "agent.sqlite3"
    with Store.open(db) as store:
        with store.transaction():
            store.append_event("agent_started", {"data": {}}, "2026-11-23T07:00:00Z", "ok")
        files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}


def test_an_existing_store_left_0644_is_narrowed_at_open(tmp_path: Path) -> None:
    db = tmp_path / "agent.sqlite3"
    Store.open(db).close()
    db.chmod(0o644)
    with Store.open(db) as store:
        with store.transaction():
            store.append_event("agent_started", {"data": {}}, "2026-11-23T07:00:00Z", "ok")
        assert _mode(db) == 0o600
        assert _mode(db.with_name(db.name + "-wal")) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a technician's tool run with sudo)")
def test_files_a_tool_run_as_root_creates_belong_to_the_agents_user(tmp_path: Path) -> None:
    from agent.technician.lock import StateLock
    from agent.technician.reset import rewrite_config

    agent_uid, agent_gid = 4242, 4343  # the agent's user, owner of its state folder
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, agent_uid, agent_gid)
    Store.open(state / "agent.sqlite3").close()
    StateLock.acquire(state).release()
    for name in ("agent.sqlite3", "agent.lock"):
        info = (state / name).stat()
        assert (info.st_uid, info.st_gid) == (agent_uid, agent_gid), name
    config = tmp_path / "config.json"
    config.write_text('{"unit_id": "u-1", "patient_ref": "p-1"}')
    os.chown(config, 0, agent_gid)
    config.chmod(0o640)
    rewrite_config(config, patient_ref=None)
    info = config.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, agent_gid, 0o640)


def test_the_service_of_a_daemon_is_read_from_its_cgroup() -> None:
    from agent.technician.lock import service_in

    assert service_in("0::/system.slice/dispenser-agent.service\n") == "dispenser-agent.service"
    v1 = "2:cpuacct:/\n1:name=systemd:/system.slice/dispenser-agent.service\n0::/\n"
    assert service_in(v1) == "dispenser-agent.service"
    assert service_in("0::/user.slice/user-1000.slice/session-3.scope\n") is None
