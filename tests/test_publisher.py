"""The outbox publisher against a real mosquitto: order, live-first, nothing lost, resend."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import paho.mqtt.client as paho
from broker import MosquittoBroker, MqttTcpProxy
from paho.mqtt.enums import CallbackAPIVersion

from agent.mqtt.link import MqttLink, MqttSettings
from agent.publisher import OutboxPublisher
from agent.store.db import Store
from agent.store.outbox import OutboxEvent

TOPIC = "dispenser/v1/pub-unit/events"
WAIT_S = 30.0


class Received:
    def __init__(self, port: int) -> None:
        self.events: list[dict[str, object]] = []
        self.cond = threading.Condition()
        client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="centre")
        subscribed = threading.Event()
        client.on_message = self._on_message
        client.on_subscribe = lambda *_: subscribed.set()
        client.connect("127.0.0.1", port)
        client.loop_start()
        client.subscribe(TOPIC, qos=1)
        assert subscribed.wait(WAIT_S)
        self.client = client

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        with self.cond:
            self.events.append(json.loads(msg.payload))
            self.cond.notify_all()

    def wait(self, predicate: Callable[[list[dict[str, object]]], bool]) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self.events), WAIT_S), len(self.events)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def envelope(event: OutboxEvent, replayed: bool) -> bytes:
    return json.dumps({"seq": event.seq, "id": event.event_id, "replayed": replayed}).encode()


def append(store: Store, count: int) -> None:
    with store.transaction():
        for _ in range(count):
            store.append_event("button_pressed", {"data": {}}, "2026-11-23T07:00:00Z", "ok")


@asynccontextmanager
async def publishing(store: Store, port: int) -> AsyncIterator[tuple[MqttLink, OutboxPublisher]]:
    link = MqttLink(
        MqttSettings("127.0.0.1", port, "pub-unit", backoff_initial_s=0.05, backoff_max_s=0.2),
        will_factory=None,
        subscriptions=(),
    )
    publisher = OutboxPublisher(store, link, TOPIC, envelope, window=20)
    tasks = [asyncio.create_task(link.run()), asyncio.create_task(publisher.run())]
    try:
        yield link, publisher
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until(predicate: Callable[[], bool]) -> None:
    """Wait (bounded) for a condition on the store, read on the loop's own thread."""
    async with asyncio.timeout(WAIT_S):
        while not predicate():  # noqa: ASYNC110 - the store has no change notification
            await asyncio.sleep(0.01)


