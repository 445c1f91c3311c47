"""Power cut at an arbitrary instant: a child process writing to the store is SIGKILLed mid-stream.

After reopening, the file passes quick_check, the audit chain verifies, every event the child saw
committed is there, sequence numbers have no gaps, and each committed event's slot is an open slot
(begun in the same transaction, so it can never be dispensed again).
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.store.db import Store
from agent.store.errors import AlreadyDispensed

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from agent.store.db import Store

store = Store.open(Path(sys.argv[2]))
i = 0
while True:
    with store.transaction():
        event = store.append_event(
            "dose_taken", {"i": i, "pad": "x" * 300}, "2026-03-01T08:00:00Z", "synchronised"
        )
        store.begin_dispense(f"slot-{i}", store.next_dispense_id(), i % 28, "2026-03-01T08:00:00Z")
    print(event.seq, flush=True)
    i += 1
"""


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    """Poll `condition` until true; fail after `timeout` s (the interval is only a poll rate)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.002)


def committed_count(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1.0)
        try:
            return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return 0  # schema not created yet, or briefly locked


@pytest.mark.e2e
@pytest.mark.parametrize("kill_after", [1, 37, 150])
def test_sigkill_mid_stream_loses_no_committed_event(tmp_path: Path, kill_after: int) -> None:
    db_path = tmp_path / "agent.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(REPO), str(db_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: committed_count(db_path) >= kill_after or child.poll() is not None, 60)
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    reported = [int(line) for line in out.split()]
    assert len(reported) >= kill_after - 1  # the last commit may not have been printed yet
    assert db_path.with_name(db_path.name + "-wal").exists()  # left for SQLite to replay

    with Store.open(db_path) as store:  # runs quick_check; raises StoreCorrupt on damage
        assert store.verify_audit().ok
        seqs = [e.seq for e in store.events_from(0, limit=None)]
        assert seqs == list(range(1, len(seqs) + 1))
        assert set(reported) <= set(seqs)
        assert len(seqs) >= kill_after
        open_ids = {slot.slot_id for slot in store.open_slots()}
        assert open_ids == {f"slot-{e.payload['i']}" for e in store.events_from(0)}
        with pytest.raises(AlreadyDispensed), store.transaction():
            store.begin_dispense("slot-0", 10**6, 0, "2026-03-01T08:00:00Z")
        with store.transaction():
            assert store.append_event("dose_taken", {}, "t", "synchronised").seq == len(seqs) + 1
            assert store.next_dispense_id() == len(seqs) + 1
