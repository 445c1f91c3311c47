"""The taken path and the drain path without per-message tasks, and a keepalive timer that sleeps
until a ping is actually due (issue 12 item 3). No broker, no wall clock: a recording link and
a scripted clock."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from e2e_support import write_config
from paho.mqtt.enums import MQTTErrorCode
from test_engine import RIG_START

from agent.clock import VirtualClock
from agent.config import AgentConfig, load_config
from agent.daemon import Daemon
from agent.engine.catalogue import make_event
from agent.engine.types import Emit, Tick
from agent.mqtt import link as mqtt_link
from agent.mqtt.link import MqttLinkStats
from agent.publisher import OutboxPublisher
from agent.runtime import unit_edges
from agent.store.db import Store
from agent.store.outbox import OutboxEvent

TOPIC = "dispenser/v1/unit-1/events"
BOUND_S = 10.0  # bound on every wait for a condition (never a speed goal)


class RecordingLink:
    """What the publisher uses of MqttLink; acknowledges only when the test says so."""

    def __init__(self) -> None:
        self.stats = MqttLinkStats(connects=1)
        self.sent: list[int] = []  # seqs, in the order handed over
        self.waiting: list[Callable[[BaseException | None], None]] = []
        self.flushes = 0
        self._ready = asyncio.Event()
        self._ready.set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def publish_nowait(
        self, topic: str, payload: bytes, on_done: Callable[[BaseException | None], None], **_: Any
    ) -> None:
        assert topic == TOPIC
        self.sent.append(int(json.loads(payload)["seq"]))
        self.waiting.append(on_done)

    def flush(self) -> None:
        self.flushes += 1

    async def publish(self, topic: str, payload: bytes, **_: Any) -> None:
        """The old path (a task and a future per message): acknowledged when the test says."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.publish_nowait(topic, payload, lambda _e: done.set_result(None))
        await done

    def ack_all(self) -> None:
        waiting, self.waiting = self.waiting, []
        for on_done in waiting:
            on_done(None)


def envelope(event: OutboxEvent, replayed: bool) -> bytes:
    return json.dumps({"seq": event.seq, "replayed": replayed}).encode()


def append(store: Store, count: int) -> list[OutboxEvent]:
    with store.transaction():
        return [
            store.append_event("button_pressed", {"data": {}}, "2026-11-23T07:00:00Z", "ok")
            for _ in range(count)
        ]


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(BOUND_S):
        while not predicate():  # noqa: ASYNC110 - the fakes have no change notification
            await asyncio.sleep(0)


def test_a_committed_event_is_handed_to_the_link_before_offer_returns(tmp_path: Path) -> None:
    """The taken path: the daemon offers what it just committed and the link has it at once,
    before the engine step returns (so before the dispenser's ACK is written)."""

    async def scenario() -> None:
        with Store.open(tmp_path / "s.sqlite3") as store:
            link = RecordingLink()
            publisher = OutboxPublisher(store, link, TOPIC, envelope, window=5)  # type: ignore[arg-type]
            task = asyncio.create_task(publisher.run())
            try:
                await until(lambda: link.flushes > 0 or True)
                await asyncio.sleep(0)  # the pass found nothing and waits
                fresh = append(store, 1)
                publisher.offer(fresh)
                assert link.sent == [fresh[0].seq]  # synchronously, no task in between
                assert link.flushes >= 1  # and written now, not on the loop's next turn
                link.ack_all()
                await until(lambda: store.backlog().count == 0)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


class OfferRecorder:
    """Stands in for the daemon's publisher: what was offered, and whether another connection
    to the store file could already read it at that moment (committed, not merely written)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offered: list[tuple[int, bool]] = []

    def offer(self, events: Sequence[OutboxEvent]) -> None:
        with sqlite3.connect(self.path) as other:
            for event in events:
                row = other.execute("SELECT 1 FROM outbox WHERE seq = ?", (event.seq,)).fetchone()
                self.offered.append((event.seq, row is not None))

    async def run(self) -> None:
        await asyncio.Event().wait()

    def resend_from(self, seq: int) -> int:
        raise AssertionError("not in this test")


def unit_files(tmp_path: Path) -> tuple[Path, AgentConfig]:
    """The store's path and a unit's config (no broker, no dispenser) for a daemon in a test."""
    (tmp_path / "state").mkdir()
    config = load_config(
        write_config(tmp_path, unit_id="u-1", broker_port=1, device=tmp_path / "tty")
    )
    return tmp_path / "state" / "agent.sqlite3", config


def daemon_with(config: AgentConfig, store: Store, publisher: OfferRecorder) -> Daemon:
    """The unit's real edges, with `publisher` standing in for the outbox publisher."""
    real = unit_edges(config)
    return Daemon(
        config,
        clock=VirtualClock(RIG_START),
        store=store,
        edges=lambda hooks: replace(real(hooks), publisher=publisher),
    )


def test_the_daemon_offers_an_emitted_event_right_after_its_commit(tmp_path: Path) -> None:
    path, config = unit_files(tmp_path)

    async def scenario() -> None:
        recorder = OfferRecorder(path)
        with Store.open(path) as store:
            daemon = daemon_with(config, store, recorder)
            last = store.last_event_seq()
            committed = daemon.apply([Emit(make_event("clock_jumped", {}))], daemon.clock.now())
            assert committed is not None  # on the loop: committed by the writer thread
            await committed
            daemon.writer.close()
            assert recorder.offered == [(last + 1, True)]  # offered, and already durable

    asyncio.run(scenario())


