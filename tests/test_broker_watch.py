"""The broker link's record for `dispenser-agent status` (agent/broker_watch.py): written when
what a technician reads changes, a count-only change held back to once a minute, and no timer
of its own while nothing changes (an idle unit must not wake for it: issue 12's idle wakeups).

A fake link and daemon; the watch runs on a real event loop; waits are bounded conditions.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from agent import broker_watch
from agent.clock import VirtualClock

BOUND_S = 10.0


@dataclass
class FakeStats:
    tls_failures: int = 0
    connect_failures: int = 0


@dataclass
class FakeLink:
    connected: bool = False
    last_connect_error: str | None = None
    stats: FakeStats = field(default_factory=FakeStats)
    link_state_version: int = 0
    parked: asyncio.Event = field(default_factory=asyncio.Event)
    poke: asyncio.Event = field(default_factory=asyncio.Event)  # set at every write or park
    _moved: asyncio.Event = field(default_factory=asyncio.Event)

    def change(self, **what: object) -> None:
        for name, value in what.items():
            if name in ("tls_failures", "connect_failures"):
                setattr(self.stats, name, value)
            else:
                setattr(self, name, value)
        self.link_state_version += 1
        self._moved.set()
        self._moved = asyncio.Event()
        self.parked.clear()

    async def wait_link_state_change(self, seen: int) -> None:
        while self.link_state_version == seen:
            self.parked.set()
            self.poke.set()
            await self._moved.wait()


class FakeStore:
    def __init__(self, poke: asyncio.Event) -> None:
        self.records: list[dict[str, object]] = []
        self._poke = poke

    def set_kv(self, key: str, text: str) -> None:
        assert key == broker_watch.MQTT_LINK_KEY
        self.records.append(json.loads(text))
        self._poke.set()


class FakeDaemon:
    def __init__(self) -> None:
        self.mqtt = FakeLink()
        self.store = FakeStore(self.mqtt.poke)
        self.clock = VirtualClock(datetime(2026, 11, 29, 9, 0, tzinfo=UTC))

    def apply(
        self,
        actions: list[object],
        now: object,
        within: Callable[[], None] | None = None,
        *,
        cause: str = "a write",
    ) -> None:
        assert actions == []
        if within is not None:
            within()


async def _until(daemon: FakeDaemon, predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(BOUND_S):
        while not predicate():
            daemon.mqtt.poke.clear()
            await daemon.mqtt.poke.wait()


def _watch_timers(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    # CPython keeps the loop's pending timers in `_scheduled`; no public view of them exists
    scheduled: list[asyncio.TimerHandle] = getattr(loop, "_scheduled")  # noqa: B009
    return [handle for handle in scheduled if not handle.cancelled()]


def _run(scenario: Callable[[FakeDaemon], object]) -> None:
    async def main() -> None:
        daemon = FakeDaemon()
        watch = asyncio.create_task(broker_watch.watch_broker(daemon))  # type: ignore[arg-type]
        try:
            await scenario(daemon)  # type: ignore[misc]
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    asyncio.run(main())


def test_a_change_a_technician_reads_is_written_at_once() -> None:
    async def scenario(daemon: FakeDaemon) -> None:
        await _until(daemon, lambda: len(daemon.store.records) == 1)
        assert daemon.store.records[0]["connected"] is False
        daemon.mqtt.change(last_connect_error="TLS: certificate verify failed", tls_failures=1)
        await _until(daemon, lambda: len(daemon.store.records) == 2)
        assert daemon.store.records[1]["last_error"] == "TLS: certificate verify failed"
        daemon.mqtt.change(connected=True, last_connect_error=None)
        await _until(daemon, lambda: len(daemon.store.records) == 3)
        assert daemon.store.records[2]["connected"] is True

    _run(scenario)


def test_an_idle_link_leaves_the_watch_without_a_timer() -> None:
    # the old watch looked every second; now nothing is scheduled until the link moves
    async def scenario(daemon: FakeDaemon) -> None:
        await _until(daemon, lambda: len(daemon.store.records) == 1 and daemon.mqtt.parked.is_set())
        assert _watch_timers(asyncio.get_running_loop()) == []
        daemon.mqtt.change(connected=True)
        await _until(daemon, lambda: len(daemon.store.records) == 2 and daemon.mqtt.parked.is_set())
        assert _watch_timers(asyncio.get_running_loop()) == []

    _run(scenario)


def test_a_count_alone_is_held_back_and_written_when_the_minute_is_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a broker refusing every few seconds with the same error writes at most once a "minute"
    # (shortened here); the held-back count is written then even if the link stays quiet. The
    # watch's monotonic clock is ours, so a loaded machine cannot make the minute pass early.
    monkeypatch.setattr(broker_watch, "REWRITE_S", 0.5)
    mono = [1000.0]
    monkeypatch.setattr(broker_watch, "time", SimpleNamespace(monotonic=lambda: mono[0]))

    async def scenario(daemon: FakeDaemon) -> None:
        daemon.mqtt.change(last_connect_error="refused", connect_failures=1)
        await _until(daemon, lambda: len(daemon.store.records) == 1 and daemon.mqtt.parked.is_set())
        assert daemon.store.records[0]["connect_failures"] == 1
        daemon.mqtt.change(connect_failures=2)  # same error, one more failure
        await _until(daemon, lambda: daemon.mqtt.parked.is_set())
        held = _watch_timers(asyncio.get_running_loop())
        assert len(held) == 1  # the minute's timer, and nothing was written for the count yet
        assert len(daemon.store.records) == 1
        mono[0] += 0.5  # the minute is up when the held timer fires
        await _until(daemon, lambda: len(daemon.store.records) == 2)
        assert daemon.store.records[1]["connect_failures"] == 2
        await _until(daemon, lambda: daemon.mqtt.parked.is_set())
        assert _watch_timers(asyncio.get_running_loop()) == []  # nothing held back any more

    _run(scenario)
