"""The conformance kit (`hw.conform`) against the project's simulator on a real pty: the
simulator conforms; each deliberately broken variant (`hw.wire.DEFECTS`) fails on the clause it
breaks. Timing bounds are the spec's times SLACK (a loaded 2-core machine); every defect is far
beyond even the widened bound, so no verdict hangs on a near miss."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from ble_support import ble_bus, next_address, private_bus

from hw.ble import BleDispenser, PrivateBus
from hw.conform import BleByteLink, Kit, SerialByteLink, SimActuator, format_report, main
from hw.dispenser import DispenserIdentity, DispenserModel, make_roll
from hw.wire import DEFECTS, LATE_ACK_S, LATE_REPLY_S, SimulatorRunner

__all__ = ["ble_bus", "private_bus"]  # fixtures

SLACK = 5.0
# the roll: 5 sachets, so the first cut leaves 4 (LowSupply, SPEC 4.3)
SACHETS = 5

# the steps that reach each defect's clause (the handshake always runs)
STEPS = {
    "late_ack": ("duplicates",),
    "oversize_frame": ("corrupt",),
    "reused_session": ("reboot",),
    "no_resend": ("dispense",),
    "wrong_precedence": ("dispense",),
    "late_reply": ("dispense",),
}


def kit_run(tmp_path: Path, defects: frozenset[str], only: tuple[str, ...] = ()) -> list[str]:
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
    runner = SimulatorRunner.on_pty(model, tmp_path / "dispenser", defects=defects)
    runner.start()
    try:
        runner.call(
            lambda m: m.insert_roll(make_roll("R-KIT", "p-kit", 1_795_000_000, 3600, SACHETS))
        )
        link = SerialByteLink(runner.device_path)
        try:
            results = Kit(link, SimActuator(runner), slack=SLACK).run(only)
        finally:
            link.close()
    finally:
        runner.stop()
    report = list(format_report(results))
    print("\n".join(report))
    return report


@pytest.fixture
def clean_report(tmp_path: Path) -> list[str]:
    return kit_run(tmp_path, frozenset())


def test_the_simulator_conforms(clean_report: list[str]) -> None:
    assert clean_report[-1].startswith("CONFORMS"), "\n".join(clean_report)
    assert not [line for line in clean_report if line.startswith("SKIP")]
    for clause in ("1.1", "1.3", "2.1", "2.3", "2.4", "2.5", "2.7", "3.1", "3.4", "4.1", "4.2"):
        assert any(f"§{clause} " in line for line in clean_report if line.startswith("PASS"))
    for clause in ("4.3", "4.4", "4.5", "4.7", "4.9"):
        assert any(f"§{clause} " in line for line in clean_report if line.startswith("PASS"))


def test_every_defect_is_far_beyond_the_widened_bound() -> None:
    from hw.conform import ACK_DEADLINE_S, REPLY_DEADLINE_S

    assert LATE_ACK_S >= 2 * ACK_DEADLINE_S * SLACK
    assert LATE_REPLY_S >= 2 * REPLY_DEADLINE_S * SLACK
    assert set(STEPS) == set(DEFECTS)


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_each_broken_variant_fails_on_its_clause(tmp_path: Path, defect: str) -> None:
    report = kit_run(tmp_path, frozenset({defect}), STEPS[defect])
    failed = {line.split()[1].lstrip("§") for line in report if line.startswith("FAIL")}
    assert DEFECTS[defect] in failed, "\n".join(report)
    assert report[-1].startswith("DOES NOT CONFORM")


def test_the_command_line_prints_json_and_exits_0_on_a_conforming_unit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
    with SimulatorRunner.on_pty(model, tmp_path / "dispenser") as runner:
        code = main(["--device", runner.device_path, "--json", "--slack", "5", "--only", "nak"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {row["clause"] for row in rows if row["status"] == "pass"} >= {"2.4", "4.1", "1.1"}
    assert {row["status"] for row in rows} == {"pass"}


# --- over Bluetooth Low Energy: the same kit through the agent's BLE transport ------------------


def test_the_simulator_conforms_over_ble(ble_bus: PrivateBus) -> None:
    """bleak's real BlueZ backend against the simulator's BLE front on a private D-Bus bus: the
    kit's clauses hold over GATT too, the frames cut to the minimum MTU's pieces."""
    model = DispenserModel(DispenserIdentity(), rtc_utc_s=lambda: int(time.time()))
    front = BleDispenser(model, ble_bus.address, address=next_address())
    front.start()
    try:
        front.runner.call(
            lambda m: m.insert_roll(make_roll("R-KIT", "p-kit", 1_795_000_000, 3600, SACHETS))
        )
        link = BleByteLink(address=front.address, scan_timeout_s=3.0, connect_timeout_s=5.0)
        try:
            results = Kit(link, SimActuator(front.runner), slack=SLACK).run(("dispense",))
        finally:
            link.close()
    finally:
        front.stop()
    report = list(format_report(results))
    print("\n".join(report))
    assert report[-1].startswith("CONFORMS"), "\n".join(report)
    for clause in ("3.4", "4.1", "4.3", "4.4"):
        assert any(f"§{clause} " in line for line in report if line.startswith("PASS"))
