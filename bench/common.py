"""Shared parts of the benchmarks: figures and the final table, percentiles, and rig helpers
(a private mosquitto, a timestamping paho subscriber, /proc readings).

A benchmark returns `Figure`s: a value, the baseline measured in the same run, and the target as
the issue states it. Targets are reported (met or not), never enforced: benchmarks do not gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import math
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 30.0  # bound on every wait for a condition in the rigs

# How long a run is: "full" (the documented figures), "quick" (fewer samples, shorter windows),
# "smoke" (the least that still takes every figure on the real parts: the suite's check that no
# benchmark rotted; its numbers are too thin to compare with anything).
Size = Literal["full", "quick", "smoke"]


class MeasurementError(RuntimeError):
    """A measurement could not be taken (rig failed, condition never met): no figure."""


# --- figures and the table -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Figure:
    """One row of the final table."""

    name: str
    value: float
    baseline: float | None
    unit: str
    target: str  # as the issue states it, e.g. "p99 <= 3x baseline p99"
    met: bool | None  # None: no target was set for this figure
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    # Four significant digits: a figure next to its target (45.01 vs 45) must not round onto it.
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return f"{text} {unit}".rstrip()


def format_table(figures: Sequence[Figure]) -> str:
    """The final table: figure, value, baseline, ratio, target, met."""
    header = ("figure", "value", "baseline", "ratio", "target", "met")
    rows = [header]
    for fig in figures:
        ratio = fig.ratio
        rows.append(
            (
                fig.name,
                _number(fig.value, fig.unit),
                _number(fig.baseline, fig.unit),
                "-" if ratio is None else f"{ratio:.3g}x",
                fig.target,
                "-" if fig.met is None else ("yes" if fig.met else "NO"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    notes = [f"  * {fig.name}: {fig.note}" for fig in figures if fig.note]
    return "\n".join(lines + notes)


_says = threading.local()


def say(text: str) -> None:
    """Progress and detail lines (the table comes last); a benchmark running beside others
    (`say_as`) marks its lines with its name."""
    prefix = getattr(_says, "prefix", "")
    print("\n".join(prefix + line for line in text.split("\n")), flush=True)


def say_as(name: str) -> None:
    """From now on this thread's `say` lines start with `[name] `."""
    _says.prefix = f"[{name}] "


