"""Alert catalogue (priority, VKP code), conditions raised once / cleared once, rate limit for
chatty inputs, latched alerts (acknowledged != resolved)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from agent.contract.events import EVENT_KINDS
from agent.engine import alerts, catalogue
from agent.engine.alerts import ConditionBook, LatchedAlert
from agent.engine.types import EngineInputError, Priority
from protocol.messages import FaultCode

AGENT_DIR = Path(alerts.__file__).resolve().parents[1]

VKP = {
    "roll_empty": "3.6",
    "no_schedule": "3.8",
    "mains_lost": "3.9",
    "no_contact": "3.10",
    "lid_open": "3.11",
    "fault_tamper": "3.12",
    "fault_bin_full": "3.13",
    "fault_jam": "3.14",
    "fault_reader": "3.16",
    "battery_empty": "3.17",
    "roll_inserted": "3.21",
    "low_supply": "3.25",
    "battery_low": "3.27",
    "wrong_roll": "3.5",
    "fault_sensor": "3.4",
    "clock_untrusted": "3.4",
}


@pytest.mark.parametrize(("kind", "code"), sorted(VKP.items()))
def test_catalogue_vkp_codes(kind: str, code: str) -> None:
    assert catalogue.spec(kind).vkp_code == code
    assert catalogue.make_event(kind).vkp_code == code


def test_priorities_missed_outranks_reminder_level_events() -> None:
    assert catalogue.spec("wrong_roll").priority is Priority.HIGH
    assert catalogue.spec("lid_open").priority is Priority.LOW
    assert catalogue.spec("dose_not_taken").priority is Priority.MEDIUM
    assert catalogue.spec("wrong_roll").latched
    assert catalogue.MISSED_VKP == "3.3"
    assert catalogue.EMPTY_VKP == "3.7"


@pytest.mark.parametrize(
    "kind",
    [
        "made_up",
        "made_up_cleared",
        "slot_outcome_cleared",  # not a condition: nothing to clear
        "wrong_roll_cleared_cleared",
        "mains_lost_cleared_cleared",
        "outbox_dropped",  # dropped from the contract: nothing emits it
        "factory_reset",
        "mains_restored",  # renamed mains_lost_cleared
    ],
)
def test_unknown_kind_is_an_error(kind: str) -> None:
    with pytest.raises(KeyError, match="not in the catalogue"):
        catalogue.make_event(kind)


def _accepted(kind: str) -> bool:
    try:
        catalogue.make_event(kind)
    except KeyError:
        return False
    return True


def test_contract_kinds_are_exactly_what_make_event_accepts() -> None:
    for kind in EVENT_KINDS:
        assert catalogue.make_event(kind).kind == kind
    # every form make_event could accept: a catalogued kind, or one with `_cleared` appended
    candidates = {form for k in catalogue.CATALOGUE for form in (k, f"{k}_cleared")}
    producible = {kind for kind in candidates if _accepted(kind)}
    assert producible == set(EVENT_KINDS)
    conditions = [s.kind for s in catalogue.CATALOGUE.values() if s.condition]
    assert conditions
    assert all(f"{k}_cleared" in EVENT_KINDS for k in conditions)
    assert {
        "agent_started",
        "command_rejected",
        "dispenser_clock_invalid",
        "adherence_summary",
        "binding_mismatch",
        "schedule_edit_ignored",
        "unit_unbound",
        "command_unauthenticated",
        "centre_keys_changed",
        "pause_open_ended",
        "schedule_empty",
        "store_ceiling",
        "mqtt_inbound_dropped",
        "event_unreadable",
        "commands_refused_in_bulk",
        "audit_checkpoint",
    } == catalogue.SHELL_KINDS
    assert set(EVENT_KINDS) >= catalogue.SHELL_KINDS


def test_cleared_form_is_info_without_the_condition_code() -> None:
    """A clearing is no second VKP alert (issue 8): the code stays on the condition's event."""
    event = catalogue.make_event("fault_jam_cleared", {"detail": "x"})
    assert (event.priority, event.vkp_code, event.fields) == (Priority.INFO, None, {"detail": "x"})
    assert catalogue.make_event("fault_jam").vkp_code == "3.14"


def test_a_condition_must_say_what_its_clearing_means() -> None:
    with pytest.raises(ValueError, match="cleared_meaning"):
        catalogue.AlertSpec("x", Priority.LOW, None, "meaning", condition=True)
    with pytest.raises(ValueError, match="cleared_meaning"):
        catalogue.AlertSpec("x", Priority.LOW, None, "meaning", cleared_meaning="gone")


_ENGINE_CALLS = {"_emit": 1, "_condition": 1, "_latch": 1, "make_event": 0}  # name -> kind arg


