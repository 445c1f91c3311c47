"""Figures 1 and 2: how fast a taken dose reaches the response centre, and how late a missed dose
is reported after its grace window ends — on the real daemon, in-process, with the simulator on
a pty and a private mosquitto (the agent/demo/run.py wiring, with `agent.runtime.build_daemon`).

The rig: a ScaledClock at RATE (1800: 30 simulated minutes per real second); the schedule's
maximum, 12 doses a day 30 minutes apart (08:00..13:30); a roll whose sachets match the slots;
grace 5 minutes; a simulated patient who takes every other dose the moment it is presented (a
taken sample) and leaves the others (a missed sample). One *round* is one such day on a fresh
store, dispenser and unit id; rounds repeat for more samples. (`--smoke`: one round of the first
two doses, one sample of each, at 450x with a 15 min grace: see SIZES.)

1. Taken latency: from the DoseTaken frame written on the pty (the simulator's trace callback, in
   the sim thread, right before the write) to the `slot_outcome` (outcome taken) event arriving
   at a paho subscriber on the loopback broker. Baseline, same run: a bare pty write->read
   (os.openpty, raw mode, same frame size) plus a bare paho QoS 1 publish->receive on the same
   broker (same payload size); their sum, per percentile.
2. Missed lateness: (occurred_at - (presented_at + grace)) of the `slot_outcome` (missed) event,
   in scaled seconds, divided by RATE -> real ms. occurred_at is the daemon's clock when the
   engine step that declared the dose missed ran; presented_at is the daemon's clock when it
   handled DosePresented (the grace window is measured from there). So this is the engine
   timer's lateness in real time — at rate R one real ms is R simulated ms. Baseline, same run:
   a naive loop that polls once a second for expired deadlines, given the same kind of deadlines
   (instants spread at random over a window, as grace ends fall at arbitrary times), running in
   a thread while the rounds run; its lateness in real ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import tempfile
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent.clock import ScaledClock
from agent.config import parse_config
from agent.runtime import build_daemon
from bench.common import (
    WAIT_S,
    CommitTimes,
    Figure,
    LoopLagProbe,
    MeasurementError,
    Received,
    Size,
    Subscriber,
    connect_and_start,
    idle_loop_lag,
    loop_stall_figures,
    mosquitto,
    paho_client,
    percentile,
    say,
    stop_client,
)
from hw.dispenser import DispenserIdentity, DispenserModel, roll_from_dose_times
from hw.wire import SimulatorRunner, TraceEvent
from protocol.messages import DosePresented, DoseTaken, Message

OSLO = ZoneInfo("Europe/Oslo")
RATE = 1800.0
GRACE_MINUTES = 5.0
DAY = date(2026, 11, 23)  # a Monday in winter time: no DST change inside a round
DOSE_TIMES = tuple(f"{8 + i // 2:02d}:{30 * (i % 2):02d}" for i in range(12))  # 08:00..13:30
SMOKE_DOSE_TIMES = DOSE_TIMES[:2]  # one taken, one missed: a round ends at 08:35, not 13:35
START_LOCAL = "07:00"  # two real seconds at RATE for the daemon to connect before 08:00
PATIENT = "p-bench-0001"
TAKEN_TARGET_RATIO = 3.0
MISSED_TARGET_MS = 5.0
POLL_DEADLINES = 100
BASELINE_SAMPLES = 200
WARMUP_SAMPLES = 10  # first round trips of a fresh pty / connection: page faults, not latency


def _local(day: date, hhmm: str) -> datetime:
    hh, mm = (int(part) for part in hhmm.split(":"))
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=OSLO)


def _utc_from_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class RoundResult:
    taken_ms: list[float] = field(default_factory=list)
    missed_ms: list[float] = field(default_factory=list)
    taken_frame_bytes: int = 0
    taken_payload_bytes: int = 0
    other_outcomes: int = 0  # neither a taken nor a presented-then-missed dose (should be 0)


class DoseDay:
    """One round: a fresh daemon, store, simulated dispenser and unit id for one dosing day."""

    def __init__(
        self,
        workdir: Path,
        broker_port: int,
        index: int,
        rate: float,
        probe: LoopLagProbe | None = None,
        dose_times: tuple[str, ...] = DOSE_TIMES,
        grace_minutes: float = GRACE_MINUTES,
    ) -> None:
        self.rate = rate
        self.dose_times = dose_times
        self.grace = timedelta(minutes=grace_minutes)
        self.probe = probe
        self.unit_id = f"bench-latency-{index}"
        self.start = _local(DAY, START_LOCAL)
        self.clock = ScaledClock(self.start, rate=rate)
        self.model = DispenserModel(
            DispenserIdentity(serial_number=f"BENCH-{index:04d}"),
            rtc_utc_s=lambda: int(self.clock.now().utc.timestamp()),
        )
        self.device = workdir / "dispenser-tty"
        self._presented = 0
        self.taken_written: dict[int, float] = {}  # dispense id -> perf_counter at the write
        self.taken_frame_bytes = 0
        self.subscriber = Subscriber(
            broker_port, f"dispenser/v1/{self.unit_id}/#", client_id=f"centre-{self.unit_id}"
        )
        config = parse_config(
            {
                "unit_id": self.unit_id,
                "state_dir": str(workdir / "state"),
                "dispenser": {"device": str(self.device)},
                "mqtt": {"host": "127.0.0.1", "port": broker_port, "keepalive_s": 30},
                "engine": {"grace_minutes": grace_minutes},
                "patient_ref": PATIENT,
                "schedule": {
                    "version": 1,
                    "rules": [{"effective_from": DAY.isoformat(), "times": list(dose_times)}],
                },
            },
            source="bench",
        )
        self.daemon = build_daemon(config, self.clock)
        try:
            self.runner = SimulatorRunner.on_pty(
                self.model, link_path=self.device, trace=self._trace
            )
        except BaseException:
            self.daemon.store.close()
            raise
        self.runner.add_listener(self._on_dispenser_message)

    # --- the simulated patient and the wire probe (sim thread) ------------------------------

    def _on_dispenser_message(self, message: Message) -> None:
        if isinstance(message, DosePresented):
            self._presented += 1
            if self._presented % 2 == 1:  # 1st, 3rd, ...: taken at once; the others left
                self.runner.call(lambda model: model.take_dose())

    def _trace(self, event: TraceEvent) -> None:
        if event.direction == "out" and isinstance(event.message, DoseTaken) and not event.note:
            # The first write counts (a retransmission would be the link's doing, not new).
            self.taken_written.setdefault(event.message.dispense_id, time.perf_counter())
            self.taken_frame_bytes = len(event.raw) + 2  # plus the two 0x00 delimiters

    # --- the round ----------------------------------------------------------------------------

    def roll_doses(self) -> list[int]:
        return [int(_local(DAY, hhmm).timestamp()) for hhmm in self.dose_times]

    async def run(self) -> RoundResult:
        self.runner.start()
        try:
            self.subscriber.start()
            daemon_task = asyncio.create_task(self.daemon.run(), name=f"daemon-{self.unit_id}")
            try:
                return await self._script()
            finally:
                if self.probe is not None:
                    self.probe.measuring = False  # the daemon's shutdown is not steady state
                daemon_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await daemon_task
                self.daemon.store.close()
                self.subscriber.stop()
        finally:
            self.runner.stop()

    async def _script(self) -> RoundResult:
        # The retained dispenser state says "up" only once both links are: MQTT carried it.
        await asyncio.to_thread(
            self.subscriber.wait_for,
            lambda got: any(
                r.topic.endswith("/state/dispenser") and r.json().get("link") == "up" for r in got
            ),
            WAIT_S,
            "agent up (dispenser link and MQTT)",
        )
        # The loop-stall figure is the steady state: building a round's daemon in this loop
        # (production opens the store before its loop runs) and its start-up (first GPIO probe,
        # start-up records) are reported apart (LoopLagProbe.setup_lags_ms).
        if self.probe is not None:
            self.probe.measuring = True
        doses = self.roll_doses()
        roll = roll_from_dose_times("R-BENCH-1", PATIENT, doses, doses[-1] + 30 * 86400)
        await asyncio.to_thread(self.runner.call, lambda model: model.insert_roll(roll))
        first_due = _local(DAY, self.dose_times[0])
        if self.clock.now().utc >= first_due - timedelta(minutes=10):
            raise MeasurementError(
                f"rig too slow: the agent was up only at {self.clock.now().utc.astimezone(OSLO)}"
                f" (simulated), too close to the first dose at {first_due:%H:%M}"
            )
        last_end = _local(DAY, self.dose_times[-1]) + self.grace
        remaining_real = (last_end - self.clock.now().utc).total_seconds() / self.rate
        await asyncio.to_thread(
            self.subscriber.wait_for,
            lambda got: len(_outcomes(got)) >= len(self.dose_times),
            remaining_real + WAIT_S,
            f"{len(self.dose_times)} slot outcomes from {self.unit_id}",
        )
        return self._result()

    def _result(self) -> RoundResult:
        result = RoundResult(taken_frame_bytes=self.taken_frame_bytes)
        grace = self.grace
        for received, envelope in _outcomes(self.subscriber.snapshot()):
            data = envelope["data"]
            if data["outcome"] == "taken":
                written = self.taken_written.get(int(data["dispense_id"]))
                if written is None:
                    raise MeasurementError(f"taken dose {data['dispense_id']}: no DoseTaken seen")
                result.taken_ms.append(1000 * (received.at - written))
                result.taken_payload_bytes = len(received.payload)
            elif data["outcome"] == "missed" and data.get("presented_at"):
                end_of_grace = _utc_from_iso(data["presented_at"]) + grace
                late_s = (_utc_from_iso(envelope["occurred_at"]) - end_of_grace).total_seconds()
                result.missed_ms.append(1000 * late_s / self.rate)
            else:
                result.other_outcomes += 1
        return result


def _outcomes(received: list[Received]) -> list[tuple[Received, dict[str, Any]]]:
    found = []
    for item in received:
        if not item.topic.endswith("/events"):
            continue
        envelope = item.json()
        if envelope.get("kind") == "slot_outcome":
            found.append((item, envelope))
    return found


# --- baselines ---------------------------------------------------------------------------------


def pty_write_read_ms(size: int, samples: int) -> list[float]:
    """Bare pty: write `size` bytes on the master, a reader thread blocked on the raw slave
    stamps the moment it has them all."""
    master, slave = os.openpty()
    tty.setraw(slave)
    arrived = threading.Event()
    stamps: list[float] = []

    def reader() -> None:
        got = 0
        while True:
            try:
                chunk = os.read(slave, 4096)
            except OSError:
                return  # master closed: done
            if not chunk:
                return
            got += len(chunk)
            if got >= size:
                got -= size
                stamps.append(time.perf_counter())
                arrived.set()

    thread = threading.Thread(target=reader, name="bench-pty-reader", daemon=True)
    thread.start()
    payload = bytes(range(1, 256)) * (size // 255 + 1)
    results: list[float] = []
    try:
        for _ in range(samples + WARMUP_SAMPLES):
            arrived.clear()
            started = time.perf_counter()
            os.write(master, payload[:size])
            if not arrived.wait(WAIT_S):
                raise MeasurementError("pty baseline: bytes did not arrive")
            results.append(1000 * (stamps[-1] - started))
    finally:
        os.close(master)
        thread.join(5)
        os.close(slave)
    return results[WARMUP_SAMPLES:]


def paho_publish_receive_ms(port: int, size: int, samples: int) -> list[float]:
    """Bare paho: QoS 1 publish (MQTT 5, like the agent) -> a subscriber's on_message."""
    topic = "bench/baseline/latency"
    publisher = paho_client("bench-baseline-publisher")
    connect_and_start(publisher, port)
    results: list[float] = []
    try:
        with Subscriber(port, topic, client_id="bench-baseline-subscriber") as subscriber:
            payload = b"x" * size
            for index in range(samples + WARMUP_SAMPLES):
                started = time.perf_counter()
                publisher.publish(topic, payload, qos=1)
                subscriber.wait_for(_more_than(index), WAIT_S, "paho baseline")
                results.append(1000 * (subscriber.snapshot()[index].at - started))
    finally:
        stop_client(publisher)
    return results[WARMUP_SAMPLES:]


