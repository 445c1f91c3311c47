"""The alerts the engine holds: conditions told to the centre, latched alerts, the alert-id
sequence, and the rate limit of chatty button events.

A component of the dose engine: plain state with small operations, no I/O, no clock. The rules
themselves (raise once, clear once, latch until acknowledged) are the pure functions of
`agent.engine.alerts`; this keeps their state in one place and returns the events they produce.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.engine import alerts, catalogue
from agent.engine.alerts import ConditionBook, LatchedAlert
from agent.engine.types import EngineEvent, Priority


@dataclass(slots=True)
class AlertDesk:
    chatty_s: float  # minimum interval between two raisings of a chatty kind
    latched: tuple[LatchedAlert, ...] = ()
    book: ConditionBook = field(default_factory=ConditionBook)
    next_alert_seq: int = 1
    chatty_last: dict[str, float] = field(default_factory=dict)  # kind -> monotonic s (not durable)

    def condition(
        self, kind: str, present: bool, now_mono: float, fields: dict[str, object] | None
    ) -> tuple[EngineEvent, ...]:
        """Set or clear a condition; a clear of one never raised says nothing."""
        if not present and kind not in self.book.present and kind not in self.book.raised:
            return ()
        change = alerts.set_condition(self.book, kind, present, now_mono, self.chatty_s, fields)
        self.book = change.book
        return change.events

    def release_due(self, now_mono: float) -> tuple[EngineEvent, ...]:
        """Chatty conditions held back by the rate limit whose interval has now passed."""
        book = self.book
        if not book.present or all(kind in book.raised for kind in book.present):
            return ()  # asked on every step: nothing held back, nothing to change
        change = alerts.release_due(self.book, now_mono, self.chatty_s)
        self.book = change.book
        return change.events

    def next_release(self) -> float | None:
        book = self.book
        if not book.present or all(kind in book.raised for kind in book.present):
            return None  # nothing held back (asked with every deadline)
        return alerts.next_release(book, self.chatty_s)

    def is_raised(self, kind: str) -> bool:
        return kind in self.book.raised

    def new_alert_id(self) -> str:
        alert_id = f"alert-{self.next_alert_seq:06d}"
        self.next_alert_seq += 1
        return alert_id

    def latch(
        self, kind: str, fields: dict[str, object], at_iso: str, *, resolved: bool = False
    ) -> EngineEvent:
        """A new latched alert of `kind`, and the event that raises it. `resolved`: nothing will
        resolve it, so it lasts until a person acknowledges it."""
        alert_id = self.new_alert_id()
        self.latched = alerts.latch(
            self.latched, LatchedAlert(alert_id, kind, at_iso, resolved=resolved)
        )
        return catalogue.make_event(kind, fields, alert_id=alert_id)

    def missed_outcome(
        self,
        kind: str,
        fields: dict[str, object],
        at_iso: str,
        vkp: str | None,
        priority: Priority = Priority.HIGH,
    ) -> EngineEvent:
        """The slot_outcome of a dose not given (HIGH), or not known to be given: latched as
        already resolved (the slot is settled) so that it stays to be acknowledged by a person."""
        alert_id = self.new_alert_id()
        self.latched = alerts.latch(
            self.latched, LatchedAlert(alert_id, kind, at_iso, resolved=True)
        )
        return catalogue.make_event(
            "slot_outcome", fields, alert_id=alert_id, priority=priority, vkp_code=vkp
        )

    def acknowledge(self, alert_id: str, by: str, at_iso: str) -> LatchedAlert | None:
        """Raises EngineInputError for an unknown id; None when it was already acknowledged."""
        self.latched, acked = alerts.acknowledge(self.latched, alert_id, by, at_iso)
        return acked

    def check_acknowledge(self, alert_id: str, by: str, at_iso: str) -> None:
        """Raise EngineInputError as `acknowledge` would, changing nothing."""
        alerts.acknowledge(self.latched, alert_id, by, at_iso)

    def resolve(self, kind: str) -> tuple[LatchedAlert, ...]:
        self.latched, resolved = alerts.resolve(self.latched, kind)
        return resolved

    def unresolved(self, kind: str) -> LatchedAlert | None:
        return alerts.unresolved(self.latched, kind)

    def chatty_allowed(self, kind: str, now_mono: float) -> bool:
        """At most one event of a chatty kind per interval; records the one allowed."""
        if alerts.rate_limited(self.chatty_last.get(kind), now_mono, self.chatty_s):
            return False
        self.chatty_last[kind] = now_mono
        return True
