"""Figure 4: how fast a backlog drains once the broker is reachable again.

10,000 events are appended to a fresh Store (one transaction per 1,000), then the real
OutboxPublisher (window 50, as the daemon uses it) and MqttLink (max_inflight 20) drain them to a
private mosquitto, while a subscriber in a process of its own (mosquitto_sub: the centre is
never inside the unit's process, and a paho thread there would take the GIL from the loop)
records what arrives. Rate = events / time from the
publisher's start until the transaction that leaves the backlog at 0 commits; then the subscriber
must have received all 10,000 distinct sequence numbers, or the measurement failed.

Baseline, same run and same broker: a bare paho QoS 1 publish loop of as many messages of the
same size (max_inflight 20), timed until every PUBACK is in; the subscriber must get them all.

Both are measured on mosquitto with its defaults and with `set_tcp_nodelay true` (see
BROKER_VARIANTS for why), in alternating rounds (three in a full run; the figures are the medians:
a single round moves by tens of percent when anything else runs on the machine). The second
broker also gets a drain from a slow-fsync store: every commit blocks for SLOW_FSYNC_S more, as
fsync does on a Pi's SD card.

A loop-lag probe (bench.common.LoopLagProbe) runs on the drain's event loop: the longest stall.
Every commit is timed (bench.common.CommitTimes), and the output says whether it ran on the
event loop (then it stalls the loop for its whole duration) or off it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.clock import TimeTrust
from agent.envelope import build_envelope
from agent.mqtt.link import MqttLink, MqttSettings
from agent.publisher import OutboxPublisher
from agent.store.db import Store
from agent.store.outbox import OutboxEvent
from agent.store.writer import StoreWriter
from bench.common import (
    WAIT_S,
    CommitTimes,
    Figure,
    LoopLagProbe,
    MeasurementError,
    ProcessSubscriber,
    Size,
    connect_and_start,
    idle_loop_lag,
    loop_stall_figures,
    mosquitto,
    paho_client,
    say,
    stop_client,
)

UNIT_ID = "bench-drain"
TOPIC = f"dispenser/v1/{UNIT_ID}/events"
BASELINE_TOPIC = "bench/baseline/drain"
EVENTS = 10_000
SETUP_BATCH = 1_000
MAX_INFLIGHT = 20
TARGET_SHARE = 0.7  # issue 12: at least 70 % of bare paho's rate
# mosquitto leaves Nagle on by default: its PUBACKs after the first wait for the client's
# (delayed, ~40 ms) TCP ACK unless more data flows. A burst (bare paho) hides that; a publisher
# that waits for a batch of acks does not. Measured both ways, so the table shows which it is.
BROKER_VARIANTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("", ()),
    (" (broker nodelay)", ("set_tcp_nodelay true",)),
)
TRUST = TimeTrust.SYNCHRONISED.value
# What one fsync costs on a Pi's SD card (milliseconds; a fast SSD takes well under one).
SLOW_FSYNC_S = 0.010


def _fill(store: Store, events: int) -> None:
    """Append `events` realistic events (a dose_presented's fields), SETUP_BATCH per commit."""
    for first in range(0, events, SETUP_BATCH):
        with store.transaction():
            for index in range(first, min(first + SETUP_BATCH, events)):
                payload: dict[str, object] = {
                    "priority": "info",
                    "vkp_code": None,
                    "alert_id": None,
                    "boot": 1,
                    "data": {
                        "slot_id": f"2026-11-23T{8 + index % 12:02d}:00",
                        "dispense_id": index + 1,
                        "sachet_index": index % 28,
                    },
                }
                store.append_event("dose_presented", payload, "2026-11-23T07:00:00.000000Z", TRUST)


def _distinct_seqs(payloads: list[bytes]) -> int:
    return len({json.loads(payload)["seq"] for payload in payloads})


class WatchedStore(Store):
    """The real Store, telling the bench after each commit (to stop the clock exactly when the
    publisher's last mark-delivered transaction commits, without polling)."""

    on_commit: Callable[[], None] | None = None
    commit_delay_s = 0.0  # added to every commit, on the caller's thread: a slow fsync

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with super().transaction():
            yield
        if self.on_commit is not None:
            self.on_commit()

    def _keep_bounded(self, conn: sqlite3.Connection) -> None:
        super()._keep_bounded(conn)
        if self.commit_delay_s:
            time.sleep(self.commit_delay_s)  # right before the COMMIT, as a slow fsync of it


async def _drain(store: WatchedStore, port: int, probe: LoopLagProbe) -> float:
    """Seconds from the publisher's start until the backlog is empty."""
    async with probe:
        return await _drain_probed(store, port)


async def _drain_probed(store: WatchedStore, port: int) -> float:
    link = MqttLink(
        MqttSettings(
            host="127.0.0.1", port=port, client_id="bench-drain-agent", max_inflight=MAX_INFLIGHT
        ),
        will_factory=None,
        subscriptions=[],
    )

    # as the daemon runs it: delivered-marks commit on the store's writer thread
    writer = StoreWriter(store)
    try:
        return await _timed_drain(store, link, writer)
    finally:
        writer.close()


async def _timed_drain(store: WatchedStore, link: MqttLink, writer: StoreWriter) -> float:
    def envelope(event: OutboxEvent, replayed: bool) -> bytes:
        return build_envelope(UNIT_ID, event, replayed, session=1)

    publisher = OutboxPublisher(store, link, TOPIC, envelope, window=50, writer=writer)
    loop = asyncio.get_running_loop()
    async with asyncio.TaskGroup() as tasks:
        link_task = tasks.create_task(link.run(), name="bench-mqtt-link")
        await link.wait_connected(WAIT_S)
        started = time.perf_counter()
        publisher_task = tasks.create_task(publisher.run(), name="bench-outbox-publisher")
        drained = asyncio.Event()

        def on_commit() -> None:  # on the thread that committed (the writer's)
            if store.backlog().count == 0:
                loop.call_soon_threadsafe(drained.set)

        store.on_commit = on_commit
        try:
            async with asyncio.timeout(WAIT_S * 4):
                await drained.wait()
        except TimeoutError:
            raise MeasurementError(
                f"drain: {store.backlog().count} events still pending after {WAIT_S * 4:.0f} s"
            ) from None
        finally:
            elapsed = time.perf_counter() - started
            store.on_commit = None
            publisher_task.cancel()
            link_task.cancel()
    return elapsed


def drain_rate(
    workdir: Path,
    port: int,
    events: int,
    probe: LoopLagProbe,
    commit_delay_s: float = 0.0,
    commits: CommitTimes | None = None,
) -> tuple[float, int]:
    """(events/s, average payload bytes) of the real publisher and link; the drain's commits
    are timed into `commits`."""
    with WatchedStore.open(workdir / f"outbox-{commit_delay_s:g}.sqlite3") as store:
        if not isinstance(store, WatchedStore):  # Store.open builds `cls`; this tells mypy
            raise MeasurementError("Store.open did not build the watched store")
        _fill(store, events)
        store.commit_delay_s = commit_delay_s
        sizes = [len(build_envelope(UNIT_ID, e, True, 1)) for e in store.pending_events(limit=50)]
        with ProcessSubscriber(port, TOPIC, events, workdir, "bench-drain-centre") as centre:
            with (commits or CommitTimes()).recording():
                elapsed = asyncio.run(_drain(store, port, probe))
            received = _distinct_seqs(centre.payloads(b"{"))
        if received < events:
            raise MeasurementError(f"subscriber got {received} of the {events} drained events")
    return events / elapsed, sum(sizes) // len(sizes)


def paho_rate(port: int, events: int, size: int, workdir: Path) -> float:
    """Messages/s of a bare paho QoS 1 publish loop until every PUBACK is in."""
    acked = 0
    all_acked = threading.Event()
    lock = threading.Lock()

    def on_publish(*_args: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1
            if acked == events:
                all_acked.set()

    client = paho_client("bench-drain-bare-paho")
    client.max_inflight_messages_set(MAX_INFLIGHT)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    connect_and_start(client, port)
    payload = b"x" * size
    try:
        with ProcessSubscriber(
            port, BASELINE_TOPIC, events, workdir, "bench-drain-baseline-centre"
        ) as centre:
            started = time.perf_counter()
            for _ in range(events):
                client.publish(BASELINE_TOPIC, payload, qos=1)
            if not all_acked.wait(WAIT_S * 4):
                raise MeasurementError(f"bare paho: only {acked}/{events} PUBACKs")
            elapsed = time.perf_counter() - started
            if len(centre.payloads(payload)) < events:
                raise MeasurementError("baseline subscriber did not get every message")
    finally:
        stop_client(client)
    return events / elapsed


# size -> (most events drained, idle loop's baseline window in seconds, rounds)
SIZES: dict[Size, tuple[int, float, int]] = {
    "full": (EVENTS, 2.0, 3),
    "quick": (1_000, 2.0, 1),
    "smoke": (200, 0.25, 1),
}


def run(size: Size = "full", events: int = EVENTS) -> list[Figure]:
    most, idle_s, rounds = SIZES[size]
    events = min(events, most)
    figures = []
    stalls = []
    idle = idle_loop_lag(idle_s)
    for label, extra in BROKER_VARIANTS:
        say(f"drain{label}: {events} stored events -> OutboxPublisher + MqttLink -> mosquitto")
        slow: tuple[float, LoopLagProbe, CommitTimes] | None = None
        with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
            workdir = Path(tmp)
            with mosquitto(workdir, extra) as broker:
                # Rounds alternate agent and bare paho on the same broker, and the figure is
                # the median of each: one round moves by tens of percent on a shared machine.
                probe = LoopLagProbe()
                commits = CommitTimes()
                agent_rates: list[float] = []
                bare_rates: list[float] = []
                for index in range(rounds):
                    round_dir = workdir / f"round-{index}"
                    round_dir.mkdir()
                    rate, payload = drain_rate(
                        round_dir,
                        broker.port,
                        events,
                        probe if index == 0 else LoopLagProbe(),
                        0.0,
                        commits if index == 0 else None,
                    )
                    agent_rates.append(rate)
                    bare_rates.append(paho_rate(broker.port, events, payload, round_dir))
                agent_rate = statistics.median(agent_rates)
                bare_rate = statistics.median(bare_rates)
                if extra:
                    slow_probe = LoopLagProbe()
                    slow_commits = CommitTimes()
                    slow_rate, _ = drain_rate(
                        workdir, broker.port, events, slow_probe, SLOW_FSYNC_S, slow_commits
                    )
                    slow = (slow_rate, slow_probe, slow_commits)
        pairs = zip(agent_rates, bare_rates, strict=True)
        per_round = ", ".join(f"{agent:,.0f}/{bare:,.0f}" for agent, bare in pairs)
        say(
            f"  agent {agent_rate:,.0f} events/s; bare paho {bare_rate:,.0f} msg/s "
            f"({payload} B payloads, max_inflight {MAX_INFLIGHT}): {agent_rate / bare_rate:.0%}; "
            f"medians of {rounds} round(s), agent/bare each: {per_round}; "
            f"{probe.describe()} (first round)"
        )
        say(f"  {commits.describe()}")
        figures.append(
            Figure(
                f"outbox drain rate{label}",
                agent_rate,
                bare_rate,
                "ev/s",
                f">= {TARGET_SHARE:.0%} of bare paho",
                agent_rate >= TARGET_SHARE * bare_rate,
                f"{events} events, median of {rounds} alternating round(s), until backlog 0 "
                "(+ all received); baseline until all PUBACKs"
                + ("; broker set_tcp_nodelay true" if extra else "; mosquitto defaults"),
            )
        )
        if not extra:
            stalls += [*loop_stall_figures("drain run", probe, idle), commits.figure("drain run")]
        if slow is not None:
            slow_rate, slow_probe, slow_commits = slow
            say(
                f"  slow fsync (+{SLOW_FSYNC_S * 1000:g} ms per commit): agent "
                f"{slow_rate:,.0f} events/s ({slow_rate / bare_rate:.0%} of bare paho); "
                f"{slow_probe.describe()}"
            )
            say(f"  {slow_commits.describe()}")
            figures.append(
                Figure(
                    f"outbox drain rate{label}, slow fsync",
                    slow_rate,
                    bare_rate,
                    "ev/s",
                    "-",
                    None,
                    f"every commit +{SLOW_FSYNC_S * 1000:g} ms (an SD card's fsync)",
                )
            )
            stalls += [
                *loop_stall_figures("slow-fsync drain", slow_probe, idle),
                slow_commits.figure("slow-fsync drain"),
            ]
    return figures + stalls