def _more_than(count: int) -> Callable[[list[Received]], bool]:
    return lambda got: len(got) > count


class NaivePoller:
    """The baseline for missed lateness: checks for expired deadlines once a second."""

    def __init__(self, deadlines: int, window_s: float, seed: int = 1) -> None:
        rng = random.Random(seed)
        self._offsets = sorted(rng.uniform(0, window_s) for _ in range(deadlines))
        self.lateness_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-naive-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        origin = time.monotonic()
        pending = [origin + offset for offset in self._offsets]
        while pending and not self._stop.wait(1.0):  # the naive loop: poll once a second
            now = time.monotonic()
            expired = [deadline for deadline in pending if deadline <= now]
            pending = pending[len(expired) :]
            self.lateness_ms.extend(1000 * (now - deadline) for deadline in expired)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._stop.set()
            raise MeasurementError("naive poller did not finish")


# --- the benchmark -----------------------------------------------------------------------------


async def _rounds(
    workdir: Path,
    port: int,
    rounds: int,
    rate: float,
    probe: LoopLagProbe,
    dose_times: tuple[str, ...] = DOSE_TIMES,
    grace_minutes: float = GRACE_MINUTES,
) -> list[RoundResult]:
    async with probe:  # the daemon runs on this loop: its stalls are the probe's lateness
        return await _rounds_probed(workdir, port, rounds, rate, probe, dose_times, grace_minutes)


