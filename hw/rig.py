"""The rig runner: play scenario files end to end and check what the response centre sees.

    python -m hw.rig --scenario FILE|DIR --transport pty|ble|uart [--device DEV] [--sim-device DEV]
                     [--broker HOST:PORT] [--rate R] [--slack F] [--jobs N] [--json]

For each scenario: the dispenser side (the simulator on a pty, behind the BLE front on a private
D-Bus bus, or on a real UART; or, on a rig with real firmware or a simulator on another board,
nothing: the runner prints what to do and when), the agent (the production daemon,
`hw.rig_agent`, on a clock the runner shares), and a subscriber on the broker standing in for the
response centre. The scenario's steps play on the dispenser side; its `expect` lines are checked
against the events the subscriber receives. One report line per expectation with the time it was
met; exit 0 only when every scenario passes. hw/RIG.md has the wiring; hw/README.md the format.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from hw.dispenser import DispenserIdentity, DispenserModel
from hw.scenario import (
    Expectation,
    LinkedTarget,
    Scenario,
    ScenarioError,
    ScenarioPlayer,
    ScenarioTarget,
    parse_scenario,
    read_slot,
)
from hw.wire import DEFECTS, SimulatorRunner

PATIENT = "p-rig-0001"  # the patient the runner's agent is set up for (scenario files use it)
ZONE = "Europe/Oslo"
CI_SLOT = datetime(2026, 11, 23, 8, 0, tzinfo=ZoneInfo(ZONE))  # the first dose on a fast clock
BOOT_S = 4.0  # real seconds between starting the agent and t=0 when t=0 is fixed in advance
RELEASE_S = 1.0  # fast clock, simulator in the runner: t=0 this long after the link is up
LINK_WAIT_S = 60.0  # real seconds for the first link up, at most (a loaded machine starts slowly)
TRANSPORTS = ("pty", "ble", "uart")


# --- what the centre sees ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    mono: float  # when it arrived
    kind: str  # event kind, or "link" for a state/dispenser link change
    seq: int | None
    payload: dict[str, Any]


class Centre:
    """A subscriber on dispenser/v1/<unit>/# (clean MQTT 3.1.1 session of its own)."""

    def __init__(self, host: str, port: int, unit_id: str) -> None:
        self.host, self.port, self.unit_id = host, port, unit_id
        self._cond = threading.Condition()
        self._seen: list[Seen] = []
        self._client: paho.Client | None = None

    def start(self, timeout: float = 20.0) -> None:
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"rig-centre-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        subscribed = threading.Event()
        client.on_connect = lambda c, *_: c.subscribe(f"dispenser/v1/{self.unit_id}/#", qos=1)
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 2)
        client.connect(self.host, self.port, keepalive=10)
        client.loop_start()
        self._client = client
        if not subscribed.wait(timeout):
            self.stop()
            raise RuntimeError(f"no subscription on the broker {self.host}:{self.port}")

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        now = time.monotonic()
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        suffix = msg.topic.split(f"dispenser/v1/{self.unit_id}/", 1)[-1]
        seen: Seen | None = None
        if suffix == "events":
            seq = payload.get("seq")
            seen = Seen(
                now, str(payload.get("kind")), seq if isinstance(seq, int) else None, payload
            )
        elif suffix == "state/dispenser" and "link" in payload:
            seen = Seen(now, "link", None, payload)
        if seen is not None:
            with self._cond:
                self._seen.append(seen)
                self._cond.notify_all()

    def seen(self) -> list[Seen]:
        with self._cond:
            return list(self._seen)

    def wait(self, timeout: float) -> None:
        """Until something new arrives or `timeout` passes."""
        with self._cond:
            count = len(self._seen)
            self._cond.wait_for(lambda: len(self._seen) > count, timeout)

    def link_is(self, state: str, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: (
                    any(s.kind == "link" for s in self._seen)
                    and [s for s in self._seen if s.kind == "link"][-1].payload.get("link") == state
                ),
                timeout,
            )


