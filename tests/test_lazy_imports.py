"""What a unit does not use is not loaded: bleak and gpiozero only where used (a serial unit
without GPIO never imports them), cryptography and rfc8785 only when a signed command is checked,
the response-centre, simulation, demo and contract-generation code never; and the contract's
pydantic models are built on first use (an idle unit that got no command has built none of the
command models).

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


# cryptography and rfc8785 are needed only to check a signed command (agent/contract/signing.py);
# bleak (and its D-Bus) only by a BLE unit; gpiozero only where there is GPIO (this test's machine
# is given none: drivers.gpio_panel.DEV_DIR is an empty directory). The rest is never the unit's:
# the response centre's tools and FHIR converter, the simulator and the year-long simulation, the
# demo and its broker, the contract's document generator.
LAZY = (
    "cryptography",
    "rfc8785",
    "bleak",
    "dbus_fast",
    "gpiozero",
    "colorzero",
    "amqtt",
    "fhir",
    "agent.fhir",
    "agent.centre",
    "agent.simulation",
    "agent.demo",
    "agent.contract.generate",
    "hw",
)

CENTRE_KEY = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="  # RFC 8032 test 1's public key

IDLE_DAEMON = """
import asyncio, json, sys
from agent.cli import main  # the entry point's imports, as `dispenser-agent run` has them
from agent.config import parse_config
from agent.runtime import build_daemon
import drivers.gpio_panel

drivers.gpio_panel.DEV_DIR = sys.argv[2]  # a machine without GPIO device nodes
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
lazy = sys.argv[3:]
print(sorted(n for n in lazy if any(m == n or m.startswith(n + ".") for m in sys.modules)))
import agent.contract.commands as commands
from pydantic import BaseModel
models = [m for m in vars(commands).values() if isinstance(m, type) and issubclass(m, BaseModel)]
mine = [m for m in models if m.__module__ == commands.__name__]
built = [m.__name__ for m in mine if m.__pydantic_complete__]
print(sorted(built))
"""


def test_an_idle_daemon_has_not_imported_the_lazy_modules(tmp_path: Path) -> None:
    config = {
        "unit_id": "lazy-imports",
        "state_dir": str(tmp_path / "state"),
        "dispenser": {"device": str(tmp_path / "no-such-tty")},
        "mqtt": {"host": "127.0.0.1", "port": 9},  # discard port: refused at once
        "centre_keys": [CENTRE_KEY],
    }
    no_gpio = tmp_path / "dev"
    no_gpio.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", IDLE_DAEMON, json.dumps(config), str(no_gpio), *LAZY],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded, built = done.stdout.strip().splitlines()[-2:]
    assert loaded == "[]", f"an idle serial unit without GPIO loaded: {loaded}"
    assert built == "[]", f"command models built before any command arrived: {built}"
    assert "GPIO not available (no " in done.stderr  # said once, as before
