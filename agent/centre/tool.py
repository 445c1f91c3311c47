"""`dispenser-agent centre`: the response centre's operator tool.

dispenser-agent centre keygen --out FILE            a new Ed25519 key (PEM, mode 0600); prints
                                                    the public key for the units' centre_keys
dispenser-agent centre sign --key FILE --unit ID --by OPERATOR COMMAND
                                                    the signed request, ids and times filled in
dispenser-agent centre send BROKER --unit ID (--key FILE --by OPERATOR COMMAND | --signed FILE)
                                                    publish it and print the unit's answer
dispenser-agent centre watch BROKER [--unit ID ...] [--count N] [--for SECONDS]
                                                    a live view of one, several or all units:
                                                    one line per message, checked against the
                                                    contract (INVALID: why), gaps by seq
dispenser-agent centre units BROKER [--unit ID ...] [--wait SECONDS]
                                                    availability at a glance, one line per unit

BROKER is --host H --port P [--tls --ca-file F --client-cert F --client-key F]
[--username U --password-file F]. COMMAND is the `command` object as JSON
(`{"name": "resume"}`), `@FILE`, or `-` for stdin.

Exit codes: 0 done (send: answered ok; units: every unit online); 1 send: answered but not ok,
units: a unit offline, unknown or invalid (or none seen), watch: --count not reached within
--for; 2 the tool could not do it (bad arguments, broker unreachable or refusing, TLS refused,
no answer), said in one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.centre.connect import (
    BrokerOptions,
    FirstConnect,
    ToolError,
    add_broker_options,
    make_client,
    options_from_args,
)
from agent.contract.commands import MAX_COMMAND_LIFETIME, CommandInvalid, parse_command
from agent.contract.signing import key_id, public_key_text, sign_request
from agent.contract.topics import InvalidUnitId, UnitTopics, validate_unit_id

__all__ = ["ToolError", "build_request", "generate_key", "load_key", "main"]

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def generate_key(out: Path) -> Ed25519PrivateKey:
    """A new key written as unencrypted PKCS#8 PEM, readable by its owner only."""
    if out.exists():
        raise ToolError(f"{out} exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
    except OSError as exc:
        raise ToolError(f"cannot write the key: {exc}") from None
    return key


def load_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ToolError(f"{path}: no such key file") from None
    except OSError as exc:
        raise ToolError(f"cannot read the key: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise ToolError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ToolError(f"{path}: not an Ed25519 key")
    return key


def read_command(text: str) -> dict[str, Any]:
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ToolError(f"cannot read the command: {exc}") from None
    try:
        command = json.loads(text)
    except ValueError as exc:
        raise ToolError(f"the command is not JSON: {exc}") from None
    if not isinstance(command, dict) or not isinstance(command.get("name"), str):
        raise ToolError('the command is a JSON object with a "name", e.g. {"name": "resume"}')
    return command


def build_request(
    command: dict[str, Any],
    *,
    unit_id: str,
    issued_by: str,
    key: Ed25519PrivateKey,
    lifetime: timedelta = timedelta(minutes=60),
    now: datetime | None = None,
    command_id: str | None = None,
) -> dict[str, object]:
    """A signed request for one unit, issued now; checked as the unit will parse it."""
    if not timedelta(0) < lifetime <= MAX_COMMAND_LIFETIME:
        raise ToolError(f"the lifetime must be more than 0 and at most {MAX_COMMAND_LIFETIME}")
    issued = (now or datetime.now(UTC)).replace(microsecond=0)
    request: dict[str, object] = {
        "command_id": command_id or str(uuid.uuid4()),
        "unit_id": unit_id,
        "issued_at": _utc(issued),
        "expires_at": _utc(issued + lifetime),
        "issued_by": issued_by,
        "command": command,
    }
    signed = sign_request(request, key)
    try:
        parse_command(json.dumps(signed).encode())
    except CommandInvalid as problem:
        raise ToolError(f"the unit would refuse this command: {problem.message}") from None
    return signed


def send_request(
    broker: BrokerOptions, request: dict[str, object], timeout: float
) -> dict[str, Any] | None:
    """Publish the request (MQTT 5, QoS 1) and wait for the unit's answer to its command id."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    topics = UnitTopics(str(request["unit_id"]))
    command_id = str(request["command_id"])
    answered = threading.Event()
    subscribed = threading.Event()
    answer: dict[str, Any] = {}
    first = FirstConnect(broker)

    def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        try:
            payload = json.loads(message.payload)
        except ValueError:
            return
        if isinstance(payload, dict) and payload.get("command_id") == command_id:
            answer.update(payload)
            answered.set()

    def on_connect(
        _c: paho.Client, _u: object, _f: paho.ConnectFlags, rc: ReasonCode, _p: Properties | None
    ) -> None:
        if rc.is_failure:
            first.refused(rc)
        else:
            first.connected()

    client = make_client(broker, "centre-tool", MQTTProtocolVersion.MQTTv5)
    client.on_message = on_message
    client.on_connect = on_connect
    client.on_disconnect = lambda *_: first.lost()
    client.on_log = first.log
    client.on_subscribe = lambda *_: subscribed.set()
    first.open(client, timeout)
    try:
        client.subscribe(topics.command_response, qos=1)
        if not subscribed.wait(timeout):
            raise ToolError("the broker did not confirm the subscription to the response topic")
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = topics.command_response
        properties.CorrelationData = command_id.encode()
        info = client.publish(
            topics.command_request, json.dumps(request).encode(), qos=1, properties=properties
        )
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise ToolError("the broker did not acknowledge the command")
        if not answered.wait(timeout):
            return None
        return answer
    finally:
        client.disconnect()
        client.loop_stop()


def _unit_ids(values: list[str] | None) -> list[str]:
    try:
        return [validate_unit_id(value) for value in values or []]
    except InvalidUnitId as exc:
        raise ToolError(str(exc)) from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1e7:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("--count is at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dispenser-agent centre",
        description="response centre: keys, signed commands, a live view, unit availability",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    keygen = sub.add_parser("keygen", help="a new signing key; prints its public key")
    keygen.add_argument("--out", type=Path, required=True, help="the private key file to write")

    def command_options(p: argparse.ArgumentParser, required: bool) -> None:
        p.add_argument("--key", type=Path, required=required, help="the private key (PEM)")
        p.add_argument("--unit", required=True, help="the target unit's id")
        p.add_argument("--by", required=required, help="your operator id (never a name)")
        p.add_argument("--lifetime", type=_positive, default=60, help="minutes until it expires")
        p.add_argument("--id", help="the command id (default: a new UUID)")
        p.add_argument("command", nargs="?", help='JSON, @FILE or -, e.g. {"name": "resume"}')

    sign = sub.add_parser("sign", help="print a signed request")
    command_options(sign, True)
    send = sub.add_parser("send", help="sign (or take a signed request), publish, print the answer")
    command_options(send, False)
    send.add_argument("--signed", type=Path, help="a request signed before (JSON file)")
    add_broker_options(send)
    send.add_argument(
        "--timeout", type=_positive, default=30.0, help="seconds to wait for the answer"
    )

    watch = sub.add_parser("watch", help="a live view of one, several or all units")
    add_broker_options(watch)
    watch.add_argument(
        "--unit", action="append", help="a unit to watch (repeat it; default: every unit)"
    )
    watch.add_argument("--count", type=_count, help="stop after N messages shown")
    watch.add_argument("--for", dest="seconds", type=_positive, help="stop after SECONDS")
    watch.add_argument("--color", action="store_true", help="colour the priorities (ANSI)")
    watch.add_argument(
        "--timeout", type=_positive, default=10.0, help="seconds to wait for the broker"
    )

    units = sub.add_parser("units", help="availability at a glance, one line per unit")
    add_broker_options(units)
    units.add_argument("--unit", action="append", help="a unit to show (repeat it; default: all)")
    units.add_argument(
        "--wait",
        type=_positive,
        default=2.0,
        help="seconds to collect retained state (ends early once every --unit is complete)",
    )
    units.add_argument(
        "--timeout", type=_positive, default=10.0, help="seconds to wait for the broker"
    )
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)  # argparse: one line on stderr and exit 2 for bad usage
    try:
        return _dispatch(args)
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C while connecting or collecting: no traceback
        print("interrupted", file=sys.stderr)
        return EXIT_USAGE


def _signed_from_args(args: argparse.Namespace) -> dict[str, object]:
    if args.key is None or args.by is None or args.command is None:
        raise ToolError("give --key, --by and a COMMAND (or --signed FILE)")
    return build_request(
        read_command(args.command),
        unit_id=args.unit,
        issued_by=args.by,
        key=load_key(args.key),
        lifetime=timedelta(minutes=args.lifetime),
        command_id=args.id,
    )


class _StoppedError(Exception):
    """SIGTERM: end the way Ctrl-C does."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise _StoppedError


def watch(args: argparse.Namespace) -> int:
    """Print messages until Ctrl-C, SIGTERM, --count messages or --for seconds."""
    from agent.centre.live_view import LiveView

    broker = options_from_args(args)
    view = LiveView(broker, sys.stdout, args.color, units=_unit_ids(args.unit), notices=sys.stderr)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    reached = True
    try:
        try:
            view.open(args.timeout)
            view.subscribe_or_fail(args.timeout)
            if args.count is None:
                view.wait_for(lambda _lines: False, args.seconds)
            else:
                reached = view.wait_shown(args.count, args.seconds)
        finally:
            view.stop()  # after a failed open too: paho's thread may already run
    except (KeyboardInterrupt, _StoppedError):
        return EXIT_OK
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not reached:
        print(
            f"watch: {view.shown} of {args.count} messages in {args.seconds:g} s", file=sys.stderr
        )
        return EXIT_REFUSED
    return EXIT_OK


def units(args: argparse.Namespace) -> int:
    from agent.centre.units import collect, unit_lines

    broker = options_from_args(args)
    listed = _unit_ids(args.unit)
    seen = collect(broker, listed, args.wait, args.timeout)
    if not seen:
        print(f"no unit has retained state on {broker.address}", file=sys.stderr)
        return EXIT_REFUSED
    for line in unit_lines(seen):
        print(line)
    return EXIT_OK if all(state.online for state in seen.values()) else EXIT_REFUSED


def _dispatch(args: argparse.Namespace) -> int:
    if args.action == "keygen":
        key = generate_key(args.out)
        public = key.public_key()
        print(f"private key: {args.out} (keep it at the response centre; mode 0600)")
        print(f"public key:  {public_key_text(public)}   (a unit's config: centre_keys)")
        print(f"key id:      {key_id(public)}")
        return EXIT_OK
    if args.action == "watch":
        return watch(args)
    if args.action == "units":
        return units(args)
    if args.action == "sign":
        print(json.dumps(_signed_from_args(args), indent=2))
        return EXIT_OK
    broker = options_from_args(args)
    _unit_ids([args.unit])
    if args.signed is not None:
        try:
            request = json.loads(args.signed.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ToolError(f"{args.signed}: {exc}") from None
        if not isinstance(request, dict) or request.get("unit_id") != args.unit:
            raise ToolError(f"{args.signed} is not a request for unit {args.unit}")
    else:
        request = _signed_from_args(args)
    answer = send_request(broker, request, args.timeout)
    if answer is None:
        print(f"no answer from {args.unit} within {args.timeout:g} s", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(answer, indent=2))
    return EXIT_OK if answer.get("status") == "ok" else EXIT_REFUSED