def test_an_offered_event_never_overtakes_an_earlier_one_of_its_lane(tmp_path: Path) -> None:
    """An event stored without an offer (another writer) is still next in line: an offer of a
    later one waits for the pass, which sends both in order."""

    async def scenario() -> None:
        with Store.open(tmp_path / "s.sqlite3") as store:
            link = RecordingLink()
            publisher = OutboxPublisher(store, link, TOPIC, envelope, window=5)  # type: ignore[arg-type]
            task = asyncio.create_task(publisher.run())
            try:
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                first = append(store, 1)  # committed, not offered
                second = append(store, 1)
                publisher.offer(second)
                await until(lambda: len(link.sent) == 2)
                assert link.sent == [first[0].seq, second[0].seq]
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


def test_a_drain_keeps_a_window_in_flight_without_a_task_per_message(tmp_path: Path) -> None:
    async def scenario() -> None:
        with Store.open(tmp_path / "s.sqlite3") as store:
            append(store, 120)
            link = RecordingLink()
            publisher = OutboxPublisher(store, link, TOPIC, envelope, window=50)  # type: ignore[arg-type]
            before = len(asyncio.all_tasks())
            task = asyncio.create_task(publisher.run())
            try:
                while len(link.sent) < 120:
                    await until(lambda: len(link.waiting) == min(50, 120 - len(link.sent) + 50))
                    assert len(link.waiting) <= 50  # the window
                    assert len(asyncio.all_tasks()) == before + 1  # the publisher's own only
                    link.ack_all()
                    await until(lambda: bool(link.waiting))
                link.ack_all()
                await until(lambda: store.backlog().count == 0)
                assert link.sent == list(range(1, 121))  # in order, each once
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


# --- the keepalive timer ------------------------------------------------------------------------


class ScriptedClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


class QuietPahoClient:
    """What _Connection calls on a paho client, counting keepalive checks."""

    _ssl_context = None  # a plain connection (the link looks at it for TLS logging)

    def __init__(self, clock: ScriptedClock) -> None:
        self.clock = clock
        self.misc_at: list[float] = []

    def loop_misc(self) -> MQTTErrorCode:
        self.misc_at.append(self.clock.now)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def loop_read(self) -> MQTTErrorCode:
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def loop_write(self) -> MQTTErrorCode:
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def socket(self) -> None:
        return None


class _Sleep:
    """Stands in for asyncio.sleep: the coroutine yields the delay it asked for."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __await__(self) -> Generator[float, None, None]:
        yield self.delay


def test_the_keepalive_check_sleeps_until_a_ping_is_due(monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle: one check per keepalive (not every keepalive/4); traffic in between pushes the check
    out to a keepalive after it, since paho would have nothing to send before that."""
    clock = ScriptedClock()
    monkeypatch.setattr(mqtt_link, "time", clock)
    monkeypatch.setattr(asyncio, "sleep", _Sleep)  # the one asyncio module the link uses
    client = QuietPahoClient(clock)
    loop = asyncio.new_event_loop()
    try:
        conn = mqtt_link._Connection(loop, client, lambda _m: None, lambda _w, _e: None, 60)  # type: ignore[arg-type]
        misc = conn._misc()
        wakes: list[float] = []

        def run_until_sleep(at: float) -> float:
            clock.now = at
            wakes.append(at)
            return float(misc.send(None))

        delay = run_until_sleep(0.0)
        assert client.misc_at == []  # nothing is due at the start: no check yet
        assert delay == 60
        delay = run_until_sleep(60.0)
        assert client.misc_at == [60.0]  # due: paho pings
        assert delay == 60
        clock.now = 100.0
        conn._readable()  # traffic at 100 s: a message in, an ack out
        conn._writable()
        delay = run_until_sleep(120.0)
        assert client.misc_at == [60.0]  # not due at 120: a ping would come only at 160
        assert delay == 40
        run_until_sleep(160.0)
        assert client.misc_at == [60.0, 160.0]
        misc.close()
    finally:
        loop.close()


def test_a_step_with_nothing_to_write_does_not_wake_the_writer(tmp_path: Path) -> None:
    """An idle Tick (no action, state unchanged) is not sent to the writer thread as an empty
    transaction: that woke both threads every timer round on an idle unit (issue 12's idle
    wakeups). What it returns still settles after every step before it."""
    path, config = unit_files(tmp_path)

    async def scenario() -> None:
        with Store.open(path) as store:
            daemon = daemon_with(config, store, OfferRecorder(path))
            jobs: list[object] = []
            submit = daemon.writer.submit

            def counted(job: Any, *, independent: bool = False) -> Any:
                jobs.append(job)
                return submit(job, independent=independent)

            daemon.writer.submit = counted  # type: ignore[method-assign]
            try:
                written = daemon.apply([Emit(make_event("clock_jumped", {}))], daemon.clock.now())
                assert len(jobs) == 1
                daemon.step(Tick())  # the first Tick may settle what start-up left
                before = len(jobs)
                idle = daemon.step(Tick())
                assert len(jobs) == before  # nothing to write: the writer is not asked
                assert idle is not None  # still a future to await, as on the loop
                await idle  # settles with the steps before it
                assert written is not None
                assert written.done()
                emitted = daemon.apply([Emit(make_event("clock_jumped", {}))], daemon.clock.now())
                assert len(jobs) == before + 1  # a step with an action still commits
                assert emitted is not None
                await emitted
            finally:
                daemon.writer.close()

    asyncio.run(scenario())
