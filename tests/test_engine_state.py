"""The engine's persisted state: its JSON form and what loading it promises.

`STORED_BEFORE_PYDANTIC` were written by the hand-written encoder the pydantic boundary model
replaced (captured from it before the change, every field set): a unit that stored them must load
them after an upgrade, and write them back byte for byte. `STORED_BY_BF18F4B` and
`STORED_BY_9520937` are older still: they load with what came later at its defaults.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from test_engine import PATIENT, Rig, daily, utc

from agent.engine.alerts import LatchedAlert
from agent.engine.schedule import parse_time
from agent.engine.state import (
    DiscardDecision,
    EngineState,
    OpenSlot,
    Restored,
    RollInfo,
    SettledSlot,
    StateUnreadableError,
    UnplannedHold,
    restore,
)
from agent.engine.types import (
    AcknowledgeAlert,
    Binding,
    LinkUp,
    PauseWindow,
    Priority,
    StateUnreadable,
)
from protocol.messages import AlertPattern, Dispense

# Written by the hand-written encoder of commit 8792a30 (agent/engine/state.py, _state_to_dict +
# json.dumps), every field set; then the initial state and a roll only seen in a Status.
STORED_FULL = (
    '{"binding":{"patient_ref":"p-7f3a"},"discard_decisions":[{"by":"operator-0042",'
    '"roll_id":"R-1","sachet_index":12,"source":"centre"},{"by":"tech-7","roll_id":"R-1",'
    '"sachet_index":null,"source":"on_site"}],"extra":{"last_link_down_reason":"eof"},'
    '"horizon_utc":"2026-03-05T07:00:00+00:00","last_intake_utc":"2026-03-04T19:02:30+00:00",'
    '"latched_alerts":[{"acknowledged_at":"2026-03-04T09:00:00+00:00",'
    '"acknowledged_by":"nurse-1","alert_id":"alert-000007","kind":"dose_missed",'
    '"raised_at":"2026-03-04T08:00:00+00:00","resolved":true},{"acknowledged_at":null,'
    '"acknowledged_by":null,"alert_id":"alert-000009","kind":"wrong_roll",'
    '"raised_at":"2026-03-05T06:00:00+00:00","resolved":false}],"locked_by_agent":true,'
    '"next_alert_seq":10,"next_dispense_id":42,"open_slots":[{"dispense_id":41,'
    '"due_utc":"2026-03-05T07:00:00+00:00","presented_utc":"2026-03-05T07:00:05+00:00",'
    '"roll_id":"R-1","sachet_index":12,"slot_id":"2026-03-05T08:00"},{"dispense_id":40,'
    '"due_utc":"2026-03-05T19:00:00+00:00","presented_utc":null,"roll_id":null,'
    '"sachet_index":11,"slot_id":"2026-03-05T20:00"}],"pauses":[{"end_notice_sent":true,'
    '"end_utc":"2026-03-12T18:00:00+00:00","pause_id":"pz-1","reason":"travel",'
    '"reminders_sent":0,"start_utc":"2026-03-10T06:00:00+00:00","take_along":true,'
    '"travel_dispensed":2},{"end_notice_sent":false,"end_utc":null,"pause_id":"pz-2",'
    '"reason":"hospital","reminders_sent":3,"start_utc":"2026-03-20T06:00:00+00:00",'
    '"take_along":false,"travel_dispensed":0}],"raised_conditions":["low_supply","lid_open"],'
    '"roll":{"expiry_utc_s":1777400000,"first_dose_utc_s":1772348400,'
    '"last_dose_utc_s":1774720800,"next_index":13,"patient_ref":"p-7f3a","roll_id":"R-1",'
    '"sachet_count":28,"unverified":false},"schedule":{"min_interval_s":10800.0,'
    '"rules":[{"effective_from":"2026-03-01","times":["08:00","20:00"],'
    '"weekday_times":{"6":["10:00"]}},{"effective_from":"2026-04-01","times":["07:30"],'
    '"weekday_times":{}}],"zone":"Europe/Oslo"},"schedule_version":3,'
    '"settled":[{"due_utc":"2026-03-05T19:00:00+00:00","slot_id":"2026-03-05T20:00"}],'
    '"starts":5,"unplanned":{"alert_id":"alert-000009","intended_utc_s":1772773200,'
    '"roll_id":"R-1","sachet_index":13}}'
)
STORED_INITIAL = (
    '{"binding":null,"discard_decisions":[],"extra":{},"horizon_utc":null,'
    '"last_intake_utc":null,"latched_alerts":[],"locked_by_agent":false,"next_alert_seq":1,'
    '"next_dispense_id":1,"open_slots":[],"pauses":[],"raised_conditions":[],"roll":null,'
    '"schedule":null,"schedule_version":0,"settled":[],"starts":0,"unplanned":null}'
)
STORED_UNVERIFIED_ROLL = (
    '{"binding":null,"discard_decisions":[],"extra":{},"horizon_utc":null,'
    '"last_intake_utc":null,"latched_alerts":[],"locked_by_agent":false,"next_alert_seq":1,'
    '"next_dispense_id":1,"open_slots":[],"pauses":[],"raised_conditions":[],'
    '"roll":{"expiry_utc_s":0,"first_dose_utc_s":0,"last_dose_utc_s":0,"next_index":0,'
    '"patient_ref":"","roll_id":"R9","sachet_count":0,"unverified":true},"schedule":null,'
    '"schedule_version":0,"settled":[],"starts":0,"unplanned":null}'
)
# Written by the encoder of commit bf18f4b, before plan-mismatch holds and decisions existed.
STORED_BY_BF18F4B = (
    '{"binding":{"patient_ref":"p-7f3a"},"extra":{"last_link_down_reason":"eof"},'
    '"horizon_utc":"2026-03-05T07:00:00+00:00","last_intake_utc":"2026-03-04T19:02:30+00:00",'
    '"latched_alerts":[{"acknowledged_at":"2026-03-04T09:00:00+00:00",'
    '"acknowledged_by":"nurse-1","alert_id":"alert-000007","kind":"dose_missed",'
    '"raised_at":"2026-03-04T08:00:00+00:00","resolved":true},{"acknowledged_at":null,'
    '"acknowledged_by":null,"alert_id":"alert-000009","kind":"wrong_roll",'
    '"raised_at":"2026-03-05T06:00:00+00:00","resolved":false}],"locked_by_agent":true,'
    '"next_alert_seq":10,"next_dispense_id":42,"open_slots":[{"dispense_id":41,'
    '"due_utc":"2026-03-05T07:00:00+00:00","presented_utc":"2026-03-05T07:00:05+00:00",'
    '"roll_id":"R-1","sachet_index":12,"slot_id":"2026-03-05T08:00"},{"dispense_id":40,'
    '"due_utc":"2026-03-05T19:00:00+00:00","presented_utc":null,"roll_id":null,'
    '"sachet_index":11,"slot_id":"2026-03-05T20:00"}],"pauses":[{"end_notice_sent":true,'
    '"end_utc":"2026-03-12T18:00:00+00:00","pause_id":"pz-1","reason":"travel",'
    '"reminders_sent":0,"start_utc":"2026-03-10T06:00:00+00:00","take_along":true,'
    '"travel_dispensed":2},{"end_notice_sent":false,"end_utc":null,"pause_id":"pz-2",'
    '"reason":"hospital","reminders_sent":3,"start_utc":"2026-03-20T06:00:00+00:00",'
    '"take_along":false,"travel_dispensed":0}],"raised_conditions":["low_supply","lid_open"],'
    '"roll":{"expiry_utc_s":1777400000,"first_dose_utc_s":1772348400,'
    '"last_dose_utc_s":1774720800,"next_index":13,"patient_ref":"p-7f3a","roll_id":"R-1",'
    '"sachet_count":28,"unverified":false},"schedule":{"min_interval_s":10800.0,'
    '"rules":[{"effective_from":"2026-03-01","times":["08:00","20:00"],'
    '"weekday_times":{"6":["10:00"]}},{"effective_from":"2026-04-01","times":["07:30"],'
    '"weekday_times":{}}],"zone":"Europe/Oslo"},"schedule_version":3,'
    '"settled":[{"due_utc":"2026-03-05T19:00:00+00:00","slot_id":"2026-03-05T20:00"}],'
    '"starts":5}'
)
# Written by the encoder of commit 9520937, before pause duties and the minimum interval existed.
STORED_BY_9520937 = (
    '{"binding":{"patient_ref":"p-7f3a"},"extra":{"last_link_down_reason":"eof"},'
    '"horizon_utc":"2026-03-05T07:00:00+00:00","latched_alerts":[{"acknowledged_at":'
    '"2026-03-04T09:00:00+00:00","acknowledged_by":"nurse-1","alert_id":"alert-000007",'
    '"kind":"dose_missed","raised_at":"2026-03-04T08:00:00+00:00","resolved":true},'
    '{"acknowledged_at":null,"acknowledged_by":null,"alert_id":"alert-000009","kind":'
    '"wrong_roll","raised_at":"2026-03-05T06:00:00+00:00","resolved":false}],'
    '"locked_by_agent":true,"next_alert_seq":10,"next_dispense_id":42,"open_slots":'
    '[{"dispense_id":41,"due_utc":"2026-03-05T07:00:00+00:00","presented_utc":'
    '"2026-03-05T07:00:05+00:00","roll_id":"R-1","sachet_index":12,"slot_id":'
    '"2026-03-05T08:00"},{"dispense_id":40,"due_utc":"2026-03-05T19:00:00+00:00",'
    '"presented_utc":null,"roll_id":null,"sachet_index":11,"slot_id":"2026-03-05T20:00"}],'
    '"pauses":[{"end_utc":"2026-03-12T18:00:00+00:00","pause_id":"pz-1","start_utc":'
    '"2026-03-10T06:00:00+00:00"},{"end_utc":null,"pause_id":"pz-2","start_utc":'
    '"2026-03-20T06:00:00+00:00"}],"raised_conditions":["low_supply","lid_open"],"roll":'
    '{"expiry_utc_s":1777400000,"first_dose_utc_s":1772348400,"last_dose_utc_s":1774720800,'
    '"next_index":13,"patient_ref":"p-7f3a","roll_id":"R-1","sachet_count":28,'
    '"unverified":false},"schedule":{"rules":[{"effective_from":"2026-03-01","times":'
    '["08:00","20:00"],"weekday_times":{"6":["10:00"]}},{"effective_from":"2026-04-01",'
    '"times":["07:30"],"weekday_times":{}}],"zone":"Europe/Oslo"},"schedule_version":3,'
    '"settled":[{"due_utc":"2026-03-05T19:00:00+00:00","slot_id":"2026-03-05T20:00"}],'
    '"starts":5}'
)
STORED_BEFORE_PYDANTIC = (STORED_FULL, STORED_INITIAL, STORED_UNVERIFIED_ROLL)


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, second, tzinfo=UTC)


def test_a_state_stored_by_the_old_encoder_loads_with_every_field() -> None:
    state = EngineState.from_json(STORED_FULL)
    assert state.binding == Binding("p-7f3a")
    assert state.schedule is not None
    assert state.schedule.zone == "Europe/Oslo"
    first, second = state.schedule.rules
    assert first.effective_from == date(2026, 3, 1)
    assert first.times == (parse_time("08:00"), parse_time("20:00"))
    assert dict(first.weekday_times) == {6: (parse_time("10:00"),)}
    assert (second.effective_from, second.times) == (date(2026, 4, 1), (parse_time("07:30"),))
    assert state.schedule.min_interval == timedelta(hours=3)
    assert state.schedule_version == 3
    assert state.pauses == (
        PauseWindow("pz-1", at(10, 6), at(12, 18), "travel", True, 0, True, 2),
        PauseWindow("pz-2", at(20, 6), None, "hospital", False, 3, False, 0),
    )
    assert state.last_intake_utc == datetime(2026, 3, 4, 19, 2, 30, tzinfo=UTC)
    assert state.horizon_utc == at(5, 7)
    assert state.next_dispense_id == 42
    assert state.latched_alerts == (
        LatchedAlert(
            "alert-000007",
            "dose_missed",
            "2026-03-04T08:00:00+00:00",
            "nurse-1",
            "2026-03-04T09:00:00+00:00",
            resolved=True,
        ),
        LatchedAlert("alert-000009", "wrong_roll", "2026-03-05T06:00:00+00:00"),
    )
    assert state.open_slots == (
        OpenSlot("2026-03-05T08:00", 41, 12, at(5, 7), at(5, 7, 0, 5), "R-1"),
        OpenSlot("2026-03-05T20:00", 40, 11, at(5, 19), None, None),
    )
    assert state.settled == (SettledSlot("2026-03-05T20:00", at(5, 19)),)
    assert state.roll == RollInfo(
        "R-1", "p-7f3a", 28, 13, 1772348400, 1774720800, 1777400000, unverified=False
    )
    assert state.raised_conditions == ("low_supply", "lid_open")
    assert state.locked_by_agent is True
    assert state.next_alert_seq == 10
    assert state.starts == 5
    assert state.unplanned == UnplannedHold("R-1", 13, 1772773200, "alert-000009")
    assert state.discard_decisions == (
        DiscardDecision("R-1", 12, "operator-0042", "centre"),
        DiscardDecision("R-1", None, "tech-7", "on_site"),
    )
    assert state.horizon_utc is not None
    assert state.horizon_utc.tzinfo is UTC  # the engine compares and formats UTC datetimes


def test_a_state_stored_before_plan_mismatch_holds_loads() -> None:
    state = EngineState.from_json(STORED_BY_BF18F4B)
    assert (state.unplanned, state.discard_decisions) == (None, ())
    assert state.pauses[0] == PauseWindow("pz-1", at(10, 6), at(12, 18), "travel", True, 0, True, 2)
    assert state.last_intake_utc == datetime(2026, 3, 4, 19, 2, 30, tzinfo=UTC)
    assert state.binding == Binding("p-7f3a")


def test_a_state_stored_before_pause_duties_and_the_minimum_interval_loads() -> None:
    state = EngineState.from_json(STORED_BY_9520937)
    assert state.pauses == (
        PauseWindow("pz-1", at(10, 6), at(12, 18), "other", False, 0, False, 0),
        PauseWindow("pz-2", at(20, 6), None, "other", False, 0, False, 0),
    )
    assert state.last_intake_utc is None
    assert state.schedule is not None
    assert state.schedule.min_interval is None  # the schedule's default
    assert state.binding == Binding("p-7f3a")
    assert state.next_dispense_id == 42


def test_the_initial_and_an_unverified_roll_state_load() -> None:
    assert EngineState.from_json(STORED_INITIAL) == EngineState.initial()
    roll = EngineState.from_json(STORED_UNVERIFIED_ROLL).roll
    assert roll == RollInfo("R9", "", 0, 0, 0, 0, 0, unverified=True)


@pytest.mark.parametrize("stored", STORED_BEFORE_PYDANTIC)
def test_a_stored_state_is_written_back_byte_for_byte(stored: str) -> None:
    # but for what `extra` held (nothing reads it any more): dropped once, then the text stays
    expected = stored.replace('"extra":{"last_link_down_reason":"eof"}', '"extra":{}')
    written = EngineState.from_json(stored).to_json()
    assert written == expected
    assert EngineState.from_json(written).to_json() == written


# --- validated load: what cannot be read is refused with a reason, never an exception elsewhere --

U64_MAX = 2**64 - 1


def edited(change: Callable[[dict[str, Any]], None]) -> str:
    document: dict[str, Any] = json.loads(STORED_FULL)
    change(document)
    return json.dumps(document)


def put(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """Set the value at a dotted path ("roll.expiry_utc_s", "open_slots.0.dispense_id")."""

    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = document
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return change


def both(*changes: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        for one in changes:
            one(document)

    return change


UNREADABLE = {
    "empty text": ("", "invalid json"),
    "truncated JSON": (STORED_FULL[: len(STORED_FULL) // 2], "invalid json"),
    "not an object": ("[1, 2, 3]", "input should be an object"),
    "a number as text": (edited(put("next_dispense_id", "42")), "next_dispense_id"),
    "a bool as a number": (edited(put("locked_by_agent", 1)), "locked_by_agent"),
    "a float counter": (edited(put("next_alert_seq", 10.0)), "next_alert_seq"),
    "roll time past u64": (edited(put("roll.expiry_utc_s", U64_MAX + 1)), "roll.expiry_utc_s"),
    "negative roll time": (edited(put("roll.first_dose_utc_s", -1)), "roll.first_dose_utc_s"),
    "a date past year 9999": (
        edited(put("horizon_utc", "10000-01-01T00:00:00+00:00")),
        "horizon_utc",
    ),
    "year 9999 west of UTC (overflows into year 10000)": (
        edited(put("open_slots.0.due_utc", "9999-12-31T23:00:00-05:00")),
        "open_slots.0.due_utc",
    ),
    "a time past year 3000 (no room for the engine's arithmetic)": (
        edited(put("settled.0.due_utc", "9999-12-31T00:00:00+00:00")),
        "settled.0.due_utc",
    ),
    "a naive time": (
        edited(put("pauses.0.start_utc", "2026-03-10T06:00:00")),
        "pauses.0.start_utc",
    ),
    "dispense id past u32": (
        edited(put("open_slots.0.dispense_id", 2**32)),
        "open_slots.0.dispense_id",
    ),
    "dispense id zero": (edited(put("open_slots.1.dispense_id", 0)), "open_slots.1.dispense_id"),
    "dispense counter zero": (edited(put("next_dispense_id", 0)), "next_dispense_id"),
    "sachet index past u16": (
        edited(put("open_slots.0.sachet_index", 65536)),
        "open_slots.0.sachet_index",
    ),
    "open slot with an unknown field": (
        edited(put("open_slots.0.colour", "red")),
        "open_slots.0.colour",
    ),
    "unknown top-level field": (edited(put("dispense_twice", True)), "dispense_twice"),
    "negative alert counter": (edited(put("next_alert_seq", -1)), "next_alert_seq"),
    "negative starts": (edited(put("starts", -5)), "starts"),
    "negative schedule version": (edited(put("schedule_version", -1)), "schedule_version"),
    "schedule with doses 10 min apart": (
        edited(put("schedule.rules.0.times", ["08:00", "08:10"])),
        "schedule",
    ),
    "schedule in no time zone": (edited(put("schedule.zone", "Mars/Olympus")), "schedule"),
    "dose time not HH:MM": (edited(put("schedule.rules.1.times", ["7:30"])), "schedule.rules"),
    "weekday 7": (edited(put("schedule.rules.0.weekday_times", {"7": []})), "schedule.rules"),
    "pause ending before it starts": (
        edited(put("pauses.0.end_utc", "2026-03-09T00:00:00+00:00")),
        "pauses",
    ),
    "two open slots with one id": (
        edited(put("open_slots.1.slot_id", "2026-03-05T08:00")),
        "open_slots",
    ),
    "two open slots with one dispense id": (
        edited(put("open_slots.1.dispense_id", 41)),
        "open_slots",
    ),
    "slot id that no schedule makes": (edited(put("settled.0.slot_id", "tomorrow")), "settled"),
    "unknown condition": (edited(put("raised_conditions", ["warp_breach"])), "raised_conditions"),
    "empty patient reference": (edited(put("binding.patient_ref", "")), "binding.patient_ref"),
    "unknown pause reason": (edited(put("pauses.0.reason", "holiday")), "pauses.0.reason"),
    "negative reminder count": (edited(put("pauses.1.reminders_sent", -1)), "pauses.1.reminders"),
    "minimum interval as text": (edited(put("schedule.min_interval_s", "3h")), "min_interval_s"),
    "negative minimum interval": (edited(put("schedule.min_interval_s", -60.0)), "min_interval_s"),
    "minimum interval longer than the spacing": (
        edited(put("schedule.min_interval_s", 86400.0)),
        "schedule",
    ),
    "unplanned sachet index past u16": (
        edited(put("unplanned.sachet_index", 65536)),
        "unplanned.sachet_index",
    ),
    "decision with an unknown field": (
        edited(put("discard_decisions.0.all", True)),
        "discard_decisions.0.all",
    ),
    "negative escalation step": (
        edited(put("open_slots.0.escalations_done", -1)),
        "escalations_done",
    ),
    "last intake past year 3000": (
        edited(put("last_intake_utc", "3001-01-01T00:00:00+00:00")),
        "last_intake_utc",
    ),
}


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_unreadable_or_inconsistent_state_is_refused_naming_where(name: str) -> None:
    text, where = UNREADABLE[name]
    with pytest.raises(StateUnreadableError) as refused:
        EngineState.from_json(text)
    assert where in refused.value.reason.lower()
    assert "p-7f3a" not in refused.value.reason  # never the patient reference


def test_a_roll_of_u64_max_times_is_a_readable_state() -> None:
    """Any u64 is a value the wire can carry: such a roll was refused when it came in
    (roll_label_invalid), and its state loads as it was stored (hazard #6's first part)."""
    text = edited(put("roll.expiry_utc_s", U64_MAX))
    roll = EngineState.from_json(text).roll
    assert roll is not None
    assert roll.expiry_utc_s == U64_MAX


@pytest.mark.parametrize("start", ["0001-01-02T00:00:00+00:00", "9999-12-30T00:00:00+00:00"])
def test_a_pause_far_away_is_a_readable_state(start: str) -> None:
    """The centre's pause command takes any aware instant and the engine keeps it. Found by the
    totality test against a first version of this validation, which bounded pause times too: a
    restart after such a pause would have locked the unit down as unreadable."""
    text = edited(put("pauses", [{"pause_id": "pz-9", "start_utc": start, "end_utc": None}]))
    [window] = EngineState.from_json(text).pauses
    assert window.start_utc == datetime.fromisoformat(start)


# --- the safe state: restored, locked, said, and lifted only by a person -------------------------


@dataclass(frozen=True)
class LedgerRow:
    """What the store's ledger gives for an open slot (agent.store.ledger.SlotRecord's fields)."""

    slot_id: str
    dispense_id: int | None
    sachet_index: int | None
    due_utc: str | None
    presented_utc: str | None = None


def test_restore_reads_a_good_state_and_the_ledger_as_they_are() -> None:
    row = LedgerRow("2026-03-05T08:00", 41, 12, "2026-03-05T07:00:00Z", "2026-03-05T07:00:05Z")
    restored = restore(STORED_FULL, [row])
    assert restored.unreadable is None
    assert restored.binding == "kept"
    assert restored.state.open_slots == (
        OpenSlot("2026-03-05T08:00", 41, 12, at(5, 7), at(5, 7, 0, 5), "R-1"),
    )
    assert restore(None, []) == Restored(EngineState.initial(), None, "none")


def test_restore_keeps_the_binding_and_counters_of_a_state_with_one_bad_field() -> None:
    restored = restore(edited(put("roll.expiry_utc_s", U64_MAX + 1)), [])
    assert restored.unreadable == (
        "roll.expiry_utc_s: Input should be less than or equal to 18446744073709551615"
    )
    assert restored.binding == "kept"
    assert restored.state.binding == Binding("p-7f3a")
    assert restored.state.roll is None  # the unreadable part only
    assert (restored.state.next_dispense_id, restored.state.next_alert_seq) == (42, 10)
    assert restored.state.schedule_version == 3
    assert restored.state.horizon_utc == at(5, 7)


@pytest.mark.parametrize(
    ("text", "binding"),
    [
        ("{not json", "unreadable"),
        ('"a string"', "unreadable"),
        (edited(put("binding", {"patient_ref": 7})), "unreadable"),
        (edited(both(put("binding", None), put("starts", -1))), "none"),
    ],
)
def test_restore_says_when_the_binding_could_not_be_read(text: str, binding: str) -> None:
    restored = restore(text, [])
    assert restored.unreadable is not None
    assert restored.binding == binding
    assert restored.state.binding is None


def test_restore_drops_a_bad_ledger_row_and_says_so() -> None:
    good = LedgerRow("2026-03-05T08:00", 41, 12, "2026-03-05T07:00:00+00:00")
    bad = LedgerRow("2026-03-05T20:00", 2**32, 11, "2026-03-05T19:00:00+00:00")
    restored = restore(STORED_FULL, [good, bad])
    assert [o.slot_id for o in restored.state.open_slots] == ["2026-03-05T08:00"]
    assert restored.unreadable is not None
    assert restored.unreadable.startswith("ledger.1.dispense_id")
    with pytest.raises(StateUnreadableError):
        EngineState.initial().with_open_slots([bad])


def recovered_rig(text: str) -> tuple[Rig, str]:
    """A rig whose engine starts from what `restore` made of `text`, told it was unreadable."""
    restored = restore(text, [])
    assert restored.unreadable is not None
    rig = Rig(daily("08:00"), start=utc(2026, 3, 2, 6), state=restored.state)
    rig.feed(StateUnreadable(restored.unreadable, restored.binding))
    return rig, restored.unreadable


def load_roll(rig: Rig) -> None:
    """A roll of this patient whose first sachet is the 08:00 (07:00 UTC) dose of the day."""
    rig.dispenser.sachet_times = [utc(2026, 3, 2, 7), utc(2026, 3, 3, 7)]
    rig.insert_roll()


def bound_state_with_bad_roll() -> str:
    state = EngineState(binding=Binding(PATIENT), schedule=daily("08:00"), schedule_version=1)
    document = json.loads(state.to_json())
    document["roll"] = {"roll_id": "R1", "expiry_utc_s": -1}
    return json.dumps(document)


def test_unreadable_state_raises_a_high_alert_locks_and_dispenses_nothing() -> None:
    rig, reason = recovered_rig(bound_state_with_bad_roll())
    [alert] = rig.events("state_unreadable")
    assert alert.priority is Priority.HIGH
    assert alert.vkp_code == "3.4"
    assert alert.alert_id is not None
    assert alert.fields == {"reason": reason, "binding": "kept", "deviation": "dispensing_stopped"}
    assert "roll" in reason
    rig.feed(LinkUp(rig.caps))
    assert rig.dispenser.locked
    assert rig.sounding() is AlertPattern.FAULT
    load_roll(rig)
    rig.run_until(utc(2026, 3, 2, 10))
    assert rig.commands(Dispense) == []
    assert rig.outcome_of("2026-03-02T08:00").reason == "not_dispensed:state_unreadable"
    assert [e.fields["reason"] for e in rig.events("dose_held")] == ["state_unreadable"]


def test_the_safe_state_survives_a_restart_without_a_second_alert() -> None:
    rig, _ = recovered_rig(bound_state_with_bad_roll())
    saved = rig.engine.state.to_json()
    again = Rig(daily("08:00"), start=rig.clock.now().utc, state=EngineState.from_json(saved))
    again.feed(LinkUp(again.caps))
    assert again.dispenser.locked
    assert again.events("state_unreadable") == []
    assert again.engine.locked_down


def test_a_person_acknowledging_the_alert_lifts_the_lock_and_doses_are_given_again() -> None:
    rig, _ = recovered_rig(bound_state_with_bad_roll())
    [alert] = rig.events("state_unreadable")
    assert alert.alert_id is not None
    rig.feed(LinkUp(rig.caps))
    load_roll(rig)
    assert rig.engine.locked_down
    rig.feed(AcknowledgeAlert(alert.alert_id, "nurse-2"))
    assert not rig.engine.locked_down
    assert not rig.dispenser.locked
    [acked] = rig.events("alert_acknowledged")
    assert acked.fields["kind"] == "state_unreadable"
    rig.run_until(utc(2026, 3, 2, 8, 1))
    assert len(rig.commands(Dispense)) == 1


def test_with_the_binding_unreadable_the_unit_stays_unbound_locked_and_says_so() -> None:
    rig, _ = recovered_rig("{garbage")
    [alert] = rig.events("state_unreadable")
    assert alert.fields["binding"] == "unreadable"
    assert rig.engine.state.binding is None
    rig.feed(LinkUp(rig.caps))
    assert rig.dispenser.locked
    assert rig.sounding() is AlertPattern.FAULT


@pytest.mark.parametrize(
    ("when", "readable"),
    [
        ("1969-12-31T23:59:59+00:00", False),
        ("1970-01-01T00:00:00+00:00", True),
        ("1970-01-01T00:30:00+01:00", False),  # 1969-12-31T23:30Z
        ("2999-12-31T23:59:59+00:00", True),
        ("3000-01-01T00:00:00+00:00", False),
    ],
)
def test_state_times_lie_in_1970_to_3000(when: str, readable: bool) -> None:
    text = edited(put("last_intake_utc", when))
    if readable:
        assert EngineState.from_json(text).last_intake_utc == datetime.fromisoformat(when)
    else:
        with pytest.raises(StateUnreadableError, match="last_intake_utc"):
            EngineState.from_json(text)


def test_restore_takes_the_ledgers_sachet_when_the_state_has_another_dispense_id_or_none() -> None:
    # the state knows 20:00 as dispense id 40, sachet 11; the ledger names a later attempt (43,
    # sachet 13) and a slot the state never saw (44, sachet 14): the sachets of those attempts
    rows = [
        LedgerRow("2026-03-05T08:00", 41, 12, "2026-03-05T07:00:00+00:00"),
        LedgerRow("2026-03-05T20:00", 43, 13, "2026-03-05T19:00:00+00:00"),
        LedgerRow("2026-03-06T08:00", 44, 14, "2026-03-06T07:00:00+00:00"),
        LedgerRow("2026-03-06T20:00", 45, None, "2026-03-06T19:00:00+00:00"),
    ]
    restored = restore(STORED_FULL, rows)
    assert restored.unreadable is None
    assert [(o.slot_id, o.dispense_id, o.sachet_index) for o in restored.state.open_slots] == [
        ("2026-03-05T08:00", 41, 12),
        ("2026-03-05T20:00", 43, 13),
        ("2026-03-06T08:00", 44, 14),
        ("2026-03-06T20:00", 45, 0),  # none in the ledger either: 0
    ]


def test_the_escalation_step_of_a_dose_in_the_tray_is_stored_and_kept_by_restore() -> None:
    """A restart never calls the patient less urgently: the step taken is stored (a state
    stored before it was, like STORED_FULL, loads with none taken)."""
    assert EngineState.from_json(STORED_FULL).open_slots[0].escalations_done == 0
    text = edited(put("open_slots.0.escalations_done", 1))
    [first, _] = EngineState.from_json(text).open_slots
    assert first == OpenSlot("2026-03-05T08:00", 41, 12, at(5, 7), at(5, 7, 0, 5), "R-1", 1)
    assert '"escalations_done":1' in EngineState.from_json(text).to_json()
    row = LedgerRow("2026-03-05T08:00", 41, 12, "2026-03-05T07:00:00Z", "2026-03-05T07:00:05Z")
    assert restore(text, [row]).state.open_slots[0].escalations_done == 1
    other_id = LedgerRow("2026-03-05T08:00", 43, 12, "2026-03-05T07:00:00Z", None)
    assert restore(text, [other_id]).state.open_slots[0].escalations_done == 0
