"""bleak and gpiozero are loaded only where used: a serial unit without GPIO never imports them.

A fresh interpreter builds the production daemon (agent.runtime.build_daemon) and its transport
for a serial dispenser with the panel off, and imports the CLI and the technician commands; what
it loaded is read from its sys.modules. bleak pulls in D-Bus (dbus_fast) and gpiozero probes pin
libraries at import: neither belongs in a process that has no use for them.
"""

from __future__ import annotations

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