# --- statistics ------------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks (numpy's
    default). Raises MeasurementError on no samples: a figure without data is a failure."""
    if not samples:
        raise MeasurementError("no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile out of range: {q}")
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- the event loop's stalls ------------------------------------------------------------------


class LoopLagProbe:
    """A loop-lag probe: a task on the loop under test sleeps `interval_s` again and again and
    records how late each wake-up is. The longest lateness is the longest stall of the loop
    (a blocking commit, a long callback, GC) plus OS scheduling on a loaded machine.

        async with LoopLagProbe() as probe: ...
        probe.max_ms, probe.p99_ms
    """

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.lags_ms: list[float] = []
        # A wake-up whose sleep began while `measuring` was off lands here instead (a rig's
        # set-up and a daemon's start-up, reported apart from the steady state).
        self.measuring = True
        self.setup_lags_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopLagProbe:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag-probe")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            measuring = self.measuring
            await asyncio.sleep(self.interval_s)
            lag_ms = max(0.0, loop.time() - due) * 1000
            (self.lags_ms if measuring and self.measuring else self.setup_lags_ms).append(lag_ms)

    @property
    def max_ms(self) -> float:
        if not self.lags_ms:
            raise MeasurementError("loop-lag probe: no samples")
        return max(self.lags_ms)

    @property
    def p99_ms(self) -> float:
        return percentile(self.lags_ms, 99)

    def describe(self) -> str:
        setup = (
            f"; set-up/start-up (not counted) n={len(self.setup_lags_ms)} max "
            f"{max(self.setup_lags_ms):.2f} ms"
            if self.setup_lags_ms
            else ""
        )
        return (
            f"loop lag n={len(self.lags_ms)} p50 {percentile(self.lags_ms, 50):.2f} ms, "
            f"p99 {self.p99_ms:.2f} ms, max {self.max_ms:.2f} ms{setup}"
        )


LOOP_STALL_TARGET_MS = 5.0  # the goal: the timing loop is never blocked by I/O


def idle_loop_lag(seconds: float) -> LoopLagProbe:
    """The baseline: the same probe on an event loop with nothing else to do (what the OS and a
    loaded machine add on their own)."""

    async def idle() -> LoopLagProbe:
        async with LoopLagProbe() as probe:
            await asyncio.sleep(seconds)
        return probe

    return asyncio.run(idle())


def loop_stall_figures(run_name: str, probe: LoopLagProbe, idle: LoopLagProbe) -> list[Figure]:
    """Two rows: the loop-lag p99 (with the goal) and the longest stall; baseline = idle loop."""
    note = (
        f"n={len(probe.lags_ms)} wake-ups every {probe.interval_s * 1000:g} ms; "
        f"baseline = the probe on an idle loop (n={len(idle.lags_ms)})"
    )
    return [
        Figure(
            f"loop stall p99 ({run_name})",
            probe.p99_ms,
            idle.p99_ms,
            "ms",
            f"<= {LOOP_STALL_TARGET_MS:g} ms",
            probe.p99_ms <= LOOP_STALL_TARGET_MS,
            note,
        ),
        Figure(
            f"longest loop stall ({run_name})", probe.max_ms, idle.max_ms, "ms", "-", None, note
        ),
    ]


# --- the store's commits ---------------------------------------------------------------------


class CommitTimes:
    """How long each store commit takes (from the end of the transaction's body until COMMIT
    returned: retention, the COMMIT and its fsync) and whether it ran on the event loop's thread,
    where it blocks the loop for all of that time. `with times.recording():` wraps
    Store.transaction for this process only.
    """

    def __init__(self) -> None:
        self.on_loop_ms: list[float] = []
        self.off_loop_ms: list[float] = []

    @contextmanager
    def recording(self) -> Iterator[CommitTimes]:
        from agent.store.db import Store

        original = Store.transaction
        times = self

        @contextmanager
        def timed(store: Store) -> Iterator[None]:
            with original(store):
                yield
                started = time.perf_counter()
            elapsed_ms = (time.perf_counter() - started) * 1000
            (times.on_loop_ms if _on_loop() else times.off_loop_ms).append(elapsed_ms)

        Store.transaction = timed  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            Store.transaction = original  # type: ignore[method-assign]

    def describe(self) -> str:
        parts = []
        for where, values in (("on the loop", self.on_loop_ms), ("off it", self.off_loop_ms)):
            if values:
                parts.append(
                    f"{len(values)} {where} p50 {percentile(values, 50):.2f} ms, "
                    f"p99 {percentile(values, 99):.2f} ms, max {max(values):.2f} ms"
                )
        if not parts:
            return "commits: none"
        verdict = (
            "the store commits ON THE EVENT LOOP: each commit stalls it for its whole duration"
            if self.on_loop_ms
            else "the store commits off the event loop"
        )
        return f"commits: {'; '.join(parts)} ({verdict})"

    def figure(self, run_name: str) -> Figure:
        """The longest commit on the loop (0 when none ran there); no target of its own: it is
        the part of the loop stall the store causes."""
        value = max(self.on_loop_ms, default=0.0)
        share = f"{len(self.on_loop_ms)} of {len(self.on_loop_ms) + len(self.off_loop_ms)}"
        return Figure(
            f"longest commit on the loop ({run_name})",
            value,
            None,
            "ms",
            "-",
            None,
            f"{share} commits ran on the event loop's thread and blocked it (body end -> COMMIT "
            "returned, fsync included)",
        )


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# --- rig: a private mosquitto ----------------------------------------------------------------


class Broker(Protocol):
    """What the benchmarks use of tests/broker.py's MosquittoBroker."""

    host: str
    port: int

    def start(self) -> None: ...

    def stop(self) -> None: ...


