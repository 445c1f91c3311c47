"""The store's writer thread (agent/store/writer.py) and the daemon's commit off the event loop.

On a real SQLite store: jobs commit in the order they were submitted, nothing commits after a
failed one (only independent jobs do), the loop thread reads committed data only and cannot
write. On real parts (the dispenser simulator on a pty, mosquitto, the daemon): while a step's
commit is held on the writer thread the event loop runs on, the dispenser frame stays
unacknowledged and the MQTT command unacked and unanswered; both follow the commit.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from broker import MosquittoBroker
from e2e_support import command, publish_command, write_config
from test_engine import RIG_START
from test_failsafe import UNIT, WAIT_S, linked, refuse_inserts, rig

from agent.clock import VirtualClock
from agent.config import load_config
from agent.daemon import Daemon, DaemonFaultError
from agent.engine.catalogue import make_event
from agent.engine.types import Emit
from agent.mqtt.link import InboundMessage
from agent.runtime import unit_edges
from agent.store.db import Store
from agent.store.errors import StoreUsageError
from agent.store.outbox import OutboxEvent
from agent.store.writer import StoreWriter, WriterPoisonedError
from drivers.session import DispenserSession
from protocol.framing import FrameKind
from protocol.messages import ButtonId, ButtonPressed

HELD_S = 30.0  # a held commit gives up after this (only if the test itself is stuck)


def _append(kind: str) -> Callable[[Store], int]:
    def job(store: Store) -> int:
        with store.transaction():
            return store.append_event(kind, {}, "2026-11-23T08:00:00Z", "synchronised").seq

    return job


def _kinds(db: Path) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as other:
        rows = other.execute("SELECT kind FROM outbox ORDER BY seq").fetchall()
    other.close()
    return [kind for (kind,) in rows]


def test_jobs_commit_in_order_and_nothing_commits_after_a_failed_one(tmp_path: Path) -> None:
    db = tmp_path / "agent.sqlite3"
    with Store.open(db) as store:
        writer = StoreWriter(store)
        refuse_inserts(db, "outbox", "NEW.kind = 'second'")

        def counter(store: Store) -> int:
            with store.transaction():
                return store.next_session_counter()

        jobs = [writer.submit(_append(kind)) for kind in ("first", "second", "third")]
        independent = writer.submit(counter, independent=True)
        assert jobs[0].result(WAIT_S) >= 1
        with pytest.raises(sqlite3.IntegrityError):
            jobs[1].result(WAIT_S)
        with pytest.raises(WriterPoisonedError):  # queued behind the lost one: never written
            jobs[2].result(WAIT_S)
        assert independent.result(WAIT_S) == 1  # assumes nothing of the steps: still taken
        writer.close()
        assert store.owned_here  # handed back to this thread
    assert _kinds(db) == ["first"]


def test_other_threads_read_committed_data_only_and_never_write(tmp_path: Path) -> None:
    db = tmp_path / "agent.sqlite3"
    inside = threading.Event()
    release = threading.Event()

    def held_append(store: Store) -> int:
        with store.transaction():
            seq = store.append_event("held", {}, "2026-11-23T08:00:00Z", "synchronised").seq
            inside.set()
            assert release.wait(HELD_S), "never released"
        return seq

    with Store.open(db) as store:
        writer = StoreWriter(store)
        job = writer.submit(held_append)
        try:
            assert inside.wait(WAIT_S)
            assert not store.owned_here
            assert store.last_event_seq() == 0  # the writer's open transaction is not seen
            assert store.pending_events() == []
            with pytest.raises(StoreUsageError), store.transaction():
                pass
        finally:
            release.set()
        seq = job.result(WAIT_S)
        assert store.last_event_seq() == seq  # committed: now seen here
        writer.close()


def _offline_daemon(tmp_path: Path, store: Store, offers: OfferLog) -> Daemon:
    """The real daemon with its real edges, its publisher replaced by `offers` (not run)."""
    config = load_config(
        write_config(tmp_path, unit_id="u-1", broker_port=1, device=tmp_path / "tty")
    )
    real = unit_edges(config)
    return Daemon(
        config,
        clock=VirtualClock(RIG_START),
        store=store,
        edges=lambda hooks: replace(real(hooks), publisher=offers),
    )


class OfferLog:
    """Stands in for the publisher: the kinds offered, and whether each was durable then."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.offered: list[tuple[str, bool]] = []

    def offer(self, events: Sequence[OutboxEvent]) -> None:
        durable = set(_kinds(self.db))
        self.offered += [(event.kind, event.kind in durable) for event in events]

    async def run(self) -> None:
        await asyncio.Event().wait()

    def resend_from(self, seq: int) -> int:
        raise AssertionError("not in this test")