async def _rounds_probed(
    workdir: Path,
    port: int,
    rounds: int,
    rate: float,
    probe: LoopLagProbe,
    dose_times: tuple[str, ...],
    grace_minutes: float,
) -> list[RoundResult]:
    results = []
    for index in range(rounds):
        round_dir = workdir / f"round-{index}"
        round_dir.mkdir()
        probe.measuring = False  # until the daemon is up (see DoseDay._script)
        day = DoseDay(round_dir, port, index, rate, probe, dose_times, grace_minutes)
        result = await day.run()
        say(
            f"  round {index + 1}/{rounds}: {len(result.taken_ms)} taken, "
            f"{len(result.missed_ms)} missed samples"
        )
        results.append(result)
    return results


@dataclass(frozen=True, slots=True)
class BenchSize:
    rounds: int
    dose_times: tuple[str, ...]
    baseline_samples: int
    poll_window_s: float  # the naive poller's window
    idle_s: float  # the idle loop's
    rate: float = RATE
    grace_minutes: float = GRACE_MINUTES


SIZES: dict[Size, BenchSize] = {
    "full": BenchSize(8, DOSE_TIMES, BASELINE_SAMPLES, 8.0, 5.0),
    "quick": BenchSize(1, DOSE_TIMES, 50, 3.0, 2.0),
    # The suite's check, on loaded machines: the taken sample needs the DoseTaken handled before
    # its grace ends. At 1800x a 5 min grace is 0.17 real s, and a loaded run once lost the
    # sample (both doses missed); here 15 min at 450x is 2 real s, and the daemon has 6.7 real s
    # to come up before 07:50. The round takes 14 real s instead of 3.
    "smoke": BenchSize(1, SMOKE_DOSE_TIMES, 20, 1.0, 0.25, rate=450.0, grace_minutes=15.0),
}


