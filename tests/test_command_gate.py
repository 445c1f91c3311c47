"""The command rate limit and the refusal fold (agent/command_gate.py), with time passed in by
hand: no sleeps. Expected values are worked out here from the stated rule (burst, then per_s)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncGenerator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from e2e_support import CENTRE_PUBLIC, command, sign_command

from agent.command_gate import RATE_LIMITED, RefusalFold, TokenBucket
from agent.commands import BULK_KIND as BULK
from agent.commands import CommandHandler
from agent.config import ConfigError, parse_config
from agent.contract.topics import UnitTopics
from agent.daemon import Daemon
from agent.edges import BrokerLink
from agent.engine.types import FROM_RESPONSE_CENTRE, ON_SITE
from agent.mqtt.link import InboundMessage, MqttLinkStats, MqttNotConnected
from agent.runtime import build_daemon


def takes(bucket: TokenBucket, now: float, n: int) -> int:
    return sum(bucket.take(now) for _ in range(n))


def test_a_burst_then_one_a_second() -> None:
    bucket = TokenBucket.full(30, 1.0, now=100.0)
    assert takes(bucket, 100.0, 40) == 30  # the burst, then nothing
    assert not bucket.take(100.5)  # half a token
    assert bucket.take(101.0)  # one second: one token
    assert not bucket.take(101.0)
    assert takes(bucket, 111.0, 20) == 10  # ten seconds: ten tokens
    assert takes(bucket, 10_000.0, 100) == 30  # a long quiet: never more than the burst


def test_a_clock_that_goes_back_refills_nothing_and_nothing_twice() -> None:
    bucket = TokenBucket.full(2, 1.0, now=50.0)
    assert takes(bucket, 50.0, 2) == 2
    assert not bucket.take(40.0)  # back in time
    assert not bucket.take(50.5)  # still before a whole second after 50
    assert bucket.take(51.0)
    assert not bucket.take(51.0)


@pytest.mark.parametrize(
    ("start", "later"),
    [
        (0.0, sys.float_info.max),  # elapsed * rate would overflow to inf
        (-sys.float_info.max, sys.float_info.max),  # elapsed itself is inf
        (2.0**53, 2.0**53 + 2.0),  # where float seconds are coarse
    ],
)
def test_extreme_times_give_at_most_the_burst(start: float, later: float) -> None:
    bucket = TokenBucket.full(3, 100.0, now=start)
    assert takes(bucket, start, 5) == 3
    assert takes(bucket, later, 5) == 3


def test_nan_time_refills_nothing() -> None:
    bucket = TokenBucket.full(1, 1.0, now=0.0)
    assert bucket.take(0.0)
    assert not bucket.take(float("nan"))
    assert bucket.take(1.0)


def test_the_configured_extremes() -> None:
    slowest = TokenBucket.full(5, 0.05, now=0.0)  # config minimums: burst 5, one per 20 s
    assert takes(slowest, 0.0, 10) == 5
    assert not slowest.take(19.9)
    assert slowest.take(20.0)
    fastest = TokenBucket.full(1000, 100.0, now=0.0)  # config maximums
    assert takes(fastest, 0.0, 2000) == 1000
    assert takes(fastest, 1.0, 200) == 100


@pytest.mark.parametrize(("burst", "per_s"), [(0, 1.0), (1, 0.0), (1, -1.0), (1, float("nan"))])
def test_an_unusable_bucket_is_refused(burst: int, per_s: float) -> None:
    with pytest.raises(ValueError, match="burst"):
        TokenBucket.full(burst, per_s, now=0.0)


def test_the_first_refusals_of_a_window_are_told_one_by_one_the_rest_counted() -> None:
    fold = RefusalFold(individual=2, window_s=60.0)
    told = [fold.admit("unsigned", 10.0, "t1", f"id-{n}", may_answer=True) for n in range(5)]
    assert told == [True, True, False, False, False]
    assert not fold.admit(RATE_LIMITED, 11.0, "t2", None, may_answer=False)
    assert not fold.admit("malformed_json", 12.0, "t3", None, may_answer=True)
    assert fold.closes_at() == 70.0
    assert not fold.expired(69.9)
    assert fold.expired(70.0)
    report = fold.report()
    assert report is not None
    assert report.fields() == {
        "window_s": 60.0,
        "counts": {"malformed_json": 1, "rate_limited": 1, "unsigned": 3},
        "total": 5,
        "individually_reported": 2,
        "first_at": "t1",
        "last_at": "t3",
        "example_command_id": "id-4",
    }
    # a new window: its first refusals are told one by one again
    assert fold.report() is None
    assert fold.admit("unsigned", 80.0, "t4", None, may_answer=True)


def test_over_the_rate_limit_is_never_told_one_by_one() -> None:
    fold = RefusalFold(individual=5, window_s=60.0)
    assert not fold.admit(RATE_LIMITED, 0.0, "t", None, may_answer=False)
    report = fold.report()
    assert report is not None
    assert report.counts == {RATE_LIMITED: 1}
    assert report.individually_reported == 0


def base_config(tmp_path: Path, **limits: object) -> dict[str, object]:
    return {
        "unit_id": "unit-a-0001",
        "state_dir": str(tmp_path),
        "dispenser": {"device": "/dev/null"},
        "command_limits": limits,
    }


def test_config_defaults_and_bounds(tmp_path: Path) -> None:
    limits = parse_config(base_config(tmp_path)).command_limits
    assert (limits.burst, limits.per_s, limits.individual_refusals, limits.window_s) == (
        30,
        1.0,
        5,
        60,
    )
    assert parse_config(base_config(tmp_path, per_s=2)).command_limits.per_s == 2.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("burst", 4),
        ("burst", 1001),
        ("burst", "30"),
        ("per_s", 0),
        ("per_s", 100.5),
        ("per_s", "1"),
        ("individual_refusals", 0),
        ("individual_refusals", 101),
        ("window_s", 9),
        ("window_s", 3601),
        ("window_s", 60.5),
        ("other", 1),
    ],
)
def test_config_refuses_out_of_bounds_naming_the_field(
    tmp_path: Path, field: str, value: object
) -> None:
    with pytest.raises(ConfigError, match=f"command_limits.{field}"):
        parse_config(base_config(tmp_path, **{field: value}))


# --- in the daemon: the real handler and store (no broker: see test_command_flood_e2e.py) ------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def daemon_at(tmp_path: Path, link: BrokerLink | None = None) -> Iterator[Daemon]:
    """The production daemon; with `link`, on that MQTT link instead of a real one."""
    daemon = build_daemon(
        parse_config(base_config(tmp_path)),
        broker_link=None if link is None else (lambda _hooks: link),
    )
    try:
        yield daemon
    finally:
        daemon.writer.close()
        daemon.store.close()


def kinds(daemon: Daemon) -> list[str]:
    return [e.kind for e in daemon.store.pending_events(limit=1000) if e.kind != "agent_started"]


def audit_kinds(daemon: Daemon) -> list[str]:
    records = daemon.store.audit_records(limit=1000)
    return [r.kind for r in records if r.kind not in {"store.created", "event"}]


def test_junk_past_the_first_five_of_a_window_is_counted_not_answered(tmp_path: Path) -> None:
    with daemon_at(tmp_path) as daemon:
        handler = CommandHandler(daemon, monotonic=Clock())
        answers = [
            handler.answer(b'{"command_id": "%d"' % n, "t", FROM_RESPONSE_CENTRE)[0]
            for n in range(8)
        ]
        assert answers == [None] * 8  # unreadable: nothing to answer either way
        assert kinds(daemon) == ["command_rejected"] * 5
        assert audit_kinds(daemon) == ["command_rejected"] * 5
        handler.flush_refusals()  # the window's end (the timer, or a stop)
        assert kinds(daemon)[5:] == ["commands_refused_in_bulk"]
        [bulk] = [e for e in daemon.store.pending_events(limit=1000) if e.kind == BULK]
        assert bulk.payload["data"]["counts"] == {"malformed_json": 3}  # type: ignore[index]
        assert bulk.payload["priority"] == "medium"
        assert audit_kinds(daemon)[5:] == ["commands_refused_in_bulk"]
        handler.flush_refusals()  # nothing more counted: nothing more told
        assert len(kinds(daemon)) == 6


def test_junk_on_site_is_always_answered(tmp_path: Path) -> None:
    with daemon_at(tmp_path) as daemon:
        handler = CommandHandler(daemon, monotonic=Clock())
        for n in range(8):
            handler.answer(b"not json %d" % n, "local", ON_SITE)
        handler.flush_refusals()
        assert kinds(daemon) == ["command_rejected"] * 8


class FakeLink:
    """An MQTT link that never connects: delivers the given messages, then waits like a quiet
    broker; records the acks."""

    connected = False
    ready = False
    last_connect_error: str | None = None
    link_state_version = 0  # never connects: its state never changes

    def __init__(self, messages: list[InboundMessage]) -> None:
        self.queued = messages
        self.acked: list[InboundMessage] = []
        self.stats = MqttLinkStats()

    async def messages(self) -> AsyncGenerator[InboundMessage, None]:
        for message in self.queued:
            yield message
        await asyncio.Event().wait()

    def ack(self, message: InboundMessage) -> None:
        self.acked.append(message)

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def wait_link_state_change(self, seen: int) -> None:
        await asyncio.Event().wait()

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            await asyncio.Event().wait()

    wait_ready = wait_connected

    async def publish(self, topic: str, payload: bytes, **_options: object) -> None:
        raise MqttNotConnected("fake link")

    def publish_nowait(self, topic: str, payload: bytes, *_args: object, **_kw: object) -> None:
        raise MqttNotConnected("fake link")

    def flush(self) -> None:
        pass


def test_over_the_limit_nothing_is_written_and_a_stop_tells_the_count(tmp_path: Path) -> None:
    topic = UnitTopics(parse_config(base_config(tmp_path)).unit_id).command_request
    flood = [InboundMessage(topic, b"x", 1, False, None, None, None, ()) for _ in range(500)]
    link = FakeLink(flood)
    with daemon_at(tmp_path, link) as daemon:
        clock = Clock()
        handler = CommandHandler(daemon, monotonic=clock)
        handler._bucket.tokens = 0.0  # the burst is spent; time stands still
        audit_before = len(audit_kinds(daemon))

        async def scenario() -> None:
            task = asyncio.create_task(handler.run())
            async with asyncio.timeout(30):
                while len(link.acked) < len(flood):  # noqa: ASYNC110 (bounded poll)
                    await asyncio.sleep(0.01)
            assert kinds(daemon) == []  # nothing written for 500 commands
            assert len(audit_kinds(daemon)) == audit_before
            task.cancel()  # the daemon stops mid-window
            with contextlib.suppress(asyncio.CancelledError):
                await task

        asyncio.run(scenario())
        daemon.writer.close()  # as the daemon's stop does: the commits it promised finish first
        assert kinds(daemon) == [BULK]
        [bulk] = [e for e in daemon.store.pending_events(limit=10) if e.kind == BULK]
        data = bulk.payload["data"]
        assert data["counts"] == {"rate_limited": 500}  # type: ignore[index]
        assert data["individually_reported"] == 0  # type: ignore[index]
        assert audit_kinds(daemon)[audit_before:] == [BULK]


def test_a_command_for_another_unit_is_junk_unless_the_centre_signed_it(tmp_path: Path) -> None:
    values = {**base_config(tmp_path), "centre_keys": [CENTRE_PUBLIC]}
    daemon = build_daemon(parse_config(values))
    try:
        handler = CommandHandler(daemon, monotonic=Clock())
        now = datetime.now(UTC)

        def send(request: dict[str, object]) -> bytes | None:
            return handler.answer(json.dumps(request).encode(), "t", FROM_RESPONSE_CENTRE)[0]

        # forged for another unit: told one by one five times, then counted
        forged = [
            {**command("silence", issued_at=now, minutes=5), "unit_id": "unit-b-0002"}
            for _ in range(7)
        ]
        answers = [send(request) for request in forged]
        assert [a is not None for a in answers] == [True] * 5 + [False] * 2
        # the centre's own command for another unit (misrouted): always answered and told
        signed = [
            sign_command(command("silence", issued_at=now, minutes=5), "unit-b-0002")
            for _ in range(2)
        ]
        assert all(send(request) is not None for request in signed)
        handler.flush_refusals()
        assert kinds(daemon) == ["command_unauthenticated"] * 7 + [BULK]
        [bulk] = [e for e in daemon.store.pending_events(limit=100) if e.kind == BULK]
        assert bulk.payload["data"]["counts"] == {"wrong_unit": 2}  # type: ignore[index]
    finally:
        daemon.store.close()
