"""The README's demo runs the whole chain and shows the three stories of its scripted morning."""

from __future__ import annotations

import pytest

from agent.demo.run import run_demo

pytestmark = pytest.mark.e2e


def test_demo_morning_shows_wrong_roll_taken_and_missed(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(speed=300.0, color=False) == 0
    out = capsys.readouterr().out
    assert "wrong_roll" in out
    assert "3.5" in out
    assert "slot 2026" in out
    assert " taken " in out
    assert "missed" in out
    assert "3.3" in out
    assert "0 events undelivered, audit chain intact" in out
    assert "!! gap" not in out