# --- judging -------------------------------------------------------------------------------------


def _value(payload: dict[str, Any], key: str) -> object:
    """`key` in the event's `data` (dots go deeper), else at the top of the payload."""
    for root in (payload.get("data"), payload):
        node: object = root
        for part in key.split("."):
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        if node is not _MISSING:
            return node
    return _MISSING


_MISSING = object()


def _text(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def matches(expectation: Expectation, seen: Seen) -> bool:
    if seen.kind != expectation.subject:
        return False
    return all(_text(_value(seen.payload, k)) == v for k, v in expectation.fields)


@dataclass
class RigVerdict:
    line: int
    text: str
    passed: bool | None  # None: not decided yet
    at_s: float | None = None  # scenario time the deciding event arrived (None: none arrived)
    real_s: float | None = None  # real seconds after t=0
    note: str = ""


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    minutes, secs = divmod(seconds, 60)
    return f"{sign}{int(minutes)}m{secs:04.1f}s" if minutes else f"{sign}{secs:.1f}s"


def judge(
    expectation: Expectation,
    seen: Sequence[Seen],
    now_s: float,
    scenario_time: Callable[[float], float],
    rate: float,
    length_s: float,
    slack: float,
) -> RigVerdict:
    """One expectation against what arrived so far, at scenario time `now_s`. Arrivals before
    t=0 count as at 0 (the link came up while the agent started). `slack` stretches the
    `within` deadline of "at least one" expectations (a loaded machine), never a count window."""
    exp = expectation
    verdict = RigVerdict(exp.line, exp.text, None)
    hits = [(max(0.0, scenario_time(s.mono)), s) for s in seen if matches(exp, s)]
    if exp.count is None:
        deadline = (exp.within_s if exp.within_s is not None else length_s) * slack
        inside = [(t, s) for t, s in hits if exp.after_s <= t <= deadline]
        if inside:
            t = inside[0][0]
            verdict.passed, verdict.at_s, verdict.real_s = True, t, t / rate
        elif now_s > deadline:
            verdict.passed = False
            late = [t for t, _ in hits if t > deadline]
            verdict.note = (
                f"first match at {fmt_s(late[0])}, after the deadline {fmt_s(deadline)}"
                if late
                else f"nothing matching by {fmt_s(deadline)}{_near(exp, seen, scenario_time)}"
            )
        return verdict
    end = exp.within_s if exp.within_s is not None else length_s
    distinct = {
        s.seq if s.seq is not None else id(s): t for t, s in hits if exp.after_s <= t <= end
    }
    if now_s <= end:
        return verdict
    verdict.passed = len(distinct) == exp.count
    if distinct:
        verdict.at_s = max(distinct.values())
        verdict.real_s = verdict.at_s / rate
    if not verdict.passed:
        verdict.note = f"{len(distinct)} distinct matching events by {fmt_s(end)}, not {exp.count}"
        if not distinct:
            verdict.note += _near(exp, seen, scenario_time)
    return verdict


def _describe(seen: Seen, at_s: float) -> str:
    data = seen.payload.get("data")
    detail = ""
    if seen.kind == "link":
        detail = f" {seen.payload.get('link')}"
    elif isinstance(data, dict):
        detail = "".join(
            f" {k}={_text(data[k])}" for k in ("outcome", "slot_id", "reason") if k in data
        )
    return f"{fmt_s(at_s)} {seen.kind}{detail}"


def _near(exp: Expectation, seen: Sequence[Seen], scenario_time: Callable[[float], float]) -> str:
    """What arrived of the same kind, to say why nothing matched."""
    same = [s for s in seen if s.kind == exp.subject]
    if not same:
        return f"; no {exp.subject} at all"
    keys = [k for k, _ in exp.fields]
    shown = [
        " ".join(f"{k}={_text(_value(s.payload, k))}" for k in keys)
        + f" at {fmt_s(scenario_time(s.mono))}"
        for s in same[:3]
    ]
    return f"; saw {exp.subject} " + "; ".join(shown)


# --- the dispenser side --------------------------------------------------------------------------


@dataclass
class Options:
    transport: str
    broker: tuple[str, int]
    device: str | None = None  # uart: the agent's port
    sim_device: str | None = None  # uart: the simulator's port (same machine), else attach
    baud: int = 115200
    rate: float = 60.0
    slack: float = 1.0
    slot: datetime | None = None  # the first dose; default: CI_SLOT on a fast clock, else soon
    defects: frozenset[str] = frozenset()
    workdir: Path | None = None
    grace_minutes: float = 5.0


@dataclass
class Side:
    dispenser: dict[str, Any]  # the agent config's `dispenser` section
    target: ScenarioTarget | None  # None: real firmware / another board (operator prompts)
    env: dict[str, str] = field(default_factory=dict)
    stop: Callable[[], None] = lambda: None


_ble_addresses = iter(range(1, 1 << 16))
_ble_lock = threading.Lock()


def _start_side(opts: Options, workdir: Path) -> Side:
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
    if opts.transport == "pty":
        runner = SimulatorRunner.on_pty(model, link_path=workdir / "tty", defects=opts.defects)
        runner.start()
        return Side({"device": str(workdir / "tty")}, runner, stop=runner.stop)
    if opts.transport == "ble":
        from hw.ble import BleDispenser, PrivateBus  # dbus-fast only where BLE is used

        bus = PrivateBus()  # one per scenario: each has its own bluetoothd stand-in
        with _ble_lock:
            n = next(_ble_addresses)
        try:
            front = BleDispenser(
                model,
                bus.address,
                address=f"C0:FF:EE:01:{n >> 8:02X}:{n & 0xFF:02X}",
                defects=opts.defects,
            )
            front.start()
        except BaseException:  # whatever stopped it: the bus is not left running; re-raised
            bus.stop()
            raise

        def stop() -> None:
            front.stop()
            bus.stop()

        config = {
            "transport": "ble",
            "address": front.address,
            "scan_timeout_s": 2,
            "connect_timeout_s": 3,
        }
        target = LinkedTarget(front.runner, front.set_in_range)
        return Side(config, target, {"DBUS_SYSTEM_BUS_ADDRESS": bus.address}, stop)
    if opts.device is None:
        raise ValueError("--transport uart needs --device (the agent's serial port)")
    config = {"device": opts.device, "baudrate": opts.baud}
    if opts.sim_device is None:
        return Side(config, None)  # real firmware or a simulator on another board
    runner = SimulatorRunner.on_uart(model, opts.sim_device, opts.baud, defects=opts.defects)
    runner.start()
    return Side(config, runner, stop=runner.stop)  # `link down`: the sim goes silent


# --- one scenario --------------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    transport: str
    passed: bool
    expectations: list[RigVerdict]
    played: list[dict[str, Any]]
    real_s: float
    link_up_real_s: float | None
    error: str = ""
    seen: list[str] = field(default_factory=list)  # "4m01.7s slot_outcome outcome=taken"
    log_tail: str = ""


def _slot_and_t0(opts: Options, lead_s: float) -> tuple[datetime, datetime]:
    if opts.slot is not None:
        slot = opts.slot
    elif opts.rate != 1.0:
        slot = CI_SLOT
    else:  # real time: the next whole minute the agent can reach in time
        earliest = datetime.now(UTC) + timedelta(seconds=BOOT_S + lead_s + 30)
        slot = earliest.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return slot, slot - timedelta(seconds=lead_s)


def _agent_config(
    opts: Options, workdir: Path, unit: str, side: Side, slot: datetime, scenario: Scenario
) -> Path:
    local = slot.astimezone(ZoneInfo(ZONE))
    second = local + timedelta(hours=12)
    config = {
        "unit_id": unit,
        "state_dir": str(workdir / "state"),
        "dispenser": side.dispenser,
        "mqtt": {"host": opts.broker[0], "port": opts.broker[1], "keepalive_s": 10},
        "engine": {
            "grace_minutes": (
                scenario.grace_s / 60 if scenario.grace_s is not None else opts.grace_minutes
            ),
            "undispensed_deadline_minutes": 10,
        },
        "patient_ref": PATIENT,
        "schedule": {
            "version": 1,
            "zone": ZONE,
            "rules": [
                {
                    "effective_from": (local.date() - timedelta(days=1)).isoformat(),
                    "times": sorted({local.strftime("%H:%M"), second.strftime("%H:%M")}),
                }
            ],
        },
    }
    path = workdir / "config.json"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def _prompt(text: str) -> None:
    print(text, flush=True)


def _instructions(
    name: str, path: Path, text: str, scenario: Scenario, t0: datetime, slot: datetime
) -> str:
    """What a person (real firmware) or a second board must do, as the file says it."""
    lines = text.splitlines()
    out = [
        f"[{name}] t=0 at {t0.isoformat()}, first dose (slot) {slot.isoformat()}, "
        f"patient {PATIENT}. On the dispenser side:"
    ]
    out += [f"  t={fmt_s(s.at_s):>9}  {lines[s.line - 1].strip()}" for s in scenario.steps]
    out += [f"  {'always':>11}  {lines[t.line - 1].strip()}" for t in scenario.triggers]
    out.append(f"  simulator on another board: ... --scenario {path} --t0 {t0.isoformat()}")
    return "\n".join(out)


def run_scenario(path: Path, opts: Options) -> Result:
    text = path.read_text(encoding="utf-8")
    name = path.stem
    started = time.monotonic()
    lead_s = read_slot(text)
    slot, t0 = _slot_and_t0(opts, lead_s)
    scenario = parse_scenario(text, int(t0.timestamp()))
    base = Path(opts.workdir) if opts.workdir else Path(tempfile.mkdtemp(prefix="rig-"))
    workdir = base / f"{name}-{opts.transport}"
    workdir.mkdir(parents=True, exist_ok=True)
    unit = f"rig-{name}-{opts.transport}-{uuid.uuid4().hex[:6]}".lower().replace("_", "-")
    rate = opts.rate
    launched = time.monotonic()
    # t=0 (the anchor) fixed now; moved to just after the link is up when the clock is released
    anchor = launched + (BOOT_S if rate != 1.0 else max(BOOT_S, t0.timestamp() - time.time()))

    def scenario_time(mono: float) -> float:
        return (mono - anchor) * rate

    result = Result(name, opts.transport, False, [], [], 0.0, None)
    log_path = workdir / "agent.log"
    with contextlib.ExitStack() as stack:
        try:
            side = _start_side(opts, workdir)
            stack.callback(side.stop)
            centre = Centre(opts.broker[0], opts.broker[1], unit)
            centre.start()
            stack.callback(centre.stop)
            config = _agent_config(opts, workdir, unit, side, slot, scenario)
            # On a fast clock with the dispenser side in the runner, scenario time starts once the
            # agent is up and linked, not at a guess of how long it takes to start (a loaded
            # machine or a slow board would eat the scenario's margins).
            release = rate != 1.0 and side.target is not None
            agent = _start_agent(config, t0, None if release else anchor, rate, side.env, log_path)
            stack.callback(_stop_process, agent)
            if side.target is None:
                _prompt(_instructions(name, path, text, scenario, t0, slot))
            # With another board or real firmware, someone starts the dispenser side after
            # reading the prompt: wait for it up to t=0.
            give_up = max(time.monotonic() + LINK_WAIT_S, anchor if side.target is None else 0)
            while not centre.link_is("up", 0.2):
                if agent.poll() is not None:
                    result.error = f"the agent exited ({agent.returncode}); see its log"
                    break
                if time.monotonic() > give_up:
                    result.error = f"no link up within {LINK_WAIT_S:g} s of starting the agent"
                    break
            else:
                result.link_up_real_s = time.monotonic() - launched
                if release:
                    anchor = time.monotonic() + RELEASE_S
                    assert agent.stdin is not None
                    agent.stdin.write(f"{anchor!r}\n".encode())
                    agent.stdin.flush()
            delay = anchor - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            player: ScenarioPlayer | None = None
            if side.target is not None and not result.error:
                player = _start_player(side.target, scenario, scenario_time, anchor, rate)
                stack.callback(player.stop)
            if not result.error:
                result.expectations = _watch(scenario, centre, scenario_time, rate, opts.slack)
                result.passed = all(v.passed for v in result.expectations)
            result.seen = [_describe(s, scenario_time(s.mono)) for s in centre.seen()]
            if player is not None:
                result.played = [
                    {
                        "at_s": p.at_s,
                        "line": p.line,
                        "action": type(p.action).__name__,
                        "cause": p.cause,
                    }
                    for p in player.played
                ]
                if player.error is not None:
                    result.passed = False
                    result.error = f"playing failed: {player.error!r}"
        except (OSError, RuntimeError, ValueError, ScenarioError) as exc:
            result.passed = False
            result.error = str(exc) or repr(exc)
    result.real_s = time.monotonic() - started
    if not result.passed and log_path.exists():
        result.log_tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
    return result


def _start_agent(
    config: Path,
    t0: datetime,
    anchor: float | None,
    rate: float,
    env: dict[str, str],
    log_path: Path,
) -> subprocess.Popen[bytes]:
    """The agent; `anchor` None: sent on its stdin later (hw.rig_agent --anchor stdin)."""
    repo = Path(__file__).resolve().parents[1]
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hw.rig_agent",
                "--config",
                str(config),
                "--t0",
                t0.isoformat(),
                "--anchor",
                "stdin" if anchor is None else repr(anchor),
                "--rate",
                repr(rate),
                "--boot",
                repr(BOOT_S),
            ],
            stdin=subprocess.PIPE if anchor is None else subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=repo,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        )


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _start_player(
    target: ScenarioTarget,
    scenario: Scenario,
    scenario_time: Callable[[float], float],
    anchor: float,
    rate: float,
) -> ScenarioPlayer:
    def clock() -> float:
        return scenario_time(time.monotonic())

    def wait_until(deadline: float | None, wake: threading.Event) -> None:
        wake.wait(None if deadline is None else max(0.0, (deadline - clock()) / rate))

    player = ScenarioPlayer(target, scenario, clock, wait_until)
    player.start(scenario.length_s if scenario.triggers else None)
    return player


