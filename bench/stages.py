"""Where the taken path's time goes, stage by stage (a bench-only probe; not in the table).

    python -m bench.stages [--rounds N]

Runs the latency rig (bench/latency.py: the real daemon in-process, the simulator on a pty, a
private mosquitto) with perf_counter stamps wrapped around the stages a DoseTaken frame goes
through, and prints each stage's p50/p99/max in ms over the taken samples:

  pty       the simulator's write of the frame -> the serial transport's read returned it
  wake      that read -> the engine step starts (the session pump's task wakes, decodes, routes)
  engine    the engine step (pure)
  tx body   the step handed to the store's writer thread (any wait behind earlier jobs
            included) -> its transaction up to its COMMIT statement (rows, state, retention)
  COMMIT    the COMMIT itself: with synchronous=FULL in WAL mode, the write and fsync of the WAL
            (on the writer thread: the loop runs meanwhile)
  offer     commit done -> back on the loop -> the events handed to paho (envelope + publish),
            paho write included
  broker    the paho write -> a subscriber on the same broker has the event

Then the floor the store sets on this machine: a bare SQLite commit of one small row in the same
mode (WAL, synchronous=FULL) on the same file system, FSYNC_SAMPLES times.

The wrappers are installed on the classes for this process only; the daemon's code is unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agent.daemon import Daemon
from agent.engine.types import FromDispenser
from agent.mqtt.link import MqttLink
from agent.store.db import Store
from bench import latency
from bench.common import LoopLagProbe, mosquitto, percentile, say
from drivers.serial_port import SerialTransport
from protocol.messages import DoseTaken

FSYNC_SAMPLES = 200
STAGES = ("pty", "wake", "engine", "tx body", "COMMIT", "offer", "broker")


class Stamps:
    def __init__(self) -> None:
        self.read_at = 0.0  # the last transport read (perf_counter s)
        self.current: dict[str, float] | None = None  # the taken step being traced
        self.traced: list[dict[str, float]] = []  # by the order of the rounds


STAMPS = Stamps()


@contextlib.contextmanager
def _patched(owner: type, name: str, make: Callable[[Any], Any]) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, make(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def _on_readable(original: Any) -> Any:
    def wrapper(self: SerialTransport, fd: int, future: asyncio.Future[bytes]) -> None:
        original(self, fd, future)
        if future.done():
            STAMPS.read_at = time.perf_counter()

    return wrapper


def _step(original: Any) -> Any:
    def wrapper(self: Daemon, inp: Any, *args: Any, **kwargs: Any) -> Any:
        taken = isinstance(inp, FromDispenser) and isinstance(inp.message, DoseTaken)
        if not taken:
            return original(self, inp, *args, **kwargs)
        record = {"read": STAMPS.read_at, "step": time.perf_counter()}
        record["dispense_id"] = inp.message.dispense_id
        STAMPS.current = record
        STAMPS.traced.append(record)
        try:
            result = original(self, inp, *args, **kwargs)
        except BaseException:
            STAMPS.current = None
            raise
        if isinstance(result, asyncio.Future):
            # committed on the writer thread: traced until the step's future settles
            result.add_done_callback(lambda _: _untrace(record))
        else:
            STAMPS.current = None
        return result

    return wrapper


def _untrace(record: dict[str, float]) -> None:
    if STAMPS.current is record:
        STAMPS.current = None


def _engine_step(original: Any) -> Any:
    def wrapper(self: Any, inp: Any, now: Any) -> Any:
        result = original(self, inp, now)
        if STAMPS.current is not None:
            STAMPS.current["engine_done"] = time.perf_counter()
        return result

    return wrapper


def _transaction(original: Any) -> Any:
    @contextlib.contextmanager
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Iterator[None]:
        with original(self, *args, **kwargs):
            yield
        record = STAMPS.current
        if record is not None and "committed" not in record:
            record["committed"] = time.perf_counter()

    return wrapper


def _keep_bounded(original: Any) -> Any:
    def wrapper(self: Store, conn: Any) -> None:
        original(self, conn)
        record = STAMPS.current
        if record is not None and "body_done" not in record:
            record["body_done"] = time.perf_counter()

    return wrapper


def _flush(original: Any) -> Any:
    def wrapper(self: MqttLink) -> None:
        original(self)
        record = STAMPS.current
        if record is not None and "committed" in record and "written" not in record:
            record["written"] = time.perf_counter()

    return wrapper


def run(rounds: int) -> None:
    from agent.engine.engine import DoseEngine

    say(f"stages: {rounds} dosing day(s) on the latency rig, taken doses traced")
    with (
        _patched(SerialTransport, "_on_readable", _on_readable),
        _patched(Daemon, "step", _step),
        _patched(DoseEngine, "step", _engine_step),
        _patched(Store, "transaction", _transaction),
        _patched(Store, "_keep_bounded", _keep_bounded),
        _patched(MqttLink, "flush", _flush),
        tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp,
        mosquitto(Path(tmp)) as broker,
    ):
        days: list[latency.DoseDay] = []
        original_init = latency.DoseDay.__init__

        def keep(self: latency.DoseDay, *args: Any, **kwargs: Any) -> None:
            original_init(self, *args, **kwargs)
            days.append(self)

        with _patched(latency.DoseDay, "__init__", lambda _original: keep):
            asyncio.run(
                latency._rounds(Path(tmp), broker.port, rounds, latency.RATE, LoopLagProbe())
            )
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
    totals: list[float] = []
    traced = iter(STAMPS.traced)
    for day in days:
        records = {}  # this round's taken steps by dispense id (ids restart every round)
        for record in traced:
            records[int(record["dispense_id"])] = record
            if len(records) == len(day.taken_written):
                break
        for received, envelope in latency._outcomes(day.subscriber.snapshot()):
            data = envelope["data"]
            if data["outcome"] != "taken":
                continue
            dispense_id = int(data["dispense_id"])
            found = records.get(dispense_id)
            written_at = day.taken_written.get(dispense_id)
            if found is None or written_at is None or "written" not in found:
                continue
            record = found
            points = [
                written_at,
                record["read"],
                record["step"],
                record["engine_done"],
                record["body_done"],
                record["committed"],
                record["written"],
                received.at,
            ]
            for stage, start, end in zip(STAGES, points, points[1:], strict=False):
                samples[stage].append((end - start) * 1000)
            totals.append((points[-1] - points[0]) * 1000)
    if not totals:
        say("  no taken sample traced")
        return
    say(f"  n={len(totals)} taken samples (ms)")
    for stage in STAGES:
        values = samples[stage]
        say(
            f"  {stage:7s} p50 {percentile(values, 50):7.3f}  p99 {percentile(values, 99):7.3f}"
            f"  max {max(values):7.3f}"
        )
    with tempfile.TemporaryDirectory(prefix="bench-stages-fsync-") as tmp:
        bare = bare_commit_ms(Path(tmp))
    say(
        f"  (bare SQLite WAL+FULL one-row commit here: p50 {percentile(bare, 50):.3f}  p99 "
        f"{percentile(bare, 99):.3f}  max {max(bare):.3f}; n={len(bare)})"
    )
    say(
        f"  total   p50 {percentile(totals, 50):7.3f}  p99 {percentile(totals, 99):7.3f}"
        f"  max {max(totals):7.3f}"
    )


def bare_commit_ms(directory: Path, samples: int = FSYNC_SAMPLES) -> list[float]:
    """One-row commits in WAL mode with synchronous=FULL: what durability alone costs here."""
    conn = sqlite3.connect(directory / "bare.sqlite3", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE t (n INTEGER, text TEXT)")
        results = []
        for index in range(samples):
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (?, ?)", (index, "x" * 300))
            conn.execute("COMMIT")
            results.append((time.perf_counter() - started) * 1000)
        return results
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    run(parser.parse_args(argv).rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
