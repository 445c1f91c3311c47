"""UUIDv7 (RFC 9562) event ids: time-ordered, monotonic within one process.

Python 3.11 has no `uuid.uuid7`. Layout: 48-bit Unix milliseconds, version 7, then a 42-bit counter
(the 12 `rand_a` bits plus the top 30 bits of `rand_b`, RFC 9562 "method 1"), then 32 random bits.
The counter starts at a random value with its top bit clear on each new millisecond and increments
within the same millisecond, so ids made by one generator sort in creation order even when the wall
clock stands still or steps back (the last timestamp is kept and reused until the clock passes it).
Ordering *across* restarts follows the wall clock only; the outbox sequence is the real order.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable

_COUNTER_BITS = 42
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1
_TIMESTAMP_MAX = (1 << 48) - 1


def _system_ms() -> int:
    return time.time_ns() // 1_000_000


class Uuid7Factory:
    """Makes UUIDv7 strings. Keep one per store; it holds the monotonic state."""

    def __init__(
        self,
        now_ms: Callable[[], int] = _system_ms,
        randbits: Callable[[int], int] = secrets.randbits,
    ) -> None:
        self._now_ms = now_ms
        self._randbits = randbits
        self._last_ms = -1
        self._counter = 0

    def new_uuid(self) -> uuid.UUID:
        ms = self._now_ms()
        if ms > self._last_ms:
            self._last_ms = ms
            # Top bit clear leaves at least 2**41 increments before the counter overflows.
            self._counter = self._randbits(_COUNTER_BITS - 1)
        else:
            self._counter += 1
            if self._counter > _COUNTER_MAX:
                # Borrow the next millisecond rather than break ordering.
                self._last_ms += 1
                self._counter = self._randbits(_COUNTER_BITS - 1)
        if not 0 <= self._last_ms <= _TIMESTAMP_MAX:
            raise ValueError(f"timestamp out of UUIDv7 range: {self._last_ms}")
        rand_a = self._counter >> 30
        rand_b = ((self._counter & ((1 << 30) - 1)) << 32) | self._randbits(32)
        value = (
            (self._last_ms << 80)
            | (0x7 << 76)
            | (rand_a << 64)
            | (0b10 << 62)  # RFC 4122/9562 variant
            | rand_b
        )
        return uuid.UUID(int=value)

    def __call__(self) -> str:
        return str(self.new_uuid())
