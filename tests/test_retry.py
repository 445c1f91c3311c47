"""The reconnect policy alone: delays grow, are capped, are jittered; every attempt is bounded."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from drivers.retry import (
    CONNECT_ATTEMPT_TIMEOUT_S,
    DEFAULT_RECONNECT,
    RECONNECT_INITIAL_DELAY_S,
    RECONNECT_MAX_DELAY_S,
    RetryPolicy,
    retry_bounded,
)


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 5.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await coro_fn()

    asyncio.run(bounded())


class FlakyError(Exception):
    pass


def test_delays_grow_exponentially_without_jitter() -> None:
    policy = RetryPolicy(initial_delay_s=0.1, max_delay_s=10.0, multiplier=2.0, jitter=0.0)
    rng = random.Random(1)
    assert [policy.delay(n, rng) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])


def test_delays_are_capped_even_after_very_many_failures() -> None:
    policy = RetryPolicy(initial_delay_s=0.5, max_delay_s=30.0, jitter=0.5)
    rng = random.Random(2)
    delays = [policy.delay(n, rng) for n in range(1, 5000)]
    assert max(delays) <= 30.0
    assert policy.base_delay(4999) == 30.0
    assert min(delays[20:]) >= 15.0  # once capped, jitter only shortens by up to half


def test_jitter_spreads_delays_within_the_documented_band() -> None:
    policy = RetryPolicy(initial_delay_s=1.0, max_delay_s=60.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(3)
    draws = [policy.delay(3, rng) for _ in range(200)]  # base 4.0
    assert all(2.0 <= d <= 4.0 for d in draws)
    assert len({round(d, 6) for d in draws}) > 150  # not one fixed value
    assert max(draws) - min(draws) > 1.0


def test_default_policy_uses_the_named_constants() -> None:
    assert DEFAULT_RECONNECT.initial_delay_s == RECONNECT_INITIAL_DELAY_S
    assert DEFAULT_RECONNECT.max_delay_s == RECONNECT_MAX_DELAY_S
    assert DEFAULT_RECONNECT.attempt_timeout_s == CONNECT_ATTEMPT_TIMEOUT_S
    assert DEFAULT_RECONNECT.max_attempts is None  # the agent never gives up on its dispenser


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_delay_s": 0.0},
        {"initial_delay_s": 5.0, "max_delay_s": 1.0},
        {"multiplier": 0.5},
        {"jitter": 1.0},
        {"attempt_timeout_s": 0.0},
        {"max_attempts": 0},
    ],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"need|must"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_retries_until_success_sleeping_the_policy_delays_and_reporting_each_failure() -> None:
    policy = RetryPolicy(initial_delay_s=0.1, max_delay_s=0.3, jitter=0.0)
    slept: list[float] = []
    failures: list[tuple[int, str]] = []
    calls = 0

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls <= 4:
            raise FlakyError(f"no {calls}")
        return "open"

    async def main() -> None:
        result = await retry_bounded(
            attempt,
            policy,
            retry_on=(FlakyError,),
            rng=random.Random(0),
            on_failure=lambda n, e: failures.append((n, str(e))),
            sleep=fake_sleep,
        )
        assert result == "open"

    run(main)
    assert calls == 5
    assert slept == pytest.approx([0.1, 0.2, 0.3, 0.3])
    assert failures == [(1, "no 1"), (2, "no 2"), (3, "no 3"), (4, "no 4")]


def test_each_attempt_is_bounded_by_the_attempt_timeout() -> None:
    policy = RetryPolicy(
        initial_delay_s=0.01, max_delay_s=0.01, attempt_timeout_s=0.05, max_attempts=2
    )
    failures: list[tuple[int, type[Exception]]] = []
    started = 0

    async def hangs() -> None:
        nonlocal started
        started += 1
        await asyncio.Event().wait()  # a dispenser that never answers

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await retry_bounded(
                hangs,
                policy,
                retry_on=(FlakyError,),
                rng=random.Random(0),
                on_failure=lambda n, e: failures.append((n, type(e))),
            )

    run(main)
    assert started == 2
    assert failures == [(1, TimeoutError), (2, TimeoutError)]


def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    policy = RetryPolicy(initial_delay_s=0.01, max_delay_s=0.01, max_attempts=3)
    calls = 0

    async def no_sleep(_: float) -> None:
        return None

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise FlakyError(f"attempt {calls}")

    async def main() -> None:
        with pytest.raises(FlakyError, match="attempt 3"):
            await retry_bounded(
                attempt,
                policy,
                retry_on=(FlakyError,),
                rng=random.Random(0),
                on_failure=lambda n, e: None,
                sleep=no_sleep,
            )

    run(main)
    assert calls == 3


def test_errors_outside_retry_on_propagate_at_once() -> None:
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("bug")

    async def main() -> None:
        with pytest.raises(KeyError):
            await retry_bounded(
                attempt,
                DEFAULT_RECONNECT,
                retry_on=(FlakyError,),
                rng=random.Random(0),
                on_failure=lambda n, e: None,
            )

    run(main)
    assert calls == 1
