"""When to try the dispenser link again: named backoff constants and one bounded tenacity loop.

Kept apart from the session so the policy can be tested without a port, and so "when to retry"
is not mixed with "how to connect".
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
)
from tenacity.stop import stop_base

log = logging.getLogger(__name__)

T = TypeVar("T")

RECONNECT_INITIAL_DELAY_S = 0.5
RECONNECT_MAX_DELAY_S = 30.0  # a home unit should notice a replugged adapter within half a minute
RECONNECT_MULTIPLIER = 2.0
# Each delay is drawn from [base * (1 - JITTER), base]: never longer than the cap, and units that
# lost their link at the same moment (a power cut in the building) drift apart.
RECONNECT_JITTER = 0.5
# One attempt = open the port and complete the handshake; a dispenser that accepts the port but
# never answers must not hang the agent.
CONNECT_ATTEMPT_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_delay_s: float = RECONNECT_INITIAL_DELAY_S
    max_delay_s: float = RECONNECT_MAX_DELAY_S
    multiplier: float = RECONNECT_MULTIPLIER
    jitter: float = RECONNECT_JITTER
    attempt_timeout_s: float = CONNECT_ATTEMPT_TIMEOUT_S
    max_attempts: int | None = None  # None: keep trying until cancelled (the agent's case)

    def __post_init__(self) -> None:
        if not 0 < self.initial_delay_s <= self.max_delay_s:
            raise ValueError("need 0 < initial_delay_s <= max_delay_s")
        if self.multiplier < 1 or not 0 <= self.jitter < 1 or self.attempt_timeout_s <= 0:
            raise ValueError("need multiplier >= 1, 0 <= jitter < 1, attempt_timeout_s > 0")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 or None")

    def base_delay(self, failures: int) -> float:
        """The un-jittered delay after `failures` consecutive failures (1, 2, ...)."""
        if failures < 1:
            raise ValueError("failures counts from 1")
        # Compare exponents, not powers: 2.0 ** 5000 would overflow a float.
        growth = self.multiplier ** min(failures - 1, 64)
        return min(self.max_delay_s, self.initial_delay_s * growth)

    def delay(self, failures: int, rng: random.Random) -> float:
        base = self.base_delay(failures)
        return base * (1.0 - self.jitter * rng.random())


DEFAULT_RECONNECT = RetryPolicy()


async def retry_bounded(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    retry_on: tuple[type[Exception], ...],
    rng: random.Random,
    on_failure: Callable[[int, Exception], None],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Run `attempt` until it succeeds, waiting `policy.delay(n)` after the n-th failure.

    Every attempt is bounded by `policy.attempt_timeout_s` (a timeout counts as a failure).
    `on_failure(attempt_number, error)` is called for every failure, the last one included.
    Errors outside `retry_on` propagate at once; after `max_attempts` failures the last error is
    raised. Cancellation is never retried.
    """
    retryable: tuple[type[Exception], ...] = (*retry_on, TimeoutError)
    stop: stop_base = (
        stop_never if policy.max_attempts is None else stop_after_attempt(policy.max_attempts)
    )

    def wait(state: RetryCallState) -> float:
        return policy.delay(state.attempt_number, rng)

    def before_sleep(state: RetryCallState) -> None:
        pause = state.next_action.sleep if state.next_action else 0.0
        log.info("retrying in %.2f s (attempt %d failed)", pause, state.attempt_number)

    retrying = AsyncRetrying(
        sleep=sleep,
        stop=stop,
        wait=wait,
        retry=retry_if_exception_type(retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    async for try_ in retrying:
        with try_:
            try:
                async with asyncio.timeout(policy.attempt_timeout_s):
                    return await attempt()
            except retryable as exc:
                on_failure(try_.retry_state.attempt_number, exc)
                raise
    raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover
