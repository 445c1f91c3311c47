"""Figure: how soon the unit is back online once the broker returns, over a campaign of outages.

The real MqttLink with its default reconnect policy (drivers.retry) is connected to a private
mosquitto; the broker is stopped for each outage length in turn and started again. One sample =
from the moment the restarted broker accepts connections (its start() returned) until the link
reports connected. Goal: <= 5 s, whatever the outage lasted (and jittered, so a fleet spreads).
Baseline, same moments: a fresh bare paho client connecting (to CONNACK) right after the return.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent.mqtt.link import MqttLink, MqttSettings
from bench.common import (
    WAIT_S,
    Broker,
    Figure,
    MeasurementError,
    Size,
    connect_and_start,
    mosquitto,
    paho_client,
    say,
    stop_client,
)

OUTAGES_S = (0.5, 2.0, 5.0, 9.0, 14.0, 20.0)
QUICK_OUTAGES_S = (0.5, 3.0)
SMOKE_OUTAGES_S = (0.2,)
TARGET_S = 5.0


async def _until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S * 6) -> None:  # noqa: ASYNC109
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 (a bounded poll of the link's state)
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise MeasurementError(f"reconnect: {what} not within {timeout:.0f} s") from None


def _bare_connect_s(port: int, index: int) -> float:
    client = paho_client(f"bench-reconnect-bare-{index}")
    started = time.perf_counter()
    connect_and_start(client, port)
    elapsed = time.perf_counter() - started
    stop_client(client)
    return elapsed


async def _campaign(broker: Broker, outages: tuple[float, ...]) -> tuple[list[float], list[float]]:
    link = MqttLink(
        MqttSettings(host="127.0.0.1", port=broker.port, client_id="bench-reconnect"),
        will_factory=None,
        subscriptions=[],
    )
    backs: list[float] = []
    bares: list[float] = []
    task = asyncio.create_task(link.run(), name="bench-reconnect-link")
    try:
        await _until(lambda: link.connected, "first connect")
        for outage in outages:
            await asyncio.to_thread(broker.stop)
            await _until(lambda: not link.connected, "noticing the outage")
            await asyncio.sleep(outage)
            await asyncio.to_thread(broker.start)
            returned = time.perf_counter()
            bare = asyncio.create_task(asyncio.to_thread(_bare_connect_s, broker.port, len(backs)))
            await _until(lambda: link.connected, f"reconnect after a {outage:g} s outage")
            backs.append(time.perf_counter() - returned)
            bares.append(await bare)
            say(
                f"  outage {outage:g} s: back {backs[-1]:.2f} s after the broker returned "
                f"(a fresh paho client: {bares[-1] * 1000:.0f} ms)"
            )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return backs, bares


def run(size: Size = "full") -> list[Figure]:
    outages = {"full": OUTAGES_S, "quick": QUICK_OUTAGES_S, "smoke": SMOKE_OUTAGES_S}[size]
    say(f"reconnect: MqttLink, default policy, broker outages of {', '.join(map(str, outages))} s")
    with tempfile.TemporaryDirectory(prefix="bench-reconnect-") as tmp, mosquitto(Path(tmp)) as b:
        backs, bares = asyncio.run(_campaign(b, outages))
    worst = max(backs)
    return [
        Figure(
            "back online after outage, max",
            worst,
            max(bares),
            "s",
            f"<= {TARGET_S:g} s",
            worst <= TARGET_S,
            f"n={len(backs)} outages of {min(outages):g}-{max(outages):g} s; from the broker "
            "accepting again to the link connected; baseline = a fresh paho client's connect",
        )
    ]