def run(size: Size = "full", rate: float | None = None) -> list[Figure]:
    plan = SIZES[size]
    rounds, dose_times, grace_minutes = plan.rounds, plan.dose_times, plan.grace_minutes
    baseline_samples, poll_window_s, idle_s = plan.baseline_samples, plan.poll_window_s, plan.idle_s
    rate = plan.rate if rate is None else rate
    say(
        f"latency: {rounds} dosing day(s) of {len(dose_times)} doses at {rate:g}x, "
        f"grace {grace_minutes:g} min; patient takes every other dose at once"
    )
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        workdir = Path(tmp)
        with mosquitto(workdir) as broker:
            poller = NaivePoller(POLL_DEADLINES, window_s=poll_window_s)
            poller.start()
            probe = LoopLagProbe()
            with CommitTimes().recording() as commits:
                results = asyncio.run(
                    _rounds(workdir, broker.port, rounds, rate, probe, dose_times, grace_minutes)
                )
            poller.join(WAIT_S)
            taken = [ms for r in results for ms in r.taken_ms]
            missed = [ms for r in results for ms in r.missed_ms]
            others = sum(r.other_outcomes for r in results)
            frame_bytes = max(r.taken_frame_bytes for r in results)
            payload_bytes = max(r.taken_payload_bytes for r in results)
            if not taken or not missed or frame_bytes == 0:
                raise MeasurementError("latency: no taken or missed samples")
            pty_ms = pty_write_read_ms(frame_bytes, baseline_samples)
            paho_ms = paho_publish_receive_ms(broker.port, payload_bytes, baseline_samples)
    base = {q: percentile(pty_ms, q) + percentile(paho_ms, q) for q in (50, 99)}
    say(
        f"  taken: n={len(taken)}, p50 {percentile(taken, 50):.2f} ms, p99 "
        f"{percentile(taken, 99):.2f} ms, max {max(taken):.2f} ms; baseline pty {frame_bytes} B "
        f"p50/p99 {percentile(pty_ms, 50):.3f}/{percentile(pty_ms, 99):.3f} ms + paho "
        f"{payload_bytes} B p50/p99 {percentile(paho_ms, 50):.3f}/{percentile(paho_ms, 99):.3f} ms"
    )
    say(
        f"  missed: n={len(missed)}, p50 {percentile(missed, 50):.2f} ms, p99 "
        f"{percentile(missed, 99):.2f} ms, max {max(missed):.2f} ms; naive 1 s poller "
        f"n={len(poller.lateness_ms)} p50/p99 {percentile(poller.lateness_ms, 50):.0f}/"
        f"{percentile(poller.lateness_ms, 99):.0f} ms"
        + (f"; {others} outcome(s) neither taken nor presented-then-missed" if others else "")
    )
    say(f"  event loop during the rounds: {probe.describe()}")
    say(f"  {commits.describe()}")
    taken_p99 = percentile(taken, 99)
    missed_p99 = percentile(missed, 99)
    return [
        *loop_stall_figures("taken run", probe, idle_loop_lag(idle_s)),
        commits.figure("taken run"),
        Figure(
            "taken latency p50",
            percentile(taken, 50),
            base[50],
            "ms",
            "-",
            None,
            f"n={len(taken)}; baseline = bare pty write->read + bare paho QoS 1 pub->recv",
        ),
        Figure(
            "taken latency p99",
            taken_p99,
            base[99],
            "ms",
            f"<= {TAKEN_TARGET_RATIO:g}x baseline p99",
            taken_p99 <= TAKEN_TARGET_RATIO * base[99],
        ),
        Figure(
            "missed lateness p50",
            percentile(missed, 50),
            percentile(poller.lateness_ms, 50),
            "ms",
            "-",
            None,
            f"n={len(missed)}; (occurred_at - (presented_at + grace)) / rate; "
            "baseline = naive 1 s poll loop",
        ),
        Figure(
            "missed lateness p99",
            missed_p99,
            percentile(poller.lateness_ms, 99),
            "ms",
            f"<= {MISSED_TARGET_MS:g} ms",
            missed_p99 <= MISSED_TARGET_MS,
        ),
    ]