def test_steps_commit_and_release_in_order_and_none_after_a_lost_commit(tmp_path: Path) -> None:
    """Three steps taken at once (the loop does not wait for the commits in between): each
    is released only after its own commit, in step order; once one is lost, the steps behind
    it are neither committed nor released, and each step's future says so."""
    (tmp_path / "state").mkdir()
    db = tmp_path / "state" / "agent.sqlite3"

    async def scenario() -> None:
        with Store.open(db) as store:
            offers = OfferLog(db)
            daemon = _offline_daemon(tmp_path, store, offers)
            now = daemon.clock.now()
            steps = [
                daemon.apply([Emit(make_event(kind, {}))], now)
                for kind in ("clock_jumped", "help_requested", "clock_jumped")
            ]
            futures = [step for step in steps if step is not None]
            assert len(futures) == 3  # on the loop: committed by the writer thread
            await asyncio.gather(*futures)
            assert [kind for kind, _ in offers.offered] == [
                "clock_jumped",
                "help_requested",
                "clock_jumped",
            ]
            assert all(durable for _, durable in offers.offered)

            refuse_inserts(db, "outbox", "NEW.kind = 'help_requested'")
            offers.offered.clear()
            lost = daemon.apply([Emit(make_event("help_requested", {}))], now)
            behind = daemon.apply([Emit(make_event("clock_jumped", {}))], now)
            assert lost is not None
            assert behind is not None
            for step in (lost, behind):
                with pytest.raises(DaemonFaultError):
                    await step
            assert offers.offered == []
            daemon.writer.close()
        assert _kinds(db).count("clock_jumped") == 2  # the one behind the lost step: not stored

    asyncio.run(scenario())


@dataclass
class HeldCommit:
    held: threading.Event = field(default_factory=threading.Event)  # waiting before COMMIT
    release: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)  # went on to COMMIT


@contextmanager
def commit_held(when: Callable[[sqlite3.Connection], bool]) -> Iterator[HeldCommit]:
    """Hold the first commit whose transaction matches `when` right before its COMMIT, until
    released (bounded: a loop blocked by it would never release it)."""
    hold = HeldCommit()
    original = Store._keep_bounded

    def holding(self: Store, conn: sqlite3.Connection) -> None:  # as the method it replaces
        original(self, conn)
        if not hold.held.is_set() and when(conn):
            hold.held.set()
            hold.release.wait(HELD_S)
            hold.finished.set()

    Store._keep_bounded = holding  # type: ignore[method-assign]
    try:
        yield hold
    finally:
        hold.release.set()
        Store._keep_bounded = original  # type: ignore[method-assign]


def _stores(kind: str) -> Callable[[sqlite3.Connection], bool]:
    def check(conn: sqlite3.Connection) -> bool:
        row = conn.execute("SELECT count(*) FROM outbox WHERE kind = ?", (kind,)).fetchone()
        return bool(row[0])

    return check


