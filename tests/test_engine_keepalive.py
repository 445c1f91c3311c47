"""Hazard #10, second half: the agent feeds the dispenser's watchdog (SPEC 4.7) from its timer.

The engine sends `KeepAlive(timeout_s)` only on a `Tick` (the daemon's engine timer loop), right
after every handshake and then every `timeout / 3`, and only to a dispenser announcing
`AGENT_WATCHDOG`. Its instant is one of the engine's deadlines, so the shell wakes for it without
polling. Virtual time, fake dispenser (tests/test_engine.py's `Rig`).
"""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from test_engine import ALL_FEATURES, Rig, daily, utc

from agent.config import ConfigError, EngineSettings, parse_config
from agent.engine.types import (
    Action,
    CommandOutcome,
    EngineConfig,
    EngineInput,
    LinkDown,
    LinkUp,
    SendCommand,
    Tick,
)
from protocol.messages import (
    KEEPALIVE_MAX_S,
    KEEPALIVE_MIN_S,
    CommandResult,
    Feature,
    KeepAlive,
    ResultCode,
)

WATCHDOG = ALL_FEATURES | int(Feature.AGENT_WATCHDOG)
TIMEOUT = timedelta(seconds=300)  # so every 100 s


class TimedRig(Rig):
    """Rig that notes when each KeepAlive went out, and in answer to which input."""

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("config", EngineConfig(keepalive_timeout=TIMEOUT))
        kwargs.setdefault("features", WATCHDOG)
        times = [utc(2026, 3, d, 7, 0) for d in range(2, 9)]
        super().__init__(daily("08:00"), sachet_times=times, **kwargs)  # type: ignore[arg-type]
        self.keepalives: list[tuple[float, str, int]] = []  # mono, input type, timeout_s

    def feed(self, inp: EngineInput) -> list[Action]:
        mono = self.clock.now().mono
        acts = super().feed(inp)
        for act in acts:
            if isinstance(act, SendCommand) and isinstance(act.command, KeepAlive):
                self.keepalives.append((mono, type(inp).__name__, act.command.timeout_s))
        return acts


def test_keep_alive_goes_out_at_the_first_tick_after_the_handshake() -> None:
    rig = TimedRig()
    rig.install()
    linked = rig.clock.now().mono
    assert rig.keepalives == [], "LinkUp itself sends none: the timer loop does"
    assert rig.engine.next_deadline(rig.clock.now()) == linked, "due at once"

    rig.feed(Tick())
    assert rig.keepalives == [(linked, "Tick", 300)]
    assert rig.engine.next_deadline(rig.clock.now()) == linked + 100


def test_keep_alive_every_third_of_the_timeout_all_day_from_ticks_only() -> None:
    rig = TimedRig()
    rig.install()
    start = rig.clock.now().mono
    rig.run_for(timedelta(days=1))  # the 08:00 dose is given and missed meanwhile

    instants = [mono for mono, _, _ in rig.keepalives]
    assert {source for _, source, _ in rig.keepalives} == {"Tick"}
    assert instants[0] == start
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(instants)}
    assert gaps == {100.0}
    assert len(instants) == 86_400 // 100 + 1


def test_other_inputs_past_the_instant_do_not_feed_the_watchdog() -> None:
    rig = TimedRig()
    rig.install()
    rig.feed(Tick())
    rig.clock.advance(150)  # the next one was due 50 s ago: only the timer may send it
    for _ in range(3):
        rig.msg(rig.dispenser.status())
    assert len(rig.keepalives) == 1
    assert rig.engine.next_deadline(rig.clock.now()) == rig.keepalives[0][0] + 100
    rig.feed(Tick())
    assert len(rig.keepalives) == 2
    assert rig.keepalives[1][0] == rig.keepalives[0][0] + 150


def test_no_keep_alive_to_a_dispenser_without_the_feature() -> None:
    rig = TimedRig(features=ALL_FEATURES)
    rig.install()
    rig.run_for(timedelta(hours=2))
    assert rig.commands(KeepAlive) == []


def test_no_keep_alive_when_not_configured() -> None:
    rig = TimedRig(config=EngineConfig())
    rig.install()
    rig.run_for(timedelta(hours=2))
    assert rig.commands(KeepAlive) == []


