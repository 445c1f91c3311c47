"""Command line for the dispenser simulator.

    python -m hw.sim pty  [--link PATH] [--scenario FILE] [roll options]   a pty for an agent
    python -m hw.sim uart --device /dev/ttyUSB0 [--baud 115200] [...]      a real UART (rig)
    python -m hw.sim ble  [--mtu 23] [--address A] [--name N] [...]        BLE, on a private D-Bus
    python -m hw.sim selftest                                              codec vs vectors.json

`--defect NAME` (repeatable) runs deliberately broken firmware (`hw.wire.DEFECTS`), so a rig
builder can watch `python -m hw.conform` fail on the clause each defect breaks.

`pty`/`uart` print `DEVICE <path>` as the first stdout line, then one line per frame in/out, and
run until SIGINT/SIGTERM (exit 0). `ble` first prints `BUS <address>`: an agent started with
`DBUS_SYSTEM_BUS_ADDRESS=<address>` and a `"transport": "ble"` config finds the dispenser there
(`DEVICE` is then its BLE address).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from hw.ble import BleDispenser, PrivateBus
from hw.dispenser import DispenserIdentity, DispenserModel, make_roll
from hw.scenario import (
    LinkedTarget,
    ScenarioError,
    ScenarioPlayer,
    ScenarioTarget,
    load_scenario,
    parse_duration,
    parse_utc_s,
)
from hw.wire import DEFECTS, SimulatorRunner, TraceEvent
from protocol.framing import FrameDecoder, FrameKind
from protocol.messages import decode_message, encode_message
from protocol.vectors import load_vectors


def format_trace(event: TraceEvent) -> str:
    arrow = "IN " if event.direction == "in" else "OUT"
    note = f" [{event.note}]" if event.note else ""
    frame = event.frame
    if frame is None:
        return f"{arrow} {len(event.raw)} bytes not a frame{note}: {event.raw[:32].hex()}"
    head = f"{arrow} {frame.kind.name} session={frame.session:04x} seq={frame.seq}"
    if frame.kind is FrameKind.DATA:
        body = repr(event.message) if event.message is not None else f"type 0x{frame.code:02x}"
        return f"{head} {body}{note}"
    if frame.kind is FrameKind.NAK:
        return f"{head} reason={frame.code}{note}"
    return f"{head}{note}"


def selftest() -> list[str]:
    """Check the codec against every vector; returns the failures (empty: all passed)."""
    failures: list[str] = []
    valid, control, invalid = load_vectors()
    for vector in valid:
        type_id, payload = encode_message(vector.message)
        decoder = FrameDecoder()
        frames = decoder.feed(vector.wire)
        if len(frames) != 1:
            failures.append(f"{vector.name}: decoded {len(frames)} frames")
            continue
        frame = frames[0]
        if (frame.session, frame.seq, frame.code, frame.payload) != (
            vector.session,
            vector.seq,
            type_id,
            payload,
        ):
            failures.append(f"{vector.name}: encoding differs from the vector")
        elif frame.encode() != vector.wire:
            failures.append(f"{vector.name}: re-encoded frame differs from the wire bytes")
        elif decode_message(frame.code, frame.payload) != vector.message:
            failures.append(f"{vector.name}: decoded message differs")
    failures.extend(
        f"{ctl.name}: control frame differs"
        for ctl in control
        if ctl.frame.encode() != ctl.wire or FrameDecoder().feed(ctl.wire) != [ctl.frame]
    )
    for bad in invalid:
        decoder = FrameDecoder()
        if decoder.feed(bad.wire) or decoder.rejected[bad.reason] != 1:
            failures.append(f"{bad.name}: not rejected as {bad.reason} ({dict(decoder.rejected)})")
    total = len(valid) + len(control) + len(invalid)
    print(f"selftest: {'PASS' if not failures else 'FAIL'} {total - len(failures)}/{total} vectors")
    for failure in failures:
        print(f"  FAIL {failure}")
    return failures


def _next_hour_utc_s() -> int:
    now = int(time.time())
    return now - now % 3600 + 3600


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", type=Path, help="scenario file to play (see hw/README.md)")
    parser.add_argument(
        "--t0",
        help="wall time (ISO 8601 with offset) of the scenario's t=0, as `python -m hw.rig` "
        "prints it: playing waits for it, and gives `first=slot` its meaning",
    )
    parser.add_argument("--no-roll", action="store_true", help="start without a roll loaded")
    parser.add_argument("--roll-id", default="R-SIM-0001")
    parser.add_argument("--patient-ref", default="p-sim")
    parser.add_argument("--sachets", type=int, default=28)
    parser.add_argument(
        "--first", help="first dose time, ISO 8601 with offset (default: next hour)"
    )
    parser.add_argument("--every", default="12h", help="time between sachets (default 12h)")
    parser.add_argument("--serial", default="SIM0001", help="serial number to report")
    parser.add_argument(
        "--defect",
        action="append",
        default=[],
        choices=sorted(DEFECTS),
        help="deliberately broken firmware, for the conformance kit (repeatable)",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-frame lines")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hw.sim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pty = sub.add_parser("pty", help="simulate on a pty pair")
    pty.add_argument("--link", type=Path, help="stable symlink to the pty (re-pointed on replug)")
    _add_run_options(pty)
    uart = sub.add_parser("uart", help="simulate on a real serial device")
    uart.add_argument("--device", required=True)
    uart.add_argument("--baud", type=int, default=115200)
    _add_run_options(uart)
    ble = sub.add_parser("ble", help="simulate behind the GATT profile, on a private D-Bus bus")
    ble.add_argument("--mtu", type=int, default=23, help="ATT MTU (default 23, the minimum)")
    ble.add_argument("--address", default="C0:FF:EE:00:00:01")
    ble.add_argument("--name", default="VKP-Dispenser")
    _add_run_options(ble)
    sub.add_parser("selftest", help="encode/decode every vector in protocol/vectors.json")
    return parser


def _emit_line(text: str) -> None:
    print(text, flush=True)


def _run(args: argparse.Namespace) -> int:
    try:
        t0_utc_s = parse_utc_s(args.t0) if args.t0 else None
        scenario = load_scenario(args.scenario, t0_utc_s) if args.scenario else None
        first = parse_utc_s(args.first) if args.first else _next_hour_utc_s()
        every = int(parse_duration(args.every))
    except (OSError, ScenarioError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = DispenserModel(DispenserIdentity(serial_number=args.serial), lambda: int(time.time()))
    trace = None if args.quiet else (lambda e: _emit_line(format_trace(e)))
    defects = frozenset(args.defect)
    # Signals go to sigwait() below, not to whichever thread happens to run.
    bus: PrivateBus | None = None
    if args.command == "ble":
        try:
            bus = PrivateBus()  # before blocking signals: dbus-daemon would inherit the mask
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    front: BleDispenser | None = None
    if args.command == "pty":
        runner = SimulatorRunner.on_pty(model, args.link, trace=trace, defects=defects)
    elif args.command == "uart":
        runner = SimulatorRunner.on_uart(
            model, args.device, args.baud, trace=trace, defects=defects
        )
    else:
        assert bus is not None
        try:
            front = BleDispenser(
                model,
                bus.address,
                address=args.address,
                name=args.name,
                att_mtu=args.mtu,
                trace=trace,
                defects=defects,
            )
        except ValueError as exc:
            bus.stop()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
            print(f"error: {exc}", file=sys.stderr)
            return 2
        runner = front.runner
    player: ScenarioPlayer | None = None
    try:
        if front is not None and bus is not None:
            front.start()
            _emit_line(f"BUS {bus.address}")
            _emit_line(f"DEVICE {front.address}")
        else:
            runner.start()
            _emit_line(f"DEVICE {runner.device_path}")
        if not args.no_roll:
            roll = make_roll(args.roll_id, args.patient_ref, first, every, args.sachets)
            runner.call(lambda m: m.insert_roll(roll))
        received_early = None
        if t0_utc_s is not None and t0_utc_s > time.time():  # both machines keep NTP time
            info = signal.sigtimedwait(stop_signals, t0_utc_s - time.time())
            received_early = info.si_signo if info is not None else None
        if scenario is not None and received_early is None:
            target: ScenarioTarget = runner
            if front is not None:
                target = LinkedTarget(runner, front.set_in_range)  # `link down`: out of range
            player = ScenarioPlayer(target, scenario)
            player.start()
        received = received_early or signal.sigwait(stop_signals)
        _emit_line(f"STOP {signal.Signals(received).name} {datetime.now(UTC).isoformat()}")
    finally:
        if player is not None:
            player.stop()
        if front is not None:
            front.stop()
        else:
            runner.stop()
        if bus is not None:
            bus.stop()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command == "selftest":
        return 1 if selftest() else 0
    return _run(args)


if __name__ == "__main__":
    assert threading.current_thread() is threading.main_thread()
    sys.exit(main())
