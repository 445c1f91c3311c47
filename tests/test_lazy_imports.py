"""What a unit does not use is not loaded: bleak and gpiozero only where used (a serial unit
without GPIO never imports them), cryptography and rfc8785 only when a signed command is checked.

A fresh interpreter builds the production daemon (agent.runtime.build_daemon) and its transport
for a serial dispenser with the panel off, and imports the CLI and the technician commands; what
it loaded is read from its sys.modules. bleak pulls in D-Bus (dbus_fast) and gpiozero probes pin
libraries at import: neither belongs in a process that has no use for them. No memory thresholds
here: the resident size is a benchmark figure (bench/idle.py), not a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CODE = """
import sys
from agent.config import parse_config
from agent.runtime import build_daemon, transport_factory
import agent.cli, agent.daemon, agent.technician.cli, drivers.session

config = parse_config({
    "unit_id": "serial-unit",
    "state_dir": sys.argv[1],
    "dispenser": {"device": "/dev/null"},
    "gpio": {"enabled": False},
})
build_daemon(config)
print(type(transport_factory(config.dispenser)()).__name__)
print(" ".join(sorted({m.split(".")[0] for m in sys.modules} & {"bleak", "gpiozero", "dbus_fast"})))
"""


def test_a_serial_unit_without_gpio_loads_neither_bleak_nor_gpiozero(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CODE, str(tmp_path / "state")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    transport, loaded = [*done.stdout.splitlines(), "", ""][:2]
    assert transport == "SerialTransport"
    assert loaded == "", f"loaded by a serial unit without GPIO: {loaded}"


# cryptography and rfc8785 are needed only to check a signed command (agent/contract/signing.py).
LAZY = ("cryptography", "rfc8785")

CENTRE_KEY = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="  # RFC 8032 test 1's public key

IDLE_DAEMON = """
import asyncio, json, sys
from agent.cli import main  # the entry point's imports, as `dispenser-agent run` has them
from agent.config import parse_config
from agent.runtime import build_daemon

config = parse_config(json.loads(sys.argv[1]), source="test")
daemon = build_daemon(config)

async def idle() -> None:
    task = asyncio.create_task(daemon.run())
    # until the daemon has tried the dispenser and the broker (both absent here)
    while daemon.mqtt.stats.connect_failures == 0 and not task.done():
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

asyncio.run(idle())
daemon.store.close()
print(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2:])))
"""


def test_an_idle_daemon_has_not_imported_the_lazy_modules(tmp_path: Path) -> None:
    config = {
        "unit_id": "lazy-imports",
        "state_dir": str(tmp_path / "state"),
        "dispenser": {"device": str(tmp_path / "no-such-tty")},
        "mqtt": {"host": "127.0.0.1", "port": 9},  # discard port: refused at once
        "centre_keys": [CENTRE_KEY],
    }
    done = subprocess.run(
        [sys.executable, "-c", IDLE_DAEMON, json.dumps(config), *LAZY],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