def test_link_down_stops_them_and_the_next_handshake_sends_one_at_once() -> None:
    rig = TimedRig()
    rig.install()
    rig.feed(Tick())
    rig.feed(LinkDown("unplugged"))
    rig.run_for(timedelta(minutes=10))
    assert len(rig.keepalives) == 1

    rig.feed(LinkUp(rig.caps))  # a new Hello disarmed the watchdog (SPEC 4.7.5): re-arm now
    relinked = rig.clock.now().mono
    assert rig.engine.next_deadline(rig.clock.now()) == relinked
    rig.feed(Tick())
    assert rig.keepalives[-1] == (relinked, "Tick", 300)


def test_a_lost_keep_alive_neither_retries_at_once_nor_holds_up_a_dose() -> None:
    """A KeepAlive without a reply leaves two more before the dispenser alarms; it must not hold
    the dose-giving commands back (`command_retry`, 30 s) the way a failed dispense does."""
    rig = TimedRig(config=EngineConfig(keepalive_timeout=timedelta(seconds=30)))  # every 10 s
    rig.install()
    rig.run_until(utc(2026, 3, 2, 6, 59) + timedelta(seconds=49))
    rig.auto = False
    rig.clock.advance(1)
    rig.feed(Tick())  # 07:59:50 local, a KeepAlive instant (link up at 06:00:00 + 719 x 10 s)
    (lost,) = rig.outbox
    assert isinstance(lost.command, KeepAlive)
    rig.outbox.clear()
    rig.auto = True
    rig.feed(CommandOutcome(lost.correlation, None, "reply_timeout"))

    rig.run_until(utc(2026, 3, 2, 7, 0) + timedelta(seconds=1))
    assert rig.dispenser.dispensed == [0], "the 08:00 dose went out on time"
    assert rig.keepalives[-1][0] == rig.keepalives[-2][0] + 10, "the next one, on its time"


def test_a_refused_keep_alive_is_reported_once_per_link_and_they_go_on() -> None:
    """A refused frame is still heard (SPEC 4.7.2): stopping would starve a watchdog armed before
    and sound a false alarm; reporting every one would flood the centre."""
    rig = TimedRig()
    rig.dispenser.forced[KeepAlive] = ResultCode.BAD_ARGUMENT
    rig.install()
    rig.run_for(timedelta(hours=1))
    assert len(rig.keepalives) == 3_600 // 100 + 1
    failed = rig.events("dispenser_command_failed")
    assert [(e.fields["command"], e.fields["result"]) for e in failed] == [
        ("keep_alive", "bad_argument")
    ]

    rig.feed(LinkDown("replugged"))
    rig.feed(LinkUp(rig.caps))
    rig.feed(Tick())
    assert len(rig.events("dispenser_command_failed")) == 2, "once more on the new link"


def test_an_ok_reply_changes_nothing_else() -> None:
    rig = TimedRig()
    rig.install()
    rig.auto = False
    rig.feed(Tick())
    (sent,) = rig.outbox
    assert sent.command == KeepAlive(0, 300)
    assert (
        rig.engine.step(
            CommandOutcome(sent.correlation, CommandResult(0, ResultCode.OK, "")), rig.clock.now()
        )
        == []
    )
    assert rig.engine.next_deadline(rig.clock.now()) == rig.keepalives[0][0] + 100


# --- configuration ------------------------------------------------------------------------------


def raw_config(**engine: object) -> dict[str, object]:
    return {"unit_id": "unit-1", "dispenser": {"device": "/dev/null"}, "engine": engine}


def test_config_default_timeout_is_ten_minutes() -> None:
    config = parse_config(raw_config())
    assert config.engine.keepalive_timeout_s == 600
    assert config.engine.to_engine_config().keepalive_timeout == timedelta(seconds=600)


@pytest.mark.parametrize("value", [KEEPALIVE_MIN_S, KEEPALIVE_MAX_S])
def test_config_accepts_the_ends_of_the_protocol_range(value: int) -> None:
    engine = parse_config(raw_config(keepalive_timeout_s=value)).engine.to_engine_config()
    assert engine.keepalive_timeout == timedelta(seconds=value)


@pytest.mark.parametrize("value", [0, 29, 3601, 65_535, 60.5, "soon"])
def test_config_refuses_a_timeout_outside_the_protocol_range(value: object) -> None:
    with pytest.raises(ConfigError, match="keepalive_timeout_s"):
        parse_config(raw_config(keepalive_timeout_s=value))


def test_the_engine_settings_field_documents_its_range() -> None:
    field = EngineSettings.model_fields["keepalive_timeout_s"]
    assert field.description is not None
    assert "30" in field.description
    assert "3600" in field.description