def test_a_dispenser_event_is_acked_after_its_commit_and_the_loop_runs_meanwhile(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    help_pressed = ButtonPressed(ButtonId.HELP)

    async def scenario() -> None:
        with commit_held(_stores("help_requested")) as hold:
            async with rig(tmp_path, mosquitto) as r:
                await linked(r)
                await asyncio.to_thread(r.runner.call, lambda m: m.press_button(ButtonId.HELP))
                assert await asyncio.to_thread(hold.held.wait, WAIT_S), "never committed"
                # The dispenser retransmits the unacknowledged frame meanwhile, and this code
                # runs on the loop while the commit is still held (a commit on the loop would
                # block it until the hold gives up).
                await asyncio.to_thread(
                    r.runner.wait_for_stats, lambda s: s.retransmits >= 1, WAIT_S
                )
                assert not hold.finished.is_set(), "the loop was blocked by the commit"
                with r.trace_lock:
                    trace = list(r.trace)
                keys = {
                    (t.frame.session, t.frame.seq)
                    for t in trace
                    if t.direction == "out" and t.message == help_pressed and t.frame is not None
                }
                assert keys, "the help button press never went out"
                acks = {
                    (t.frame.session, t.frame.seq)
                    for t in trace
                    if t.direction == "in" and t.frame is not None and t.frame.kind is FrameKind.ACK
                }
                assert not keys & acks  # no ACK while the step is not committed
                assert "help_requested" not in _kinds(r.db)
                hold.release.set()

                await asyncio.to_thread(
                    r.stream.wait_for, lambda s: bool(s.of_kind("help_requested")), WAIT_S
                )
                assert "help_requested" in _kinds(r.db)

                def acked(_: object) -> bool:
                    with r.trace_lock:
                        return any(
                            t.direction == "in"
                            and t.frame is not None
                            and t.frame.kind is FrameKind.ACK
                            and (t.frame.session, t.frame.seq) in keys
                            for t in r.trace
                        )

                await asyncio.to_thread(r.runner.wait_for_stats, acked, WAIT_S)
                session = r.daemon.session
                assert isinstance(session, DispenserSession)  # the production edges
                assert session.stats.not_stored == 0

    asyncio.run(scenario())


def test_a_command_is_answered_and_acked_only_after_its_record_committed(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    command_id = "7d4f4c53-5d0a-4f55-9d8a-3f1f7a1d0c11"

    def recorded(conn: sqlite3.Connection) -> bool:
        row = conn.execute("SELECT 1 FROM commands WHERE command_id = ?", (command_id,))
        return row.fetchone() is not None

    async def scenario() -> None:
        with commit_held(recorded) as hold:
            async with rig(tmp_path, mosquitto) as r:
                await linked(r)
                acks: list[bool] = []  # at each ack: was the command's record durable?
                acked = asyncio.Event()
                ack = r.daemon.mqtt.ack

                def durable_ack(message: InboundMessage) -> None:
                    with sqlite3.connect(f"file:{r.db}?mode=ro", uri=True) as other:
                        row = other.execute(
                            "SELECT 1 FROM commands WHERE command_id = ?", (command_id,)
                        ).fetchone()
                    other.close()
                    acks.append(row is not None)
                    acked.set()
                    ack(message)

                r.daemon.mqtt.ack = durable_ack  # type: ignore[method-assign]
                request = command(
                    "request_status", issued_at=datetime.now(UTC), command_id=command_id
                )
                await asyncio.to_thread(
                    publish_command, mosquitto.port, UNIT, json.dumps(request).encode()
                )
                assert await asyncio.to_thread(hold.held.wait, WAIT_S), "never committed"
                assert not hold.finished.is_set(), "the loop was blocked by the commit"
                assert acks == []
                assert not r.stream.responses
                hold.release.set()
                await asyncio.to_thread(r.stream.wait_for, lambda s: bool(s.responses), WAIT_S)
                async with asyncio.timeout(WAIT_S):
                    await acked.wait()
                assert acks == [True]

    asyncio.run(scenario())