def _watch(
    scenario: Scenario,
    centre: Centre,
    scenario_time: Callable[[float], float],
    rate: float,
    slack: float,
) -> list[RigVerdict]:
    """Judge every expectation as events arrive, until all are decided (or a bounded wait)."""
    length = scenario.length_s
    latest = max(
        [length]
        + [
            (e.within_s if e.within_s is not None else length) * (1 if e.count else slack)
            for e in scenario.expectations
        ]
    )
    give_up = time.monotonic() + latest / rate + 30.0  # bounded, generous
    while True:
        now_s = scenario_time(time.monotonic())
        seen = centre.seen()
        verdicts = [
            judge(e, seen, now_s, scenario_time, rate, length, slack) for e in scenario.expectations
        ]
        undecided = [v for v in verdicts if v.passed is None]
        if not undecided and now_s >= min(length, latest):
            return verdicts
        if time.monotonic() > give_up:
            for v in undecided:
                v.passed, v.note = False, "not decided in time"
            return verdicts
        centre.wait(0.05 + 1.0 / rate)


# --- many scenarios, the report ------------------------------------------------------------------


def check_kinds(scenario: Scenario) -> None:
    """An `expect` of a kind the agent never publishes could never pass: say so by line."""
    from agent.engine.catalogue import CATALOGUE  # the agent's own list of event kinds

    for e in scenario.expectations:
        if e.subject != "link" and e.subject not in CATALOGUE:
            raise ScenarioError(
                e.line, f"expect: unknown event kind {e.subject!r} (see the catalogue)"
            )


