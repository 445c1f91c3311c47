"""The reconnect policy alone (both links use it): delays grow, are capped and jittered; one flap
rule; every attempt is bounded. Driven with explicit attempt numbers and a fake clock: no sleeps."""

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
    STABLE_LINK_S,
    RetryPolicy,
    retry_bounded,
    stay_connected,
    worth_logging,
)


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 5.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await coro_fn()

    asyncio.run(bounded())


class FlakyError(Exception):
    pass


class Done(Exception):  # noqa: N818 (ends a scenario)
    pass


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def delays_after_failures(policy: RetryPolicy, failures: int) -> list[float]:
    """The delay the policy waits after the 1st, 2nd, ... failure in a row."""
    clock = FakeTime()

    async def attempt() -> None:
        raise FlakyError

    async def main() -> None:
        with pytest.raises(FlakyError):
            await retry_bounded(
                attempt,
                RetryPolicy(policy.initial_delay_s, policy.max_delay_s, max_attempts=failures + 1),
                retry_on=(FlakyError,),
                on_failure=lambda n, e: None,
                sleep=clock.sleep,
            )

    run(main)
    return clock.slept


def test_delays_are_full_jitter_exponential_and_capped() -> None:
    random.seed(1)  # tenacity draws from the random module
    policy = RetryPolicy(initial_delay_s=0.5, max_delay_s=4.0)
    windows = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]  # after failure 1, 2, 3, ... (capped)
    for _ in range(200):
        delays = delays_after_failures(policy, len(windows))
        assert all(0.0 <= d <= w for d, w in zip(delays, windows, strict=True)), delays


def test_delays_stay_capped_after_very_many_failures_and_spread_a_fleet() -> None:
    random.seed(2)
    delays = delays_after_failures(RetryPolicy(initial_delay_s=0.5, max_delay_s=4.0), 3000)
    assert max(delays) <= 4.0
    late = delays[20:]  # a fleet that has been failing for a while: spread over the window
    assert min(late) < 0.5
    assert max(late) > 3.5


def test_back_within_the_cap_of_the_far_end_returning_after_any_outage() -> None:
    """The issue measured up to 54 s; the goal is ~5 s. The far end is away for `outage` s."""
    random.seed(3)
    for outage in [0.1, 1.0, 7.0, 30.0, 61.0, 300.0, 3600.0]:
        clock = FakeTime()
        back_at: list[float] = []

        async def connect(outage: float = outage, clock: FakeTime = clock) -> str:
            if clock.now < outage:
                raise FlakyError("refused")
            return "conn"

        async def serve(
            _conn: str, clock: FakeTime = clock, back_at: list[float] = back_at
        ) -> None:
            back_at.append(clock.now)
            raise Done

        async def main(clock: FakeTime = clock) -> None:
            with pytest.raises(Done):
                await stay_connected(
                    connect,
                    serve,
                    DEFAULT_RECONNECT,
                    retry_on=(FlakyError,),
                    on_failure=lambda n, e: None,
                    monotonic=clock.monotonic,
                    sleep=clock.sleep,
                )

        run(main)
        assert outage <= back_at[0] <= outage + RECONNECT_MAX_DELAY_S, (outage, back_at)
    assert RECONNECT_MAX_DELAY_S <= 5.0


def test_flap_rule_short_connections_grow_the_delay_a_healthy_one_resets_it() -> None:
    random.seed(4)
    policy = RetryPolicy(initial_delay_s=1.0, max_delay_s=100.0, stable_after_s=10.0)
    clock = FakeTime()
    lifetimes = iter([1.0, 1.0, 1.0, 60.0, 1.0])  # three flaps, a healthy hour, a flap
    connected_at: list[float] = []

    async def connect() -> str:
        connected_at.append(clock.now)
        return "conn"

    async def serve(_conn: str) -> None:
        try:
            clock.now += next(lifetimes)
        except StopIteration:
            raise Done from None

    async def main() -> None:
        with pytest.raises(Done):
            await stay_connected(
                connect,
                serve,
                policy,
                retry_on=(FlakyError,),
                on_failure=lambda n, e: None,
                monotonic=clock.monotonic,
                sleep=clock.sleep,
            )

    run(main)
    # Sleeps: after flap 1 (window 1 s), flap 2 (2 s), flap 3 (4 s); none after the healthy
    # connection; then flap 1 of a new count (1 s).
    assert len(clock.slept) == 4, clock.slept
    windows = [1.0, 2.0, 4.0, 1.0]
    assert all(0.0 <= d <= w for d, w in zip(clock.slept, windows, strict=True)), clock.slept
    assert connected_at[4] == connected_at[3] + 60.0  # the healthy one ended: reconnect at once


def test_default_policy_uses_the_named_constants() -> None:
    assert DEFAULT_RECONNECT.initial_delay_s == RECONNECT_INITIAL_DELAY_S
    assert DEFAULT_RECONNECT.max_delay_s == RECONNECT_MAX_DELAY_S
    assert DEFAULT_RECONNECT.stable_after_s == STABLE_LINK_S
    assert DEFAULT_RECONNECT.attempt_timeout_s == CONNECT_ATTEMPT_TIMEOUT_S
    assert DEFAULT_RECONNECT.max_attempts is None  # the agent never gives up on its links


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_delay_s": 0.0},
        {"initial_delay_s": 5.0, "max_delay_s": 1.0},
        {"stable_after_s": -1.0},
        {"attempt_timeout_s": 0.0},
        {"max_attempts": 0},
    ],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"need|must"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_retries_until_success_reporting_each_failure() -> None:
    clock = FakeTime()
    failures: list[tuple[int, str]] = []
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls <= 4:
            raise FlakyError(f"no {calls}")
        return "open"

    async def main() -> None:
        result = await retry_bounded(
            attempt,
            DEFAULT_RECONNECT,
            retry_on=(FlakyError,),
            on_failure=lambda n, e: failures.append((n, str(e))),
            sleep=clock.sleep,
        )
        assert result == "open"

    run(main)
    assert calls == 5
    assert len(clock.slept) == 4
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
        await asyncio.Event().wait()  # a far end that never answers

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await retry_bounded(
                hangs,
                policy,
                retry_on=(FlakyError,),
                on_failure=lambda n, e: failures.append((n, type(e))),
            )

    run(main)
    assert started == 2
    assert failures == [(1, TimeoutError), (2, TimeoutError)]


def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    policy = RetryPolicy(initial_delay_s=0.01, max_delay_s=0.01, max_attempts=3)
    clock = FakeTime()
    calls = 0

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
                on_failure=lambda n, e: None,
                sleep=clock.sleep,
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
                attempt, DEFAULT_RECONNECT, retry_on=(FlakyError,), on_failure=lambda n, e: None
            )

    run(main)
    assert calls == 1


def test_an_outage_is_logged_at_powers_of_two_failures() -> None:
    assert [n for n in range(70) if worth_logging(n)] == [1, 2, 4, 8, 16, 32, 64]
