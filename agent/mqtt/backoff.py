"""Reconnect delays: exponential backoff with full jitter, computed by tenacity.

The policy is its own small object so it can be tested without a network and so the link does not
mix "when to retry" with "how to connect".
"""

from __future__ import annotations

from tenacity import RetryCallState, Retrying, wait_random_exponential


class ReconnectBackoff:
    """Delay before each reconnect attempt: uniform in [0, min(max_s, initial_s * 2**(n-1))].

    Full jitter spreads a fleet of units that lost the broker at the same moment, so they do not
    all come back in the same second.
    """

    def __init__(self, initial_s: float, max_s: float) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError(f"need 0 < initial_s <= max_s, got {initial_s=} {max_s=}")
        self._wait = wait_random_exponential(multiplier=initial_s, max=max_s)
        # tenacity computes the delay from a RetryCallState; only attempt_number is read.
        self._state = RetryCallState(Retrying(), None, (), {})
        self._failures = 0

    @property
    def failures(self) -> int:
        """Consecutive failed attempts since the last reset."""
        return self._failures

    def next_delay(self) -> float:
        """Record one more failure and return how long to wait before the next attempt."""
        self._failures += 1
        self._state.attempt_number = self._failures
        return float(self._wait(self._state))

    def reset(self) -> None:
        """Start again from the initial window (after a connection that proved healthy)."""
        self._failures = 0