def scenario_files(target: Path) -> list[Path]:
    if target.is_dir():
        return sorted(target.glob("*.scenario"))
    return [target]


def run_all(paths: Sequence[Path], opts: Options, jobs: int = 1) -> list[Result]:
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(lambda p: run_scenario(p, opts), paths))


def report(results: Sequence[Result], out: Callable[[str], None] = print) -> None:
    for r in results:
        head = "PASS" if r.passed else "FAIL"
        link = fmt_s(r.link_up_real_s)
        out(f"{head} {r.scenario} over {r.transport} ({r.real_s:.1f} s real, link up after {link})")
        if r.error:
            out(f"  error: {r.error}")
        if not r.passed and r.seen:
            out("  the centre saw: " + "; ".join(r.seen))
        for v in r.expectations:
            mark = "ok  " if v.passed else "FAIL"
            when = f"at {fmt_s(v.at_s)} ({v.real_s:.2f} s real)" if v.at_s is not None else ""
            out(f"  {mark} line {v.line}: {v.text}  {when}{'  ' + v.note if v.note else ''}")
    passed = sum(r.passed for r in results)
    out(f"{passed}/{len(results)} scenarios passed")


def _broker(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hw.rig", description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, required=True, help="a file, or a directory")
    parser.add_argument("--transport", choices=TRANSPORTS, required=True)
    parser.add_argument("--device", help="uart: the agent's serial port (e.g. /dev/ttyUSB0)")
    parser.add_argument(
        "--sim-device", help="uart: run the simulator here, on this port (loopback rig)"
    )
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--broker", type=_broker, default=("127.0.0.1", 1883))
    parser.add_argument(
        "--rate", type=float, help="agent clock speed (default 60; 1 with real firmware)"
    )
    parser.add_argument("--slack", type=float, default=1.0, help="stretch `within` deadlines")
    parser.add_argument("--slot", type=datetime.fromisoformat, help="first dose, ISO 8601")
    parser.add_argument("--jobs", type=int, default=1, help="scenarios at once (simulator only)")
    parser.add_argument("--defect", action="append", default=[], choices=sorted(DEFECTS))
    parser.add_argument("--workdir", type=Path, help="keep configs and agent logs here")
    parser.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    attach = args.transport == "uart" and args.sim_device is None
    rate = args.rate if args.rate is not None else (1.0 if attach else 60.0)
    if not math.isfinite(rate) or rate <= 0 or args.slack < 1:
        print("error: --rate must be > 0 and --slack >= 1", file=sys.stderr)
        return 2
    if args.slot is not None and args.slot.utcoffset() is None:
        print("error: --slot needs a UTC offset", file=sys.stderr)
        return 2
    opts = Options(
        transport=args.transport,
        broker=args.broker,
        device=args.device,
        sim_device=args.sim_device,
        baud=args.baud,
        rate=rate,
        slack=args.slack,
        slot=args.slot,
        defects=frozenset(args.defect),
        workdir=args.workdir,
    )
    paths = scenario_files(args.scenario)
    if not paths:
        print(f"error: no *.scenario files in {args.scenario}", file=sys.stderr)
        return 2
    for path in paths:  # refuse a bad file before starting anything
        try:
            check_kinds(parse_scenario(path.read_text(encoding="utf-8"), 0))
        except (OSError, ScenarioError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            return 2
    results = run_all(paths, opts, 1 if attach else args.jobs)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        report(results)
        for r in results:
            if r.log_tail:
                print(f"--- agent log, {r.scenario} over {r.transport} (tail) ---\n{r.log_tail}")
    return 0 if results and all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
