"""The roll desk: the roll in the dispenser, the sachet at its reader, sachets on their way to
the bin, and the decisions people made about sachets the schedule lacks (plan mismatch). A
component of the dose engine: plain state and questions about it, no I/O, no clock.

Whether a roll or sachet may be dispensed from is decided by `roll_check` (pure rules); this
component only remembers what the dispenser told us and answers "whose roll is this".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.engine import roll_check
from agent.engine.state import DiscardDecision, RollInfo, UnplannedHold
from agent.engine.types import Binding
from protocol.messages import RollInserted, SachetRead

UNANSWERED_KEPT = 4  # discards given up on whose late DoseRetained is still recognised


@dataclass(frozen=True, slots=True)
class Discarding:
    """A Discard sent and not yet confirmed by DoseRetained."""

    sachet_index: int
    intended_utc_s: int
    reason: str
    decision: DiscardDecision | None = None  # the person's decision it carries out, if any


@dataclass(slots=True)
class RollDesk:
    roll: RollInfo | None  # durable: the roll as last read from its label (or seen in a Status)
    sachet: SachetRead | None = None  # the sachet at the reader, as last read
    rejected_sachet: tuple[str, int] | None = None  # (roll id, index) already reported rejected
    discarding: dict[int, Discarding] = field(default_factory=dict)  # by dispense id
    # Discards no longer waited for (no reply, lost with the link, the cut failed): not a cut
    # under way, but a late DoseRetained of one is still ours (a few kept, the newest)
    unanswered: dict[int, Discarding] = field(default_factory=dict)
    # (roll id, sachet index, BUSY answers) for the sachet whose Discard the dispenser refused
    busy_refusals: tuple[str, int, int] | None = None
    unplanned: UnplannedHold | None = None  # durable: the sachet held for a plan decision
    decisions: tuple[DiscardDecision, ...] = ()  # durable: discards people decided
    # memo of roll_foreign(): (roll, binding, verdict), keyed on identity of both
    _foreign_memo: tuple[object, object, bool] | None = None

    def is_known_roll(self, message: RollInserted) -> bool:
        """The roll we already know (checked, not merely seen in a Status) announced again: same
        label, and the reader no further back than where we know it is (it only moves on)."""
        roll = self.roll
        return (
            roll is not None
            and not roll.unverified
            and roll.roll_id == message.roll_id
            and roll_check.same_patient(roll.patient_ref, message.patient_ref)
            and roll.sachet_count == message.sachet_count
            and roll.first_dose_utc_s == message.first_dose_utc_s
            and roll.last_dose_utc_s == message.last_dose_utc_s
            and roll.expiry_utc_s == message.expiry_utc_s
            and message.next_index >= roll.next_index
        )

    def give_up(self, dispense_id: int) -> None:
        """Stop waiting for a Discard whose outcome will not come (no cut is under way)."""
        discard = self.discarding.pop(dispense_id, None)
        if discard is None:
            return
        self.unanswered[dispense_id] = discard
        while len(self.unanswered) > UNANSWERED_KEPT:
            del self.unanswered[next(iter(self.unanswered))]

    def settled_discard(self, dispense_id: int) -> Discarding | None:
        """The Discard a DoseRetained confirms, waited for or given up on."""
        discard = self.discarding.pop(dispense_id, None)
        if discard is None:
            discard = self.unanswered.pop(dispense_id, None)
        return discard

    def refused_busy(self) -> int:
        """A Discard of the sachet at the reader was answered BUSY: how many times so far."""
        sachet = self.sachet
        if sachet is None:
            return 0
        tries = self.busy_tries(sachet) + 1
        self.busy_refusals = (sachet.roll_id, sachet.index, tries)
        return tries

    def lid_closed(self) -> None:
        """A person closed the lid: a Discard the dispenser refused BUSY may go again."""
        self.busy_refusals = None

    def busy_tries(self, sachet: SachetRead) -> int:
        refusals = self.busy_refusals
        if refusals is None or refusals[:2] != (sachet.roll_id, sachet.index):
            return 0  # another sachet: its own tries
        return refusals[2]

    def decision_for(self, sachet: SachetRead) -> DiscardDecision | None:
        """A person's decision that this sachet goes to the bin (if it matches no dose time)."""
        for decision in self.decisions:
            if decision.roll_id == sachet.roll_id and decision.sachet_index in (
                None,
                sachet.index,
            ):
                return decision
        return None

    def keep_decisions_of(self, roll_id: str) -> None:
        """A decision is about one roll: another roll loaded needs its own."""
        self.decisions = tuple(d for d in self.decisions if d.roll_id == roll_id)

    def roll_foreign(self, binding: Binding | None) -> bool:
        """A verified roll of another patient than the bound one is loaded."""
        roll = self.roll
        if roll is None or roll.unverified or binding is None:
            return False
        memo = self._foreign_memo
        if memo is None or memo[0] is not roll or memo[1] is not binding:
            memo = (
                roll,
                binding,
                not roll_check.same_patient(binding.patient_ref, roll.patient_ref),
            )
            self._foreign_memo = memo
        return memo[2]

    def roll_state(self, binding: Binding | None) -> str | None:
        if self.roll is None:
            return None
        if self.roll.unverified:
            return "roll_unverified"
        if self.roll_foreign(binding):
            return roll_check.FOREIGN_ROLL
        return "loaded"
