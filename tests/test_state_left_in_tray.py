"""The stored state's doses left in the tray (`left_in_tray`): settled dispense ids whose dose may
still lie in the tray, with their slot and sachet index, so that their removal after a restart is
recognised (tests/test_engine_left_in_tray.py). Validated on load like every other field; a state
stored before the field existed loads without it and is written back as it was."""

from __future__ import annotations

import json

import pytest
from test_engine_state import STORED_INITIAL, edited, put

from agent.engine.state import EngineState, LeftDose, StateUnreadableError, restore
from agent.engine.types import Binding

LEFT = LeftDose(40, "2026-03-04T20:00", 11, "alert-000007")
ENTRY = {
    "alert_id": "alert-000007",
    "dispense_id": 40,
    "sachet_index": 11,
    "slot_id": "2026-03-04T20:00",
}


def test_doses_left_in_the_tray_are_stored_and_read_back() -> None:
    state = EngineState.from_json(edited(put("left_in_tray", [ENTRY])))
    assert state.left_in_tray == (LEFT,)
    text = state.to_json()
    assert json.loads(text)["left_in_tray"] == [ENTRY]
    assert EngineState.from_json(text) == state
    unalerted = EngineState.from_json(edited(put("left_in_tray", [{**ENTRY, "alert_id": None}])))
    assert unalerted.left_in_tray == (LeftDose(40, "2026-03-04T20:00", 11, None),)


def test_a_state_stored_before_the_field_loads_without_it_and_keeps_its_text() -> None:
    assert EngineState.from_json(STORED_INITIAL).left_in_tray == ()
    assert "left_in_tray" not in EngineState.initial().to_json()
    assert EngineState.from_json(STORED_INITIAL).to_json() == STORED_INITIAL


TWO = [ENTRY, {**ENTRY, "slot_id": "2026-03-05T08:00", "sachet_index": 12}]
BAD = {
    "dispense id zero": [{**ENTRY, "dispense_id": 0}],
    "dispense id past u32": [{**ENTRY, "dispense_id": 2**32}],
    "sachet index past u16": [{**ENTRY, "sachet_index": 65536}],
    "sachet index as text": [{**ENTRY, "sachet_index": "11"}],
    "slot id no schedule makes": [{**ENTRY, "slot_id": "yesterday"}],
    "an unknown field": [{**ENTRY, "taken": True}],
    "no sachet index": [{k: v for k, v in ENTRY.items() if k != "sachet_index"}],
    "two with one dispense id": TWO,
    "more than the engine remembers": [
        {**ENTRY, "dispense_id": 100 + i, "slot_id": f"2026-03-{1 + i:02d}T08:00"}
        for i in range(17)
    ],
    "not a list": {"40": ENTRY},
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_damaged_left_in_tray_is_refused_naming_the_field(name: str) -> None:
    with pytest.raises(StateUnreadableError) as refused:
        EngineState.from_json(edited(put("left_in_tray", BAD[name])))
    assert "left_in_tray" in refused.value.reason


def test_restore_reports_a_damaged_left_in_tray_and_keeps_the_rest() -> None:
    restored = restore(edited(put("left_in_tray", BAD["sachet index past u16"])), [])
    assert restored.unreadable is not None
    assert "left_in_tray" in restored.unreadable
    assert restored.state.left_in_tray == ()
    assert restored.state.binding == Binding("p-7f3a")
    assert restored.state.next_dispense_id == 42
    good = restore(edited(put("left_in_tray", [ENTRY])), [])
    assert (good.unreadable, good.state.left_in_tray) == (None, (LEFT,))
