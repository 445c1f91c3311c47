"""One reconnect policy for both links (the dispenser's serial session and the MQTT link).

- Delays come from tenacity's `wait_random_exponential` ("full jitter"): after the n-th failure in a
  row, uniform in [0, min(max_delay_s, initial_delay_s * 2**(n-1))]. Units that lost their far end
  at the same moment (a broker restart, a power cut in the building) spread over the whole window.
- The cap is short on purpose: whatever the outage lasted, a unit tries again within `max_delay_s`
  of the far end returning (the goal is back online within ~5 s of the broker).
- One flap rule: a connection that ends sooner than `stable_after_s` after it came up counts as one
  more failure, so a far end that drops us right away is not hammered. One that lived longer ends
  the outage: the failure count starts again and the first reconnect goes at once.

Kept apart from the links so it can be tested without a port or a broker, and so "when to retry"
is not mixed with "how to connect".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_random_exponential,
)
from tenacity.stop import stop_base

log = logging.getLogger(__name__)

T = TypeVar("T")

RECONNECT_INITIAL_DELAY_S = 0.5
# Back within this long of the far end returning, however long it was away; with full jitter a
# fleet spreads its reconnects over the same window.
RECONNECT_MAX_DELAY_S = 4.0
# A connection shorter than this counts as flapping: the next reconnect backs off (growing).
STABLE_LINK_S = 10.0
# One attempt = open the port or socket and complete the handshake; a far end that accepts the
# connection but never answers must not hang the agent.
CONNECT_ATTEMPT_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_delay_s: float = RECONNECT_INITIAL_DELAY_S
    max_delay_s: float = RECONNECT_MAX_DELAY_S
    stable_after_s: float = STABLE_LINK_S
    # None: the attempt bounds its own steps (the MQTT link: each step has a deadline).
    attempt_timeout_s: float | None = CONNECT_ATTEMPT_TIMEOUT_S
    max_attempts: int | None = None  # None: keep trying until cancelled (the agent's case)

    def __post_init__(self) -> None:
        if not 0 < self.initial_delay_s <= self.max_delay_s:
            raise ValueError("need 0 < initial_delay_s <= max_delay_s")
        if self.stable_after_s < 0:
            raise ValueError("need stable_after_s >= 0")
        if self.attempt_timeout_s is not None and self.attempt_timeout_s <= 0:
            raise ValueError("need attempt_timeout_s > 0")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 or None")

    def wait(self) -> wait_random_exponential:
        """tenacity's wait for this policy: full jitter, exponential, capped."""
        return wait_random_exponential(multiplier=self.initial_delay_s, max=self.max_delay_s)


DEFAULT_RECONNECT = RetryPolicy()


class LinkFlappedError(Exception):
    """A connection ended sooner than the policy's `stable_after_s`: one more failure."""

    def __init__(self, up_for_s: float) -> None:
        super().__init__(f"connection ended after {up_for_s:.1f} s")
        self.up_for_s = up_for_s


def worth_logging(failures: int) -> bool:
    """Log an ongoing outage at its 1st, 2nd, 4th, 8th, ... failure (the rest at DEBUG): a unit
    offline for a day writes a few dozen lines, not one per attempt."""
    return failures > 0 and failures & (failures - 1) == 0


def _retrying(
    policy: RetryPolicy,
    retryable: tuple[type[Exception], ...],
    sleep: Callable[[float], Awaitable[None]],
    what: str,
) -> AsyncRetrying:
    stop: stop_base = (
        stop_never if policy.max_attempts is None else stop_after_attempt(policy.max_attempts)
    )

    def before_sleep(state: RetryCallState) -> None:
        pause = state.next_action.sleep if state.next_action else 0.0
        level = logging.INFO if worth_logging(state.attempt_number) else logging.DEBUG
        log.log(level, "%s: retrying in %.2f s (failure %d)", what, pause, state.attempt_number)

    return AsyncRetrying(
        sleep=sleep,
        stop=stop,
        wait=policy.wait(),
        retry=retry_if_exception_type(retryable),
        before_sleep=before_sleep,
        reraise=True,
    )


async def _bounded(attempt: Callable[[], Awaitable[T]], timeout_s: float | None) -> T:
    async with asyncio.timeout(timeout_s):
        return await attempt()


async def retry_bounded(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    retry_on: tuple[type[Exception], ...],
    on_failure: Callable[[int, Exception], None],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    what: str = "connect",
) -> T:
    """Run `attempt` until it succeeds, waiting the policy's delay after the n-th failure.

    Every attempt is bounded by `policy.attempt_timeout_s` (a timeout counts as a failure).
    `on_failure(attempt_number, error)` is called for every failure, the last one included.
    Errors outside `retry_on` propagate at once; after `max_attempts` failures the last error is
    raised. Cancellation is never retried.
    """
    retryable: tuple[type[Exception], ...] = (*retry_on, TimeoutError)
    async for try_ in _retrying(policy, retryable, sleep, what):
        with try_:
            try:
                return await _bounded(attempt, policy.attempt_timeout_s)
            except retryable as exc:
                on_failure(try_.retry_state.attempt_number, exc)
                raise
    raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover


async def stay_connected(
    connect: Callable[[], Awaitable[T]],
    serve: Callable[[T], Awaitable[None]],
    policy: RetryPolicy,
    *,
    retry_on: tuple[type[Exception], ...],
    on_failure: Callable[[int, Exception], None],
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    what: str = "link",
) -> NoReturn:
    """Connect, `serve` the connection until it is over, and connect again, until cancelled.

    One tenacity loop per outage, so its attempt number is the failure count: failed connects and
    connections shorter than `policy.stable_after_s` (the flap rule) grow the delay; a connection
    that lived longer ends the outage, and the next one starts at once from the first delay.
    """
    failed: tuple[type[Exception], ...] = (*retry_on, TimeoutError)
    retryable: tuple[type[Exception], ...] = (*failed, LinkFlappedError)
    while True:
        async for try_ in _retrying(policy, retryable, sleep, what):
            with try_:
                try:
                    conn = await _bounded(connect, policy.attempt_timeout_s)
                except failed as exc:
                    on_failure(try_.retry_state.attempt_number, exc)
                    raise
                up_since = monotonic()
                await serve(conn)
                up_for = monotonic() - up_since
                if up_for < policy.stable_after_s:
                    raise LinkFlappedError(up_for)
                log.debug(
                    "%s: connection lived %.0f s; the outage count starts again", what, up_for
                )
                break
