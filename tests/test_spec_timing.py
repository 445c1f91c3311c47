"""SPEC v1.1 §2.8 and §1: the numbers in the spec's tables are the ones the code runs with (the
agent's link and session, its reconnect policy, the frame limits, and the conformance kit)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from drivers.retry import CONNECT_ATTEMPT_TIMEOUT_S
from drivers.session import DispenserSession
from hw import conform
from protocol.framing import MAX_PAYLOAD, MAX_STUFFED
from protocol.link import LinkConfig

SPEC = (Path(__file__).parents[1] / "protocol" / "SPEC.md").read_text(encoding="utf-8")


def timing_row(name: str) -> str:
    row = re.search(rf"^\| {name} \| ([^|]+) \|", SPEC, flags=re.MULTILINE)
    assert row is not None, f"{name} missing from SPEC 2.8"
    return row.group(1).strip()


def seconds(text: str) -> float:
    value, unit = re.match(r"([\d.]+) (ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) / 1000 if unit == "ms" else float(value)


def test_the_timing_table_is_what_the_agent_runs_with() -> None:
    assert seconds(timing_row("ACK timeout")) == LinkConfig().ack_timeout_s
    assert int(timing_row("retransmits")) == LinkConfig().max_retransmits
    default = inspect.signature(DispenserSession).parameters["request_timeout_s"].default
    assert seconds(timing_row("request timeout")) == default
    assert seconds(timing_row("handshake attempt")) == CONNECT_ATTEMPT_TIMEOUT_S


def test_the_timing_table_is_what_the_kit_holds_a_dispenser_to() -> None:
    assert seconds(timing_row("ACK deadline")) == conform.ACK_DEADLINE_S
    assert seconds(timing_row("ACK timeout")) == conform.ACK_TIMEOUT_S
    assert int(timing_row("retransmits")) == conform.MAX_RETRANSMITS
    assert seconds(timing_row("reply deadline")) == conform.REPLY_DEADLINE_S
    assert seconds(timing_row("request timeout")) == conform.REQUEST_TIMEOUT_S
    assert seconds(timing_row("movement deadline")) == conform.MOVE_DEADLINE_S
    assert "200 ms" in SPEC
    assert conform.RETRANSMIT_MIN_S == 0.2


def test_the_request_timeout_covers_the_reply_deadline_and_a_lost_frame_each_way() -> None:
    # a command retransmitted once, its reply sent at the deadline and retransmitted once
    ack_timeout = seconds(timing_row("ACK timeout"))
    worst = ack_timeout + seconds(timing_row("reply deadline")) + ack_timeout
    assert worst < seconds(timing_row("request timeout"))


def test_frame_limits_in_the_spec_are_the_codes() -> None:
    assert "payload length, `0..240`" in SPEC
    assert "more than 250 bytes without a delimiter" in SPEC
    assert MAX_PAYLOAD == 240
    assert MAX_STUFFED == 250
