"""The operator tool's connection to the response centre's broker: one set of options for every
sub-command (host, port, TLS with the centre's certificate, or a user and password file), and a
first connect that either succeeds or says in one line why not.

After the first connect paho's own thread keeps the connection up (it reconnects by itself); a
tool that must not wait for ever checks what it waits for with a timeout.
"""

from __future__ import annotations

import argparse
import ssl
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import LOOPBACK_HOSTS
from agent.mqtt.link import is_tls_failure

KEEPALIVE_S = 30
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 10


class ToolError(Exception):
    """A problem the operator can fix or must know about; printed as one line."""


@dataclass(frozen=True)
class BrokerOptions:
    """Where the broker is and who the tool is there."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    username: str | None = None
    password_file: Path | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def check(self) -> None:
        """Refuse combinations that cannot work or would leak a password."""
        if (self.client_cert is None) != (self.client_key is None):
            raise ToolError("--client-cert and --client-key go together")
        if not self.tls and (self.ca_file or self.client_cert):
            raise ToolError("--ca-file, --client-cert and --client-key need --tls")
        if self.password_file is not None and self.username is None:
            raise ToolError("--password-file needs --username")
        loopback = self.host in LOOPBACK_HOSTS or self.host.startswith("127.")
        if self.username is not None and not self.tls and not loopback:
            raise ToolError(
                f"refusing to send a password in plaintext to {self.host}; use --tls "
                "(the broker's certificate checked against --ca-file)"
            )


def add_broker_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("broker")
    group.add_argument("--host", default="127.0.0.1")
    group.add_argument("--port", type=int, help="default 8883 with --tls, else 1883")
    group.add_argument("--tls", action="store_true", help="TLS, checking the broker's certificate")
    group.add_argument("--ca-file", type=Path, help="CA certificates for the broker (PEM)")
    group.add_argument("--client-cert", type=Path, help="the centre's certificate (PEM)")
    group.add_argument("--client-key", type=Path, help="its private key (PEM)")
    group.add_argument("--username")
    group.add_argument("--password-file", type=Path, help="a file holding the password")


def options_from_args(args: argparse.Namespace) -> BrokerOptions:
    port = args.port if args.port is not None else (8883 if args.tls else 1883)
    if not 0 < port < 65536:
        raise ToolError(f"--port {port} is not a TCP port")
    options = BrokerOptions(
        host=args.host,
        port=port,
        tls=args.tls,
        ca_file=args.ca_file,
        client_cert=args.client_cert,
        client_key=args.client_key,
        username=args.username,
        password_file=args.password_file,
    )
    options.check()
    return options


def _tls_context(options: BrokerOptions) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(
            cafile=str(options.ca_file) if options.ca_file else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if options.client_cert is not None:
            context.load_cert_chain(options.client_cert, options.client_key)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        files = ", ".join(str(p) for p in (options.ca_file, options.client_cert) if p)
        raise ToolError(f"TLS files ({files or 'system CAs'}) not usable: {exc}") from None
    return context


def make_client(
    options: BrokerOptions, name: str, protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311
) -> paho.Client:
    """A paho client for `options` (not connected). 3.1.1 by default: every broker has it."""
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"{name}-{uuid.uuid4().hex[:12]}",
        protocol=protocol,
        # a viewer or a one-off command needs no stored session at the broker (MQTT 5 sets it
        # at connect: clean start, no session expiry, paho's defaults)
        clean_session=None if protocol == MQTTProtocolVersion.MQTTv5 else True,
    )
    client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
    if options.username is not None:
        password = None
        if options.password_file is not None:
            try:
                password = options.password_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ToolError(f"password file {options.password_file}: {exc}") from None
        client.username_pw_set(options.username, password)
    if options.tls:
        client.tls_set_context(_tls_context(options))
    return client


class FirstConnect:
    """Waits for the first CONNACK of a client whose callbacks belong to someone else: call
    `connected`, `refused` and `lost` from those callbacks, `log` from on_log."""

    def __init__(self, options: BrokerOptions) -> None:
        self._options = options
        self._settled = threading.Event()
        self._problem: str | None = None
        self._last_error: str | None = None  # paho's last error log line: a TLS refusal's text

    def log(self, _client: paho.Client, _userdata: object, level: int, text: str) -> None:
        if level == paho.MQTT_LOG_ERR:
            self._last_error = text

    def connected(self) -> None:
        self._settled.set()

    def refused(self, reason: ReasonCode) -> None:
        if not self._settled.is_set():
            self._problem = (
                f"the broker at {self._options.address} refused the connection: {reason}"
            )
            self._settled.set()

    def lost(self) -> None:
        if not self._settled.is_set():
            self._problem = self._describe(self._last_error or "the broker closed the connection")
            self._settled.set()

    def _describe(self, why: str | BaseException) -> str:
        tls = isinstance(why, BaseException) and is_tls_failure(why)
        tls = tls or (isinstance(why, str) and ("[SSL" in why or "(_ssl.c:" in why))
        if tls:
            return (
                f"TLS with {self._options.address} failed: {why} (check --ca-file, "
                "--client-cert/--client-key and that the broker knows this certificate)"
            )
        return f"cannot connect to {self._options.address}: {why}"

    def open(self, client: paho.Client, timeout: float) -> None:
        """Connect `client` now and start its network thread; ToolError if it is not connected
        within `timeout` seconds (the thread is then stopped)."""
        client.connect_timeout = timeout
        try:
            client.connect(self._options.host, self._options.port, keepalive=KEEPALIVE_S)
        except (OSError, ValueError) as exc:
            raise ToolError(self._describe(exc)) from None
        client.loop_start()
        if not self._settled.wait(timeout):
            self._problem = f"no answer from the broker at {self._options.address} in {timeout:g} s"
        if self._problem is not None:
            client.disconnect()
            client.loop_stop()
            raise ToolError(self._problem)
