"""The stored state's recent DoseRetained reports (`retained_recently`): doses taken back into the
bin (with their slot) and sachets discarded (no slot), with the sachet index, so that the same
report re-sent to a restarted agent is a repeat (tests/test_engine_repeated_retained.py).
Validated on load like every other field; a state stored before the field existed loads without
it and is written back as it was."""

from __future__ import annotations

import json

import pytest
from test_engine_state import STORED_INITIAL, edited, put

from agent.engine.state import EngineState, RetainedDose, StateUnreadableError, restore
from agent.engine.types import Binding

RETAINED = RetainedDose(40, "2026-03-04T20:00", 11)
DISCARDED = RetainedDose(41, None, 12)
ENTRY = {"dispense_id": 40, "sachet_index": 11, "slot_id": "2026-03-04T20:00"}
DISCARD_ENTRY = {"dispense_id": 41, "sachet_index": 12, "slot_id": None}


def test_retained_doses_and_discards_are_stored_and_read_back() -> None:
    state = EngineState.from_json(edited(put("retained_recently", [ENTRY, DISCARD_ENTRY])))
    assert state.retained_recently == (RETAINED, DISCARDED)
    text = state.to_json()
    assert json.loads(text)["retained_recently"] == [ENTRY, DISCARD_ENTRY]
    assert EngineState.from_json(text) == state


def test_a_state_stored_before_the_field_loads_without_it_and_keeps_its_text() -> None:
    assert EngineState.from_json(STORED_INITIAL).retained_recently == ()
    assert "retained_recently" not in EngineState.initial().to_json()
    assert EngineState.from_json(STORED_INITIAL).to_json() == STORED_INITIAL


BAD = {
    "dispense id zero": [{**ENTRY, "dispense_id": 0}],
    "dispense id past u32": [{**ENTRY, "dispense_id": 2**32}],
    "sachet index past u16": [{**ENTRY, "sachet_index": 65536}],
    "negative sachet index": [{**ENTRY, "sachet_index": -1}],
    "sachet index as text": [{**ENTRY, "sachet_index": "11"}],
    "slot id no schedule makes": [{**ENTRY, "slot_id": "yesterday"}],
    "an unknown field": [{**ENTRY, "alert_id": "alert-000007"}],
    "no slot id": [{k: v for k, v in ENTRY.items() if k != "slot_id"}],
    "two with one dispense id": [ENTRY, {**DISCARD_ENTRY, "dispense_id": 40}],
    "more than the engine remembers": [
        {**ENTRY, "dispense_id": 100 + i, "slot_id": f"2026-03-{1 + i:02d}T08:00"}
        for i in range(17)
    ],
    "not a list": {"40": ENTRY},
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_damaged_retained_recently_is_refused_naming_the_field(name: str) -> None:
    with pytest.raises(StateUnreadableError) as refused:
        EngineState.from_json(edited(put("retained_recently", BAD[name])))
    assert "retained_recently" in refused.value.reason


def test_restore_reports_a_damaged_retained_recently_and_keeps_the_rest() -> None:
    restored = restore(edited(put("retained_recently", BAD["dispense id zero"])), [])
    assert restored.unreadable is not None
    assert "retained_recently" in restored.unreadable
    assert restored.state.retained_recently == ()
    assert restored.state.binding == Binding("p-7f3a")
    assert restored.state.next_dispense_id == 42


def test_as_many_as_the_engine_remembers_load() -> None:
    entries = [
        {**ENTRY, "dispense_id": 100 + i, "slot_id": f"2026-03-{1 + i:02d}T08:00"}
        for i in range(16)
    ]
    state = EngineState.from_json(edited(put("retained_recently", entries)))
    assert [d.dispense_id for d in state.retained_recently] == list(range(100, 116))
