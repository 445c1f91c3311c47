"""The local control socket: how a technician on site talks to the running daemon.

The daemon listens on a Unix socket in its state directory (`<state_dir>/control.sock`, mode
0600 in a 0700 directory: only the agent's own user, or root, can connect). One connection
carries one command: a `CommandRequest` JSON line in, the `CommandResponse` JSON line out, then
the connection closes. The daemon runs the request through the response centre's command path
(`CommandHandler.answer`: validation, at most once per command id, expiry, audit record, one
engine step in one transaction) with source `on_site`; only `LOCAL_COMMANDS` are accepted.

It needs no network: a technician at the patient's home can decide a plan mismatch while the
unit is offline (the decision's events reach the centre when the link is back).
`dispenser-agent plan ...` is the client (`send_local_command`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
ORIGIN = "local:" + SOCKET_NAME  # where a local command came from, in its audit record
MAX_REQUEST_BYTES = 64 * 1024
READ_TIMEOUT_S = 10.0  # a client that connects and sends nothing is dropped
CLIENT_TIMEOUT_S = 30.0  # the client gives up waiting for the daemon's answer

# answer(request line) -> the response JSON, once what the command did is committed; runs on the
# event loop, never raises
Answer = Callable[[bytes], Awaitable[str]]


class LocalCommandError(Exception):
    """The command could not be handed to the daemon (not running, no answer)."""


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


def refusal(code: str, message: str, status: str = "rejected") -> str:
    """An answer without a command id (the request's could not be read, or the unit failed)."""
    return json.dumps({"status": status, "error": {"code": code, "message": message}})


async def serve(path: Path, answer: Answer) -> None:
    """Listen until cancelled. A stale socket file from a previous run is replaced; a socket
    that cannot be made is logged and leaves the daemon running without it."""
    _remove(path)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
            if len(line) > MAX_REQUEST_BYTES:
                reply = refusal("invalid_command", f"request over {MAX_REQUEST_BYTES} bytes")
            else:
                reply = await answer(line.strip())
            writer.write(reply.encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError) as exc:
            log.info("local control: client dropped (%s)", type(exc).__name__)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    try:
        # not serving yet: no await between making the socket and `async with server` below,
        # so a cancel (a fault stops the daemon's workers at once) cannot leave it open
        server = await asyncio.start_unix_server(
            on_client, path=str(path), limit=MAX_REQUEST_BYTES + 2, start_serving=False
        )
        os.chmod(path, 0o600)
    except OSError as exc:
        log.error("local control socket %s not available: %s", path, exc)
        return
    try:
        async with server:
            await server.serve_forever()
    finally:
        _remove(path)


def _remove(path: Path) -> None:
    """A socket file is a name only: removing it is instant (no blocking I/O to speak of)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def send_local_command(
    path: Path, request: bytes, timeout_s: float = CLIENT_TIMEOUT_S
) -> dict[str, object]:
    """The client: hand one request (one JSON line) to the daemon, return its parsed answer."""
    if b"\n" in request:
        raise ValueError("a local request is one line of JSON")
    chunks: list[bytes] = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(timeout_s)
            client.connect(str(path))
            client.sendall(request + b"\n")
            while chunk := client.recv(65536):
                chunks.append(chunk)
    except FileNotFoundError:
        raise LocalCommandError(f"{path} does not exist: is the agent running?") from None
    except ConnectionRefusedError:
        raise LocalCommandError(f"nothing listens on {path}: is the agent running?") from None
    except TimeoutError:
        raise LocalCommandError(f"no answer from the agent within {timeout_s:g} s") from None
    data = b"".join(chunks)
    try:
        reply = json.loads(data)
    except ValueError:
        raise LocalCommandError(f"unreadable answer from the agent: {data[:200]!r}") from None
    if not isinstance(reply, dict):
        raise LocalCommandError(f"unexpected answer from the agent: {reply!r:.200}")
    return reply


LOCAL_COMMAND_LIFETIME = timedelta(minutes=10)


def local_request(name: str, by: str, **fields: object) -> bytes:
    """A command for the local control socket, issued now and valid for ten minutes."""
    issued = datetime.now(UTC)
    return json.dumps(
        {
            "command_id": str(uuid.uuid4()),
            "issued_at": issued.isoformat(),
            "expires_at": (issued + LOCAL_COMMAND_LIFETIME).isoformat(),
            "issued_by": by,
            "command": {"name": name, **fields},
        }
    ).encode()