def _literal_kinds(path: Path) -> set[str]:
    """String-literal kinds given to the engine's emit helpers and to EngineEvent(kind=...)."""
    kinds: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        args: list[ast.expr] = []
        if name in _ENGINE_CALLS and len(node.args) > _ENGINE_CALLS[name]:
            args.append(node.args[_ENGINE_CALLS[name]])
        if name == "EngineEvent":
            args += [kw.value for kw in node.keywords if kw.arg == "kind"] + node.args[:1]
        kinds |= {
            arg.value
            for arg in args
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
        }
    return kinds


def test_every_kind_the_code_emits_is_documented() -> None:
    engine_kinds = set().union(*(_literal_kinds(p) for p in (AGENT_DIR / "engine").glob("*.py")))
    shell_kinds = set().union(*(_literal_kinds(p) for p in AGENT_DIR.glob("*.py")))
    assert {"slot_outcome", "dose_held", "lid_open", "wrong_roll"} <= engine_kinds
    assert {"agent_started", "command_rejected"} <= shell_kinds
    # the engine's fault conditions are built as f"fault_{name}" from the protocol's codes
    fault_kinds = {f"fault_{code.name.lower()}" for code in FaultCode}
    for kind in sorted(engine_kinds | shell_kinds | fault_kinds):
        assert kind in EVENT_KINDS, kind
    assert all(catalogue.spec(kind).condition for kind in fault_kinds)


def test_condition_raised_once_and_cleared_once() -> None:
    book = ConditionBook()
    change = alerts.set_condition(book, "mains_lost", True, 0.0, 60.0)
    assert [e.kind for e in change.events] == ["mains_lost"]
    again = alerts.set_condition(change.book, "mains_lost", True, 1.0, 60.0)
    assert again.events == ()
    cleared = alerts.set_condition(again.book, "mains_lost", False, 2.0, 60.0)
    assert [(e.kind, e.priority) for e in cleared.events] == [("mains_lost_cleared", Priority.INFO)]
    assert alerts.set_condition(cleared.book, "mains_lost", False, 3.0, 60.0).events == ()


def test_chatty_condition_is_rate_limited_and_released_later() -> None:
    book = alerts.set_condition(ConditionBook(), "lid_open", True, 0.0, 60.0).book
    book = alerts.set_condition(book, "lid_open", False, 5.0, 60.0).book
    change = alerts.set_condition(book, "lid_open", True, 10.0, 60.0)
    assert change.events == ()  # held back
    assert alerts.next_release(change.book, 60.0) == 60.0
    assert alerts.release_due(change.book, 59.0, 60.0).events == ()
    released = alerts.release_due(change.book, 60.0, 60.0)
    assert [e.kind for e in released.events] == ["lid_open"]


def test_held_back_condition_that_clears_is_never_sent() -> None:
    book = alerts.set_condition(ConditionBook(), "lid_open", True, 0.0, 60.0).book
    book = alerts.set_condition(book, "lid_open", False, 1.0, 60.0).book
    book = alerts.set_condition(book, "lid_open", True, 2.0, 60.0).book
    change = alerts.set_condition(book, "lid_open", False, 3.0, 60.0)
    assert change.events == ()
    assert alerts.release_due(change.book, 100.0, 60.0).events == ()


def test_latched_alert_stays_until_acknowledged_and_resolved() -> None:
    latched = alerts.latch((), LatchedAlert("a1", "wrong_roll", "2026-03-02T07:00:00+00:00"))
    latched, acked = alerts.acknowledge(latched, "a1", "nurse", "t")
    assert acked is not None
    assert acked.acknowledged_by == "nurse"
    assert [a.alert_id for a in latched] == ["a1"]  # acknowledged but not resolved
    latched, resolved = alerts.resolve(latched, "wrong_roll")
    assert [a.alert_id for a in resolved] == ["a1"]
    assert latched == ()


def test_acknowledge_is_idempotent_and_unknown_ids_are_refused() -> None:
    latched = alerts.latch((), LatchedAlert("a1", "dose_missed", "t", resolved=True))
    latched2, acked = alerts.acknowledge(latched, "a1", "op", "t")
    assert acked is not None
    assert latched2 == ()
    with pytest.raises(EngineInputError):
        alerts.acknowledge(latched2, "a1", "op", "t")
    with pytest.raises(EngineInputError):
        alerts.acknowledge(latched, "a1", "", "t")


def test_button_rate_limit() -> None:
    assert not alerts.rate_limited(None, 0.0, 60.0)
    assert alerts.rate_limited(0.0, 59.0, 60.0)
    assert not alerts.rate_limited(0.0, 60.0, 60.0)
