"""The engine's outbound bookkeeping: its position in the unit's dispense-id counter and the
settled dispense ids it still recognises.

SPEC 2 / 4.4: `dispense_id` is a u32 (0..0xFFFF_FFFF) and never given twice in the life of the
unit, so ids are taken one after another and the counter refuses to wrap. docs/engine.md,
"Phantom dose events": the 16 most recently settled slots' ids are still known (a late
DoseTaken of one is not a phantom); older ones are forgotten, oldest first.
"""

from __future__ import annotations

import pytest

from agent.engine.outbound import Outbound

U32_LAST = 4_294_967_295  # 2**32 - 1, the largest u32 (SPEC: dispense_id u32)


def test_dispense_ids_are_taken_one_after_another() -> None:
    out = Outbound(starts=1, next_dispense_id=41)
    assert [out.take_dispense_id() for _ in range(3)] == [41, 42, 43]
    assert out.next_dispense_id == 44


def test_the_last_u32_id_is_used_and_then_the_counter_refuses_to_wrap() -> None:
    out = Outbound(starts=1, next_dispense_id=U32_LAST - 1)
    assert out.take_dispense_id() == U32_LAST - 1
    assert out.take_dispense_id() == U32_LAST
    with pytest.raises(RuntimeError, match="exhausted"):
        out.take_dispense_id()
    assert out.next_dispense_id == U32_LAST + 1  # no id was handed out by the refusal


def test_the_sixteen_most_recently_settled_ids_are_remembered() -> None:
    out = Outbound(starts=1, next_dispense_id=1)
    for n in range(1, 17):
        out.remember_settled(n, f"slot-{n}", sachet_index=n)
    assert list(out.recent) == list(range(1, 17))
    out.remember_settled(17, "slot-17", sachet_index=17)  # the 17th pushes out the oldest
    assert list(out.recent) == list(range(2, 18))
    assert out.recent[17] == "slot-17"
    assert 1 not in out.recent
    assert 1 not in out.recent_sachets  # the sachet index goes with its id
    assert out.recent_sachets[17] == 17


def test_the_alert_of_a_settled_id_is_forgotten_with_the_id() -> None:
    # dose_taken_late names the alert of a recent missed slot; an id pushed out of the sixteen
    # takes its alert along (the persisted state stays bounded, no late event names it)
    out = Outbound(starts=1, next_dispense_id=1)
    out.remember_settled(1, "slot-1", sachet_index=None, alert_id="alert-000001")
    out.remember_settled(2, "slot-2", sachet_index=None)
    out.remember_settled(3, "slot-3", sachet_index=None, alert_id="alert-000003")
    assert out.recent_alerts == {1: "alert-000001", 3: "alert-000003"}
    for n in range(4, 18):
        out.remember_settled(n, f"slot-{n}", sachet_index=None)
    assert 1 not in out.recent
    assert out.recent_alerts == {3: "alert-000003"}
    out.remember_settled(18, "slot-18", sachet_index=None)
    out.remember_settled(19, "slot-19", sachet_index=None)
    assert out.recent_alerts == {}


def test_a_dose_left_in_the_tray_is_forgotten_when_its_id_is_pushed_out() -> None:
    # left_in_tray is stored state; it stays bounded by the sixteen like the rest
    out = Outbound(starts=1, next_dispense_id=1)
    out.remember_settled(1, "slot-1", sachet_index=4, in_tray=True)
    assert [entry[0] for entry in out.left_in_tray()] == [1]
    for n in range(2, 18):
        out.remember_settled(n, f"slot-{n}", sachet_index=n)
    assert out.left_in_tray() == []