def _broker_module() -> Any:
    # tests/ is not a package and not installed; load the test rig's broker module by path
    # rather than putting tests/ on sys.path (its names could shadow real modules).
    path = REPO / "tests" / "broker.py"
    spec = importlib.util.spec_from_file_location("bench_tests_broker", path)
    if spec is None or spec.loader is None:
        raise MeasurementError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def mosquitto(workdir: Path, extra_config: Sequence[str] = ()) -> Iterator[Broker]:
    """A private mosquitto on 127.0.0.1 (no persistence: nothing here must survive it)."""
    module = _broker_module()
    try:
        broker: Broker = module.MosquittoBroker(
            workdir / "mosquitto", persistence=False, extra_config=tuple(extra_config)
        )
        broker.start()
    except module.BrokerError as exc:
        raise MeasurementError(f"{exc} (scripts/ensure-mosquitto.sh installs it)") from exc
    try:
        yield broker
    finally:
        broker.stop()


# --- rig: paho clients -----------------------------------------------------------------------


def paho_client(client_id: str, *, v5: bool = True) -> paho.Client:
    return paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
    )


def connect_and_start(client: paho.Client, port: int, timeout: float = WAIT_S) -> None:
    """Connect, start the network thread, and wait (bounded) for the CONNACK."""
    connected = threading.Event()
    previous = client.on_connect

    def on_connect(*args: Any) -> None:
        connected.set()
        if previous is not None:
            previous(*args)

    client.on_connect = on_connect
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    if not connected.wait(timeout):
        stop_client(client)
        raise MeasurementError(f"paho client did not connect to 127.0.0.1:{port}")


def stop_client(client: paho.Client) -> None:
    client.disconnect()
    client.loop_stop()


@dataclass(frozen=True, slots=True)
class Received:
    at: float  # time.perf_counter() in the paho thread when the message arrived
    topic: str
    payload: bytes

    def json(self) -> dict[str, Any]:
        value = json.loads(self.payload)
        if not isinstance(value, dict):
            raise MeasurementError(f"{self.topic}: not a JSON object")
        return value


