"""The stored state's small lists of recent doses, one test set for each:

- `left_in_tray`: settled dispense ids whose dose may still lie in the tray (slot, sachet index,
  the alert it raised), so that their removal after a restart is recognised
  (tests/test_engine_left_in_tray.py);
- `taken_recently`: settled dispense ids whose DoseTaken was handled (slot, sachet index), so that
  the same report re-sent to a restarted agent is a repeat (tests/test_engine_repeated_taken.py);
- `retained_recently`: the DoseRetained reports handled, doses taken back into the bin (with
  their slot) and sachets discarded (no slot), with the sachet index, so that the same report
  re-sent to a restarted agent is a repeat (tests/test_engine_repeated_retained.py).

Each is validated on load like every other field (a damaged one is refused naming the field, and
a restore keeps the rest of the state); a state stored before the field existed loads without it
and is written back as it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from test_engine_state import STORED_INITIAL, edited, put

from agent.engine.state import (
    EngineState,
    LeftDose,
    RetainedDose,
    StateUnreadableError,
    TakenDose,
    restore,
)
from agent.engine.types import Binding


@dataclass(frozen=True)
class StoredList:
    entry: dict[str, object]  # one stored element, as JSON
    record: object  # what the engine reads it as
    unknown_key: str  # a key the element must not have


LISTS = {
    "left_in_tray": StoredList(
        {
            "alert_id": "alert-000007",
            "dispense_id": 40,
            "sachet_index": 11,
            "slot_id": "2026-03-04T20:00",
        },
        LeftDose(40, "2026-03-04T20:00", 11, "alert-000007"),
        "taken",
    ),
    "taken_recently": StoredList(
        {"dispense_id": 40, "sachet_index": 11, "slot_id": "2026-03-04T20:00"},
        TakenDose(40, "2026-03-04T20:00", 11),
        "alert_id",
    ),
    "retained_recently": StoredList(
        {"dispense_id": 40, "sachet_index": 11, "slot_id": "2026-03-04T20:00"},
        RetainedDose(40, "2026-03-04T20:00", 11),
        "alert_id",
    ),
}


def damaged(field: str) -> dict[str, object]:
    """Stored values of `field` that must be refused, by what is wrong with them."""
    entry = LISTS[field].entry
    return {
        "dispense id zero": [{**entry, "dispense_id": 0}],
        "dispense id past u32": [{**entry, "dispense_id": 2**32}],
        "sachet index past u16": [{**entry, "sachet_index": 65536}],
        "negative sachet index": [{**entry, "sachet_index": -1}],
        "sachet index as text": [{**entry, "sachet_index": "11"}],
        "slot id no schedule makes": [{**entry, "slot_id": "yesterday"}],
        "an unknown field": [{**entry, LISTS[field].unknown_key: True}],
        "no sachet index": [{k: v for k, v in entry.items() if k != "sachet_index"}],
        "no slot id": [{k: v for k, v in entry.items() if k != "slot_id"}],
        "two with one dispense id": [
            entry,
            {**entry, "slot_id": "2026-03-05T08:00", "sachet_index": 12},
        ],
        "more than the engine remembers": [
            {**entry, "dispense_id": 100 + i, "slot_id": f"2026-03-{1 + i:02d}T08:00"}
            for i in range(17)
        ],
        "not a list": {"40": entry},
    }


DAMAGES = list(damaged("taken_recently"))


@pytest.mark.parametrize("field", list(LISTS))
def test_the_list_is_stored_and_read_back(field: str) -> None:
    stored = LISTS[field]
    state = EngineState.from_json(edited(put(field, [stored.entry])))
    assert getattr(state, field) == (stored.record,)
    text = state.to_json()
    assert json.loads(text)[field] == [stored.entry]
    assert EngineState.from_json(text) == state


def test_a_dose_left_in_the_tray_without_an_alert_is_read_back() -> None:
    entry = {**LISTS["left_in_tray"].entry, "alert_id": None}
    state = EngineState.from_json(edited(put("left_in_tray", [entry])))
    assert state.left_in_tray == (LeftDose(40, "2026-03-04T20:00", 11, None),)


def test_a_dose_left_in_the_tray_seen_presented_is_read_back_and_unseen_keeps_its_text() -> None:
    """`presented` (its DosePresented handled: the same report again is a repeat) is stored when
    true; false, it is left out, so a state stored before it was kept is written back as it was."""
    seen = {**LISTS["left_in_tray"].entry, "presented": True}
    state = EngineState.from_json(edited(put("left_in_tray", [seen])))
    assert state.left_in_tray == (LeftDose(40, "2026-03-04T20:00", 11, "alert-000007", True),)
    assert json.loads(state.to_json())["left_in_tray"] == [seen]
    unseen = EngineState.from_json(edited(put("left_in_tray", [LISTS["left_in_tray"].entry])))
    assert unseen.left_in_tray[0].presented is False
    assert json.loads(unseen.to_json())["left_in_tray"] == [LISTS["left_in_tray"].entry]
    with pytest.raises(StateUnreadableError, match="left_in_tray"):
        EngineState.from_json(edited(put("left_in_tray", [{**seen, "presented": "yes"}])))


def test_a_discard_retained_has_no_slot_and_is_read_back() -> None:
    discard = {"dispense_id": 41, "sachet_index": 12, "slot_id": None}
    entries = [LISTS["retained_recently"].entry, discard]
    state = EngineState.from_json(edited(put("retained_recently", entries)))
    assert state.retained_recently == (
        RetainedDose(40, "2026-03-04T20:00", 11),
        RetainedDose(41, None, 12),
    )
    assert json.loads(state.to_json())["retained_recently"] == entries


@pytest.mark.parametrize("field", list(LISTS))
def test_as_many_as_the_engine_remembers_load(field: str) -> None:
    entries = [
        {**LISTS[field].entry, "dispense_id": 100 + i, "slot_id": f"2026-03-{1 + i:02d}T08:00"}
        for i in range(16)
    ]
    state = EngineState.from_json(edited(put(field, entries)))
    assert [record.dispense_id for record in getattr(state, field)] == list(range(100, 116))


@pytest.mark.parametrize("field", list(LISTS))
def test_a_state_stored_before_the_field_loads_without_it_and_keeps_its_text(field: str) -> None:
    assert getattr(EngineState.from_json(STORED_INITIAL), field) == ()
    assert field not in EngineState.initial().to_json()
    assert EngineState.from_json(STORED_INITIAL).to_json() == STORED_INITIAL


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("field", list(LISTS))
def test_a_damaged_list_is_refused_naming_the_field(field: str, damage: str) -> None:
    with pytest.raises(StateUnreadableError) as refused:
        EngineState.from_json(edited(put(field, damaged(field)[damage])))
    assert field in refused.value.reason


@pytest.mark.parametrize("field", list(LISTS))
def test_restore_reports_a_damaged_list_and_keeps_the_rest(field: str) -> None:
    restored = restore(edited(put(field, damaged(field)["sachet index past u16"])), [])
    assert restored.unreadable is not None
    assert field in restored.unreadable
    assert getattr(restored.state, field) == ()
    assert restored.state.binding == Binding("p-7f3a")
    assert restored.state.next_dispense_id == 42
    good = restore(edited(put(field, [LISTS[field].entry])), [])
    assert (good.unreadable, getattr(good.state, field)) == (None, (LISTS[field].record,))