def run(scenario: Callable[[], object]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(90):
            await scenario()  # type: ignore[misc]

    asyncio.run(bounded())


def seqs(events: list[dict[str, object]]) -> list[int]:
    return [int(str(e["seq"])) for e in events]


def test_backlog_drains_in_order_flagged_replayed_and_is_marked_delivered(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    store = Store.open(tmp_path / "s.sqlite3")
    append(store, 2000)
    centre = Received(mosquitto.port)

    async def scenario() -> None:
        async with publishing(store, mosquitto.port):
            await asyncio.to_thread(centre.wait, lambda ev: len(ev) >= 2000)
            await until(lambda: store.backlog().count == 0)

    try:
        run(scenario)
        assert seqs(centre.events) == list(range(1, 2001))
        assert all(e["replayed"] is True for e in centre.events)
        assert store.backlog().count == 0
    finally:
        centre.close()
        store.close()


def test_a_live_event_overtakes_a_long_backlog(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    store = Store.open(tmp_path / "s.sqlite3")
    append(store, 5000)
    centre = Received(mosquitto.port)

    async def scenario() -> None:
        async with publishing(store, mosquitto.port) as (_link, publisher):
            await asyncio.to_thread(centre.wait, lambda ev: len(ev) >= 100)  # draining now
            append(store, 1)  # a fresh alarm while 4,900 old events still wait
            publisher.notify()
            await asyncio.to_thread(centre.wait, lambda ev: 5001 in seqs(ev))
            position = seqs(centre.events).index(5001)
            assert position < 4000, f"live event waited behind {position} backlog events"
            live = centre.events[position]
            assert live["replayed"] is False
            await asyncio.to_thread(centre.wait, lambda ev: len(set(seqs(ev))) == 5001)

    try:
        run(scenario)
        backlog = [s for s in seqs(centre.events) if s != 5001]
        assert backlog == sorted(backlog)  # each lane in order
    finally:
        centre.close()
        store.close()


def test_connection_cut_mid_drain_loses_nothing(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    store = Store.open(tmp_path / "s.sqlite3")
    append(store, 3000)
    centre = Received(mosquitto.port)

    async def scenario() -> None:
        async with (
            MqttTcpProxy(mosquitto.port) as proxy,
            publishing(store, proxy.port) as (link, _publisher),
        ):
            await asyncio.to_thread(centre.wait, lambda ev: len(ev) >= 500)
            proxy.sever()
            await asyncio.to_thread(centre.wait, lambda ev: len(set(seqs(ev))) == 3000)
            await until(lambda: store.backlog().count == 0)
            assert link.stats.connects >= 2

    try:
        run(scenario)
        # duplicates are possible (acked but not yet marked when cut) and detectable by seq+id
        by_seq: dict[int, object] = {}
        for event in centre.events:
            assert by_seq.setdefault(int(str(event["seq"])), event["id"]) == event["id"]
        assert sorted(by_seq) == list(range(1, 3001))
    finally:
        centre.close()
        store.close()


def test_resend_from_publishes_delivered_events_again(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    store = Store.open(tmp_path / "s.sqlite3")
    append(store, 30)
    centre = Received(mosquitto.port)

    async def scenario() -> None:
        async with publishing(store, mosquitto.port) as (_link, publisher):
            await until(lambda: store.backlog().count == 0)
            last = publisher.resend_from(21)
            assert last == 30
            await asyncio.to_thread(centre.wait, lambda ev: len(ev) == 40)

    try:
        run(scenario)
        again = centre.events[30:]
        assert seqs(again) == list(range(21, 31))
        assert all(e["replayed"] is True for e in again)
    finally:
        centre.close()
        store.close()


def test_a_stored_event_that_cannot_be_rendered_does_not_block_the_ones_behind_it(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    """An SD card's bit rot (or a bug) leaves an event the contract cannot carry: its payload is
    no JSON any more, or it lacks its priority. It goes out in its place as `event_unreadable`,
    with what was stored, and the missed-dose alarm behind it is delivered (it once waited for
    ever, the pass failing on the first bad event every 5 s)."""
    import sqlite3

    from agent.envelope import build_envelope

    path = tmp_path / "s.sqlite3"
    store = Store.open(path)
    with store.transaction():
        store.append_event(
            "button_pressed",
            {"priority": "info", "data": {}},
            "2026-11-23T07:00:00Z",
            "synchronised",
        )
        store.append_event(
            "button_pressed",
            {"priority": "info", "data": {}},
            "2026-11-23T07:00:01Z",
            "synchronised",
        )
        store.append_event("button_pressed", {"data": {}}, "2026-11-23T07:00:02Z", "synchronised")
        store.append_event(
            "dose_missed",
            {"priority": "high", "vkp_code": "3.3", "data": {"slot": "x"}},
            "2026-11-23T08:00:00Z",
            "synchronised",
        )
    rot = sqlite3.connect(path)
    with rot:
        rot.execute("UPDATE outbox SET payload = ? WHERE seq = 2", ('{"priority": "inf\x00',))
    rot.close()
    centre = Received(mosquitto.port)

    def envelope(event: OutboxEvent, replayed: bool) -> bytes:
        return build_envelope("pub-unit", event, replayed, 1)

    async def scenario() -> None:
        link = MqttLink(
            MqttSettings("127.0.0.1", mosquitto.port, "pub-unit", backoff_initial_s=0.05),
            will_factory=None,
            subscriptions=(),
        )
        publisher = OutboxPublisher(store, link, TOPIC, envelope, window=20)
        tasks = [asyncio.create_task(link.run()), asyncio.create_task(publisher.run())]
        try:
            await asyncio.to_thread(centre.wait, lambda ev: len(ev) >= 4)
            await until(lambda: store.backlog().count == 0)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        run(scenario)
        by_seq = {int(str(e["seq"])): e for e in centre.events}
        assert sorted(by_seq) == [1, 2, 3, 4]
        assert [by_seq[s]["kind"] for s in (1, 2, 3, 4)] == [
            "button_pressed",
            "event_unreadable",
            "event_unreadable",
            "dose_missed",
        ]
        assert by_seq[4]["priority"] == "high"
        rotten, incomplete = by_seq[2], by_seq[3]
        assert rotten["priority"] == "medium"
        data = rotten["data"]
        assert isinstance(data, dict)
        assert data["stored_kind"] == "button_pressed"
        assert data["stored"] == '{"priority": "inf\x00'
        incomplete_data = incomplete["data"]
        assert isinstance(incomplete_data, dict)
        assert "priority" in str(incomplete_data["error"])
        # the same event id as stored: a re-send of it is still deduplicated by the centre
        with sqlite3.connect(path) as check:
            stored_ids = dict(check.execute("SELECT seq, event_id FROM outbox").fetchall())
        assert rotten["event_id"] == stored_ids[2]
        assert incomplete["event_id"] == stored_ids[3]
    finally:
        centre.close()
        store.close()