@dataclass
class Subscriber:
    """A paho subscriber standing in for the response centre; stamps every arrival."""

    port: int
    topic: str
    client_id: str = "bench-subscriber"
    on_receive: Callable[[Received], None] | None = None
    received: list[Received] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _client: paho.Client | None = None

    def start(self) -> None:
        client = paho_client(self.client_id)
        subscribed = threading.Event()
        client.on_connect = lambda c, *_: c.subscribe(self.topic, qos=1)
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = self._on_message
        client.connect("127.0.0.1", self.port, keepalive=30)
        client.loop_start()
        self._client = client
        if not subscribed.wait(WAIT_S):
            self.stop()
            raise MeasurementError(f"subscriber did not subscribe to {self.topic}")

    def stop(self) -> None:
        if self._client is not None:
            stop_client(self._client)
            self._client = None

    def __enter__(self) -> Subscriber:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        item = Received(time.perf_counter(), msg.topic, bytes(msg.payload))
        try:
            if self.on_receive is not None:
                self.on_receive(item)
        finally:
            with self._cond:
                self.received.append(item)
                self._cond.notify_all()

    def count(self) -> int:
        with self._cond:
            return len(self.received)

    def snapshot(self) -> list[Received]:
        with self._cond:
            return list(self.received)

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float, what: str
    ) -> None:
        """Block until `predicate(received)` holds; MeasurementError after `timeout` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.received), timeout):
                raise MeasurementError(f"{what}: not within {timeout:.0f} s")


class ProcessSubscriber:
    """The response centre as a process of its own (mosquitto_sub, QoS 1): for throughput runs,
    where a paho thread receiving thousands of messages inside the measured process would take
    the GIL from it (the agent's event loop waited up to the 5 ms switch interval each time),
    which no unit has: its centre is another machine. Payloads go to a file, one per line, and
    are read after the process exits on its `count`-th message."""

    def __init__(self, port: int, topic: str, count: int, workdir: Path, client_id: str) -> None:
        self._out = workdir / f"{client_id}.out"
        self._count = count
        self._argv = [
            "stdbuf", "-oL",  # line by line: -d's SUBACK line is how we know it subscribed
            "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", "1",
            "-C", str(count), "-i", client_id, "-d",
        ]  # fmt: skip
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ProcessSubscriber:
        with self._out.open("wb") as out:
            self._process = subprocess.Popen(self._argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + WAIT_S
        while b"SUBACK" not in self._out.read_bytes():  # -d says when it is subscribed
            if self._process.poll() is not None or time.monotonic() > deadline:
                self._stop()
                raise MeasurementError(f"mosquitto_sub did not subscribe: {self._tail()}")
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop()

    def payloads(self, start: bytes) -> list[bytes]:
        """Every payload received (the lines beginning with `start`: -d adds lines of its own),
        once the process has its `count` (MeasurementError if not within WAIT_S)."""
        if self._process is None:
            raise MeasurementError("mosquitto_sub was not started")
        try:
            self._process.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            raise MeasurementError(
                f"mosquitto_sub did not receive {self._count} messages: {self._tail()}"
            ) from None
        return [line for line in self._out.read_bytes().splitlines() if line.startswith(start)]

    def _stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def _tail(self) -> str:
        return self._out.read_bytes()[-300:].decode(errors="replace")


# --- /proc readings ----------------------------------------------------------------------------


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One reading of a process: context switches over all its threads, CPU time, RSS."""

    wall: float  # time.monotonic()
    switches: int  # voluntary + nonvoluntary, summed over /proc/PID/task/*
    threads: int
    cpu_s: float  # utime + stime of the whole process
    rss_kib: int


def _status_fields(path: Path) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def proc_sample(pid: int) -> ProcSample:
    """Read /proc for `pid`; MeasurementError if the process is gone."""
    base = Path(f"/proc/{pid}")
    try:
        wall = time.monotonic()
        switches = 0
        threads = 0
        for task in (base / "task").iterdir():
            try:
                status = _status_fields(task / "status")
            except FileNotFoundError:
                continue  # the thread ended between listing and reading
            switches += int(status["voluntary_ctxt_switches"])
            switches += int(status["nonvoluntary_ctxt_switches"])
            threads += 1
        # /proc/PID/stat: fields after the ")" of the command name; utime, stime are 14 and 15.
        stat = (base / "stat").read_text()
        after = stat[stat.rindex(")") + 2 :].split()
        cpu_s = (int(after[11]) + int(after[12])) / CLOCK_TICKS
        rss_kib = int(_status_fields(base / "status")["VmRSS"].split()[0])
    except (FileNotFoundError, ProcessLookupError, KeyError) as exc:
        raise MeasurementError(f"process {pid} is gone or unreadable: {exc}") from exc
    return ProcSample(wall, switches, threads, cpu_s, rss_kib)


@dataclass(frozen=True, slots=True)
class IdleCost:
    wakeups_per_s: float
    cpu_percent: float
    rss_mb: float  # 10^6 bytes (VmRSS is in KiB)
    threads: tuple[int, int]  # before, after (a thread that ended takes its switches with it)


def idle_cost(before: ProcSample, after: ProcSample) -> IdleCost:
    wall = after.wall - before.wall
    if wall <= 0:
        raise MeasurementError("empty measurement window")
    return IdleCost(
        wakeups_per_s=(after.switches - before.switches) / wall,
        cpu_percent=100.0 * (after.cpu_s - before.cpu_s) / wall,
        rss_mb=after.rss_kib * 1024 / 1e6,
        threads=(before.threads, after.threads),
    )
