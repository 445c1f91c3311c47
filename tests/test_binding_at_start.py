"""Binding and schedule from the config at start (issue 9, reproduced defects): a config naming
another patient than the bound one, and a schedule edited without a version step, are neither
obeyed nor ignored silently. In doubt the unit unbinds (nothing is dispensed) and says why."""

from __future__ import annotations

import json
from pathlib import Path

from e2e_support import PATIENT, write_config
from test_engine import RIG_START

from agent.clock import VirtualClock
from agent.config import load_config
from agent.daemon import BINDING_MISMATCH_KEY, TECHNICIAN_BINDING_KEY, Daemon
from agent.runtime import unit_edges
from agent.store.db import Store

TYPO = "p-e2e-0O01"


def start(
    tmp_path: Path,
    *,
    patient: str = PATIENT,
    times: tuple[str, ...] = ("08:00", "20:00"),
) -> tuple[Daemon, list[dict[str, object]]]:
    path = write_config(
        tmp_path, unit_id="u-1", broker_port=1, device=tmp_path / "tty", times=times
    )
    raw = json.loads(path.read_text())
    raw["patient_ref"] = patient
    path.write_text(json.dumps(raw))
    config = load_config(path)
    config.state_dir.mkdir(exist_ok=True)
    store = Store.open(config.db_path)
    before = store.last_event_seq()
    daemon = Daemon(
        config,
        clock=VirtualClock(RIG_START),
        store=store,
        edges=unit_edges(config),
    )
    daemon._record_startup()
    events = [{"kind": e.kind, **e.payload} for e in store.events_from(before + 1)]
    return daemon, events


def bound(daemon: Daemon) -> str | None:
    binding = daemon.engine.state.binding
    return None if binding is None else binding.patient_ref


def test_a_config_naming_another_patient_unbinds_and_alerts_until_resolved(
    tmp_path: Path,
) -> None:
    first, _ = start(tmp_path, patient=TYPO)  # installed with a typo
    assert bound(first) == TYPO
    first.store.close()
    # the technician fixes the typo in the config: the unit does not silently keep refusing
    # every roll as another patient's, nor silently rebind: it unbinds and says why
    second, events = start(tmp_path)
    assert bound(second) is None
    [mismatch] = [e for e in events if e["kind"] == "binding_mismatch"]
    assert mismatch["priority"] == "high"
    assert mismatch["vkp_code"] == "3.4"
    assert PATIENT not in json.dumps(events)
    assert TYPO not in json.dumps(events)
    assert {"kind": "binding_changed"}.items() <= next(
        e for e in events if e["kind"] == "binding_changed"
    ).items()
    second.store.close()
    # a restart does not bind the config's patient quietly: still unbound, said again
    third, events = start(tmp_path)
    assert bound(third) is None
    assert [e["kind"] for e in events].count("binding_mismatch") == 1
    third.store.close()
    # the technician resolves it on site (dispenser-agent rebind writes this key)
    with Store.open(tmp_path / "state" / "agent.sqlite3") as store, store.transaction():
        store.set_kv(TECHNICIAN_BINDING_KEY, json.dumps({"patient_ref": PATIENT}))
    fourth, events = start(tmp_path)
    assert bound(fourth) == PATIENT
    assert "binding_mismatch" not in [e["kind"] for e in events]
    assert fourth.store.get_kv(TECHNICIAN_BINDING_KEY) is None
    assert fourth.store.get_kv(BINDING_MISMATCH_KEY) is None
    fourth.store.close()


def test_the_config_naming_the_bound_patient_again_ends_the_mismatch(tmp_path: Path) -> None:
    start(tmp_path)[0].store.close()
    start(tmp_path, patient=TYPO)[0].store.close()
    back, events = start(tmp_path)
    assert bound(back) == PATIENT
    assert "binding_mismatch" not in [e["kind"] for e in events]
    back.store.close()


def test_a_schedule_edit_without_a_version_step_is_reported(tmp_path: Path) -> None:
    start(tmp_path)[0].store.close()
    daemon, events = start(tmp_path, times=("09:00", "21:00"))
    [ignored] = [e for e in events if e["kind"] == "schedule_edit_ignored"]
    assert ignored["data"] == {"config_version": 1, "version_in_effect": 1}
    assert daemon.engine.state.schedule is not None
    daemon.store.close()
    same, events = start(tmp_path)  # the config as installed: nothing to say
    assert "schedule_edit_ignored" not in [e["kind"] for e in events]
    same.store.close()
