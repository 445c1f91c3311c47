"""bench/sim_year.py's replay (everything but the engine, in the very same year) stays true to
the real run: the harness asks for the recorded answers in the order it asked the engine, the
centre's refused inputs and agent restarts included (both seeds below restart the agent and
have inputs refused within 20 days)."""

from __future__ import annotations

import pytest

from bench.sim_year import main, replay_year


def test_the_replayed_year_publishes_the_real_event_stream() -> None:
    # raises if the replay's event hash differs from the real run's, or falls out of step
    assert replay_year(3, 20) > 0.0
    assert replay_year(1, 20, "wide") > 0.0


def test_the_replay_column_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seeds", "0", "--days", "5", "--replay"]) == 0
    assert "all but the engine" in capsys.readouterr().out
