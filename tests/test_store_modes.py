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
