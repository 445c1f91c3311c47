"""Flood control for the response centre's commands (issue 10, item 4): a rate limit, and junk
folded into one counted report per window.

- `TokenBucket`: every command that arrives over MQTT takes a token before anything else is done
  with it (no parsing, no signature check, no store write). `burst` tokens at most, refilled at
  `per_s`. A command without a token is not executed and gets no answer and no event of its own:
  it is counted (reason `rate_limited`).
- `RefusalFold`: a refusal that says nothing but "junk" (unreadable or schema-invalid, unsigned,
  unknown key, bad signature, addressed to another unit and not verified) is answered, audited
  and reported on its own only for the first `individual` of a window, so one operator's mistake
  is still told as before; the rest of the window is counted per reason and told once, when the
  window ends, as one `commands_refused_in_bulk` event with one audit record
  (`agent/commands.py`).

Both run on a monotonic clock passed in (seconds), not the unit's wall clock: a flood is measured in
real time, and tests drive time by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RATE_LIMITED = "rate_limited"


@dataclass
class TokenBucket:
    burst: int
    per_s: float
    tokens: float
    last: float  # monotonic seconds of the last refill

    @classmethod
    def full(cls, burst: int, per_s: float, now: float) -> TokenBucket:
        if burst < 1 or not per_s > 0:
            raise ValueError("a token bucket needs burst >= 1 and per_s > 0")
        return cls(burst, per_s, float(burst), now)

    def take(self, now: float) -> bool:
        """Take one token if there is one. A clock that goes back refills nothing (and `last`
        stays where it was, so the same interval is never refilled twice)."""
        elapsed = now - self.last
        if elapsed > 0:
            # min() first: a huge elapsed time times the rate may be inf, never more than burst
            self.tokens = min(float(self.burst), self.tokens + min(elapsed, 1e9) * self.per_s)
            self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(frozen=True)
class FoldedReport:
    """One window's folded refusals: the data of a `commands_refused_in_bulk` event."""

    window_s: float
    counts: dict[str, int]
    individually_reported: int
    first_at: str
    last_at: str
    example_command_id: str | None

    def fields(self) -> dict[str, object]:
        return {
            "window_s": self.window_s,
            "counts": dict(sorted(self.counts.items())),
            "total": sum(self.counts.values()),
            "individually_reported": self.individually_reported,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "example_command_id": self.example_command_id,
        }


@dataclass
class RefusalFold:
    """Counts refusals per window. A window opens at the first refusal after the last one closed
    and lasts `window_s`; `report()` closes it."""

    individual: int  # refusals per window answered and reported one by one
    window_s: float
    opened: float | None = None  # monotonic time the window opened
    individually_reported: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    first_at: str = ""
    last_at: str = ""
    example_command_id: str | None = None

    def closes_at(self) -> float | None:
        return None if self.opened is None else self.opened + self.window_s

    def expired(self, now: float) -> bool:
        closes = self.closes_at()
        return closes is not None and now >= closes

    def admit(
        self, reason: str, now: float, at_utc: str, command_id: str | None, *, may_answer: bool
    ) -> bool:
        """Note one refusal. True: answer and report it on its own (it is not counted here);
        False: it is folded into the window's counts. `may_answer` false (over the rate limit)
        always folds. Call `report()` first when `expired(now)`."""
        if self.opened is None:
            self.opened = now
        if may_answer and self.individually_reported < self.individual:
            self.individually_reported += 1
            return True
        if not self.counts:
            self.first_at = at_utc
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.last_at = at_utc
        if command_id is not None:
            self.example_command_id = command_id
        return False

    def folded(self) -> int:
        return sum(self.counts.values())

    def report(self) -> FoldedReport | None:
        """Close the window: what was folded in it (None if nothing was)."""
        report = None
        if self.counts:
            report = FoldedReport(
                window_s=self.window_s,
                counts=dict(self.counts),
                individually_reported=self.individually_reported,
                first_at=self.first_at,
                last_at=self.last_at,
                example_command_id=self.example_command_id,
            )
        self.opened = None
        self.individually_reported = 0
        self.counts = {}
        self.first_at = self.last_at = ""
        self.example_command_id = None
        return report
