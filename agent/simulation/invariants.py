"""Safety invariants of the whole system, checked by the simulation after every step.

The checker sees everything the engine asked for (actions), everything the harness published
(sequenced events) and everything the dispenser model physically did, and raises
`InvariantViolation` the moment one of these stops holding:

1. Right patient, right sachet: every physical dispense came from a roll (and a sachet) labelled
   with the bound patient, and the sachet was packed for the slot it was given for.
2. At most one dispense per slot: one `BeginDispense` per slot id and per dispense id, and the
   model's physical dispenses map one-to-one onto `BeginDispense` actions.
3. Exactly one terminal outcome per slot: never a second `RecordOutcome` or `slot_outcome`
   event for a slot; at the end every expected slot has exactly one of each, and they agree.
4. Published sequence numbers run 1, 2, 3 ... with no gap or repeat, one per `Emit`.
5. No missed timed decisions: after a Tick at the engine's deadline, the next deadline lies in
   the future; a Tick before the deadline yields nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from agent.engine.types import Action, BeginDispense, Emit, RecordOutcome
from agent.simulation.violation import InvariantViolation

__all__ = ["InvariantChecker", "InvariantViolation", "PhysicalDispense"]


@dataclass(frozen=True, slots=True)
class PhysicalDispense:
    """One sachet the model cut into the tray, with what the harness knows about its roll."""

    dispense_id: int
    sachet_index: int
    roll_patient_ref: str
    sachet_patient_ref: str
    sachet_intended_utc: datetime


@dataclass(slots=True)
class InvariantChecker:
    patient_ref: str
    sachet_time_tolerance: timedelta
    begun_by_slot: dict[str, BeginDispense] = field(default_factory=dict)
    begun_by_id: dict[int, BeginDispense] = field(default_factory=dict)
    physical_ids: set[int] = field(default_factory=set)
    outcomes: dict[str, RecordOutcome] = field(default_factory=dict)
    outcome_events: dict[str, str] = field(default_factory=dict)  # slot_id -> outcome
    emits_seen: int = 0
    last_seq: int = 0

    # --- 2 and 3: the engine's actions ------------------------------------------------------

    def on_actions(self, actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, BeginDispense):
                self._on_begin(action)
            elif isinstance(action, RecordOutcome):
                if action.slot_id in self.outcomes:
                    raise InvariantViolation(
                        f"second outcome for slot {action.slot_id}: "
                        f"{self.outcomes[action.slot_id].outcome} then {action.outcome}"
                    )
                self.outcomes[action.slot_id] = action
            elif isinstance(action, Emit):
                self.emits_seen += 1
                if action.event.kind == "slot_outcome":
                    self._on_outcome_event(action)

    def _on_begin(self, begin: BeginDispense) -> None:
        if begin.slot_id in self.begun_by_slot:
            raise InvariantViolation(
                f"second BeginDispense for slot {begin.slot_id} "
                f"(dispense ids {self.begun_by_slot[begin.slot_id].dispense_id} and "
                f"{begin.dispense_id})"
            )
        if begin.dispense_id in self.begun_by_id:
            raise InvariantViolation(
                f"dispense id {begin.dispense_id} reused for slot {begin.slot_id} "
                f"(first used for {self.begun_by_id[begin.dispense_id].slot_id})"
            )
        if begin.slot_id in self.outcomes:
            raise InvariantViolation(f"BeginDispense for slot {begin.slot_id}, already settled")
        self.begun_by_slot[begin.slot_id] = begin
        self.begun_by_id[begin.dispense_id] = begin

    def _on_outcome_event(self, emit: Emit) -> None:
        slot_id = emit.event.fields.get("slot_id")
        outcome = emit.event.fields.get("outcome")
        if not isinstance(slot_id, str) or not isinstance(outcome, str):
            raise InvariantViolation(f"slot_outcome event without slot_id/outcome: {emit.event}")
        if slot_id in self.outcome_events:
            raise InvariantViolation(f"second slot_outcome event for slot {slot_id}")
        self.outcome_events[slot_id] = outcome

    # --- 1 and 2: what the dispenser physically did -----------------------------------------

    def on_physical_dispense(self, cut: PhysicalDispense) -> None:
        if cut.roll_patient_ref != self.patient_ref:
            raise InvariantViolation(
                f"dispensed sachet {cut.sachet_index} (dispense id {cut.dispense_id}) from a "
                f"foreign roll (patient {cut.roll_patient_ref!r})"
            )
        if cut.sachet_patient_ref != self.patient_ref:
            raise InvariantViolation(
                f"dispensed foreign sachet {cut.sachet_index} (patient {cut.sachet_patient_ref!r})"
            )
        if cut.dispense_id in self.physical_ids:
            raise InvariantViolation(f"dispense id {cut.dispense_id} physically executed twice")
        begin = self.begun_by_id.get(cut.dispense_id)
        if begin is None:
            raise InvariantViolation(
                f"physical dispense id {cut.dispense_id} without a BeginDispense"
            )
        if begin.sachet_index != cut.sachet_index:
            raise InvariantViolation(
                f"dispense id {cut.dispense_id}: BeginDispense named sachet "
                f"{begin.sachet_index}, the model cut sachet {cut.sachet_index}"
            )
        if abs(cut.sachet_intended_utc - begin.due_utc) > self.sachet_time_tolerance:
            raise InvariantViolation(
                f"slot {begin.slot_id} due {begin.due_utc.isoformat()} got a sachet packed for "
                f"{cut.sachet_intended_utc.isoformat()}"
            )
        self.physical_ids.add(cut.dispense_id)

    # --- 4: what was published ---------------------------------------------------------------

    def on_published(self, seq: int) -> None:
        if seq != self.last_seq + 1:
            raise InvariantViolation(
                f"published seq {seq} after {self.last_seq}: "
                f"{'gap' if seq > self.last_seq + 1 else 'repeat or reordering'}"
            )
        self.last_seq = seq

    def check_all_published(self) -> None:
        """Every Emit the engine returned was published exactly once."""
        if self.last_seq != self.emits_seen:
            raise InvariantViolation(
                f"{self.emits_seen} events emitted but {self.last_seq} published "
                f"({'lost' if self.last_seq < self.emits_seen else 'duplicated'} events)"
            )

    # --- 5: timed decisions ------------------------------------------------------------------

    @staticmethod
    def check_deadline_after_tick(now_mono: float, deadline: float | None) -> None:
        if deadline is not None and deadline <= now_mono:
            raise InvariantViolation(
                f"after a Tick at its deadline the engine still wants a decision at "
                f"{deadline:.3f} <= now {now_mono:.3f} (a timed decision was not taken)"
            )

    @staticmethod
    def check_idle_tick(
        actions: Sequence[Action], deadline_before: float | None, deadline_after: float | None
    ) -> None:
        if actions:
            raise InvariantViolation(
                f"a Tick before the engine's deadline produced actions: {list(actions)!r}"
            )
        if deadline_before != deadline_after:
            raise InvariantViolation(
                f"a Tick before the engine's deadline moved it from {deadline_before} to "
                f"{deadline_after}"
            )

    # --- 3 at the end ------------------------------------------------------------------------

    def finish(self, expected_slot_ids: Iterable[str]) -> None:
        self.check_all_published()
        missing = [s for s in expected_slot_ids if s not in self.outcomes]
        # (an empty expectation still checks events against records below)
        if missing:
            raise InvariantViolation(
                f"{len(missing)} slot(s) without an outcome, first {missing[:5]}"
            )
        if set(self.outcomes) != set(self.outcome_events):
            only_record = sorted(set(self.outcomes) - set(self.outcome_events))[:5]
            only_event = sorted(set(self.outcome_events) - set(self.outcomes))[:5]
            raise InvariantViolation(
                f"RecordOutcome and slot_outcome events disagree: recorded without event "
                f"{only_record}, event without record {only_event}"
            )
        for slot_id, record in self.outcomes.items():
            if self.outcome_events[slot_id] != record.outcome.value:
                raise InvariantViolation(
                    f"slot {slot_id}: RecordOutcome {record.outcome} but slot_outcome event "
                    f"says {self.outcome_events[slot_id]}"
                )
