"""A schedule version advances by a bounded step (SAFETY.md H10): a version of 2^63-1 once made
every later real update "older" and locked the response centre out."""

from __future__ import annotations

import pytest
from test_engine import daily, morning_rig

from agent.engine.types import EngineInputError, SetSchedule


def test_a_huge_version_is_refused_and_the_next_real_one_still_applies() -> None:
    rig = morning_rig()
    rig.install()  # version 1
    with pytest.raises(EngineInputError) as refused:
        rig.feed(SetSchedule(daily("09:00"), 2**63 - 1))
    assert refused.value.code == "version_step_too_large"
    rig.feed(SetSchedule(daily("09:00"), 2))
    rig.feed(SetSchedule(daily("10:00"), 1002))  # exactly 1000 past the one in force
    with pytest.raises(EngineInputError):
        rig.feed(SetSchedule(daily("11:00"), 2003))  # 1001 past
