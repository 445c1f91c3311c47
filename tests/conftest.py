"""Shared fixtures: a private mosquitto per test (tests/broker.py); Hypothesis without a
per-example deadline (CI machines are loaded: a slow example is not a failure, a wrong one is)."""

import pytest
from conftest_mqtt import mosquitto
from hypothesis import settings

settings.register_profile("loaded-machine", deadline=None)
settings.load_profile("loaded-machine")

__all__ = ["mosquitto"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "agent(start_at=..., engine={...}, held=False): how an end-to-end rig starts its agent "
        "(tests/e2e_support.py: the clock's start, engine settings, a clock held until the test "
        "releases it)",
    )
