"""`dispenser-agent centre`: the response centre's operator tool.

dispenser-agent centre keygen --out FILE            a new Ed25519 key (PEM, mode 0600); prints
                                                    the public key for the units' centre_keys
dispenser-agent centre sign --key FILE --unit ID --by OPERATOR COMMAND
                                                    the signed request, ids and times filled in
dispenser-agent centre send --host H --port P --unit ID (--key FILE --by OPERATOR COMMAND |
                            --signed FILE) [--tls --ca-file F --username U --password-file F]
                                                    publish it and print the unit's answer

COMMAND is the `command` object as JSON (`{"name": "resume"}`), `@FILE`, or `-` for stdin.
A live view of many units and an availability overview are not here yet (the demo's live view is
in agent/demo/live_view.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.contract.commands import MAX_COMMAND_LIFETIME, CommandInvalid, parse_command
from agent.contract.signing import key_id, public_key_text, sign_request
from agent.contract.topics import UnitTopics

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


class ToolError(Exception):
    """A problem the operator can fix; printed as one line, exit 2."""


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
    descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    return key


def load_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ToolError(f"{path}: no such key file") from None
    except (ValueError, TypeError) as exc:
        raise ToolError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ToolError(f"{path}: not an Ed25519 key")
    return key


def read_command(text: str) -> dict[str, Any]:
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
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


def send_request(args: argparse.Namespace, request: dict[str, object]) -> dict[str, Any] | None:
    """Publish the request (MQTT 5, QoS 1) and wait for the unit's answer to its command id."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    unit_id = str(request.get("unit_id") or args.unit)
    topics = UnitTopics(unit_id)
    command_id = str(request["command_id"])
    answered = threading.Event()
    subscribed = threading.Event()
    answer: dict[str, Any] = {}

    def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        try:
            payload = json.loads(message.payload)
        except ValueError:
            return
        if isinstance(payload, dict) and payload.get("command_id") == command_id:
            answer.update(payload)
            answered.set()

    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"centre-tool-{uuid.uuid4().hex[:12]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    if args.username:
        password = None
        if args.password_file:
            password = Path(args.password_file).read_text(encoding="utf-8").strip()
        client.username_pw_set(args.username, password)
    if args.tls:
        client.tls_set(ca_certs=args.ca_file)
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    try:
        client.connect(args.host, args.port, keepalive=30)
    except OSError as exc:
        raise ToolError(f"cannot connect to {args.host}:{args.port}: {exc}") from None
    client.loop_start()
    try:
        client.subscribe(topics.command_response, qos=1)
        if not subscribed.wait(args.timeout):
            raise ToolError("the broker did not confirm the subscription to the response topic")
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = topics.command_response
        properties.CorrelationData = command_id.encode()
        info = client.publish(
            topics.command_request, json.dumps(request).encode(), qos=1, properties=properties
        )
        info.wait_for_publish(args.timeout)
        if not info.is_published():
            raise ToolError("the broker did not acknowledge the command")
        if not answered.wait(args.timeout):
            return None
        return answer
    finally:
        client.disconnect()
        client.loop_stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="dispenser-agent centre", description="response centre: keys, signed commands"
    )
    sub = parser.add_subparsers(dest="action", required=True)
    keygen = sub.add_parser("keygen", help="a new signing key; prints its public key")
    keygen.add_argument("--out", type=Path, required=True, help="the private key file to write")

    def command_options(p: argparse.ArgumentParser, required: bool) -> None:
        p.add_argument("--key", type=Path, required=required, help="the private key (PEM)")
        p.add_argument("--unit", required=True, help="the target unit's id")
        p.add_argument("--by", required=required, help="your operator id (never a name)")
        p.add_argument("--lifetime", type=float, default=60, help="minutes until it expires")
        p.add_argument("--id", help="the command id (default: a new UUID)")
        p.add_argument("command", nargs="?", help='JSON, @FILE or -, e.g. {"name": "resume"}')

    sign = sub.add_parser("sign", help="print a signed request")
    command_options(sign, True)
    send = sub.add_parser("send", help="sign (or take a signed request), publish, print the answer")
    command_options(send, False)
    send.add_argument("--signed", type=Path, help="a request signed before (JSON file)")
    send.add_argument("--host", default="127.0.0.1")
    send.add_argument("--port", type=int, default=1883)
    send.add_argument("--tls", action="store_true")
    send.add_argument("--ca-file", help="CA certificates for the broker (PEM)")
    send.add_argument("--username")
    send.add_argument("--password-file")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
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


def _dispatch(args: argparse.Namespace) -> int:
    if args.action == "keygen":
        key = generate_key(args.out)
        public = key.public_key()
        print(f"private key: {args.out} (keep it at the response centre; mode 0600)")
        print(f"public key:  {public_key_text(public)}   (a unit's config: centre_keys)")
        print(f"key id:      {key_id(public)}")
        return EXIT_OK
    if args.action == "sign":
        print(json.dumps(_signed_from_args(args), indent=2))
        return EXIT_OK
    if args.signed is not None:
        try:
            request = json.loads(args.signed.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ToolError(f"{args.signed}: {exc}") from None
        if not isinstance(request, dict) or request.get("unit_id") != args.unit:
            raise ToolError(f"{args.signed} is not a request for unit {args.unit}")
    else:
        request = _signed_from_args(args)
    answer = send_request(args, request)
    if answer is None:
        print(f"no answer from {args.unit} within {args.timeout:g} s", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(answer, indent=2))
    return EXIT_OK if answer.get("status") == "ok" else EXIT_REFUSED
